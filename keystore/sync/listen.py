"""The listen mode: a Firestore real-time listener keeps every row in memory.

The listener (``_firestore/listen.py``) runs on the event loop, on the store's
one connection, and hands each batch of changes to the rows as it arrives.
It needs CPU between requests: after a stall, rows are confirmed one by one
until a snapshot as of a later time lands (snapshot.py).

Listeners are known to stop delivering without an error: the stream is
replaced every ten minutes (``_firestore/listen.py``), a watchdog restarts a
listener that has stopped, and a full resync (a new listener, whose first
snapshot replaces every row) runs every ``resync_interval`` seconds.
"""

import asyncio
import logging
from collections.abc import Callable
from functools import partial

from keystore._firestore.documents import KeyCollection, collection_query
from keystore._firestore.listen import ListenStream
from keystore._firestore.listen_result import Change
from keystore.background import Background
from keystore.settings import Settings
from keystore.sync.snapshot import SnapshotView
from keystore.sync.stall import StallWatch

logger = logging.getLogger(__name__)


class ListenView(SnapshotView):
    """Rows kept current by a listener; changes land within about a second."""

    def __init__(
        self,
        settings: Settings,
        rows: KeyCollection,
        timer: Callable[[], float],
        stalls: StallWatch,
    ) -> None:
        super().__init__(
            max_age=settings.resync_interval + settings.stale_if_error,
            timer=timer,
            rows=rows,
            stalls=stalls,
        )
        self._settings = settings
        self._stream: ListenStream | None = None
        self._generation = 0
        # True until the current listener's first snapshot has been applied.
        self._is_new = True
        self._task = Background(self._supervise, name="listener watchdog")
        self.restarts = 0

    @property
    def background(self) -> tuple[Background, ...]:
        tasks = (self._task, self.stalls.task)
        return tasks if self._stream is None else (*tasks, self._stream.task)

    async def start(self) -> None:
        self._task.start()
        self.stalls.start()

    async def stop(self) -> None:
        await self._task.stop()
        await self.stalls.stop()
        await self._close_stream()

    async def resync(self) -> None:
        """Start a new listener now; its first snapshot replaces every row."""
        self._generation += 1
        self._is_new = True
        await self._close_stream()
        self._stream = ListenStream(
            self._collection.connection,
            collection_query(self._settings.collection),
            partial(self._apply, self._generation),
        )
        self._stream.start()
        self.restarts += 1

    async def _supervise(self) -> None:
        timer = self._timer
        next_resync = float("-inf")
        while True:
            if timer() >= next_resync or not self._is_listening():
                if next_resync != float("-inf"):
                    logger.info("Restarting the key listener.")
                await self.resync()
                next_resync = timer() + self._settings.resync_interval
            await asyncio.sleep(self._settings.watchdog_interval)

    def _is_listening(self) -> bool:
        return self._stream is not None and self._stream.is_active

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    def _apply(
        self, generation: int, changes: list[Change], reads: int, read_time: int
    ) -> None:
        self._collection.reads["listen"] += reads  # billed, even if now outdated
        if generation != self._generation:
            return  # from a listener already replaced
        if self._is_new:
            # A new listener's first snapshot holds every row: swap them in at once.
            self._is_new = False
            self.replace(changes, read_time)
        else:
            self.change(changes, read_time)
