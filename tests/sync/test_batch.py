"""Reads of rows not in memory (ttl mode), batched with no timer: a read goes
at once when none is under way; those asked for while one is go together when
it ends; the refresh of a row in use goes at once."""

import asyncio

import pytest

from keystore import ApiKeyStore, Settings
from keystore.keys import new_key
from keystore.sync.batch import MAX_BATCH
from tests.conftest import Timer
from tests.interceptors import HoldStream, Recorder

pytestmark = pytest.mark.anyio

BATCH = "BatchGetDocuments"


async def sent(rpc_calls: Recorder, count: int) -> bool:
    """True once ``count`` reads have gone out, within a few loop turns."""
    for _ in range(50):
        if rpc_calls.count(BATCH) >= count:
            return True
        await asyncio.sleep(0)
    return False


async def test_a_lone_first_read_goes_at_once(
    settings: Settings, rpc_calls: Recorder
) -> None:
    async with ApiKeyStore(settings, interceptors=rpc_calls.interceptors) as cold:
        await cold.does_api_key_exist(new_key(settings.prefix))  # connected
        before = rpc_calls.count(BATCH)
        check = asyncio.ensure_future(cold.does_api_key_exist(new_key(settings.prefix)))
        assert await sent(rpc_calls, before + 1)
        assert not await check


async def test_reads_asked_for_during_one_go_together_after_it(
    settings: Settings, rpc_calls: Recorder
) -> None:
    keys = [new_key(settings.prefix) for _ in range(20)]
    async with ApiKeyStore(settings, interceptors=rpc_calls.interceptors) as cold:
        found = await asyncio.gather(*(cold.does_api_key_exist(k) for k in keys))
        assert found == [False] * 20
        assert rpc_calls.count(BATCH) == 2  # the first, then the 19 together
        assert cold.reads["check"] == 20  # Firestore bills each document


async def test_more_than_a_batch_go_as_several_reads(
    settings: Settings, rpc_calls: Recorder
) -> None:
    keys = [new_key(settings.prefix) for _ in range(MAX_BATCH + 2)]
    unbudgeted = settings.model_copy(update={"max_lookups_per_second": 0})
    async with ApiKeyStore(unbudgeted, interceptors=rpc_calls.interceptors) as cold:
        found = await asyncio.gather(*(cold.does_api_key_exist(k) for k in keys))
        assert not any(found)
        assert rpc_calls.count(BATCH) == 3  # 1, then 100, then the last one


async def test_the_refresh_of_a_row_in_use_is_not_held_back(
    settings: Settings, timer: Timer, rpc_calls: Recorder
) -> None:
    hold = HoldStream(delay=0.5)
    store = ApiKeyStore(
        settings, timer=timer, interceptors=[*rpc_calls.interceptors, hold]
    )
    async with store:
        made = await store.create(name="n")
        assert await store.does_api_key_exist(made.key)
        before = rpc_calls.count(BATCH)
        timer.tick(settings.cache_ttl + 1)  # the row is held, but stale
        hold.armed = True
        unknown = asyncio.ensure_future(
            store.does_api_key_exist(new_key(settings.prefix))
        )
        await hold.started.wait()  # a first read under way, held up
        refresh = asyncio.ensure_future(store.does_api_key_exist(made.key))
        # The refresh does not wait for it: it goes at once.
        assert await sent(rpc_calls, before + 2)
        assert [await unknown, await refresh] == [False, True]
