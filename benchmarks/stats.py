"""The one percentile every benchmark figure uses."""

from collections.abc import Sequence


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) of sorted ``ordered``; 0 if empty."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]
