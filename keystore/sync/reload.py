"""The reload mode: every row, loaded at start and every ``reload_interval``.

A key made elsewhere is unknown here until the next load, like a revoked key
is known until then: both take effect within one interval. Unknown ids cost
no read, so random keys cost nothing. After a stall the next load runs at
once (and rows are confirmed one by one until it lands: snapshot.py).
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

from keystore._firestore.documents import KeyCollection
from keystore.background import Background
from keystore.errors import StoreUnavailable
from keystore.settings import Settings
from keystore.sync.snapshot import SnapshotView
from keystore.sync.stall import StallWatch

logger = logging.getLogger(__name__)


class ReloadView(SnapshotView):
    """The whole collection, loaded at start and every ``reload_interval``."""

    def __init__(
        self,
        settings: Settings,
        rows: KeyCollection,
        timer: Callable[[], float],
        stalls: StallWatch,
    ) -> None:
        super().__init__(
            max_age=settings.reload_interval + settings.stale_if_error,
            timer=timer,
            rows=rows,
            stalls=stalls,
        )
        self._settings = settings
        self._task = Background(self._reload_forever, name="key reload")
        self._wake = asyncio.Event()
        stalls.on_stall(self._wake.set)

    @property
    def background(self) -> tuple[Background, ...]:
        return (self._task, self.stalls.task)

    async def start(self) -> None:
        self._task.start()
        self.stalls.start()

    async def stop(self) -> None:
        await self._task.stop()
        await self.stalls.stop()

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
            # The interval, or at once after a stall.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
