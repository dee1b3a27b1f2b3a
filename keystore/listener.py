"""The listen mode: a Firestore real-time listener keeps every row in memory.

The async client has no listener, so the sync client's ``on_snapshot`` runs in
its own thread and hands each batch of changes to the event loop with
``call_soon_threadsafe``; the rows are only ever changed on the loop.

Listeners are known to stop delivering without an error, so a watchdog restarts
one that is no longer active, and a full resync (a new listener, whose first
snapshot replaces every row) runs every ``resync_interval`` seconds.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from google.cloud import firestore

from keystore.background import Background
from keystore.collection import KeyCollection
from keystore.index import IndexSource
from keystore.settings import Settings

logger = logging.getLogger(__name__)

Change = tuple[str, dict[str, Any] | None]


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
        self._watch: Any = None
        self._generation = 0
        self._task = Background(self._supervise)
        self.restarts = 0

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        await asyncio.to_thread(self._close)

    async def resync(self) -> None:
        """Start a new listener now; its first snapshot replaces every row."""
        loop = asyncio.get_running_loop()
        self._generation += 1
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
        return self._watch is not None and bool(self._watch.is_active)

    # -- in a worker thread ---------------------------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop, generation: int) -> None:
        self._close_watch()
        if self._client is None:
            self._client = firestore.Client(
                project=self._settings.project, database=self._settings.database
            )
        collection = self._client.collection(self._settings.collection)
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
                loop.call_soon_threadsafe(self._apply, generation, whole, batch)

        self._watch = collection.on_snapshot(on_snapshot)

    def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(Exception):
                watch.unsubscribe()

    def _close(self) -> None:
        self._close_watch()
        client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    # -- on the event loop ----------------------------------------------------

    def _apply(
        self, generation: int, whole: list[Change] | None, batch: list[Change]
    ) -> None:
        if generation != self._generation:
            return  # from a listener already replaced
        reads = self._collection.reads
        if whole is not None:
            self.replace(whole)
            reads["listen"] += max(1, len(whole))
        else:
            self.change(batch)
            reads["listen"] += sum(1 for _, row in batch if row is not None)
