"""Operators' limit changes, and what a document's limits stand at; pure.

``set-limits`` (the CLI, the admin API) changes a key row or an owner
document by read and conditional commit, as a lease does, so it applies to
one state of the leases:

- ``credits=N`` sets the credits left to N: a new epoch, every lease void.
  Each process may still spend what it held until its next lease (at most
  one lease each); docs/limits.md states the bound.
- ``credits=None`` removes the credit limit, and with it a refill (a refill
  is a credit limit: it would refuse requests until its period starts).
- a refill set on a document with credits leaves its balance for the current
  period (``credits_set_at``, stamped with the commit's time).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keystore.limits.document import LimitDoc, read_doc
from keystore.limits.values import RateLimit, Refill

#: Leave a limit as it is (``None`` removes it).
UNSET: Any = object()

#: Fields of a limit document that hold the state of its leases.
STATE_FIELDS = (
    "credits_written",
    "credits_epoch",
    "credits_set_at",
    "refilled_for",
    "rate_used",
    "leases",
    "stranded",
    "lease_op",
)
#: Fields of a limit document that hold its limits.
LIMIT_FIELDS = (
    "rate_limit",
    "rate_window_seconds",
    "credits",
    "refill_amount",
    "refill_interval",
)


@dataclass(frozen=True, slots=True)
class LimitEdit:
    """The fields an edit sets (None deletes one), and whether the commit
    stamps ``credits_set_at`` with its time."""

    sets: dict[str, Any]
    stamp_balance: bool


def limit_edit(
    doc_id: str,
    fields: Mapping[str, Any] | None,
    *,
    rate_limit: RateLimit | None = UNSET,
    credits: int | None = UNSET,
    refill: Refill | None = UNSET,
    kind: str = "Key row",
) -> LimitEdit:
    """What setting these limits on the document ``fields`` (None: it does
    not exist yet, an owner's) changes; InvalidRow if it cannot be read."""
    doc = read_doc(doc_id, fields or {}, kind=kind)
    sets: dict[str, Any] = {}
    if rate_limit is not UNSET:
        sets["rate_limit"] = rate_limit.limit if rate_limit else None
        sets["rate_window_seconds"] = rate_limit.window_seconds if rate_limit else None
    if credits is None:
        refill = None  # no credit limit: no refill either
    if refill is not UNSET:
        sets["refill_amount"] = refill.amount if refill else None
        sets["refill_interval"] = refill.interval if refill else None
    stamp = False
    if credits is not UNSET:
        sets["credits"] = sets["credits_written"] = credits
        sets["credits_epoch"] = doc.epoch + 1
        sets["leases"] = {}
        sets["stranded"] = {}
        stamp = credits is not None
    elif refill is not UNSET and refill is not None and doc.has_credits:
        stamp = True  # the balance holds until the next period
    return LimitEdit(sets, stamp)


@dataclass(frozen=True, slots=True)
class LimitView:
    """A document's limits and where its credits are, for people to read."""

    rate_limit: RateLimit | None
    refill: Refill | None
    #: Credits left (the pool and what the leases held at their last op, or
    #: a refill that is due), None without credits.
    credits: int | None
    #: Of those, held by processes now; and what stopped processes held,
    #: recorded when their leases expired (lost: see docs/limits.md).
    held: int
    stranded: int
    next_refill: datetime | None
    #: Requests handed out in the current rate window.
    rate_used: int


def limit_view(doc: LimitDoc, now: float) -> LimitView:
    """What ``doc``'s limits stand at, at server time ``now``."""
    moment = datetime.fromtimestamp(now, UTC)
    credits = doc.credits_left(now)
    held = sum(entry.held for entry in doc.leases.values())
    if credits is not None and doc.refill is not None and credits == doc.refill.amount:
        held = min(held, credits)
    rate_used = 0
    rate = doc.rate_limit
    if rate is not None and doc.rate_start == rate.window_start(now):
        rate_used = doc.rate_count
    return LimitView(
        rate_limit=rate,
        refill=doc.refill,
        credits=credits,
        held=held if credits is not None else 0,
        stranded=doc.stranded_credits,
        next_refill=doc.refill.next_at(moment) if doc.refill else None,
        rate_used=rate_used,
    )
