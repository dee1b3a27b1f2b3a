"""Reads of rows not in memory (ttl mode): first reads gathered into one
BatchGetDocuments call, refreshes of rows in use sent at once."""

import asyncio

import pytest

from keystore import ApiKeyStore, Settings
from keystore.keys import new_key
from keystore.lookups import MAX_BATCH
from tests.conftest import Timer
from tests.interceptors import Recorder

pytestmark = pytest.mark.anyio

BATCH = "BatchGetDocuments"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The window long enough that no test here can outrun it by accident."""
    return settings.model_copy(update={"lookup_window": 0.5})


async def sent(rpc_calls: Recorder, count: int) -> bool:
    """True once ``count`` reads have gone out, within a few loop turns: far
    less than the gathering window, so nothing waited for it."""
    for _ in range(50):
        if rpc_calls.count(BATCH) >= count:
            return True
        await asyncio.sleep(0)
    return False


async def test_unknown_keys_checked_together_go_as_one_read(
    settings: Settings, rpc_calls: Recorder
) -> None:
    keys = [new_key(settings.prefix) for _ in range(20)]
    async with ApiKeyStore(settings, interceptors=rpc_calls.interceptors) as cold:
        found = await asyncio.gather(*(cold.does_api_key_exist(k) for k in keys))
        assert found == [False] * 20
        assert rpc_calls.count(BATCH) == 1
        assert cold.reads["check"] == 20  # Firestore bills each document


async def test_more_than_a_batch_go_as_several_reads(
    settings: Settings, rpc_calls: Recorder
) -> None:
    keys = [new_key(settings.prefix) for _ in range(MAX_BATCH + 1)]
    unbudgeted = settings.model_copy(update={"max_lookups_per_second": 0})
    async with ApiKeyStore(unbudgeted, interceptors=rpc_calls.interceptors) as cold:
        found = await asyncio.gather(*(cold.does_api_key_exist(k) for k in keys))
        assert not any(found)
        assert rpc_calls.count(BATCH) == 2


async def test_a_first_read_waits_for_the_next(
    settings: Settings, rpc_calls: Recorder
) -> None:
    """The lone first check is held back, so one that follows shares its call."""
    async with ApiKeyStore(settings, interceptors=rpc_calls.interceptors) as cold:
        made = await cold.create(name="n")
        first = asyncio.ensure_future(cold.does_api_key_exist(new_key(settings.prefix)))
        for _ in range(10):
            await asyncio.sleep(0)
        second = asyncio.ensure_future(cold.does_api_key_exist(made.key))
        assert [await first, await second] == [False, True]
        assert rpc_calls.count(BATCH) == 1


async def test_the_refresh_of_a_row_in_use_is_not_held_back(
    settings: Settings, timer: Timer, rpc_calls: Recorder
) -> None:
    store = ApiKeyStore(settings, timer=timer, interceptors=rpc_calls.interceptors)
    async with store:
        made = await store.create(name="n")
        assert await store.does_api_key_exist(made.key)
        before = rpc_calls.count(BATCH)
        timer.tick(settings.cache_ttl + 1)  # the row is held, but stale
        unknown = new_key(settings.prefix)
        waiting = asyncio.ensure_future(store.does_api_key_exist(unknown))
        await asyncio.sleep(0)
        refresh = asyncio.ensure_future(store.does_api_key_exist(made.key))
        # The refresh goes at once and takes the waiting first read along.
        assert await sent(rpc_calls, before + 1)
        assert [await waiting, await refresh] == [False, True]
        assert rpc_calls.count(BATCH) == before + 1


async def test_with_no_window_a_first_read_goes_at_once(
    settings: Settings, rpc_calls: Recorder
) -> None:
    at_once = settings.model_copy(update={"lookup_window": 0})
    async with ApiKeyStore(at_once, interceptors=rpc_calls.interceptors) as cold:
        await cold.does_api_key_exist(new_key(settings.prefix))  # connected
        before = rpc_calls.count(BATCH)
        unknown = new_key(settings.prefix)
        check = asyncio.ensure_future(cold.does_api_key_exist(unknown))
        assert await sent(rpc_calls, before + 1)
        assert not await check
