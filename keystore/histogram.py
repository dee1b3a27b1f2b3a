"""A histogram kept by hand: a bisect and two additions per observation.

The check path observes its latency on every check; prometheus_client's own
histogram takes a lock per observation. ``metrics.py`` exports this one.
"""

from bisect import bisect_left

#: Check latency buckets, seconds: a warm check takes microseconds, a miss a
#: Firestore round trip.
BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Counts of observations per bucket (not cumulative), and their sum."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(upper bound, observations at or under it), ending with +Inf."""
        total, found = 0, []
        for bound, count in zip(self.buckets, self.counts, strict=False):
            total += count
            found.append((f"{bound:g}", float(total)))
        return [*found, ("+Inf", float(self.count))]
