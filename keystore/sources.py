"""Where a check finds a key's row: how the rows in memory stay fresh.

Three ways, chosen by ``KEYSTORE_SYNC``:

* ``ttl``: a row is read on first use and trusted for ``cache_ttl`` seconds.
* ``reload``: the whole collection is loaded at start and every
  ``reload_interval`` seconds; an id not in the last load is unknown (no read).
* ``listen``: a Firestore listener keeps the rows current (``listener.py``).

Each gives the store the same answers for the same rows.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from keystore._firestore.documents import KeyCollection
from keystore.background import Background
from keystore.cache import KeyCache
from keystore.errors import StoreBusy
from keystore.index import ReloadSource, read_row
from keystore.listener import ListenSource
from keystore.lookups import Lookups
from keystore.models import ApiKey
from keystore.settings import Settings

logger = logging.getLogger(__name__)


class KeySource(Protocol):
    """What the store asks for a key's row."""

    @property
    def hits(self) -> int:
        """Checks answered from memory."""

    @property
    def misses(self) -> int:
        """Checks that read Firestore."""

    @property
    def is_ready(self) -> bool:
        """True once checks can be answered."""

    @property
    def background(self) -> tuple[Background, ...]:
        """The tasks that keep the rows fresh."""

    def age(self) -> float | None:
        """Seconds since the rows in memory were last confirmed whole, if kept whole."""

    def __len__(self) -> int:
        """Rows held in memory."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def peek(self, key_id: str) -> ApiKey | None:
        """The row for ``key_id`` if memory holds it and it can be trusted now;
        None when only ``get`` can tell. No I/O: the check's fast path."""

    def get(self, key_id: str) -> Awaitable[ApiKey | None]:
        """The row for ``key_id``, or None if there is none (or it is unreadable)."""

    def remember(self, key_id: str, record: ApiKey | None, at: int) -> None:
        """This process changed a row, committed at ``at`` (ns): answer from
        the change at once, and keep any view read before it from undoing it."""


class ReadBudget:
    """At most ``rate`` lookups a second on average, ``burst`` at once (a token bucket).

    Each lookup of a key not in memory costs about a millisecond of CPU in the
    Firestore client; a flood of unknown keys must not take the CPU that the
    keys in memory need. Lookups over the budget are refused, not queued.
    """

    def __init__(self, rate: float, timer: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = max(1.0, rate / 2)
        self._tokens = self._burst
        self._timer = timer
        self._updated = timer()

    def take(self) -> bool:
        if not self._rate:
            return True
        now = self._timer()
        self._tokens = min(
            self._burst, self._tokens + (now - self._updated) * self._rate
        )
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class TtlSource:
    """Rows read on first use, cached for ``cache_ttl`` seconds."""

    is_ready = True

    def __init__(
        self, settings: Settings, rows: KeyCollection, timer: Callable[[], float]
    ) -> None:
        self._rows = rows
        self._cache = KeyCache(
            ttl=settings.cache_ttl,
            stale_ttl=settings.stale_if_error,
            maxsize=settings.cache_size,
            timer=timer,
            stale_first=lambda: rows.connection.is_degraded,
        )
        self._budget = ReadBudget(settings.max_lookups_per_second, timer)
        self._lookups = Lookups(rows, settings.lookup_window)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    @property
    def background(self) -> tuple[Background, ...]:
        return ()

    def age(self) -> float | None:
        return None

    def __len__(self) -> int:
        return len(self._cache)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def peek(self, key_id: str) -> ApiKey | None:
        return self._cache.peek(key_id)

    def get(self, key_id: str) -> Awaitable[ApiKey | None]:
        # The cache's own coroutine, not one wrapped around it: one frame less
        # on every check.
        return self._cache.get(key_id, self._load)

    def remember(self, key_id: str, record: ApiKey | None, at: int) -> None:
        # Read again on next use; a read under way now is not cached (cache.py).
        self._cache.invalidate(key_id)

    def clear(self) -> None:
        """Forget every row (tests use this to force a read)."""
        self._cache.clear()

    async def _load(self, key_id: str) -> ApiKey | None:
        if not self._budget.take():
            # Not an outage: Firestore is not asked, so nothing trips.
            raise StoreBusy("Too many keys to look up at once; retry shortly.")
        logger.debug("Cache miss for key %s.", key_id)
        known = self._cache.holds(key_id)
        return read_row(key_id, await self._lookups.get(key_id, known=known))


def make_source(
    settings: Settings, rows: KeyCollection, timer: Callable[[], float]
) -> KeySource:
    """Where checks find rows, for ``settings.sync``."""
    if settings.sync == "reload":
        return ReloadSource(settings, rows, timer)
    if settings.sync == "listen":
        return ListenSource(settings, rows, timer)
    return TtlSource(settings, rows, timer)
