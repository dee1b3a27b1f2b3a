"""Every row of the collection in memory: the base of the reload and listen modes.

A check never reads Firestore here, but in one case: an id not held is
unknown. The rows are trusted for a bounded time after they were last
confirmed whole.

The case: after a stall (stall.py) the process may hold data Firestore sent
but the loop has not read yet, and requests that came meanwhile. Until a
view as of a time after the stall is applied, each row is read once from
Firestore (batched) before it answers: a deletion, ``disabled: true`` or a
new ``expires_at`` made while the process had no CPU is seen on the first
request. It costs one read per key checked in that time.
"""

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keystore._firestore.documents import KeyCollection
from keystore.background import Background
from keystore.errors import StoreUnavailable
from keystore.models import ApiKey, check_row
from keystore.sync.batch import Lookups
from keystore.sync.stall import StallWatch

logger = logging.getLogger(__name__)

#: A row as read: (key id, fields), fields None if the row is gone.
Row = tuple[str, Mapping[str, Any] | None]


class SnapshotView:
    """Every row of the collection in memory.

    The rows are trusted for ``max_age`` seconds after they were last confirmed
    whole; past that, checks fail closed with StoreUnavailable.
    """

    def __init__(
        self,
        *,
        max_age: float,
        timer: Callable[[], float],
        rows: KeyCollection,
        stalls: StallWatch,
    ) -> None:
        self._collection = rows
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
        self.misses = 0  # rows read one by one, after a stall
        self.stalls = stalls
        stalls.on_stall(self._stalled)
        # After a stall: the ids read since, and the earliest read time (ns)
        # of those reads; a view as of that time or later ends it.
        self._confirmed: set[str] | None = None
        self._confirmed_as_of: int | None = None
        self._lookups = Lookups(rows)

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
        if self._confirmed is None:
            self.stalls.check()  # a stall sets self._confirmed
        if self._confirmed is not None and key_id not in self._confirmed:
            return None  # after a stall: read it first (get)
        record = rows.get(key_id)
        if record is not None:
            self.hits += 1
        return record

    async def get(self, key_id: str) -> ApiKey | None:
        if self._rows is None:
            raise StoreUnavailable("The keys are not loaded yet.")
        if (self.age() or 0.0) > self._max_age:
            raise StoreUnavailable("The keys in memory are too old to trust.")
        if self._confirmed is not None and key_id not in self._confirmed:
            return await self._confirm(key_id)
        self.hits += 1
        return self._rows.get(key_id)

    def _stalled(self) -> None:
        """The loop was stalled: no row answers before it is confirmed."""
        self._confirmed, self._confirmed_as_of = set(), None

    async def _confirm(self, key_id: str) -> ApiKey | None:
        """Read one row after a stall; it answers from then on. If Firestore
        cannot answer, memory does, as in any outage."""
        self.misses += 1
        try:
            row, read_time = await self._lookups.get(key_id)
        except StoreUnavailable:
            assert self._rows is not None
            return self._rows.get(key_id)
        record = check_row(key_id, row)
        self.remember(key_id, record, read_time)
        if self._confirmed is not None:
            self._confirmed.add(key_id)
            if self._confirmed_as_of is None or read_time < self._confirmed_as_of:
                self._confirmed_as_of = read_time
        return record

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
            record = check_row(key_id, row)
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
            self._put(self._rows, key_id, check_row(key_id, row))
        self._overlay(self._rows, as_of)
        self.confirm()

    def confirm(self) -> None:
        """The rows are known to be current now (as of ``self._as_of``)."""
        self._synced_at = self._timer()
        since = self._confirmed_as_of
        if since is not None and self._as_of >= since:
            # A view as of a time after the stall: every row is current.
            self._confirmed = self._confirmed_as_of = None

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
