"""What the event loop's own ticks tell of the CPU the process gets.

A task ticks every ``TICK`` seconds. A tick ``STALL`` seconds late or more
means the loop did not run: the process had no CPU (Cloud Run's request-based
billing throttles an instance between requests; SIGSTOP does the same) or was
blocked. Whatever Firestore sent meanwhile waits in a socket, and a request
that arrived meanwhile may be answered before it is read; so the views that
hold every row treat them as unconfirmed from a stall on (snapshot.py).

The request path asks too (``check``): when the loop comes back, a request
that waited may run before the late tick does.

Time here is the real monotonic clock, never a store's injected timer: a
stall is real time without CPU.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from keystore.background import Background

logger = logging.getLogger(__name__)

#: Seconds between ticks, and the lateness taken for a stall.
TICK = 0.25
STALL = 1.0
#: Running this long without a stall, the CPU is taken to be always there.
SETTLED = 60.0


class StallWatch:
    """Notices the event loop's stalls; tells those who ask to be told."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, advice: str = ""
    ) -> None:
        self._clock = clock
        #: What a stall means for the sync mode, for the log.
        self.advice = advice
        self._last_tick = clock()
        self._started = self._last_tick
        self._callbacks: list[Callable[[], None]] = []
        #: Stalls seen, the longest (seconds), and when the last one ended.
        self.count = 0
        self.longest = 0.0
        self.task = Background(self._tick_forever, name="stall watch")

    def on_stall(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at every stall, once the loop runs again."""
        self._callbacks.append(callback)

    def check(self) -> bool:
        """True if the loop has just come back from a stall (which is then
        told to everyone, once)."""
        now = self._clock()
        if now - self._last_tick < STALL:
            return False
        self._stalled(now)
        return True

    @property
    def cpu(self) -> str:
        """The CPU this process appears to run with."""
        if self.count:
            return "throttled between requests"
        if self._clock() - self._started >= SETTLED:
            return "always allocated"
        return "not known yet"

    def start(self) -> None:
        self._last_tick = self._clock()
        self.task.start()

    async def stop(self) -> None:
        await self.task.stop()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            if not self.check():
                self._last_tick = self._clock()

    def _stalled(self, now: float) -> None:
        gap = now - self._last_tick
        self._last_tick = now
        self.count += 1
        self.longest = max(self.longest, gap)
        (logger.warning if self.count == 1 else logger.debug)(
            "The event loop did not run for %.1f s: this instance appears to get "
            "no CPU between requests (or was stopped). %s",
            gap,
            self.advice,
        )
        for callback in self._callbacks:
            callback()
