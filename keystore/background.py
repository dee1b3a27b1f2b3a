"""Background tasks that are started once, supervised, and stopped for good."""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

_FIRST_PAUSE = 0.5  # seconds before the first restart; doubles up to _MAX_PAUSE
_MAX_PAUSE = 30.0


class Background:
    """Runs ``work()`` as a task between ``start()`` and ``stop()``.

    ``work`` handles the failures it expects (an outage, say). Anything else
    ends it: the error is logged once, with its traceback, and ``work`` starts
    again after a pause that grows while it keeps failing. ``restarts`` counts
    these, for /metrics and /readyz.
    """

    def __init__(
        self, work: Callable[[], Coroutine[Any, Any, None]], *, name: str
    ) -> None:
        self.name = name
        self._work = work
        self._task: asyncio.Task[None] | None = None
        #: Set by ``stop(drain=...)``: ``work`` ends at its next chance.
        self.stopping = asyncio.Event()
        #: Times ``work`` failed unexpectedly and was started again.
        self.restarts = 0

    @property
    def is_running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start the task, unless it runs already."""
        if self._task is None:
            self.stopping.clear()
            self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def stop(self, *, drain: float = 0.0) -> None:
        """End the task and wait until it has ended: cancelled at once, or,
        with ``drain`` seconds, asked to end (``stopping``) and given that
        long to finish what it is doing before it is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        if drain:
            self.stopping.set()
            await asyncio.wait([task], timeout=drain)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # The task's own cancel ends here; the caller's goes on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        pause = _FIRST_PAUSE
        while True:
            started = loop.time()
            try:
                await self._work()
                return
            except Exception:
                if self.stopping.is_set():
                    raise
                self.restarts += 1
                if loop.time() - started > _MAX_PAUSE:
                    pause = _FIRST_PAUSE  # it had been working: not a crash loop
                logger.error(
                    "The %s failed; restarting it in %gs.",
                    self.name,
                    pause,
                    exc_info=True,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)
