"""An owner's keys and usage: a customer's view of keystore.

An owner's keys are found by a query on the rows' ``owner`` field (its
single-field index): a read per key of that owner, never the whole
collection. A cap on an owner's live keys holds however many processes
create at once: each create, or rotation, under a cap commits with a write
to the owner's document, on the condition that the document is unchanged
since the keys were counted; of two creates counted together, one commits
and the other counts again.
"""

from collections.abc import Callable
from datetime import datetime

from keystore._firestore.documents import KeyCollection
from keystore._firestore.usage import DayDocuments
from keystore._firestore.writes import Update
from keystore.errors import TooManyKeys
from keystore.limits.document import read_doc
from keystore.limits.edits import limit_view
from keystore.models import ApiKey, BrokenRow, oldest_first, read_row
from keystore.reports import OwnerUsage, owner_usage
from keystore.settings import Settings

#: The owner document's field that each capped create or rotation stamps.
KEYS_CHANGED = "keys_changed_at"


class Owners:
    """Owners' keys, caps and usage reports."""

    def __init__(
        self,
        settings: Settings,
        rows: KeyCollection,
        days: DayDocuments,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._settings = settings
        self._rows = rows
        self._days = days
        self._clock = clock

    def path(self, owner: str) -> str:
        """The owner's document: its limits, and its caps' stamp."""
        return f"{self._settings.owners_collection}/{owner}"

    async def keys(self, owner: str) -> list[ApiKey | BrokenRow]:
        """The owner's rows, oldest first."""
        listing = await self._rows.owned(owner, cause="list")
        return oldest_first(read_row(key_id, row) for key_id, row in listing.rows)

    async def slot(self, owner: str, most: int, *, adding: int = 1) -> Update:
        """The write that lets ``adding`` more live keys of ``owner`` be
        committed beside it, if the owner would then have at most ``most``;
        TooManyKeys if not. Live: not expired (a disabled key holds its slot
        until it is revoked). The write fails (Refused) if another capped
        change of the owner's keys commits first: then call this again."""
        read = await self._rows.read(self.path(owner), cause="admin")
        now = self._clock()
        live = sum(
            1
            for row in await self.keys(owner)
            if not (isinstance(row, ApiKey) and row.is_expired(now))
        )
        if live + adding > most:
            raise TooManyKeys(owner, most)
        return Update(self.path(owner), {}, after=read, stamp=KEYS_CHANGED)

    async def usage(self, owner: str, first: str, last: str) -> OwnerUsage:
        """The owner's uses and credits from day ``first`` to ``last``
        (``YYYY-MM-DD``, inclusive), with its credits left now."""
        counts = await self._days.of_owner(owner, first, last)
        names = {
            row.id: row.name
            for row in await self.keys(owner)
            if isinstance(row, ApiKey)
        }
        report = owner_usage(owner, first, last, counts, names)
        read = await self._rows.read(self.path(owner), cause="admin")
        if read.fields is not None:
            view = limit_view(
                read_doc(owner, read.fields, kind="Owner document"), read.read_time
            )
            report.credits_left = view.credits
            report.next_refill = view.next_refill
        return report
