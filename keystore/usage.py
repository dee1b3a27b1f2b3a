"""Usage counts gathered in memory, off the request path, and flushed in batches.

A request let through adds one to a dict entry, and the credits it was
charged to another; a background task writes the sums to Firestore as atomic
increments, at most once per key and day per flush interval, and once more on
shutdown (a flush under way then finishes, and the last one is sent even
during the pause after a failure). A crash loses at most one interval of
counts. Uses of a key revoked before they were written still reach its day
document (``_firestore/usage.py``): they are billed, and no row comes back.
A write that failed, or was cancelled, is kept and sent again as it
was, under the same marker (commits.py), so a write that landed though its
answer was lost is not counted twice; new uses go into a write of their own.
Each write costs three document writes: the row, the day document and the
marker (two once the row is gone).
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from keystore._firestore.commits import new_write_id
from keystore._firestore.usage import DayDocuments
from keystore.errors import KeyNotFound, StoreUnavailable

logger = logging.getLogger(__name__)

_DAY_SECONDS = 86_400


def day_name(day_number: int) -> str:
    """Days since the epoch as ``YYYY-MM-DD`` (UTC): the id of a day document."""
    return datetime.fromtimestamp(day_number * _DAY_SECONDS, UTC).strftime("%Y-%m-%d")


class UsageCounter:
    """Uses per (key id, UTC day), waiting to be written."""

    def __init__(
        self,
        days: DayDocuments,
        *,
        max_pending: int = 100_000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._days = days
        # Today's counts by key id, in plain dicts (this runs per request);
        # earlier days', by (key id, day), once a day has ended.
        self._day = -1
        self._day_ends = 0.0
        self._today: dict[str, int] = {}
        self._today_credits: dict[str, int] = {}
        # Each counted key's owner, as its row said at its last use: its day
        # documents carry it, for reports by owner.
        self._owners: dict[str, str | None] = {}
        self._pending: Counter[tuple[str, int]] = Counter()
        self._credits: Counter[tuple[str, int]] = Counter()
        # Writes that failed, by write id: sent again as they were.
        self._unsent: dict[str, tuple[str, int, int, int, str | None]] = {}
        self._max_pending = max_pending
        self._wall_clock = wall_clock
        self._flushing = asyncio.Lock()
        # Enough parallel writes to flush thousands of keys in seconds, few enough
        # not to crowd out the request path's reads.
        self._slots = asyncio.Semaphore(16)
        #: Set when the pending counts reach their bound, so the flusher runs early.
        self.full = asyncio.Event()

    def __len__(self) -> int:
        """Key-days of counts not yet written (a key counted today and before
        the last flush may count twice)."""
        pending = len(self._pending.keys() | self._credits.keys())
        return (
            len(self._today.keys() | self._today_credits.keys())
            + pending
            + len(self._unsent)
        )

    def add(self, key_id: str, credits: int = 0, owner: str | None = None) -> None:
        """Count one use of ``key_id`` (of ``owner``) now, charged ``credits``;
        no I/O."""
        if self._wall_clock() >= self._day_ends:
            self._roll()
        self._owners[key_id] = owner
        today = self._today
        today[key_id] = today.get(key_id, 0) + 1
        if credits:
            self._today_credits[key_id] = self._today_credits.get(key_id, 0) + credits
        if len(today) >= self._max_pending:
            self.full.set()

    def _roll(self) -> None:
        """Move today's counts to the batch of (key, day) counts; a new day
        starts counting if the clock says so."""
        for key_id, count in self._today.items():
            self._pending[key_id, self._day] += count
        for key_id, credits in self._today_credits.items():
            self._credits[key_id, self._day] += credits
        self._today, self._today_credits = {}, {}
        day = int(self._wall_clock()) // _DAY_SECONDS
        self._day, self._day_ends = day, (day + 1) * _DAY_SECONDS

    async def flush(self, *, insist: bool = False) -> int:
        """Write what is pending; return the number of uses written.
        ``insist``: send even during the pause after a failure (at shutdown)."""
        async with self._flushing:
            self._roll()  # today's counts join the batch
            batch, self._pending = self._pending, Counter()
            credits, self._credits = self._credits, Counter()
            self.full.clear()
            owners, self._owners = self._owners, {}
            for key_day in batch.keys() | credits.keys():
                self._unsent[new_write_id()] = (
                    *key_day,
                    batch[key_day],
                    credits[key_day],
                    owners.get(key_day[0]),
                )
            # Each write stays in _unsent until it is known written (or its
            # row gone), whatever ends the flush: an error, or a cancel.
            writes = dict(self._unsent)
            results = await asyncio.gather(
                *(
                    self._write(write_id, *write, insist=insist)
                    for write_id, write in writes.items()
                )
            )
            return sum(results)

    async def _write(
        self,
        write_id: str,
        key_id: str,
        day: int,
        count: int,
        credits: int,
        owner: str | None,
        *,
        insist: bool,
    ) -> int:
        try:
            async with self._slots:
                await self._days.add(
                    key_id,
                    day_name(day),
                    count,
                    credits,
                    owner=owner,
                    write_id=write_id,
                    insist=insist,
                )
        except KeyNotFound:
            self._unsent.pop(write_id, None)
            return 0  # an id no row can have: nothing to write
        except StoreUnavailable:
            return 0  # kept, sent again as it is
        self._unsent.pop(write_id, None)
        return count
