"""The self-service routes (self_service.py) in an app of the test's, against
the emulator. The owner comes from an ``x-owner`` header here: keystore does
not decide how customers sign in (the demo's Firebase sign-in has its own
tests, in tests/system/test_customers.py)."""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Header, HTTPException, Security

from keystore import (
    ApiKey,
    ApiKeyAuth,
    SelfServicePolicy,
    Settings,
    build_self_service_router,
    get_store,
    reset_store,
)
from tests import console
from tests.conftest import Emulator, serve

pytestmark = pytest.mark.anyio


async def signed_in(x_owner: Annotated[str | None, Header()] = None) -> str:
    if not x_owner:
        raise HTTPException(401, "Sign in.", headers={"WWW-Authenticate": "Bearer"})
    return x_owner


def customer_app(settings: Settings, policy: SelfServicePolicy | None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await get_store(settings).open()
        try:
            yield
        finally:
            await reset_store()

    app = FastAPI(lifespan=lifespan)
    app.include_router(
        build_self_service_router(signed_in, policy=policy, prefix="/me")
    )
    auth = ApiKeyAuth.from_settings(settings)

    @app.get("/use")
    async def use(key: Annotated[ApiKey, Security(auth)]) -> str:
        return key.id

    return app


@pytest.fixture
def policy() -> SelfServicePolicy:
    return SelfServicePolicy(
        scopes=frozenset({"reports:read"}),
        max_keys=3,
        default_lifetime=timedelta(days=30),
        max_lifetime=timedelta(days=90),
        rate_limit=None,
    )


@pytest.fixture
async def client(
    settings: Settings, policy: SelfServicePolicy
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(customer_app(settings, policy)) as c:
        yield c


def as_(owner: str) -> dict[str, str]:
    return {"x-owner": owner}


async def make(client: httpx.AsyncClient, owner: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/me/keys", json={"name": "k", **body}, headers=as_(owner))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_each_owner_sees_and_manages_only_its_own_keys(
    client: httpx.AsyncClient,
) -> None:
    a = await make(client, "alice", name="alice's", scopes=["reports:read"])
    b = await make(client, "bob")
    assert a["key"].startswith("ks_") and a["owner"] == "alice"
    listed = (await client.get("/me/keys", headers=as_("alice"))).json()
    assert [key["id"] for key in listed] == [a["id"]]
    assert "key" not in listed[0] and "hash" not in listed[0]
    assert (await client.get("/use", headers={"x-api-key": a["key"]})).text == (
        f'"{a["id"]}"'
    )

    # Bob's key, to Alice, is exactly a key that does not exist.
    for key_id in (b["id"], "nosuchkey00"):
        rotate = await client.post(f"/me/keys/{key_id}/rotate", headers=as_("alice"))
        delete = await client.delete(f"/me/keys/{key_id}", headers=as_("alice"))
        assert (rotate.status_code, delete.status_code) == (404, 404)
        assert (
            rotate.json() == delete.json() == {"detail": f"No key with id '{key_id}'."}
        )
    assert (
        await client.get("/use", headers={"x-api-key": b["key"]})
    ).status_code == 200

    r = await client.post(
        f"/me/keys/{a['id']}/rotate", json={"grace_seconds": 0}, headers=as_("alice")
    )
    assert r.status_code == 201, r.text
    rotated = r.json()
    assert rotated["scopes"] == ["reports:read"] and rotated["owner"] == "alice"
    assert (
        await client.get("/use", headers={"x-api-key": a["key"]})
    ).status_code == 401
    r = await client.delete(f"/me/keys/{rotated['id']}", headers=as_("alice"))
    assert r.status_code == 204
    use = await client.get("/use", headers={"x-api-key": rotated["key"]})
    assert use.status_code == 401


async def test_no_one_signed_in_is_401(client: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/me/keys"),
        ("POST", "/me/keys"),
        ("GET", "/me/usage"),
    ):
        r = await client.request(method, path, json={"name": "k"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_an_id_that_cannot_own_keys_is_403(client: httpx.AsyncClient) -> None:
    r = await client.get("/me/keys", headers=as_("a/b"))
    assert r.status_code == 403 and r.json() == {
        "detail": "This account cannot own keys."
    }


async def test_the_policy_bounds_scopes_lifetimes_and_keys(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/me/keys", json={"name": "k", "scopes": ["admin"]}, headers=as_("alice")
    )
    assert r.status_code == 403 and "'admin'" in r.json()["detail"]
    later = datetime.now(UTC) + timedelta(days=91)
    r = await client.post(
        "/me/keys",
        json={"name": "k", "expires_at": later.isoformat()},
        headers=as_("alice"),
    )
    assert r.status_code == 403 and "90 days" in r.json()["detail"]
    r = await client.post(
        "/me/keys",
        json={"name": "k", "expires_at": "2001-01-01T00:00:00Z"},
        headers=as_("alice"),
    )
    assert r.status_code == 422
    # Customers set no limits: the owner's bound every key they make.
    r = await client.post(
        "/me/keys", json={"name": "k", "credits": 5}, headers=as_("alice")
    )
    assert r.status_code == 422

    made = await make(client, "alice")
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    await make(client, "alice")
    await make(client, "alice")
    r = await client.post("/me/keys", json={"name": "k"}, headers=as_("alice"))
    assert r.status_code == 409 and "At most 3 live keys" in r.json()["detail"]
    r = await client.post(f"/me/keys/{made['id']}/rotate", headers=as_("alice"))
    assert r.status_code == 409  # the old key would live on beside the new
    r = await client.post(
        f"/me/keys/{made['id']}/rotate", json={"grace_seconds": 0}, headers=as_("alice")
    )
    assert r.status_code == 201
    await make(client, "bob")  # each owner has its own cap


async def test_rotation_renews_the_secret_never_the_terms(
    client: httpx.AsyncClient,
) -> None:
    store = get_store()
    # An operator gave alice's key a scope customers may not grant: rotating
    # it would hand her a new secret with that scope.
    wide = await store.create(name="ops", scopes=["admin"], owner="alice")
    r = await client.post(f"/me/keys/{wide.record.id}/rotate", headers=as_("alice"))
    assert r.status_code == 403 and "'admin'" in r.json()["detail"]
    # A key that ends in two days: its successor ends then too, not 30 days on.
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    short = await store.create(name="trial", expires_at=soon, owner="alice")
    r = await client.post(
        f"/me/keys/{short.record.id}/rotate",
        json={"grace_seconds": 0},
        headers=as_("alice"),
    )
    assert r.status_code == 201, r.text
    assert datetime.fromisoformat(r.json()["expires_at"]) == soon
    # A key without an end gets the policy's default lifetime.
    endless = await store.create(name="old", owner="alice")
    r = await client.post(
        f"/me/keys/{endless.record.id}/rotate",
        json={"grace_seconds": 0},
        headers=as_("alice"),
    )
    ends = datetime.fromisoformat(r.json()["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=29) < ends <= timedelta(days=30)


async def test_a_broken_row_is_listed_as_it_counts_against_the_cap(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    made = [await make(client, "alice") for _ in range(3)]
    await console.edit(settings, made[0]["id"], scopes="not a list")
    r = await client.get("/me/keys", headers=as_("alice"))
    listed = {key["id"]: key for key in r.json()}
    assert set(listed) == {key["id"] for key in made}
    assert listed[made[0]["id"]]["broken_field"] == "scopes"
    r = await client.post("/me/keys", json={"name": "k"}, headers=as_("alice"))
    assert r.status_code == 409


async def test_a_name_with_control_characters_is_422(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/me/keys", json={"name": "a\x1b[2Jb"}, headers=as_("alice"))
    assert r.status_code == 422, r.text


async def test_disabled_and_expired_keys_are_not_rotated(
    client: httpx.AsyncClient,
) -> None:
    made = await make(client, "alice")
    store = get_store()
    await store.update(made["id"], disabled=True)
    r = await client.post(f"/me/keys/{made['id']}/rotate", headers=as_("alice"))
    assert r.status_code == 403 and "disabled" in r.json()["detail"]
    await store.update(made["id"], disabled=False, expires_at=datetime.now(UTC))
    r = await client.post(f"/me/keys/{made['id']}/rotate", headers=as_("alice"))
    assert r.status_code == 403 and "expired" in r.json()["detail"]


async def test_usage_counts_each_key_and_all_exactly(
    client: httpx.AsyncClient,
) -> None:
    first = await make(client, "alice")
    second = await make(client, "alice")
    for key, uses in ((first["key"], 3), (second["key"], 2)):
        for _ in range(uses):
            assert (
                await client.get("/use", headers={"x-api-key": key})
            ).status_code == 200
    await client.delete(f"/me/keys/{second['id']}", headers=as_("alice"))
    await get_store().flush_usage()
    report = (await client.get("/me/usage", headers=as_("alice"))).json()
    assert (report["uses"], report["owner"]) == (5, "alice")
    assert {key["id"]: key["uses"] for key in report["keys"]} == {
        first["id"]: 3,
        second["id"]: 2,
    }
    assert sum(day["uses"] for day in report["days"]) == 5
    bob = (await client.get("/me/usage", headers=as_("bob"))).json()
    assert (bob["uses"], bob["keys"]) == (0, [])


@pytest.mark.parametrize(
    "query",
    [
        {"from": "2026-13-01"},
        {"from": "yesterday"},
        {"from": "2026-02-30"},
        {"from": "2026-12-02", "to": "2026-12-01"},
        {"from": "2020-01-01", "to": "2026-01-01"},
    ],
)
async def test_a_span_it_cannot_report_is_422(
    client: httpx.AsyncClient, query: dict[str, str]
) -> None:
    r = await client.get("/me/usage", params=query, headers=as_("alice"))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("query", "blamed"),
    [
        ({"from": "2026-02-30", "to": "2026-03-01"}, "from"),
        ({"from": "2026-02-01", "to": "2026-02-30"}, "to"),
        ({"to": "2026-02-30"}, "to"),
    ],
)
async def test_a_422_names_the_parameter_at_fault(
    client: httpx.AsyncClient, query: dict[str, str], blamed: str
) -> None:
    r = await client.get("/me/usage", params=query, headers=as_("alice"))
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", blamed]


async def test_every_action_is_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keystore.self_service")
    made = await make(client, "alice")
    await client.get("/me/keys", headers=as_("alice"))
    r = await client.post(
        f"/me/keys/{made['id']}/rotate", json={"grace_seconds": 0}, headers=as_("alice")
    )
    await client.delete(f"/me/keys/{r.json()['id']}", headers=as_("alice"))
    await client.get("/me/usage", headers=as_("alice"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"self-service create: owner=alice target={made['id']}",
        "self-service list: owner=alice target=*",
        f"self-service rotate: owner=alice target={made['id']}",
        f"self-service revoke: owner=alice target={r.json()['id']}",
        "self-service usage: owner=alice target=*",
    ]
    assert made["key"] not in caplog.text and r.json()["key"] not in caplog.text


async def test_the_policy_comes_from_settings_when_the_app_sets_none(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        self_service_scopes="a, b",
        self_service_max_keys=1,
        self_service_rate_limit="3/1h",
    )
    async with serve(customer_app(settings, None)) as client:
        r = await client.post(
            "/me/keys", json={"name": "k", "scopes": ["b"]}, headers=as_("alice")
        )
        assert r.status_code == 201 and r.json()["expires_at"] is None
        r = await client.post("/me/keys", json={"name": "k"}, headers=as_("alice"))
        assert r.status_code == 409
        r = await client.get("/me/keys", headers=as_("alice"))
        assert r.status_code == 200
        r = await client.get("/me/keys", headers=as_("alice"))
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 3600
        r = await client.get("/me/keys", headers=as_("bob"))
        assert r.status_code == 200  # counted per owner


async def test_an_outage_is_503_with_retry_after(
    emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(timeout=0.5, retry_after=30)
    async with serve(customer_app(settings, None)) as client:
        emulator.pause()
        try:
            for method, path in (("GET", "/me/keys"), ("POST", "/me/keys")):
                r = await client.request(
                    method, path, json={"name": "k"}, headers=as_("alice")
                )
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "30"
        finally:
            emulator.pause(False)
