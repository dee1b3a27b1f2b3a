"""One set of behaviour tests, run in every sync mode: ttl, reload and listen."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keystore import (
    ApiKeyStore,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    MalformedKey,
    Settings,
    StoreUnavailable,
)
from keystore._firestore.connection import Connection
from keystore._firestore.documents import KeyCollection
from keystore.keys import new_key
from keystore.settings import SyncMode
from keystore.sync.reload import ReloadView
from keystore.sync.snapshot import SnapshotView
from tests.conftest import Emulator, Timer
from tests.console import edit as console_edit

pytestmark = pytest.mark.anyio

MODES = ["ttl", "reload", "listen"]


@pytest.fixture(params=MODES)
async def mode_store(
    request: pytest.FixtureRequest, settings: Settings, timer: Timer
) -> AsyncIterator[ApiKeyStore]:
    # Intervals far beyond a test: only catch_up() below moves reload and ttl on.
    mode_settings = settings.model_copy(
        update={
            "sync": request.param,
            "reload_interval": 3600,
            "watchdog_interval": 0.2,
            # The fake clock stands still: a read budget would never refill.
            "max_lookups_per_second": 0,
        }
    )
    async with ApiKeyStore(mode_settings, timer=timer) as store:
        await wait_for(lambda: ready(store))
        yield store


async def ready(store: ApiKeyStore) -> bool:
    return store.is_ready


async def wait_for(check: Callable[[], Awaitable[bool]], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not await check():
            await asyncio.sleep(0.05)


async def catch_up(store: ApiKeyStore, timer: Timer) -> None:
    """Let the store see what changed elsewhere, the way its mode does."""
    if store.settings.sync == "ttl":
        timer.tick(store.settings.cache_ttl + 1)
    elif isinstance(store.view, ReloadView):
        await store.view.reload()


async def outcome(store: ApiKeyStore, key: str) -> str:
    try:
        await store.verify(key)
    except (KeyNotFound, KeyDisabled, KeyExpired, MalformedKey) as exc:
        return exc.outcome
    return "valid"


async def becomes(store: ApiKeyStore, timer: Timer, key: str, expected: str) -> None:
    """The store answers ``expected`` for ``key`` once it has caught up.

    In the listen mode the answer must come by itself within 2 seconds.
    """

    async def check() -> bool:
        await catch_up(store, timer)
        return await outcome(store, key) == expected

    await wait_for(check, limit=2.0)


async def console(settings: Settings, key_id: str, **fields: Any) -> None:
    await console_edit(settings, key_id, **fields)


async def elsewhere(settings: Settings) -> ApiKeyStore:
    """Another process's store: its changes reach ``mode_store`` only by its mode."""
    return ApiKeyStore(settings.model_copy(update={"sync": "ttl"}))


async def test_key_made_here_works_at_once(mode_store: ApiKeyStore) -> None:
    made = await mode_store.create(name="n", scopes=["a"])
    assert (await mode_store.verify(made.key)).scopes == ("a",)


async def test_key_made_elsewhere_is_accepted(
    mode_store: ApiKeyStore, timer: Timer
) -> None:
    async with await elsewhere(mode_store.settings) as other:
        made = await other.create(name="n")
    await becomes(mode_store, timer, made.key, "valid")


async def test_console_edits_take_effect(mode_store: ApiKeyStore, timer: Timer) -> None:
    made = await mode_store.create(name="n", scopes=["a"])
    settings, key_id = mode_store.settings, made.record.id
    await console(settings, key_id, disabled=True)
    await becomes(mode_store, timer, made.key, "disabled")
    await console(settings, key_id, disabled=False)
    await becomes(mode_store, timer, made.key, "valid")
    await console(settings, key_id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    await becomes(mode_store, timer, made.key, "expired")
    await console(settings, key_id, expires_at=None, scopes=["b"])
    await becomes(mode_store, timer, made.key, "valid")
    assert (await mode_store.verify(made.key)).scopes == ("b",)


async def test_deleted_elsewhere_is_refused(
    mode_store: ApiKeyStore, timer: Timer
) -> None:
    made = await mode_store.create(name="n")
    async with await elsewhere(mode_store.settings) as other:
        await other.revoke(made.record.id)
    await becomes(mode_store, timer, made.key, "unknown")


async def test_broken_row_is_refused_with_a_warning(
    mode_store: ApiKeyStore, timer: Timer, caplog: pytest.LogCaptureFixture
) -> None:
    made = await mode_store.create(name="n")
    with caplog.at_level(logging.WARNING, logger="keystore"):
        await console(mode_store.settings, made.record.id, disabled="yes")
        await becomes(mode_store, timer, made.key, "unknown")
    assert f"'{made.record.id}'" in caplog.text and "'disabled'" in caplog.text


async def test_wrong_and_malformed_keys(mode_store: ApiKeyStore) -> None:
    made = await mode_store.create(name="n")
    before = mode_store.reads["check"]
    assert await outcome(mode_store, new_key("ks", made.record.id)) == "unknown"
    assert await outcome(mode_store, "garbage") == "malformed"
    for _ in range(100):
        assert await outcome(mode_store, new_key("ks")) == "unknown"
    reads = mode_store.reads["check"] - before
    # Only the ttl mode reads on demand: one read per unknown id.
    assert reads == (101 if mode_store.settings.sync == "ttl" else 0)


@pytest.mark.parametrize("sync", ["reload", "listen"])
async def test_a_view_read_before_a_change_made_here_does_not_undo_it(
    settings: Settings, sync: SyncMode
) -> None:
    # A load, or a listener's snapshot, read before this process revoked a key
    # and applied after: the revoke stands. Real read and commit times; ttl's
    # own race is in tests/test_cache.py.
    async with ApiKeyStore(settings.model_copy(update={"sync": sync})) as store:
        await wait_for(lambda: ready(store))
        made = await store.create(name="n")
        rows = KeyCollection(Connection(settings))
        before = await rows.all(cause="test")
        await rows.aclose()
        assert made.record.id in dict(before.rows)
        await store.revoke(made.record.id)
        view = store.view
        assert isinstance(view, SnapshotView)
        view.replace(before.rows, before.read_time)
        assert await outcome(store, made.key) == "unknown"
        view.change(before.rows, before.read_time)
        assert await outcome(store, made.key) == "unknown"


async def test_index_modes_are_not_ready_until_loaded(
    emulator: Emulator, settings: Settings
) -> None:
    for mode in ("reload", "listen"):
        emulator.pause()
        try:
            store = ApiKeyStore(
                settings.model_copy(
                    update={"sync": mode, "timeout": 0.5, "retry_after": 1}
                )
            )
            await store.open()
            assert not store.is_ready
            with pytest.raises(StoreUnavailable, match="not loaded"):
                await store.verify(new_key("ks"))
        finally:
            emulator.pause(False)
        await wait_for(lambda s=store: ready(s), limit=15)  # type: ignore[misc]
        assert await outcome(store, new_key("ks")) == "unknown"
        await store.aclose()


async def test_listen_reads_once_then_per_change(settings: Settings) -> None:
    async with ApiKeyStore(settings) as writer:
        for i in range(20):
            await writer.create(name=f"k{i}")
        async with ApiKeyStore(settings.model_copy(update={"sync": "listen"})) as store:
            await wait_for(lambda: ready(store))
            # One read per row, and then one per changed row.
            initial = store.reads["listen"]
            assert initial == 20
            made = await writer.create(name="one more")
            await wait_for(lambda: store.does_api_key_exist(made.key))
            for _ in range(50):
                assert await store.does_api_key_exist(made.key)
            assert store.reads == {"listen": initial + 1}


def _is_data(item: object) -> bool:
    # Containers and keystore's or cachetools' own objects; not the Firestore
    # client behind KeyCollection, nor modules and code.
    if isinstance(item, KeyCollection):
        return False
    if isinstance(item, dict | list | tuple | set | frozenset | str):
        return True
    return type(item).__module__.split(".")[0] in ("keystore", "cachetools")


def reachable(root: object) -> Iterator[object]:
    """Every data object reachable from ``root``."""
    seen, queue = {id(root)}, [root]
    while queue:
        item = queue.pop()
        yield item
        for child in gc.get_referents(item):
            if id(child) not in seen and _is_data(child):
                seen.add(id(child))
                queue.append(child)


async def test_memory_holds_no_plaintext_key(
    mode_store: ApiKeyStore, timer: Timer
) -> None:
    made = await mode_store.create(name="n")
    async with await elsewhere(mode_store.settings) as other:
        seen = await other.create(name="m")
    await becomes(mode_store, timer, seen.key, "valid")
    strings = {o for o in reachable(mode_store.view) if isinstance(o, str)}
    assert made.record.hash in strings or seen.record.hash in strings  # looked in
    assert made.key not in strings and seen.key not in strings
