"""Limit documents as read: a key row's or an owner document's limits, and
the state of their leases. Pure: no I/O.

Operators edit the limits by hand in the Firestore console, so they are
checked here: limits keystore cannot read raise InvalidRow, and the key fails
closed. The state keystore writes (``leases``, ``stranded``, ``rate_used``,
the ``credits_*`` stamps) is read leniently instead: a hand-broken entry
counts for nothing, so no lease is ever made up.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keystore.errors import InvalidRow
from keystore.limits.values import MAX_AMOUNT, REFILL_INTERVALS, RateLimit, Refill


@dataclass(frozen=True, slots=True)
class Entry:
    """One holder's lease in a document's ``leases`` map."""

    #: Credits moved to the holder in this epoch, net of those it gave back.
    credits: int = 0
    #: The holder's count of credits spent (this epoch) when the entry began,
    #: and at its last op.
    base: int = 0
    spent: int = 0
    #: The rate window (start, server seconds) of the requests it holds, those
    #: moved to it (net), and its count of requests spent when they began.
    window: int | None = None
    rate: int = 0
    rate_base: int = 0
    #: Server time of its last stamp (epoch seconds); None if never stamped.
    at: float | None = None

    @property
    def held(self) -> int:
        """Credits held at the holder's last op."""
        return max(0, self.credits - (self.spent - self.base))

    def unspent(self, spent: int) -> int:
        """Credits not spent, when the holder's count is ``spent``."""
        return max(0, self.credits - (spent - self.base))

    def requests_unspent(self, window: int, spent: int) -> int:
        """Requests of ``window`` not spent, when the holder's count is ``spent``."""
        if self.window != window:
            return 0
        return max(0, self.rate - (spent - self.rate_base))

    def to_field(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "credits": self.credits,
            "base": self.base,
            "spent": self.spent,
        }
        if self.window is not None:
            fields.update(window=self.window, rate=self.rate, rate_base=self.rate_base)
        return fields


@dataclass(frozen=True, slots=True)
class Stranded:
    """A swept entry's credits: what it held at its holder's last op (lost,
    unless the holder comes back), and the entry's ``credits`` and ``base``."""

    held: int
    credits: int
    base: int

    def to_field(self) -> dict[str, int]:
        return {"held": self.held, "credits": self.credits, "base": self.base}


@dataclass(frozen=True, slots=True)
class LimitDoc:
    """A limit document as read: its limits and the state of its leases."""

    rate_limit: RateLimit | None
    refill: Refill | None
    #: The document limits credits (``credits`` or a refill is set).
    has_credits: bool
    #: ``credits``: the pool, credits no lease holds.
    pool: int
    #: The pool as keystore last wrote it: a ``credits`` that differs was
    #: edited by hand. None until keystore writes it.
    written: int | None
    epoch: int
    #: The refill period the balance is for (``refilled_for``, or the period
    #: an operator last set the credits in).
    balance_for: str | None
    rate_start: int | None
    rate_count: int
    leases: Mapping[str, Entry]
    stranded: Mapping[str, Stranded]
    #: The key row that holds this key's limits now (set by a rotation).
    limits_in: str | None = None

    @property
    def is_edited(self) -> bool:
        """True if ``credits`` was set by hand since keystore last wrote it."""
        if not self.has_credits:
            return False
        if self.written is None:
            # Never written by a lease: as made, unless leases exist (then
            # someone removed ``credits_written``).
            return bool(self.leases)
        return self.pool != self.written

    def credits_left(self, now: float) -> int | None:
        """Credits left at server time ``now``: the pool and what the leases
        held at their last ops; a refill that is due, as applied."""
        if not self.has_credits:
            return None
        if self.refill is not None and is_refill_due(
            self.refill, self.balance_for, now
        ):
            return self.refill.amount
        return self.credits_held_left

    @property
    def credits_held_left(self) -> int:
        """The pool and what the leases held at their last ops (a refill that
        is due not counted: that needs the time)."""
        return self.pool + sum(entry.held for entry in self.leases.values())

    @property
    def stranded_credits(self) -> int:
        return sum(record.held for record in self.stranded.values())


def parse_limits(
    doc_id: str, fields: Mapping[str, Any], *, kind: str = "Key row"
) -> tuple[RateLimit | None, Refill | None]:
    """The rate limit and refill of a limit document; InvalidRow if unreadable."""
    limit = _amount(doc_id, fields, "rate_limit", 1, kind)
    window = _amount(doc_id, fields, "rate_window_seconds", 1, kind)
    if (limit is None) != (window is None):
        raise InvalidRow(
            doc_id, "rate_limit", "set both rate_limit and rate_window_seconds", kind
        )
    amount = _amount(doc_id, fields, "refill_amount", 0, kind)
    interval = fields.get("refill_interval")
    if (amount is None) != (interval is None):
        raise InvalidRow(
            doc_id, "refill_amount", "set both refill_amount and refill_interval", kind
        )
    if interval is not None and interval not in REFILL_INTERVALS:
        raise InvalidRow(doc_id, "refill_interval", "expected 'day' or 'month'", kind)
    _amount(doc_id, fields, "credits", 0, kind)
    try:
        rate = RateLimit(limit, window) if limit and window else None
    except ValueError as exc:
        raise InvalidRow(doc_id, "rate_window_seconds", str(exc), kind) from None
    refill = Refill(amount, interval) if amount is not None else None  # type: ignore[arg-type]
    return rate, refill


def _amount(
    doc_id: str, fields: Mapping[str, Any], name: str, low: int, kind: str
) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= MAX_AMOUNT:
        raise InvalidRow(
            doc_id, name, f"expected an integer from {low} to {MAX_AMOUNT}", kind
        )
    return value


def read_doc(
    doc_id: str, fields: Mapping[str, Any], *, kind: str = "Key row"
) -> LimitDoc:
    """The limit document ``fields``; InvalidRow if its limits cannot be read.

    The state keystore writes is read leniently: a hand-broken entry counts
    for nothing (a lease is never made up), and its holder starts again.
    """
    rate, refill = parse_limits(doc_id, fields, kind=kind)
    has_credits = fields.get("credits") is not None or refill is not None
    used = fields.get("rate_used")
    used = used if isinstance(used, Mapping) else {}
    start = used.get("start")
    balance_for = _text(fields.get("refilled_for"))
    set_at = fields.get("credits_set_at")
    if refill is not None and isinstance(set_at, datetime):
        set_for = refill.period(set_at)
        balance_for = max(balance_for or set_for, set_for)
    moved = fields.get("limits_in")
    return LimitDoc(
        rate_limit=rate,
        refill=refill,
        has_credits=has_credits,
        pool=_count(fields.get("credits")),
        written=fields.get("credits_written")
        if type(fields.get("credits_written")) is int
        else None,
        epoch=_count(fields.get("credits_epoch")),
        balance_for=balance_for,
        rate_start=start if type(start) is int else None,
        rate_count=_count(used.get("count")),
        leases=_entries(fields.get("leases")),
        stranded=_stranded(fields.get("stranded")),
        limits_in=moved if isinstance(moved, str) and moved else None,
    )


def is_refill_due(refill: Refill, balance_for: str | None, now: float) -> bool:
    """True if the refill period at ``now`` is later than the balance's."""
    return balance_for is None or refill.period(_moment(now)) > balance_for


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _entries(value: Any) -> dict[str, Entry]:
    if not isinstance(value, Mapping):
        return {}
    entries = {}
    for holder, raw in value.items():
        if not isinstance(raw, Mapping):
            continue
        at = raw.get("at")
        window = raw.get("window")
        entries[holder] = Entry(
            credits=_count(raw.get("credits")),
            base=_count(raw.get("base")),
            spent=_count(raw.get("spent")),
            window=window if type(window) is int else None,
            rate=_count(raw.get("rate")),
            rate_base=_count(raw.get("rate_base")),
            at=at.timestamp() if isinstance(at, datetime) else None,
        )
    return entries


def _stranded(value: Any) -> dict[str, Stranded]:
    if not isinstance(value, Mapping):
        return {}
    return {
        holder: Stranded(
            _count(raw.get("held")), _count(raw.get("credits")), _count(raw.get("base"))
        )
        for holder, raw in value.items()
        if isinstance(raw, Mapping)
    }
