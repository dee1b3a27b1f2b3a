"""The listen mode: a Firestore real-time listener keeps every row in memory.

The async client has no listener, so the sync client's ``on_snapshot`` runs in
its own thread and hands each batch of changes to the event loop with
``call_soon_threadsafe``; the rows are only ever changed on the loop.

Listeners are known to stop delivering without an error, so a watchdog restarts
one that is no longer active, and a full resync (a new listener, whose first
snapshot replaces every row) runs every ``resync_interval`` seconds.

The collection is watched as eight queries over ranges of key ids, not one:
the Python client sorts a query's whole result on every change (and the
emulator resends it whole), so a change in a 10,000-key collection took about
two seconds to arrive through one listener; through eight it takes a fraction.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from keystore.background import Background
from keystore.collection import KeyCollection
from keystore.index import IndexSource
from keystore.settings import Settings

logger = logging.getLogger(__name__)

Change = tuple[str, dict[str, Any] | None]

#: Where each listened range of key ids starts; together they cover every id.
#: Key ids are base62, so these split them into eight near-equal parts.
SHARD_STARTS = ("", "8", "G", "O", "W", "e", "m", "u")


def _shard_query(collection: Any, index: int) -> Any:
    query = collection
    document_id = FieldPath.document_id()
    if SHARD_STARTS[index]:
        start = collection.document(SHARD_STARTS[index])
        query = query.where(filter=FieldFilter(document_id, ">=", start))
    if index + 1 < len(SHARD_STARTS):
        end = collection.document(SHARD_STARTS[index + 1])
        query = query.where(filter=FieldFilter(document_id, "<", end))
    return query


class ListenSource(IndexSource):
    """Rows kept current by a listener; changes land within about a second."""

    def __init__(
        self, settings: Settings, rows: KeyCollection, timer: Callable[[], float]
    ) -> None:
        super().__init__(
            max_age=settings.resync_interval + settings.stale_if_error, timer=timer
        )
        self._settings = settings
        self._collection = rows
        self._client: firestore.Client | None = None
        self._watches: list[Any] = []
        self._generation = 0
        # Rows of the current generation's listeners, by shard, until every shard
        # has sent its first snapshot.
        self._pending: dict[int, dict[str, dict[str, Any]]] = {}
        self._task = Background(self._supervise)
        self.restarts = 0

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        await asyncio.to_thread(self._close)

    async def resync(self) -> None:
        """Start new listeners now; their first snapshots replace every row."""
        loop = asyncio.get_running_loop()
        self._generation += 1
        self._pending = {}
        generation = self._generation
        await asyncio.to_thread(self._listen, loop, generation)
        self.restarts += 1

    async def _supervise(self) -> None:
        timer = self._timer
        next_resync = float("-inf")
        while True:
            if timer() >= next_resync or not self._is_listening():
                if next_resync != float("-inf"):
                    logger.info("Restarting the key listener.")
                try:
                    await self.resync()
                    next_resync = timer() + self._settings.resync_interval
                except Exception:  # the watchdog must outlive any one failure
                    logger.warning("The key listener could not start; retrying.")
            await asyncio.sleep(self._settings.watchdog_interval)

    def _is_listening(self) -> bool:
        return bool(self._watches) and all(w.is_active for w in self._watches)

    # -- in a worker thread ---------------------------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop, generation: int) -> None:
        self._close_watch()
        if self._client is None:
            self._client = firestore.Client(
                project=self._settings.project, database=self._settings.database
            )
        collection = self._client.collection(self._settings.collection)
        self._watches = [
            _shard_query(collection, shard).on_snapshot(
                self._handler(loop, generation, shard)
            )
            for shard in range(len(SHARD_STARTS))
        ]

    def _handler(
        self, loop: asyncio.AbstractEventLoop, generation: int, shard: int
    ) -> Callable[[list[Any], list[Any], Any], None]:
        first = [True]

        def on_snapshot(docs: list[Any], changes: list[Any], read_time: Any) -> None:
            # Runs in the listener's thread: copy plain data, then hand it over.
            if first[0]:
                first[0] = False
                whole: list[Change] | None = [(d.id, d.to_dict()) for d in docs]
                batch: list[Change] = []
            else:
                whole = None
                batch = [
                    (
                        c.document.id,
                        None if c.type.name == "REMOVED" else c.document.to_dict(),
                    )
                    for c in changes
                ]
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(self._apply, generation, shard, whole, batch)

        return on_snapshot

    def _close_watch(self) -> None:
        watches, self._watches = self._watches, []
        for watch in watches:
            with contextlib.suppress(Exception):
                watch.unsubscribe()

    def _close(self) -> None:
        self._close_watch()
        client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    # -- on the event loop ----------------------------------------------------

    def _apply(
        self,
        generation: int,
        shard: int,
        whole: list[Change] | None,
        batch: list[Change],
    ) -> None:
        if generation != self._generation:
            return  # from a listener already replaced
        reads = self._collection.reads
        if whole is not None:
            reads["listen"] += max(1, len(whole))
            self._pending[shard] = {key_id: row for key_id, row in whole if row}
        else:
            reads["listen"] += sum(1 for _, row in batch if row is not None)
            if shard in self._pending:  # keep the pending set current too
                for key_id, row in batch:
                    if row is None:
                        self._pending[shard].pop(key_id, None)
                    else:
                        self._pending[shard][key_id] = row
            if self.is_ready:
                self.change(batch)
        if len(self._pending) == len(SHARD_STARTS):
            # Every range has sent its first snapshot: swap the whole set in at once.
            parts, self._pending = self._pending, {}
            self.replace(
                (key_id, row) for part in parts.values() for key_id, row in part.items()
            )
