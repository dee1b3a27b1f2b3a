"""The one percentile, and the timing of calls made in process."""

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

Call = Callable[[], Awaitable[object]]


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100) of sorted ``ordered``; 0 if empty."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def per_call_us(
    calls: Mapping[str, Call], n: int, rounds: int = 7
) -> dict[str, float]:
    """µs per awaited call, best of ``rounds`` loops of ``n`` each.

    The rounds take the calls in turn, so that a slow phase of the machine
    (they last seconds here) costs every call alike rather than one of them.
    """
    best = dict.fromkeys(calls, float("inf"))
    for round_ in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(n):
                await call()
            if round_:  # the first round warms up
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / n * 1e6 for name, seconds in best.items()}
