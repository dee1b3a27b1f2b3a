"""The listen mode: a Firestore real-time listener keeps every row in memory.

The listener (``watch.py``) runs in its own thread with the sync client and
hands each batch of changes to the event loop with ``call_soon_threadsafe``;
the rows are only ever changed on the loop.

Listeners are known to stop delivering without an error: the stream is
replaced every ten minutes (``watch.py``), a watchdog restarts a listener whose
thread has ended, and a full resync (a new listener, whose first snapshot
replaces every row) runs every ``resync_interval`` seconds.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from google.cloud import firestore

from keystore.background import Background
from keystore.collection import KeyCollection, collection_query
from keystore.index import IndexSource
from keystore.result import Change
from keystore.settings import Settings
from keystore.watch import ListenStream

logger = logging.getLogger(__name__)


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
        self._stream: ListenStream | None = None
        self._generation = 0
        # True until the current listener's first snapshot has been applied.
        self._is_new = True
        self._task = Background(self._supervise)
        self.restarts = 0
        # Starting and closing listeners happen in worker threads; a stop must
        # not race a start still under way, or that listener would outlive it.
        self._lifecycle = threading.Lock()
        self._is_stopped = False

    async def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        await asyncio.to_thread(self._close)

    async def resync(self) -> None:
        """Start a new listener now; its first snapshot replaces every row."""
        loop = asyncio.get_running_loop()
        self._generation += 1
        self._is_new = True
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
        return self._stream is not None and self._stream.is_active

    # -- in a worker thread ---------------------------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop, generation: int) -> None:
        with self._lifecycle:
            if not self._is_stopped:
                self._start_stream(loop, generation)

    def _start_stream(self, loop: asyncio.AbstractEventLoop, generation: int) -> None:
        self._close_stream()
        settings = self._settings
        if self._client is None:
            self._client = firestore.Client(
                project=settings.project, database=settings.database
            )
        database = f"projects/{self._client.project}/databases/{settings.database}"

        def on_snapshot(changes: list[Change], reads: int, read_time: int) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(
                    self._apply, generation, changes, reads, read_time
                )

        self._stream = ListenStream(
            self._client, database, collection_query(settings.collection), on_snapshot
        )
        self._stream.start()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _close(self) -> None:
        with self._lifecycle:
            self._is_stopped = True
            self._close_stream()
            client, self._client = self._client, None
            if client is not None:
                client.close()  # type: ignore[no-untyped-call]

    # -- on the event loop ----------------------------------------------------

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
