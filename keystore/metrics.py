"""Counters of the store, in the Prometheus text format (served at /metrics)."""

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keystore.store import ApiKeyStore

#: Check latency buckets, seconds: a warm check takes microseconds, a miss a
#: Firestore round trip.
BUCKETS = (1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Counts of observations per bucket, cumulative on output."""

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

    def lines(self, name: str) -> Iterable[str]:
        total = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            total += count
            yield f'{name}_bucket{{le="{bound:g}"}} {total}'
        yield f'{name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{name}_sum {self.sum:.9f}"
        yield f"{name}_count {self.count}"


def _family(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def render(store: "ApiKeyStore") -> str:
    """The store's metrics as Prometheus text exposition (version 0.0.4)."""
    lines: list[str] = []
    for direction, counter in (("reads", store.reads), ("writes", store.writes)):
        name = f"keystore_firestore_{direction}_total"
        lines += _family(name, "counter", f"Firestore documents {direction}, by cause.")
        lines += [f'{name}{{cause="{c}"}} {n}' for c, n in sorted(counter.items())]
    lines += _family("keystore_checks_total", "counter", "Key checks, by outcome.")
    lines += [
        f'keystore_checks_total{{outcome="{o}"}} {n}'
        for o, n in sorted(store.checks.items())
    ]
    limiter = store.limiter
    name = "keystore_limit_refusals_total"
    lines += _family(name, "counter", "Requests refused by a usage limit, by cause.")
    lines += [
        f'{name}{{cause="{cause}"}} {limiter.refused[cause]}'
        for cause in ("credits", "rate")
    ]
    name = "keystore_background_restarts_total"
    lines += _family(
        name, "counter", "Background tasks restarted after an unexpected error."
    )
    lines += [
        f'{name}{{task="{task}"}} {n}'
        for task, n in sorted(store.background_restarts.items())
    ]
    lines += _family(
        "keystore_check_duration_seconds", "histogram", "Time to check one key."
    )
    lines += store.check_latency.lines("keystore_check_duration_seconds")
    source = store.source
    gauges: list[tuple[str, str, str, float]] = [
        (
            "keystore_cache_hits_total",
            "counter",
            "Checks answered from memory.",
            source.hits,
        ),
        (
            "keystore_cache_misses_total",
            "counter",
            "Checks that read Firestore.",
            source.misses,
        ),
        ("keystore_keys_in_memory", "gauge", "Rows held in memory.", len(source)),
        (
            "keystore_ready",
            "gauge",
            "1 once checks can be answered.",
            int(store.is_ready),
        ),
        (
            "keystore_credits_spent_total",
            "counter",
            "Credits spent by requests let through.",
            limiter.credits_spent,
        ),
        (
            "keystore_limit_checks_total",
            "counter",
            "Requests checked against usage limits.",
            limiter.checks,
        ),
        (
            "keystore_limit_waits_total",
            "counter",
            "Of those, requests that waited for a lease from Firestore.",
            limiter.waits,
        ),
        (
            "keystore_usage_pending",
            "gauge",
            "Key-days of uses not yet written.",
            store.usage_pending,
        ),
    ]
    age = source.age()
    if age is not None:
        gauges.append(
            (
                "keystore_index_age_seconds",
                "gauge",
                "Seconds since the keys in memory were last confirmed current.",
                round(age, 3),
            )
        )
    for name, kind, text, value in gauges:
        lines += _family(name, kind, text)
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"
