"""Every row of the collection in memory: the reload mode, and the base of listen.

A check never reads Firestore here: an id not held is unknown. The rows are
trusted for a bounded time after they were last confirmed whole.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keystore.background import Background
from keystore.collection import KeyCollection
from keystore.errors import InvalidRow, StoreUnavailable
from keystore.models import ApiKey, parse_row
from keystore.settings import Settings

logger = logging.getLogger(__name__)


def read_row(key_id: str, row: Mapping[str, Any] | None) -> ApiKey | None:
    """The row as an ApiKey; None (refused, with one warning) if it is unreadable."""
    if row is None:
        return None
    try:
        return parse_row(key_id, row)
    except InvalidRow as exc:
        logger.warning("%s The key is refused until the row is fixed.", exc)
        return None


class IndexSource:
    """Every row of the collection in memory; a check never reads Firestore.

    The rows are trusted for ``max_age`` seconds after they were last confirmed
    whole; past that, checks fail closed with StoreUnavailable.
    """

    def __init__(self, *, max_age: float, timer: Callable[[], float]) -> None:
        self._rows: dict[str, ApiKey] | None = None
        self._max_age = max_age
        self._timer = timer
        self._synced_at: float | None = None
        self.hits = 0
        self.misses = 0  # always 0: nothing is fetched on demand

    @property
    def is_ready(self) -> bool:
        return self._rows is not None

    def age(self) -> float | None:
        return None if self._synced_at is None else self._timer() - self._synced_at

    def __len__(self) -> int:
        return len(self._rows or ())

    def peek(self, key_id: str) -> ApiKey | None:
        rows, synced_at = self._rows, self._synced_at
        if rows is None or synced_at is None:
            return None
        if self._timer() - synced_at > self._max_age:
            return None
        record = rows.get(key_id)
        if record is not None:
            self.hits += 1
        return record

    async def get(self, key_id: str) -> ApiKey | None:
        if self._rows is None:
            raise StoreUnavailable("The keys are not loaded yet.")
        if (self.age() or 0.0) > self._max_age:
            raise StoreUnavailable("The keys in memory are too old to trust.")
        self.hits += 1
        return self._rows.get(key_id)

    def remember(self, key_id: str, record: ApiKey | None) -> None:
        if self._rows is not None:
            self._put(key_id, record)

    def replace(self, rows: Iterable[tuple[str, Mapping[str, Any] | None]]) -> None:
        """Swap in a whole new set of rows at once."""
        fresh: dict[str, ApiKey] = {}
        for key_id, row in rows:
            record = read_row(key_id, row)
            if record is not None:
                fresh[key_id] = record
        self._rows = fresh  # one assignment: checks see the old set or the new
        self.confirm()

    def change(self, rows: Iterable[tuple[str, Mapping[str, Any] | None]]) -> None:
        """Apply changed rows (None: deleted)."""
        for key_id, row in rows:
            self._put(key_id, read_row(key_id, row))
        self.confirm()

    def confirm(self) -> None:
        """The rows are known to be current now."""
        self._synced_at = self._timer()

    def _put(self, key_id: str, record: ApiKey | None) -> None:
        assert self._rows is not None
        if record is None:
            self._rows.pop(key_id, None)
        else:
            self._rows[key_id] = record


class ReloadSource(IndexSource):
    """The whole collection, loaded at start and every ``reload_interval`` seconds.

    A key made elsewhere is unknown here until the next load, like a revoked
    key is known until then: both take effect within one interval. Unknown ids
    cost no read, so random keys cost nothing.
    """

    def __init__(
        self, settings: Settings, rows: KeyCollection, timer: Callable[[], float]
    ) -> None:
        super().__init__(
            max_age=settings.reload_interval + settings.stale_if_error, timer=timer
        )
        self._settings = settings
        self._collection = rows
        self._task = Background(self._reload_forever)

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def reload(self) -> None:
        """Load every row now and swap them in."""
        rows = await self._collection.all(
            cause="reload", timeout=self._settings.load_timeout
        )
        self.replace(rows)
        logger.debug("Loaded %d keys.", len(self))

    async def _reload_forever(self) -> None:
        while True:
            try:
                await self.reload()
                delay = self._settings.reload_interval
            except StoreUnavailable:
                # Keep the last load; try again soon, not a whole interval later.
                delay = min(self._settings.retry_after, self._settings.reload_interval)
            await asyncio.sleep(delay)
