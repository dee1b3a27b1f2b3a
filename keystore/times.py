"""Durations and moments as people write and read them: ``30d``, "in 3 days"."""

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SPANS = (("day", 86400), ("hour", 3600), ("minute", 60))


def utcnow() -> datetime:
    """The current moment, timezone-aware, in UTC."""
    return datetime.now(UTC)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m``, ``90s`` or ``2w`` as a timedelta, else ValueError."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*([smhdw])\s*", text)
    if match is None or int(match[1]) == 0:
        raise ValueError(
            f"'{text}' is not a duration; use a positive number and a unit, "
            "like 30d, 12h, 45m, 90s or 2w"
        )
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def relative(moment: datetime | None, now: datetime) -> str:
    """``moment`` as "in 3 days", "5 minutes ago" or "never"."""
    if moment is None:
        return "never"
    seconds = (moment - now).total_seconds()
    units = [(name, length) for name, length in _SPANS if abs(seconds) >= length]
    if not units:
        return "just now" if seconds <= 0 else "in a moment"
    name, length = units[0]
    count = int(abs(seconds) // length)
    amount = f"{count} {name}{'s' if count != 1 else ''}"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"
