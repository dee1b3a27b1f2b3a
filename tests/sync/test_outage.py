"""Firestore goes away and comes back: the emulator is really stopped and restarted."""

import asyncio
from collections.abc import Callable

import pytest

from api.main import create_app
from keystore import ApiKeyStore, Settings, StoreUnavailable, get_store, reset_store
from keystore._firestore.connection import Connection
from keystore._firestore.documents import KeyCollection
from keystore.keys import new_key
from keystore.sync.listen import ListenView
from keystore.sync.ttl import TtlView
from tests.conftest import Emulator, serve

pytestmark = pytest.mark.anyio


async def test_outage_serves_known_keys_and_503s_the_rest(
    emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(cache_ttl=0.2, timeout=2.0, retry_after=1)
    try:
        async with serve(create_app(settings)) as client:
            made = await get_store().create(name="n")
            known = {"x-api-key": made.key}
            assert (await client.get("/v1/whoami", headers=known)).status_code == 200
            await asyncio.sleep(
                0.3
            )  # the row's TTL is over: only stale-if-error saves it

            emulator.stop()
            try:
                # Bounded: a hang here fails the test instead of stalling it.
                async with asyncio.timeout(settings.timeout * 3):
                    r = await client.get("/v1/whoami", headers=known)
                    assert r.status_code == 200, r.text
                    r = await client.get(
                        "/v1/whoami", headers={"x-api-key": new_key("ks")}
                    )
                    assert r.status_code == 503, r.text
                    assert r.json() == {"detail": "Key store unavailable; retry later."}
                    assert r.headers["retry-after"] == str(settings.retry_after)
                    # While Firestore is known to be down, answers come from memory.
                    for _ in range(20):
                        r = await client.get("/v1/whoami", headers=known)
                        assert r.status_code == 200, r.text
            finally:
                emulator.start()

            # The emulator comes back empty; the store must recover by itself.
            async with asyncio.timeout(30):
                while True:
                    try:
                        fresh = await get_store().create(name="after")
                        break
                    except Exception:
                        await asyncio.sleep(0.5)
                while True:
                    r = await client.get("/v1/whoami", headers={"x-api-key": fresh.key})
                    if r.status_code == 200:
                        break
                    assert r.status_code in (401, 503), r.text
                    await asyncio.sleep(0.5)
            r = await client.get("/v1/whoami", headers={"x-api-key": new_key("ks")})
            assert r.status_code == 401, r.text
    finally:
        await reset_store()


async def test_a_frozen_firestore_costs_one_deadline_not_a_hang(
    emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    # A server that accepts and never answers: only the deadline ends the wait.
    async with ApiKeyStore(make_settings()) as store:
        made = await store.create(name="n")
    settings = make_settings(timeout=0.5, retry_after=30)
    async with ApiKeyStore(settings) as store:
        assert await store.does_api_key_exist(made.key)
        assert isinstance(store.view, TtlView)
        store.view.clear()  # nothing in memory: the next check must ask Firestore
        emulator.pause()
        try:
            async with asyncio.timeout(settings.timeout * 4):
                with pytest.raises(StoreUnavailable):
                    await store.verify(made.key)
                # Firestore is known to be down: the next answers take no wait.
                for _ in range(100):
                    with pytest.raises(StoreUnavailable):
                        await store.verify(new_key("ks"))
        finally:
            emulator.pause(False)


async def test_a_load_whose_channel_is_closed_under_it_is_an_outage(
    emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    # After a renewal the old client's channel is closed, cancelling what still
    # runs on it (a long load, say): that is Firestore not answering, not the
    # task being cancelled.
    rows = KeyCollection(Connection(make_settings(timeout=10)))
    await rows.open()
    emulator.pause()
    try:
        load = asyncio.ensure_future(rows.all(cause="test"))
        await asyncio.sleep(0.3)  # sent, and waiting for an answer
        await rows.aclose()
        async with asyncio.timeout(5):
            with pytest.raises(StoreUnavailable):
                await load
    finally:
        emulator.pause(False)


async def test_store_never_waits_past_its_deadline_when_unreachable(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(timeout=1.0)
    # A port where nothing listens: every call fails; none may hang.
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    async with ApiKeyStore(settings) as store:
        async with asyncio.timeout(settings.timeout * 3):
            with pytest.raises(StoreUnavailable):
                await store.verify(new_key("ks"))
            with pytest.raises(StoreUnavailable):
                await store.create(name="n")
            with pytest.raises(StoreUnavailable):
                await store.list_keys()


async def test_listener_recovers_after_an_outage(
    emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    # The stream reconnects by itself: no resync runs within this test.
    settings = make_settings(sync="listen", watchdog_interval=0.2, retry_after=1)
    async with ApiKeyStore(settings) as store:
        async with asyncio.timeout(10):
            while not store.is_ready:
                await asyncio.sleep(0.05)
        made = await store.create(name="before")
        emulator.stop()
        try:
            # The rows in memory keep answering while Firestore is gone.
            assert await store.does_api_key_exist(made.key)
        finally:
            emulator.start()
        # The emulator comes back empty: a key made now must reach the listener.
        async with ApiKeyStore(make_settings()) as writer:
            async with asyncio.timeout(30):
                while True:
                    try:
                        fresh = await writer.create(name="after")
                        break
                    except StoreUnavailable:
                        await asyncio.sleep(0.5)
        async with asyncio.timeout(30):
            while not await store.does_api_key_exist(fresh.key):
                await asyncio.sleep(0.1)
        # The stream came back on its own. (Whether it also drops the rows the
        # restarted emulator lost depends on whether the emulator honours the
        # old stream's resume token; Firestore itself never loses them.)
        assert isinstance(store.view, ListenView)
        assert store.view.restarts == 1
