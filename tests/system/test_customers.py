"""The demo's /v1/me: customers signed up and in through the Firebase Auth
emulator's REST API, their ID tokens verified by firebase-admin; no token is
made by hand."""

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from api.main import create_app
from keystore import Settings, get_store, reset_store
from tests.conftest import ROOT, AuthEmulator, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(
    settings: Settings, firebase_env: AuthEmulator
) -> AsyncIterator[httpx.AsyncClient]:
    try:
        async with serve(create_app(settings)) as c:
            yield c
    finally:
        await reset_store()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def unique(name: str) -> str:
    return f"{name}-{os.urandom(4).hex()}@example.com"


async def test_two_customers_each_see_and_manage_only_their_own_keys(
    client: httpx.AsyncClient, firebase_env: AuthEmulator
) -> None:
    alice_email = unique("alice")
    alice = bearer(firebase_env.sign_up(alice_email))
    bob = bearer(firebase_env.sign_up(unique("bob")))
    made = {}
    for who, headers in (("alice", alice), ("bob", bob)):
        r = await client.post("/v1/me/keys", json={"name": who}, headers=headers)
        assert r.status_code == 201, r.text
        made[who] = r.json()
    assert made["alice"]["owner"] != made["bob"]["owner"]

    for who, headers in (("alice", alice), ("bob", bob)):
        listed = (await client.get("/v1/me/keys", headers=headers)).json()
        assert [key["id"] for key in listed] == [made[who]["id"]]
    key_id = made["alice"]["id"]
    r = await client.delete(f"/v1/me/keys/{key_id}", headers=bob)
    assert r.status_code == 404 and r.json() == {
        "detail": f"No key with id '{key_id}'."
    }
    r = await client.post(f"/v1/me/keys/{key_id}/rotate", headers=bob)
    assert r.status_code == 404

    key = {"x-api-key": made["alice"]["key"]}
    for _ in range(2):
        assert (await client.get("/v1/whoami", headers=key)).status_code == 200
    await get_store().flush_usage()
    usage = (await client.get("/v1/me/usage", headers=alice)).json()
    assert usage["uses"] == 2 and usage["keys"][0]["id"] == key_id
    assert (await client.get("/v1/me/usage", headers=bob)).json()["uses"] == 0

    # Signed in again (a new token), the same customer: the same keys.
    alice = bearer(firebase_env.sign_in(alice_email))
    assert (
        await client.delete(f"/v1/me/keys/{key_id}", headers=alice)
    ).status_code == 204
    assert (await client.get("/v1/whoami", headers=key)).status_code == 401


async def test_no_token_or_a_bad_one_is_401_with_bearer(
    client: httpx.AsyncClient,
) -> None:
    for headers in (
        {},
        {"authorization": "Bearer not-a-token"},
        {"authorization": "Basic eA=="},
    ):
        r = await client.get("/v1/me/keys", headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"]


async def test_without_the_emulator_its_tokens_are_refused(
    settings: Settings, auth_emulator: AuthEmulator
) -> None:
    token = auth_emulator.sign_up(unique("carol"))  # unsigned: the emulator's
    try:
        async with serve(create_app(settings)) as client:
            r = await client.get("/v1/me/keys", headers=bearer(token))
            assert r.status_code == 401, r.text
    finally:
        await reset_store()


def test_emulator_tokens_on_cloud_run_stop_the_start() -> None:
    env = {
        **os.environ,
        "K_SERVICE": "keystore",
        "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099",
        "GOOGLE_CLOUD_PROJECT": "demo-keystore",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from api.main import app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "FIREBASE_AUTH_EMULATOR_HOST is set on Cloud Run" in done.stderr
    assert "Traceback" not in done.stderr


async def test_the_page_is_served_with_the_auth_endpoint(
    client: httpx.AsyncClient, firebase_env: AuthEmulator
) -> None:
    r = await client.get("/v1/me/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert f"http://{firebase_env.host}/identitytoolkit.googleapis.com/v1" in r.text
    assert "/*CONFIG*/" not in r.text
