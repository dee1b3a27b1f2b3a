"""The admin API under /admin/keys, against the emulator."""

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from api.main import create_app
from keystore import ApiKeyStore, KeyNotFound, Settings, get_store, reset_store
from keystore.cli import main
from tests.conftest import Emulator, serve

pytestmark = pytest.mark.anyio


async def key_with(*scopes: str) -> dict[str, str]:
    made = await get_store().create(name="actor", scopes=scopes)
    return {"x-api-key": made.key}


async def test_create_get_list_update_delete(client: httpx.AsyncClient) -> None:
    admin = await key_with("admin", "reports:read")
    r = await client.post(
        "/admin/keys", json={"name": "svc", "scopes": ["reports:read"]}, headers=admin
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["key"].startswith("ks_") and "hash" not in made
    key_id = made["id"]

    r = await client.get(f"/admin/keys/{key_id}", headers=admin)
    assert r.status_code == 200, r.text
    assert (
        r.json()["name"] == "svc" and "key" not in r.json() and "hash" not in r.json()
    )

    r = await client.get("/admin/keys", headers=admin)
    assert [row["id"] for row in r.json()][-1] == key_id

    r = await client.patch(
        f"/admin/keys/{key_id}",
        json={"name": "renamed", "disabled": True},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["disabled"]) == ("renamed", True)
    r = await client.get("/v1/whoami", headers={"x-api-key": made["key"]})
    assert r.status_code == 401, r.text  # same process: takes effect at once

    r = await client.get("/admin/keys", params={"disabled": True}, headers=admin)
    assert [row["id"] for row in r.json()] == [key_id]

    r = await client.delete(f"/admin/keys/{key_id}", headers=admin)
    assert r.status_code == 204, r.text
    r = await client.get(f"/admin/keys/{key_id}", headers=admin)
    assert r.status_code == 404, r.text
    assert r.json() == {"detail": f"No key with id '{key_id}'."}


async def test_expiry_can_be_set_and_removed(client: httpx.AsyncClient) -> None:
    admin = await key_with("admin")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await client.post(
        "/admin/keys", json={"name": "t", "expires_at": later}, headers=admin
    )
    key_id = r.json()["id"]
    assert r.json()["expires_at"] is not None
    r = await client.patch(f"/admin/keys/{key_id}", json={"name": "u"}, headers=admin)
    assert r.json()["expires_at"] is not None  # left out: kept
    r = await client.patch(
        f"/admin/keys/{key_id}", json={"expires_at": None}, headers=admin
    )
    assert r.json()["expires_at"] is None  # null: removed


async def test_rotate_keeps_old_key_for_the_grace_period(
    client: httpx.AsyncClient,
) -> None:
    admin = await key_with("admin", "reports:read")
    old = await get_store().create(name="svc", scopes=["reports:read"])
    r = await client.post(
        f"/admin/keys/{old.record.id}/rotate",
        json={"grace_seconds": 3600},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    new = r.json()
    assert (new["name"], new["scopes"], new["rotated_from"]) == (
        "svc",
        ["reports:read"],
        old.record.id,
    )
    for key in (old.key, new["key"]):
        r = await client.get("/v1/whoami", headers={"x-api-key": key})
        assert r.status_code == 200, r.text
    r = await client.get(f"/admin/keys/{old.record.id}", headers=admin)
    assert r.json()["rotated_to"] == new["id"]
    expires = datetime.fromisoformat(r.json()["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)

    r = await client.post(
        f"/admin/keys/{new['id']}/rotate", json={"grace_seconds": 0}, headers=admin
    )
    r = await client.get("/v1/whoami", headers={"x-api-key": new["key"]})
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": "API key has expired."}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/admin/keys", {"name": "x", "scopes": ["billing"]}),  # grant
        ("PATCH", "/admin/keys/{id}", {"scopes": ["billing"]}),  # widen
        ("POST", "/admin/keys/{id}/rotate", None),  # take over a stronger key
    ],
)
async def test_no_privilege_escalation(
    client: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    admin = await key_with("admin")
    target = await get_store().create(name="strong", scopes=["billing"])
    url = path.format(id=target.record.id)
    r = await client.request(method, url, json=body, headers=admin)
    assert r.status_code == 403, r.text
    assert r.json() == {
        "detail": "Cannot grant the scope 'billing': the calling key lacks it."
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys/x"),
        ("PATCH", "/admin/keys/x"),
        ("DELETE", "/admin/keys/x"),
        ("POST", "/admin/keys/x/rotate"),
        ("GET", "/admin/keys/x/usage"),
    ],
)
async def test_every_route_needs_the_admin_scope(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    r = await client.request(method, path, json={"name": "x"})
    assert r.status_code == 401, r.text
    r = await client.request(method, path, json={"name": "x"}, headers=await key_with())
    assert r.status_code == 403, r.text
    assert r.json() == {"detail": "API key lacks the scope 'admin'."}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/admin/keys/nope", None, 404),  # unknown id
        ("DELETE", "/admin/keys/nope", None, 404),
        ("PATCH", "/admin/keys/nope", {"name": "x"}, 404),
        ("POST", "/admin/keys/nope/rotate", None, 404),
        ("GET", "/admin/keys/nope/usage", None, 404),
        ("POST", "/admin/keys", {"name": ""}, 422),  # empty name
        ("POST", "/admin/keys", {"name": "x", "hash": "0" * 64}, 422),  # no such field
        ("POST", "/admin/keys", {"name": "x", "scopes": "admin"}, 422),  # not a list
        ("PATCH", "/admin/keys/nope", {"disabled": "maybe"}, 422),
        ("POST", "/admin/keys/nope/rotate", {"grace_seconds": -1}, 422),
    ],
)
async def test_error_paths(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    r = await client.request(method, path, json=body, headers=await key_with("admin"))
    assert r.status_code == status, r.text


@pytest.mark.parametrize(
    "key_id",
    [
        "__main__",  # reserved by Firestore
        "%2E%2E",  # ..
        "%2E",
        "x" * 1501,  # longer than a document id may be
    ],
)
async def test_an_id_firestore_refuses_is_unknown_not_an_outage(
    client: httpx.AsyncClient, key_id: str
) -> None:
    # Firestore answers such an id InvalidArgument: taken for an outage, it
    # would turn every request of the next seconds into a 503.
    admin = await key_with("admin")
    for method, path in (
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/rotate"),
        ("GET", "/usage"),
    ):
        body = {"name": "x"} if method == "PATCH" else None
        r = await client.request(
            method, f"/admin/keys/{key_id}{path}", json=body, headers=admin
        )
        assert r.status_code == 404, r.text
    r = await client.post("/admin/keys", json={"name": "after"}, headers=admin)
    assert r.status_code == 201, r.text


async def test_the_store_knows_no_such_row_without_asking(
    store: ApiKeyStore, document_reads: Callable[[], int]
) -> None:
    for key_id in ("__x__", "..", "\ud800", "x" * 1501, "a/b", ""):
        with pytest.raises(KeyNotFound):
            await store.get(key_id)
        with pytest.raises(KeyNotFound):
            await store.revoke(key_id)
    assert document_reads() == 0


async def test_create_and_list_in_an_outage_are_503(
    emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(timeout=0.5, retry_after=30)
    try:
        async with serve(create_app(settings)) as client:
            admin = await key_with("admin")
            r = await client.get("/v1/whoami", headers=admin)  # now held in memory
            assert r.status_code == 200, r.text
            emulator.pause()
            try:
                for method, body in (("GET", None), ("POST", {"name": "n"})):
                    r = await client.request(
                        method, "/admin/keys", json=body, headers=admin
                    )
                    assert r.status_code == 503, r.text
                    assert r.headers["retry-after"] == "30"
            finally:
                emulator.pause(False)
    finally:
        await reset_store()


async def test_null_for_a_required_field_is_422(client: httpx.AsyncClient) -> None:
    admin = await key_with("admin")
    made = await get_store().create(name="n")
    r = await client.patch(
        f"/admin/keys/{made.record.id}", json={"name": None}, headers=admin
    )
    assert r.status_code == 422, r.text


async def test_broken_row_is_listed_and_reported(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await key_with("admin")
    db = firestore.AsyncClient(project=settings.project)
    await db.collection(settings.collection).document("broken1").set({"disabled": "no"})
    r = await client.get("/admin/keys/broken1", headers=admin)
    assert r.json() == {
        "id": "broken1",
        "broken_field": "hash",
        "problem": "expected 64 hex characters (SHA-256)",
    }
    r = await client.patch("/admin/keys/broken1", json={"name": "x"}, headers=admin)
    assert r.status_code == 409, r.text


async def test_every_action_logs_actor_and_target(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    made = await get_store().create(name="actor", scopes=["admin"])
    admin = {"x-api-key": made.key}
    with caplog.at_level(logging.INFO, logger="keystore.admin"):
        r = await client.post("/admin/keys", json={"name": "t"}, headers=admin)
        target = r.json()["id"]
        await client.get(f"/admin/keys/{target}", headers=admin)
        await client.delete(f"/admin/keys/{target}", headers=admin)
    records = [r for r in caplog.records if r.name == "keystore.admin"]
    assert [r.getMessage() for r in records] == [
        f"admin {action}: actor={made.record.id} target={target}"
        for action in ("create", "get", "delete")
    ]
    assert all(rec.__dict__["actor_key_id"] == made.record.id for rec in records)
    assert made.key not in caplog.text


async def test_admin_docs_can_be_hidden(make_settings: Callable[..., Settings]) -> None:
    for shown in (True, False):
        try:
            async with serve(create_app(make_settings(admin_docs=shown))) as client:
                spec = (await client.get("/openapi.json")).json()
                assert ("/admin/keys" in spec["paths"]) is shown
                assert "KeyCreate" in spec["components"]["schemas"] or not shown
        finally:
            await reset_store()


async def cli(*argv: str) -> int:
    # The CLI runs its own event loop, so it needs a thread of its own here.
    return await asyncio.to_thread(main, list(argv))


async def test_cli_console_and_api_agree(
    client: httpx.AsyncClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEYSTORE_COLLECTION", settings.collection)
    admin = await key_with("admin")

    # Made with the CLI...
    assert await cli("create", "--name", "from-cli", "--scope", "a", "--json") == 0
    made = json.loads(capsys.readouterr().out)
    # ...edited in the console, with nothing but the plain Firestore client...
    db = firestore.AsyncClient(project=settings.project)
    await (
        db.collection(settings.collection)
        .document(made["id"])
        .update({"scopes": ["a", "b"], "name": "edited-in-console"})
    )
    # ...read back alike by the admin API and the CLI.
    r = await client.get(f"/admin/keys/{made['id']}", headers=admin)
    assert (r.json()["name"], r.json()["scopes"]) == ("edited-in-console", ["a", "b"])
    assert await cli("show", made["id"], "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["scopes"]) == ("edited-in-console", ["a", "b"])
    # And the API's change is what the console and the CLI then see.
    await client.patch(
        f"/admin/keys/{made['id']}", json={"disabled": True}, headers=admin
    )
    # A query read to its end: the SDK's document get leaves a stream open.
    rows = {
        row.id: row.to_dict()
        async for row in db.collection(settings.collection).stream()
    }
    assert rows[made["id"]]["disabled"] is True  # type: ignore[index]
    assert await cli("list", "--disabled", "--json") == 0
    assert [row["id"] for row in json.loads(capsys.readouterr().out)] == [made["id"]]


async def test_imported_keys_are_accepted_only_when_turned_on(
    make_settings: Callable[..., Settings],
) -> None:
    legacy = "legacy-plaintext-key-0123456789"
    for accepted in (False, True):
        settings = make_settings(imported_keys=accepted)
        try:
            async with serve(create_app(settings)) as client:
                await get_store().import_keys([("legacy", legacy)], scopes=["r"])
                r = await client.get("/v1/whoami", headers={"x-api-key": legacy})
                assert r.status_code == (200 if accepted else 401), r.text
                r = await client.get("/v1/whoami", headers={"x-api-key": legacy + "x"})
                assert r.status_code == 401, r.text
        finally:
            await reset_store()


async def test_default_expiry(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(default_expiry=timedelta(days=7))
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n")
        assert made.record.expires_at is not None
        left = made.record.expires_at - datetime.now(UTC)
        assert timedelta(days=6, hours=23) < left <= timedelta(days=7)
        explicit = datetime.now(UTC) + timedelta(days=1)
        assert (
            await store.create(name="m", expires_at=explicit)
        ).record.expires_at == explicit


async def test_an_owners_month_of_usage(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    admin = await key_with("admin")
    store = get_store()
    made = await store.create(name="svc", owner="acme")
    for _ in range(3):
        assert (
            await client.get("/v1/whoami", headers={"x-api-key": made.key})
        ).status_code == 200
    await store.revoke(made.record.id)
    await store.flush_usage()
    month = datetime.now(UTC).strftime("%Y-%m")
    r = await client.get(f"/admin/owners/acme/usage?month={month}", headers=admin)
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["owner"], report["uses"]) == ("acme", 3)
    assert [(k["id"], k["name"], k["uses"]) for k in report["keys"]] == [
        (made.record.id, None, 3)
    ]
    for bad in ("2026-13", "2026-1", "december"):
        r = await client.get(f"/admin/owners/acme/usage?month={bad}", headers=admin)
        assert r.status_code == 422, r.text
    r = await client.get(f"/admin/owners/a%2Fb/usage?month={month}", headers=admin)
    assert r.status_code in (404, 422), r.text
    r = await client.get(
        f"/admin/owners/acme/usage?month={month}", headers={"x-api-key": made.key}
    )
    assert r.status_code == 401
