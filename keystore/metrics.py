"""The store's counters as a prometheus_client collector.

Register it in the registry an app already exposes, in one line::

    prometheus_client.REGISTRY.register(keystore.KeystoreCollector())

It reads the counters the store keeps anyway at each scrape, so the request
path does no more work for it. The check latency histogram stays keystore's
own (``Histogram``): a bisect and two additions per check.
"""

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from keystore.store import ApiKeyStore, get_store


def _current_store() -> ApiKeyStore:
    return get_store()


class KeystoreCollector(Collector):
    """keystore's metrics for a prometheus_client registry.

    ``store`` gives the store to read (default: the process-wide one, looked
    up at each scrape, so the collector may be registered before it exists).
    """

    def __init__(self, store: Callable[[], ApiKeyStore] = _current_store) -> None:
        self._store = store

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not look up the store.
        return []

    def collect(self) -> Iterator[Metric]:
        store = self._store()
        yield from _by_label(
            "keystore_firestore_reads",
            "Firestore documents reads, by cause.",
            "cause",
            store.reads.items(),
        )
        yield from _by_label(
            "keystore_firestore_writes",
            "Firestore documents writes, by cause.",
            "cause",
            store.writes.items(),
        )
        yield from _by_label(
            "keystore_checks",
            "Key checks, by outcome.",
            "outcome",
            store.checks.items(),
        )
        limiter = store.limiter
        yield from _by_label(
            "keystore_limit_refusals",
            "Requests refused by a usage limit, by cause.",
            "cause",
            ((cause, limiter.refused[cause]) for cause in ("credits", "rate")),
        )
        yield from _by_label(
            "keystore_background_restarts",
            "Background tasks restarted after an unexpected error.",
            "task",
            store.background_restarts.items(),
        )
        latency = store.check_latency
        yield HistogramMetricFamily(
            "keystore_check_duration_seconds",
            "Time to check one key.",
            buckets=latency.cumulative(),
            sum_value=latency.sum,
        )
        view = store.view
        for name, text, value in (
            ("keystore_sync_hits", "Checks answered from memory.", view.hits),
            ("keystore_sync_misses", "Checks that read Firestore.", view.misses),
            (
                "keystore_stalls",
                "Times the event loop did not run for a second or more (no CPU).",
                view.stalls.count,
            ),
            (
                "keystore_credits_spent",
                "Credits spent by requests let through.",
                limiter.credits_spent,
            ),
            (
                "keystore_limit_checks",
                "Requests checked against usage limits.",
                limiter.checks,
            ),
            (
                "keystore_limit_waits",
                "Of those, requests that waited for a lease from Firestore.",
                limiter.waits,
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)
        gauges: list[tuple[str, str, float]] = [
            ("keystore_keys_in_memory", "Rows held in memory.", len(view)),
            ("keystore_ready", "1 once checks can be answered.", int(store.is_ready)),
            (
                "keystore_usage_pending",
                "Key-days of uses not yet written.",
                store.usage_pending,
            ),
        ]
        age = view.age()
        if age is not None:
            text = "Seconds since the keys in memory were last confirmed current."
            gauges.append(("keystore_sync_age_seconds", text, round(age, 3)))
        for name, text, level in gauges:
            yield GaugeMetricFamily(name, text, value=level)


def _by_label(
    name: str, text: str, label: str, values: Iterable[tuple[str, int]]
) -> Iterator[Metric]:
    family = CounterMetricFamily(name, text, labels=[label])
    for value_label, value in sorted(values):
        family.add_metric([value_label], value)
    yield family
