"""The app in api/, over HTTP, against the emulator."""

import asyncio
import gc
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.main import create_app
from api.routes import REPORTS_SCOPE, build_router
from keystore import ApiKeyAuth, ApiKeyStore, Settings, get_store, reset_store
from keystore.errors import KeyNotFound, StoreBusy
from keystore.keys import new_key
from tests.conftest import Timer, serve

pytestmark = pytest.mark.anyio


async def make_key(*scopes: str) -> str:
    return (await get_store().create(name="caller", scopes=scopes)).key


async def test_healthz_is_open(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok"}


async def test_whoami_with_a_valid_key(client: httpx.AsyncClient) -> None:
    made = await get_store().create(name="billing", scopes=["a", "b"])
    r = await client.get("/v1/whoami", headers={"x-api-key": made.key})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": made.record.id,
        "name": "billing",
        "scopes": ["a", "b"],
        "expires_at": None,
        "owner": None,
        "rate_limit": None,
        "credits": None,
    }


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Missing API key."),  # no header
        ({"x-api-key": ""}, "Missing API key."),  # empty header
        ({"x-api-key": "   "}, "Missing API key."),  # blank header
        ({"x-api-key": "hello"}, "Malformed API key."),  # garbage
        ({"x-api-key": "k" * 8000}, "Malformed API key."),  # long garbage
        ({"x-api-key": new_key("ks")}, "Invalid API key."),  # well formed, unknown
        ({"x-api-key": new_key("zz")}, "Malformed API key."),  # another prefix
        (
            {"Authorization": f"Bearer {new_key('ks')}"},
            "Missing API key.",
        ),  # wrong place
    ],
)
async def test_refused_keys_get_401(
    client: httpx.AsyncClient, headers: dict[str, str], detail: str
) -> None:
    r = await client.get("/v1/whoami", headers=headers)
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": detail}
    assert r.headers["www-authenticate"] == "APIKey"


async def test_non_ascii_and_control_bytes_get_401(client: httpx.AsyncClient) -> None:
    for raw in (b"ks_\xc3\xa9t\xc3\xa9", b"ks_\x01\x02", "ключ".encode()):
        r = await client.get("/v1/whoami", headers=[(b"x-api-key", raw)])
        assert r.status_code == 401, r.text


async def test_several_different_keys_get_401(client: httpx.AsyncClient) -> None:
    key = await make_key()
    headers = [("x-api-key", key), ("x-api-key", new_key("ks"))]
    r = await client.get("/v1/whoami", headers=headers)
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": "Send one API key, not several."}
    r = await client.get("/v1/whoami", headers=[("x-api-key", key)] * 2)
    assert r.status_code == 200, r.text


async def test_scope_is_required(client: httpx.AsyncClient) -> None:
    plain, scoped = await make_key(), await make_key(REPORTS_SCOPE)
    r = await client.get("/v1/reports", headers={"x-api-key": plain})
    assert r.status_code == 403, r.text
    assert r.json() == {"detail": f"API key lacks the scope '{REPORTS_SCOPE}'."}
    r = await client.get("/v1/reports", headers={"x-api-key": scoped})
    assert r.status_code == 200, r.text


async def test_disabled_key_gets_401(client: httpx.AsyncClient) -> None:
    made = await get_store().create(name="n")
    await get_store().revoke(made.record.id)
    r = await client.get("/v1/whoami", headers={"x-api-key": made.key})
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": "Invalid API key."}


async def test_query_parameter_is_off_by_default(client: httpx.AsyncClient) -> None:
    key = await make_key()
    r = await client.get("/v1/whoami", params={"api_key": key})
    assert r.status_code == 401, r.text


async def test_query_parameter_when_turned_on(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(query_param="api_key", header="x-token")
    try:
        async with serve(create_app(settings)) as client:
            key = await make_key()
            r = await client.get("/v1/whoami", params={"api_key": key})
            assert r.status_code == 200, r.text
            r = await client.get("/v1/whoami", headers={"x-token": key})
            assert r.status_code == 200, r.text
            r = await client.get("/v1/whoami", headers={"x-api-key": key})
            assert r.status_code == 401, r.text
    finally:
        await reset_store()


async def test_openapi_shows_the_scheme(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An API key issued with `keystore create`.",
    }
    assert spec["paths"]["/v1/whoami"]["get"]["security"] == [{"ApiKey": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert (await client.get("/docs")).status_code == 200


async def test_lifespan_closes_the_store(settings: Settings) -> None:
    async with serve(create_app(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
        store = get_store()
    assert not store.connection.is_open


async def test_readyz_and_metrics(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "ready": True,
        "sync": "ttl",
        "keys_in_memory": 0,
        "index_age_seconds": None,
        "cpu": "not known yet",
        "stalls": 0,
        "longest_stall_seconds": 0.0,
        "background_restarts": {
            "usage flusher": 0,
            "lease sweeper": 0,
            "stall watch": 0,
        },
    }
    key = await make_key()
    for headers in ({"x-api-key": key}, {"x-api-key": "bad"}, {}):
        await client.get("/v1/whoami", headers=headers)
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    text = r.text
    for line in (
        'keystore_checks_total{outcome="valid"} 1.0',
        'keystore_checks_total{outcome="malformed"} 1.0',
        'keystore_firestore_reads_total{cause="check"} 1.0',
        'keystore_firestore_writes_total{cause="admin"} 2.0',  # the row, its marker
        "keystore_sync_misses_total 1.0",
        "keystore_ready 1.0",
        "keystore_check_duration_seconds_count 2.0",
        'keystore_check_duration_seconds_bucket{le="+Inf"} 2.0',
    ):
        assert line in text.splitlines(), line
    assert key not in text


def test_the_collector_joins_an_apps_own_registry() -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from keystore import KeystoreCollector

    registry = CollectorRegistry()
    Counter("app_requests", "The app's own.", registry=registry).inc()
    registry.register(KeystoreCollector(lambda: store))
    store = ApiKeyStore(Settings(project="p"))  # looked up at scrape time
    text = generate_latest(registry).decode()
    assert "app_requests_total 1.0" in text
    assert 'keystore_limit_refusals_total{cause="rate"} 0.0' in text
    assert "keystore_ready 1.0" in text


async def test_readyz_in_listen_mode(make_settings: Callable[..., Settings]) -> None:
    try:
        async with serve(create_app(make_settings(sync="listen"))) as client:
            async with asyncio.timeout(10):
                while (r := await client.get("/readyz")).status_code != 200:
                    assert r.status_code == 503, r.text
                    await asyncio.sleep(0.05)
            assert r.json()["sync"] == "listen"
            assert r.json()["index_age_seconds"] is not None
            assert "keystore_sync_age_seconds " in (await client.get("/metrics")).text
    finally:
        await reset_store()


async def test_too_many_lookups_at_once_get_a_quick_503_not_an_outage(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_lookups_per_second=2)  # a burst of 1
    try:
        async with serve(create_app(settings)) as client:
            await make_key()
            r = await client.get("/v1/whoami", headers={"x-api-key": new_key("ks")})
            assert r.status_code == 401, r.text
            r = await client.get("/v1/whoami", headers={"x-api-key": new_key("ks")})
            assert r.status_code == 503, r.text
            assert r.json() == {"detail": "Key store busy; retry shortly."}
            assert r.headers["retry-after"] == "1"
            # Nothing tripped: Firestore is not taken for down.
            assert not get_store().connection.is_unavailable
    finally:
        await reset_store()


async def test_the_lookup_budget_refills_with_the_stores_clock(
    make_settings: Callable[..., Settings], timer: Timer
) -> None:
    settings = make_settings(max_lookups_per_second=2)  # a burst of 1
    async with ApiKeyStore(settings, timer=timer) as store:
        made = await store.create(name="n")
        store.view.clear()  # type: ignore[attr-defined]
        with pytest.raises(KeyNotFound):
            await store.verify(new_key("ks"))
        with pytest.raises(StoreBusy):
            await store.verify(made.key)
        timer.tick(0.5)  # one more lookup's worth
        assert (await store.verify(made.key)).id == made.record.id


async def test_startup_keeps_long_lived_objects_out_of_full_collections(
    settings: Settings,
) -> None:
    # A full pass over everything imported stalls the event loop for tens of ms.
    assert gc.get_freeze_count() == 0
    async with serve(create_app(settings)):
        assert gc.get_freeze_count() > 10_000


async def test_a_store_that_cannot_connect_answers_503_not_500(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The credentials fail when the store first connects on the request path
    # (as when the metadata server is slow to answer): an outage, not a bug.
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "gone.json"))
    app = FastAPI()
    app.include_router(build_router(ApiKeyAuth.from_settings(settings)))
    get_store(settings)  # set up, not opened
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            key = {"x-api-key": new_key("ks")}
            for _ in range(3):
                r = await c.get("/v1/whoami", headers=key)
                assert r.status_code == 503, r.text
                assert r.json() == {"detail": "Key store unavailable; retry later."}
                assert r.headers["retry-after"] == str(settings.retry_after)
    finally:
        await reset_store()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # one line for the outage, not one a request
    assert "DefaultCredentialsError" in warnings[0].getMessage()
