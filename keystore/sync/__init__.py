"""How the rows in memory stay fresh: the sync modes (``KEYSTORE_SYNC``).

- ``ttl`` (ttl.py): a row is read on first use and trusted for ``cache_ttl``
  seconds (cache.py); first reads go out together (batch.py).
- ``reload`` (reload.py): the whole collection is loaded at start and every
  ``reload_interval`` seconds; an id not in the last load is unknown, no read.
- ``listen`` (listen.py): a Firestore listener keeps every row current.

``reload`` and ``listen`` hold every row (snapshot.py). A process that got no
CPU for a while (a Cloud Run instance throttled between requests, a stopped
one) answers nothing from them that Firestore may have changed meanwhile
(stall.py). Each mode gives the store the same answers for the same rows.
"""

from collections.abc import Awaitable, Callable
from typing import Protocol

from keystore._firestore.documents import KeyCollection
from keystore.background import Background
from keystore.models import ApiKey
from keystore.settings import Settings
from keystore.sync.stall import StallWatch


class KeyView(Protocol):
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

    @property
    def stalls(self) -> StallWatch:
        """What the event loop's own ticks tell of the CPU it gets."""


#: What an instance without CPU between requests means for each mode.
ADVICE = {
    "ttl": "The ttl mode keeps its bound (a row is read again once its TTL has "
    "passed); leases and usage counts wait for the next request.",
    "reload": "The reload mode loads every row again at once after such a pause, "
    "and reads each key's row before it answers until then; give it CPU between "
    "requests (Cloud Run: --no-cpu-throttling) to keep loads off requests.",
    "listen": "The listen mode reads each key's row before it answers after such "
    "a pause, until the listener has caught up (one read per key); give it CPU "
    "between requests (Cloud Run: --no-cpu-throttling).",
}


def make_view(
    settings: Settings, rows: KeyCollection, timer: Callable[[], float]
) -> KeyView:
    """The view of the rows for ``settings.sync``."""
    # Imported here: each mode's module imports this one for KeyView.
    from keystore.sync.listen import ListenView
    from keystore.sync.reload import ReloadView
    from keystore.sync.ttl import TtlView

    stalls = StallWatch(advice=ADVICE[settings.sync])
    if settings.sync == "reload":
        return ReloadView(settings, rows, timer, stalls)
    if settings.sync == "listen":
        return ListenView(settings, rows, timer, stalls)
    return TtlView(settings, rows, timer, stalls)


__all__ = ["KeyView", "make_view"]
