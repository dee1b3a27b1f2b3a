"""Usage limits as operators write them: a rate limit and a credit refill; no I/O.

``100/1m`` is a rate limit: at most 100 requests in each fixed one-minute
window (windows start at multiples of the period since the epoch, UTC).
``10000/month`` is a refill: at the start of each UTC month the credits left
are set to 10000 (replaced, not added to).
"""

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from keystore.times import parse_duration

RefillInterval = Literal["day", "month"]
REFILL_INTERVALS: tuple[RefillInterval, ...] = ("day", "month")

#: Windows shorter than this are counted by each process on its own: sharing
#: them would cost more than a Firestore document sustains (about 1 write/s).
SHARED_WINDOW_SECONDS = 10

#: Largest limit, credit balance or refill keystore accepts (Firestore integers
#: are 64-bit; this leaves room for sums).
MAX_AMOUNT = 10**12
#: Longest rate window: one week.
MAX_WINDOW_SECONDS = 7 * 86_400

_UNITS = {"s": "s", "m": "m", "h": "h", "d": "d"}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` requests per fixed window of ``window_seconds``."""

    limit: int
    window_seconds: int
    #: ``100/1m``: made once, since a route may show it on every response.
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_AMOUNT:
            raise ValueError(f"a rate limit must be 1 to {MAX_AMOUNT} requests")
        if not 1 <= self.window_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError("a rate window must be 1 second to 7 days")
        text = f"{self.limit}/{_duration(self.window_seconds)}"
        object.__setattr__(self, "text", text)

    def __str__(self) -> str:
        return self.text

    @property
    def is_shared(self) -> bool:
        """True if the processes share the window; else each counts its own."""
        return self.window_seconds >= SHARED_WINDOW_SECONDS

    @property
    def per_second(self) -> float:
        return self.limit / self.window_seconds

    def window_start(self, now: float) -> int:
        """The start of the window that ``now`` (epoch seconds) falls in."""
        return int(now // self.window_seconds) * self.window_seconds


@dataclass(frozen=True, slots=True)
class Refill:
    """Credits set back to ``amount`` at the start of each UTC day or month."""

    amount: int
    interval: RefillInterval

    def __post_init__(self) -> None:
        if not 0 <= self.amount <= MAX_AMOUNT:
            raise ValueError(f"a refill must be 0 to {MAX_AMOUNT} credits")
        if self.interval not in REFILL_INTERVALS:
            raise ValueError("a refill interval is 'day' or 'month'")

    def __str__(self) -> str:
        return f"{self.amount}/{self.interval}"

    def period(self, now: datetime) -> str:
        """The id of the refill period ``now`` is in: ``2026-12-01`` or ``2026-12``."""
        now = now.astimezone(UTC)
        return now.strftime("%Y-%m-%d" if self.interval == "day" else "%Y-%m")

    def next_at(self, now: datetime) -> datetime:
        """When the next refill is due."""
        now = now.astimezone(UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.interval == "day":
            return day + timedelta(days=1)
        first = day.replace(day=1)
        return (first + timedelta(days=32)).replace(day=1)

    def per_second(self) -> float:
        """The refill as an average rate, for comparing two refills."""
        return self.amount / (86_400 if self.interval == "day" else 30 * 86_400)


def parse_rate_limit(text: str) -> RateLimit:
    """``100/1m`` (also ``10s``, ``1h``, ``1d``, or a bare unit: ``100/m``)."""
    match = re.fullmatch(r"\s*(\d{1,13})\s*/\s*(\d{0,6})\s*([smhd])\s*", text)
    if match is None:
        raise ValueError(
            f"'{text}' is not a rate limit; use requests/period, like 100/1m, "
            "10/10s, 5000/1h or 100000/1d"
        )
    count = match[2] or "1"
    window = parse_duration(f"{count}{_UNITS[match[3]]}")
    return RateLimit(int(match[1]), int(window.total_seconds()))


def parse_refill(text: str) -> Refill:
    """``10000/month`` or ``500/day``."""
    match = re.fullmatch(r"\s*(\d{1,13})\s*/\s*(day|month)\s*", text)
    if match is None:
        raise ValueError(
            f"'{text}' is not a refill; use credits/day or credits/month, "
            "like 10000/month"
        )
    interval: RefillInterval = "day" if match[2] == "day" else "month"
    return Refill(int(match[1]), interval)


def seconds_until(moment: float, now: float) -> int:
    """Whole seconds from ``now`` to ``moment``, at least 1 (for Retry-After)."""
    return max(1, math.ceil(moment - now))


def _duration(seconds: int) -> str:
    for unit, length in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % length == 0:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"
