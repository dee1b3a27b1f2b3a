"""KeyCache on its own, with a loader function of the test's and a fake clock."""

import asyncio

import pytest

from keystore.errors import StoreUnavailable
from keystore.models import ApiKey
from keystore.sync.cache import KeyCache
from tests.conftest import Timer

pytestmark = pytest.mark.anyio

RECORD = ApiKey(id="k1", name="one")


class Loader:
    """Answers from a dict, counts calls, can be made to fail or to wait."""

    def __init__(self, rows: dict[str, ApiKey]) -> None:
        self.rows = rows
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, key_id: str) -> ApiKey | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise StoreUnavailable("down")
        return self.rows.get(key_id)


def make(timer: Timer, maxsize: int = 100, stale: float = 300) -> KeyCache:
    return KeyCache(ttl=60, stale_ttl=stale, maxsize=maxsize, timer=timer)


async def test_row_is_loaded_once_per_ttl(timer: Timer) -> None:
    cache, load = make(timer), Loader({"k1": RECORD})
    assert await cache.get("k1", load) == RECORD
    timer.tick(59)
    assert await cache.get("k1", load) == RECORD
    assert load.calls == 1
    timer.tick(2)
    assert await cache.get("k1", load) == RECORD
    assert load.calls == 2


async def test_misses_are_cached_too(timer: Timer) -> None:
    cache, load = make(timer), Loader({})
    for _ in range(5):
        assert await cache.get("nope", load) is None
    assert load.calls == 1
    timer.tick(61)
    assert await cache.get("nope", load) is None
    assert load.calls == 2


async def test_deleted_row_is_gone_after_ttl(timer: Timer) -> None:
    cache, load = make(timer), Loader({"k1": RECORD})
    await cache.get("k1", load)
    del load.rows["k1"]
    assert await cache.get("k1", load) == RECORD
    timer.tick(61)
    assert await cache.get("k1", load) is None


async def test_concurrent_misses_share_one_load(timer: Timer) -> None:
    cache, load = make(timer), Loader({"k1": RECORD})
    load.gate = asyncio.Event()
    tasks = [asyncio.create_task(cache.get("k1", load)) for _ in range(200)]
    await asyncio.sleep(0)
    load.gate.set()
    assert await asyncio.gather(*tasks) == [RECORD] * 200
    assert load.calls == 1


async def test_a_cancelled_first_caller_does_not_cancel_the_load(timer: Timer) -> None:
    cache, load = make(timer), Loader({"k1": RECORD})
    load.gate = asyncio.Event()
    first = asyncio.create_task(cache.get("k1", load))
    second = asyncio.create_task(cache.get("k1", load))
    await asyncio.sleep(0)
    first.cancel()
    load.gate.set()
    assert await second == RECORD
    assert load.calls == 1


async def test_stale_row_is_served_while_the_loader_fails(timer: Timer) -> None:
    cache, load = make(timer, stale=300), Loader({"k1": RECORD})
    await cache.get("k1", load)
    load.failing = True
    timer.tick(200)
    assert await cache.get("k1", load) == RECORD
    timer.tick(200)  # past ttl + stale: nothing left to serve
    with pytest.raises(StoreUnavailable):
        await cache.get("k1", load)


async def test_unknown_key_fails_while_the_loader_fails(timer: Timer) -> None:
    cache, load = make(timer), Loader({})
    load.failing = True
    with pytest.raises(StoreUnavailable):
        await cache.get("k1", load)


async def test_unknown_ids_do_not_evict_known_rows(timer: Timer) -> None:
    cache, load = make(timer, maxsize=10), Loader({"k1": RECORD})
    await cache.get("k1", load)
    for i in range(1000):
        await cache.get(f"random{i}", load)
    calls = load.calls
    assert await cache.get("k1", load) == RECORD
    assert load.calls == calls


async def test_known_rows_are_bounded_oldest_fetch_first(timer: Timer) -> None:
    rows = {f"k{i}": ApiKey(id=f"k{i}", name="n") for i in range(4)}
    cache, load = make(timer, maxsize=3), Loader(rows)
    for key_id in ("k0", "k1", "k2"):
        await cache.get(key_id, load)
    cache.invalidate("k0")
    await cache.get("k0", load)  # fetched again: now the newest
    await cache.get("k3", load)  # full: k1, the oldest fetch, goes
    assert len(cache) == 3
    assert [cache.peek(f"k{i}") is not None for i in range(4)] == [
        True,
        False,
        True,
        True,
    ]


async def test_a_load_under_way_when_invalidated_is_not_kept(timer: Timer) -> None:
    cache, load = make(timer), Loader({"k1": RECORD})
    load.gate = asyncio.Event()
    first = asyncio.ensure_future(cache.get("k1", load))
    while load.calls == 0:
        await asyncio.sleep(0)  # until the row is being read
    cache.invalidate("k1")  # this process revoked the key meanwhile
    load.gate.set()
    assert await first == RECORD  # who asked before the change gets what was read
    load.rows = {}
    assert await cache.get("k1", load) is None  # but it was not kept
    assert load.calls == 2


async def test_invalidate_forces_a_load(timer: Timer) -> None:
    cache, load = make(timer), Loader({"k1": RECORD})
    await cache.get("k1", load)
    cache.invalidate("k1")
    await cache.get("k1", load)
    assert load.calls == 2
    cache.clear()
    await cache.get("k1", load)
    assert load.calls == 3


async def test_stale_row_is_served_at_once_while_the_loader_is_failing(
    timer: Timer,
) -> None:
    degraded = [False]
    cache = KeyCache(
        ttl=60, stale_ttl=300, maxsize=10, timer=timer, stale_first=lambda: degraded[0]
    )
    load = Loader({"k1": RECORD})
    await cache.get("k1", load)
    load.gate = asyncio.Event()  # the next load hangs until released
    degraded[0] = True
    timer.tick(61)
    assert await cache.get("k1", load) == RECORD  # did not wait for the load
    await asyncio.sleep(0)
    assert load.calls == 2
    load.gate.set()
    await asyncio.sleep(0)


def test_read_budget(timer: Timer) -> None:
    from keystore.sync.ttl import ReadBudget

    budget = ReadBudget(10, timer)  # bursts of 5
    assert [budget.take() for _ in range(6)] == [True] * 5 + [False]
    timer.tick(0.1)  # one more token
    assert [budget.take(), budget.take()] == [True, False]
    assert all(ReadBudget(0, timer).take() for _ in range(1000))  # 0: no limit
