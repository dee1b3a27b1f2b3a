"""The lease protocol on one limit document: pure, no I/O, no clock of its own.

A limit document (a key row, an owner document) holds a pool of credits and
the count of requests handed out in the current rate window. A process takes
a lease (credits, and requests of the window) into its entry in ``leases``,
answers requests from it in memory, and gives back what it did not spend.

``plan`` turns one process's ``Ask`` and the document as read into the
change to commit and the ``Grant`` it gives. The ledger commits the change
with the precondition that the document has not changed since the read, so
plans apply one at a time, each to the state it was made from.

What makes it exact:

- **One clock: Firestore's.** ``now`` is the read's time. Refill periods and
  rate windows are taken from it, and entries are stamped with the commit's
  time, so no process's clock decides anything.
- **Entries count, the holder counts.** An entry holds the credits moved to
  its holder (net of those it gave back) and ``base``, the holder's own
  count of credits spent (in this epoch) when the entry began. What the
  holder has not spent is ``credits - (spent_now - base)``, exact whatever
  ops of its own were lost on the way: a grant whose answer was lost is
  found in the entry; a give-back, by the entry's absence.
- **Epochs.** A refill, or an operator setting the credits, starts a new
  epoch: the pool is set, every lease is void. A holder spends a void lease
  only until its next op, and never more than it held.
- **Stranded.** An entry not stamped for ``expiry`` seconds is a stopped
  process's: it is moved to ``stranded``, never back to the pool. A holder
  stops spending a lease before that could happen (allowance.py); if it
  comes back, it gives back exactly what it did not spend.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from keystore.limits.document import (
    Entry,
    LimitDoc,
    Stranded,
    is_refill_due,
    read_doc,
)
from keystore.limits.values import RateLimit, Refill


@dataclass(frozen=True, slots=True)
class Ask:
    """What one holder asks of one document in one op."""

    holder: str
    #: A new id for each op: written with it, so that every commit changes
    #: the document (a commit that changes nothing does not fence).
    op: str
    #: The holder's counts of credits spent, by epoch, and of requests spent
    #: from leases, by window start. Exact: counted as they are spent.
    spent: Mapping[int, int] = field(default_factory=dict)
    requests: Mapping[int, int] = field(default_factory=dict)
    #: Recent use, per second; a lease covers ``horizon`` seconds of it.
    credit_rate: float = 0.0
    request_rate: float = 0.0
    horizon: float = 10.0
    #: Requests waiting for this op, and the credits they cost.
    waiting: int = 0
    waiting_cost: int = 0
    #: Give back everything held (the holder stops, or the key went idle).
    give_back: bool = False
    #: Commit even if nothing else changes: renew the entry's stamp, or fence
    #: off earlier ops of this holder whose outcome is unknown.
    stamp: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """What one op gave, and what the document holds after it."""

    #: Server time of the read the op was planned from, epoch seconds.
    now: float
    #: The document does not exist (a revoked key; an owner without limits).
    missing: bool = False
    #: The key's limits live in this key's row now (it was rotated).
    moved_to: str | None = None
    rate_limit: RateLimit | None = None
    refill: Refill | None = None
    has_credits: bool = False
    epoch: int = 0
    #: The holder's entry after the op; None if it has none.
    entry: Entry | None = None
    #: Server time the entry was stamped at, as read (a commit stamps it anew).
    stamped_at: float | None = None
    credits_granted: int = 0
    #: Credits that went back to the pool (a give-back, or a holder back
    #: from a stop finding its entry stranded).
    credits_returned: int = 0
    pool: int = 0
    #: Credits left: the pool and what every lease held at its last op.
    left: int | None = None
    #: Server time the credits' refill period ends; None without a refill.
    period_end: float | None = None
    window_start: int | None = None
    window_end: float | None = None
    rate_granted: int = 0
    #: Requests of the window no lease holds.
    rate_unclaimed: int = 0
    #: Holders with a lease on the document after the op, this one included.
    holders: int = 1


@dataclass
class Change:
    """The fields a plan sets; commit it only if ``needed``."""

    holder: str
    #: Top-level fields to set, with their values (maps whole).
    sets: dict[str, Any] = field(default_factory=dict)
    #: Stamp ``leases.<holder>.at`` with the commit's time.
    stamp: bool = False

    @property
    def needed(self) -> bool:
        return bool(self.sets)


def plan(
    doc_id: str,
    fields: Mapping[str, Any] | None,
    ask: Ask,
    *,
    now: float,
    expiry: float,
    kind: str = "Key row",
) -> tuple[Change, Grant]:
    """The change ``ask`` makes to the document ``fields`` read at server
    time ``now``, and what it gives; InvalidRow if its limits cannot be read.

    ``expiry``: an entry not stamped for so long is a stopped process's.
    """
    change = Change(ask.holder)
    if fields is None:
        return change, Grant(now=now, missing=True)
    doc = read_doc(doc_id, fields, kind=kind)
    if doc.limits_in is not None:
        return change, Grant(now=now, moved_to=doc.limits_in)
    state = _State.of(doc)

    if doc.is_edited:
        state.rebase(doc.pool)
    if doc.refill is not None and is_refill_due(doc.refill, doc.balance_for, now):
        state.rebase(doc.refill.amount)
        change.sets["refilled_for"] = doc.refill.period(_moment(now))
    state.sweep(ask.holder, now - expiry, doc.has_credits)

    mine = state.leases.pop(ask.holder, None)
    spent = ask.spent.get(state.epoch, 0)
    returned = state.reconcile(ask.holder, spent) if mine is None else 0
    credits, base = (mine.credits, mine.base) if mine else (0, spent)
    granted = 0
    if doc.has_credits:
        unspent = max(0, credits - (spent - base))
        state.pool += returned
        if ask.give_back:
            state.pool += unspent
            returned += unspent
        else:
            needed = max(0, ask.waiting_cost - unspent)
            target = math.ceil(ask.credit_rate * ask.horizon)
            granted = _share(max(target - unspent, 2 * needed), needed, state.pool)
            state.pool -= granted
            credits += granted
    else:
        credits, base, returned = 0, spent, 0

    rate = doc.rate_limit
    window: tuple[int, int, int] | None = None  # (start, requests, their base)
    rate_granted = unclaimed = 0
    window_start = window_end = None
    if rate is not None and rate.is_shared:
        window_start = rate.window_start(now)
        window_end = window_start + rate.window_seconds
        if state.rate_start is None or state.rate_start < window_start:
            state.rate_start, state.rate_count = window_start, 0
        if state.rate_start == window_start:
            used = ask.requests.get(window_start, 0)
            if mine is not None and mine.window == window_start:
                requests, rate_base = mine.rate, mine.rate_base
            else:
                requests, rate_base = 0, used
            unspent_requests = max(0, requests - (used - rate_base))
            if ask.give_back:
                state.rate_count -= min(unspent_requests, state.rate_count)
            elif state.rate_count > rate.limit:
                # The limit was lowered: what this holder has not spent goes
                # back, as far as the window is over it.
                trim = min(unspent_requests, state.rate_count - rate.limit)
                requests -= trim
                state.rate_count -= trim
            else:
                needed = max(0, ask.waiting - unspent_requests)
                seconds = max(0.0, min(ask.horizon, window_end - now))
                target = math.ceil(ask.request_rate * seconds)
                rate_granted = _share(
                    max(target - unspent_requests, 2 * needed),
                    needed,
                    rate.limit - state.rate_count,
                )
                state.rate_count += rate_granted
                requests += rate_granted
            unclaimed = max(0, rate.limit - state.rate_count)
            window = (window_start, requests, rate_base)

    entry: Entry | None = None
    if not ask.give_back:
        entry = Entry(credits=credits, base=base, spent=spent)
        if window is not None:
            entry = replace(
                entry, window=window[0], rate=window[1], rate_base=window[2]
            )
        if entry.credits == 0 and entry.window is None and mine is None:
            entry = None  # nothing to hold: no entry, unless a stamp asks for one
        if ask.stamp and entry is None:
            entry = Entry(base=spent)
    if entry is not None:
        state.leases[ask.holder] = replace(entry, at=None)

    _record(change, doc, state, ask, mine, entry)
    holders = sum(1 for e in state.leases.values() if e.credits or e.rate) or 1
    grant = Grant(
        now=now,
        rate_limit=rate,
        refill=doc.refill,
        has_credits=doc.has_credits,
        epoch=state.epoch,
        entry=entry,
        stamped_at=None if mine is None else mine.at,
        credits_granted=granted,
        credits_returned=returned,
        pool=state.pool,
        left=(
            state.pool + sum(e.held for e in state.leases.values())
            if doc.has_credits
            else None
        ),
        period_end=(
            doc.refill.next_at(_moment(now)).timestamp() if doc.refill else None
        ),
        window_start=window_start,
        window_end=window_end,
        rate_granted=rate_granted,
        rate_unclaimed=unclaimed,
        holders=holders,
    )
    return change, grant


def debit(
    doc_id: str, fields: Mapping[str, Any], amount: int, *, now: float
) -> dict[str, Any] | None:
    """The fields that take ``amount`` credits out of the document's pool for
    good (a caller handing them to a key it creates), as of server time
    ``now``; None if the pool holds fewer. InvalidRow if unreadable."""
    doc = read_doc(doc_id, fields)
    state = _State.of(doc)
    sets: dict[str, Any] = {}
    if doc.is_edited:
        state.rebase(doc.pool)
    if doc.refill is not None and is_refill_due(doc.refill, doc.balance_for, now):
        state.rebase(doc.refill.amount)
        sets["refilled_for"] = doc.refill.period(_moment(now))
    if not doc.has_credits or state.pool < amount:
        return None
    state.pool -= amount
    sets["credits"] = sets["credits_written"] = state.pool
    if state.rebased:
        sets["credits_epoch"] = state.epoch
        sets["leases"] = {}
        sets["stranded"] = {}
    return sets


@dataclass
class _State:
    """The document's lease state as a plan changes it."""

    epoch: int
    pool: int
    leases: dict[str, Entry]
    stranded: dict[str, Stranded]
    rate_start: int | None
    rate_count: int
    rebased: bool = False
    swept: bool = False

    @classmethod
    def of(cls, doc: LimitDoc) -> "_State":
        return cls(
            doc.epoch,
            doc.pool,
            dict(doc.leases),
            dict(doc.stranded),
            doc.rate_start,
            doc.rate_count,
        )

    def rebase(self, pool: int) -> None:
        """A new epoch: the pool is ``pool``, every lease and record void."""
        self.epoch += 1
        self.pool = pool
        self.leases.clear()
        self.stranded.clear()
        self.rebased = True

    def sweep(self, holder: str, stamped_before: float, has_credits: bool) -> None:
        """Move the entries not stamped since ``stamped_before`` to ``stranded``."""
        for other, entry in list(self.leases.items()):
            if other == holder or (entry.at is not None and entry.at > stamped_before):
                continue
            del self.leases[other]
            self.swept = True
            if has_credits and entry.credits:
                self.stranded[other] = Stranded(entry.held, entry.credits, entry.base)

    def reconcile(self, holder: str, spent: int) -> int:
        """A holder back from a stop finds its entry stranded: what it did not
        spend (exactly: it stopped spending before it could be swept)."""
        record = self.stranded.pop(holder, None)
        if record is None:
            return 0
        self.swept = True
        return max(0, record.credits - (spent - record.base))


def _record(
    change: Change,
    doc: LimitDoc,
    state: _State,
    ask: Ask,
    mine: Entry | None,
    entry: Entry | None,
) -> None:
    """Put in ``change`` what the plan changed, if anything, or if asked to."""
    sets = change.sets
    if doc.has_credits and (
        state.rebased or state.pool != doc.pool or doc.written != doc.pool
    ):
        sets["credits"] = sets["credits_written"] = state.pool
    if state.rebased:
        sets["credits_epoch"] = state.epoch
    if doc.rate_limit is not None and (state.rate_start, state.rate_count) != (
        doc.rate_start,
        doc.rate_count,
    ):
        sets["rate_used"] = {"start": state.rate_start, "count": state.rate_count}
    mine_now = None if mine is None else replace(mine, at=None)
    if (
        sets
        or state.rebased
        or state.swept
        or entry != mine_now
        or ask.stamp
        or (ask.give_back and mine is not None)
    ):
        sets["leases"] = {h: _stamped(e) for h, e in state.leases.items()}
        sets["stranded"] = {h: r.to_field() for h, r in state.stranded.items()}
        sets["lease_op"] = ask.op
        change.stamp = entry is not None


def _stamped(entry: Entry) -> dict[str, Any]:
    """An entry as written: its stamp kept (the holder's own gets a new one)."""
    fields = entry.to_field()
    if entry.at is not None:
        fields["at"] = _moment(entry.at)
    return fields


def _share(wanted: int, needed: int, available: int) -> int:
    """What one lease takes: what it wants, but no more than a quarter of what
    is left (so that near the end the other processes get some), and always
    what requests waiting now need, if it is there."""
    if available <= 0:
        return 0
    return min(available, max(needed, min(wanted, -(-available // 4))))


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
