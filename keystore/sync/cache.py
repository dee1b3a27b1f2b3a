"""Key rows in memory: a TTL per row, stale-if-error, and one fetch per id at a time.

Rows are cached by key id, never by key, so no plaintext key is held in memory.
Rows that exist and ids that have none are kept apart, each bounded, so that a
flood of unknown ids cannot evict the keys in use.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cachetools import FIFOCache, TTLCache

from keystore.errors import StoreUnavailable
from keystore.models import ApiKey

Loader = Callable[[str], Awaitable[ApiKey | None]]


@dataclass(frozen=True, slots=True)
class _Entry:
    record: ApiKey
    fetched_at: float


class KeyCache:
    """Rows by key id. A revoked key is seen within one ``ttl`` of its revocation.

    While the loader raises StoreUnavailable, a row fetched less than
    ``ttl + stale_ttl`` ago is still served (stale-if-error); while
    ``stale_first()`` says the loader is failing, such a row is served at once
    and refreshed in the background.
    """

    def __init__(
        self,
        *,
        ttl: float,
        stale_ttl: float,
        maxsize: int,
        timer: Callable[[], float] = time.monotonic,
        stale_first: Callable[[], bool] = lambda: False,
    ) -> None:
        self._ttl = ttl
        self._timer = timer
        self._stale_first = stale_first
        self._stale_ttl = stale_ttl
        # Rows kept in fetch order, the oldest evicted first when full. Each
        # entry carries its own fetch time, which decides fresh, stale or gone:
        # a TTLCache here would check the time a second time, in Python, on
        # every check (about 0.4 µs of a 1.5 µs check).
        self._known: FIFOCache[str, _Entry] = FIFOCache(maxsize)
        self._unknown: TTLCache[str, bool] = TTLCache(maxsize, ttl, timer)
        self._inflight: dict[str, asyncio.Future[ApiKey | None]] = {}
        #: Checks answered from memory, and checks that had to ask the loader.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """Rows held, fresh or not: a row past ``ttl + stale_ttl`` is never
        served, and goes when the cache is full (oldest fetch first)."""
        return len(self._known)

    def peek(self, key_id: str) -> ApiKey | None:
        """The row for ``key_id`` if memory holds it fresh; None otherwise (no I/O)."""
        # Indexing, not .get(): .get costs twice as much, and this runs on
        # every check.
        try:
            entry = self._known[key_id]
        except KeyError:
            return None
        if self._timer() - entry.fetched_at < self._ttl:
            self.hits += 1
            return entry.record
        return None

    def holds(self, key_id: str) -> bool:
        """True if memory holds a row for ``key_id``, fresh or not."""
        return key_id in self._known

    async def get(self, key_id: str, load: Loader) -> ApiKey | None:
        """The row for ``key_id``, from memory when fresh, else from ``load``."""
        record = self.peek(key_id)
        if record is not None:
            return record
        entry = self._known.get(key_id)
        if entry is not None and self._timer() - entry.fetched_at >= (
            self._ttl + self._stale_ttl
        ):
            entry = None  # too old even to stand in for a failing read
        if entry is None and key_id in self._unknown:
            self.hits += 1
            return None
        self.misses += 1
        if entry is not None and self._stale_first():
            # The loader is failing: answer from memory now and let the refresh
            # run on its own, instead of making this request wait for it.
            self._fetch_once(key_id, load)
            return entry.record
        try:
            return await asyncio.shield(self._fetch_once(key_id, load))
        except StoreUnavailable:
            if entry is None:
                raise
            return entry.record

    def invalidate(self, key_id: str) -> None:
        """Forget ``key_id`` so the next check asks the loader.

        A load under way may have read the row before the change that calls
        for this: its answer goes to those waiting for it, but is not kept.
        """
        self._known.pop(key_id, None)
        self._unknown.pop(key_id, None)
        self._inflight.pop(key_id, None)

    def clear(self) -> None:
        """Forget everything."""
        self._known.clear()
        self._unknown.clear()

    def _fetch_once(self, key_id: str, load: Loader) -> "asyncio.Future[ApiKey | None]":
        # Concurrent callers share one task; it runs to the end even if the caller
        # that started it is cancelled, so the others still get the answer.
        future = self._inflight.get(key_id)
        if future is None:
            future = asyncio.ensure_future(self._fetch(key_id, load))
            self._inflight[key_id] = future
            future.add_done_callback(lambda done: self._settle(key_id, done))
        return future

    def _settle(self, key_id: str, done: "asyncio.Future[ApiKey | None]") -> None:
        if self._inflight.get(key_id) is done:
            del self._inflight[key_id]
        if not done.cancelled():
            done.exception()  # retrieved, so asyncio does not log it as lost

    async def _fetch(self, key_id: str, load: Loader) -> ApiKey | None:
        record = await load(key_id)
        if self._inflight.get(key_id) is not asyncio.current_task():
            return record  # invalidated meanwhile: maybe read before the change
        if record is None:
            self._known.pop(key_id, None)
            self._unknown[key_id] = True
        else:
            self._unknown.pop(key_id, None)
            self._known[key_id] = _Entry(record, self._timer())
        return record
