"""Every row of the collection in memory: the reload mode, and the base of listen.

A check never reads Firestore here: an id not held is unknown. The rows are
trusted for a bounded time after they were last confirmed whole.
"""

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keystore._firestore.documents import KeyCollection
from keystore.background import Background
from keystore.errors import InvalidRow, StoreUnavailable
from keystore.models import ApiKey, parse_row
from keystore.settings import Settings

logger = logging.getLogger(__name__)

#: A row as read: (key id, fields), fields None if the row is gone.
Row = tuple[str, Mapping[str, Any] | None]


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
        # This process's own writes, by key id: (commit time in ns, row). A view
        # of the rows read before a write's commit time (a load, a listener's
        # snapshot still on its way) would undo it; these are laid over every
        # such view, and dropped by the first view that holds them.
        self._written: dict[str, tuple[int, ApiKey | None]] = {}
        # The read time (ns) of the last view applied; an older one is ignored.
        self._as_of = 0
        self.hits = 0
        self.misses = 0  # always 0: nothing is fetched on demand

    @property
    def background(self) -> tuple[Background, ...]:
        """The tasks that keep the rows fresh (none here; see the subclasses)."""
        return ()

    @property
    def is_ready(self) -> bool:
        """True while the rows held can be trusted: loaded, and not too old."""
        age = self.age()
        return self._rows is not None and age is not None and age <= self._max_age

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

    def remember(self, key_id: str, record: ApiKey | None, at: int) -> None:
        if at <= self._as_of:
            return  # a view applied already holds this write, or a later one
        earlier = self._written.get(key_id)
        if earlier is not None and earlier[0] >= at:
            return  # two writes here finished out of order: keep the later one
        self._written[key_id] = (at, record)
        if self._rows is not None:
            self._put(self._rows, key_id, record)

    def replace(self, rows: Iterable[Row], as_of: int) -> None:
        """Swap in a whole new set of rows at once, as they stood at ``as_of`` (ns)."""
        if as_of < self._as_of:
            return  # older than what is held (two loads that overlapped, say)
        self._as_of = as_of
        fresh: dict[str, ApiKey] = {}
        for key_id, row in rows:
            record = read_row(key_id, row)
            if record is not None:
                fresh[key_id] = record
        self._overlay(fresh, as_of)
        self._rows = fresh  # one assignment: checks see the old set or the new
        self.confirm()

    def change(self, rows: Iterable[Row], as_of: int) -> None:
        """Apply changed rows (None: deleted), as they stood at ``as_of`` (ns)."""
        assert self._rows is not None
        if as_of < self._as_of:
            return  # older than what is held
        self._as_of = as_of
        for key_id, row in rows:
            self._put(self._rows, key_id, read_row(key_id, row))
        self._overlay(self._rows, as_of)
        self.confirm()

    def confirm(self) -> None:
        """The rows are known to be current now."""
        self._synced_at = self._timer()

    def _overlay(self, rows: dict[str, ApiKey], as_of: int) -> None:
        """Lay this process's writes made after ``as_of`` over ``rows``."""
        for key_id, (at, record) in list(self._written.items()):
            if at <= as_of:
                del self._written[key_id]  # the view holds it (or something newer)
            else:
                self._put(rows, key_id, record)

    @staticmethod
    def _put(rows: dict[str, ApiKey], key_id: str, record: ApiKey | None) -> None:
        if record is None:
            rows.pop(key_id, None)
        else:
            rows[key_id] = record


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
        self._task = Background(self._reload_forever, name="key reload")

    @property
    def background(self) -> tuple[Background, ...]:
        return (self._task,)

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def reload(self) -> None:
        """Load every row now and swap them in."""
        listing = await self._collection.all(
            cause="reload", timeout=self._settings.load_timeout
        )
        self.replace(listing.rows, listing.read_time)
        logger.debug("Loaded %d keys.", len(self))

    async def _reload_forever(self) -> None:
        while True:
            try:
                await self.reload()
                delay = self._settings.reload_interval
            except StoreUnavailable:
                # An outage: keep the last load; try again soon, not a whole
                # interval later. Anything else is for the supervisor.
                delay = min(self._settings.retry_after, self._settings.reload_interval)
            await asyncio.sleep(delay)
