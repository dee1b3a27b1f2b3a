"""The ttl mode: a row is read on first use and trusted for ``cache_ttl`` seconds.

The cache (cache.py) keeps rows and ids without a row; first reads go out
together (batch.py); a read budget keeps a flood of unknown keys from taking
the CPU the keys in memory need. Ages are measured on the monotonic clock, so
a row held across a stall is past its TTL when the process runs again.
"""

import logging
from collections.abc import Awaitable, Callable

from keystore._firestore.documents import KeyCollection
from keystore.background import Background
from keystore.errors import StoreBusy
from keystore.models import ApiKey, check_row
from keystore.settings import Settings
from keystore.sync.batch import Lookups
from keystore.sync.cache import KeyCache
from keystore.sync.stall import StallWatch

logger = logging.getLogger(__name__)


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


class TtlView:
    """Rows read on first use, cached for ``cache_ttl`` seconds."""

    is_ready = True

    def __init__(
        self,
        settings: Settings,
        rows: KeyCollection,
        timer: Callable[[], float],
        stalls: StallWatch,
    ) -> None:
        self._rows = rows
        self.stalls = stalls
        self._cache = KeyCache(
            ttl=settings.cache_ttl,
            stale_ttl=settings.stale_if_error,
            maxsize=settings.cache_size,
            timer=timer,
            stale_first=lambda: rows.connection.is_degraded,
        )
        self._budget = ReadBudget(settings.max_lookups_per_second, timer)
        self._lookups = Lookups(rows)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    @property
    def background(self) -> tuple[Background, ...]:
        return (self.stalls.task,)

    def age(self) -> float | None:
        return None

    def __len__(self) -> int:
        return len(self._cache)

    async def start(self) -> None:
        self.stalls.start()  # for /readyz: the CPU this process gets

    async def stop(self) -> None:
        await self.stalls.stop()

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
        row, _ = await self._lookups.get(key_id, known=self._cache.holds(key_id))
        return check_row(key_id, row)
