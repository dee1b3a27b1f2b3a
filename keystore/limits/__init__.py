"""Usage limits: the values here; how processes share them in the modules.

- ``values``: ``RateLimit`` and ``Refill``, and their grammar (``100/1m``).
- ``lease``: the lease protocol on one limit document, pure: plan and apply,
  no I/O and no clock of its own.
- ``allowance``: what one process holds of one document, and when it may
  spend it.
- ``ledger``: the Firestore I/O that commits a lease.
- ``limiter``: the request path.
- ``sweeper``: idle leases given back, old ones renewed, empty ones dropped.
- ``edits``: operators' limit changes, and what a document's limits stand at.

docs/limits.md states the bounds and proves them.
"""

from keystore.limits.values import (
    MAX_AMOUNT,
    MAX_WINDOW_SECONDS,
    REFILL_INTERVALS,
    SHARED_WINDOW_SECONDS,
    RateLimit,
    Refill,
    RefillInterval,
    parse_rate_limit,
    parse_refill,
    seconds_until,
)

__all__ = [
    "MAX_AMOUNT",
    "MAX_WINDOW_SECONDS",
    "REFILL_INTERVALS",
    "SHARED_WINDOW_SECONDS",
    "RateLimit",
    "Refill",
    "RefillInterval",
    "parse_rate_limit",
    "parse_refill",
    "seconds_until",
]
