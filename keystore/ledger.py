"""The limit state of a key row or an owner document, changed once per lease.

A process takes from the document what it expects to use in the next few
seconds (a lease) and answers requests from memory until it needs more.

- ``credits`` is the pool: credits not held by any process. A lease moves
  credits from the pool to the holder's entry in ``leases``; a process that
  stops gives back what it did not spend. So credits left = the pool plus
  what the entries hold, and no credit is ever handed out twice.
- ``rate_used`` counts the requests handed out in the current fixed window.
  Leases never carry over to the next window, so each window hands out at
  most its limit.
- A refill (``refill_amount`` per ``refill_interval``) is applied by the first
  lease of a new period, which stamps ``refilled_for``; leases of an older
  period are then worth nothing when given back.

Every change is a read and a commit with the precondition that the document
has not changed since it was read: two processes never both act on one
state. A commit whose answer was lost is found again by its op id in the
holder's entry, so it is never applied twice, nor its grant forgotten.
"""

import asyncio
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from google.cloud.firestore_v1.types import (
    CommitRequest,
    CommitResponse,
    Document,
    DocumentMask,
    DocumentTransform,
    Precondition,
    Write,
)

from keystore._firestore.connection import Connection
from keystore._firestore.errors import Missing, Refused
from keystore._firestore.values import decode_fields, encode_fields
from keystore.errors import StoreUnavailable
from keystore.limits import RateLimit, Refill
from keystore.models import parse_limits

_REQUEST_TIME = DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME
_SIMPLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Tries of one lease when other writers change the document in between; each
#: waits a random moment longer than the one before, so that they spread out.
_TRIES = 20
_BACKOFF_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class Ask:
    """What one process asks of one document in one op."""

    holder: str
    op: str
    #: Wall clock, epoch seconds: picks the rate window and the refill period.
    now: float
    #: Requests wanted (``rate_now`` of them waiting) for the window starting
    #: at ``window_start``.
    rate: int = 0
    rate_now: int = 0
    window_start: int | None = None
    #: Requests of that window held now, and those of them given back.
    rate_held: int = 0
    rate_back: int = 0
    #: Credits wanted (``credits_now`` of them for requests waiting now), and
    #: those held now (unspent) under ``held_period``.
    credits: int = 0
    credits_now: int = 0
    held: int = 0
    held_period: str | None = None
    #: Give back every credit held (the process stops, or the key went idle).
    give_back: bool = False
    #: Stamp the holder's entry anew, so that it is not taken for a stopped
    #: process's (a process that holds credits long without a lease).
    renew: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """What a document gave, and what it holds, after one op."""

    rate_limit: RateLimit | None
    refill: Refill | None
    has_credits: bool
    window_start: int | None = None
    rate_granted: int = 0
    #: Requests of the window no process holds yet.
    rate_unclaimed: int = 0
    credits_granted: int = 0
    #: The refill period the credits belong to (None without refills).
    period: str | None = None
    #: Credits in the pool after the op; credits left (pool plus all leases).
    pool: int = 0
    left: int = 0
    #: Credits of an earlier op whose answer was lost, found to have landed.
    adopted: int = 0
    #: The document does not exist (an owner without limits, a revoked key).
    missing: bool = False
    #: Processes holding a lease on the document now, this one included.
    holders: int = 1


@dataclass
class _Plan:
    holder: str
    sets: dict[str, Any] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    #: Set the holder's entry (with this op id and a server timestamp).
    entry: dict[str, Any] | None = None


def _path(*parts: str) -> str:
    """A Firestore field path, quoting names that are not plain identifiers."""
    quoted = []
    for part in parts:
        if _SIMPLE_NAME.fullmatch(part):
            quoted.append(part)
        else:
            quoted.append("`" + part.replace("\\", "\\\\").replace("`", "\\`") + "`")
    return ".".join(quoted)


def _entries(doc: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    leases = doc.get("leases")
    if not isinstance(leases, Mapping):
        return {}
    return {h: e for h, e in leases.items() if isinstance(e, Mapping)}


def _int(value: Any) -> int:
    return value if type(value) is int else 0


def _time(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def plan(
    doc_id: str,
    doc: Mapping[str, Any],
    ask: Ask,
    *,
    lease_expiry: float,
    updated: float | None = None,
) -> tuple[_Plan, Grant]:
    """The change ``ask`` makes to ``doc``, and what it gives; no I/O.

    Leases expire by Firestore's clock: ``updated`` is the document's last
    update time (epoch seconds), which entries' stamps are compared with, so
    that a process whose clock runs ahead takes no live lease for a dead one.
    InvalidRow if the document's limit fields cannot be read.
    """
    limits = parse_limits(doc_id, doc)
    rate: RateLimit | None = limits["rate_limit"]
    refill: Refill | None = limits["refill"]
    now = datetime.fromtimestamp(ask.now, UTC)
    result = _Plan(ask.holder)
    entries = _entries(doc)

    # Credits: refill first, then what comes back, then what goes out.
    has_credits = doc.get("credits") is not None or refill is not None
    pool = _int(doc.get("credits"))
    period = refill.period(now) if refill else None
    if refill and doc.get("refilled_for") != period:
        pool = refill.amount
        result.sets["refilled_for"] = period
    stranded = _int(doc.get("credits_stranded"))
    for holder, entry in entries.items():
        if holder == ask.holder:
            continue
        at = _time(entry.get("at"))
        server_now = ask.now if updated is None else updated
        if at is not None and at > server_now - lease_expiry:
            continue
        # A lease not renewed for so long is a stopped process's: what it
        # held may have been spent, so it is recorded, never put back.
        result.deletes.append(_path("leases", holder))
        if entry.get("period") == period and _int(entry.get("credits")):
            stranded += _int(entry.get("credits"))
            result.sets["credits_stranded"] = stranded
    mine = entries.get(ask.holder)
    held = ask.held
    if ask.held_period != period:
        held = 0  # from an earlier period: the refill replaced it
    if ask.give_back:
        if held and has_credits and mine is not None:
            pool += held
        held = 0
    granted = _share(ask.credits, ask.credits_now, pool) if has_credits else 0
    pool -= granted
    if has_credits and pool != doc.get("credits"):
        result.sets["credits"] = pool

    # Rate: requests of the current window only.
    rate_granted = unclaimed = 0
    if rate is not None and ask.window_start is not None:
        used = doc.get("rate_used")
        used = used if isinstance(used, Mapping) else {}
        start, count = _int(used.get("start")), _int(used.get("count"))
        if ask.window_start > start:
            start, count = ask.window_start, 0
        if ask.window_start == start:
            count -= min(ask.rate_back, count)
            rate_granted = _share(ask.rate, ask.rate_now, rate.limit - count)
            count += rate_granted
            if (start, count) != (used.get("start"), used.get("count")):
                result.sets["rate_used"] = {"start": start, "count": count}
        unclaimed = max(0, rate.limit - count) if ask.window_start == start else 0

    holding = held + granted
    rate_holding = 0 if ask.give_back else ask.rate_held + rate_granted
    unchanged = (mine is None and holding == 0 and rate_holding == 0) or (
        mine is not None
        and mine.get("credits") == holding
        and mine.get("rate") == rate_holding
        and mine.get("period") == period
    )
    if result.sets or result.deletes or ask.renew or not unchanged:
        # Every commit stamps the holder's entry with its op id, so that a
        # commit whose answer was lost can be told to have landed or not.
        result.entry = {
            "credits": holding,
            "rate": rate_holding,
            "period": period,
            "op": ask.op,
        }
    others = sum(
        _int(e.get("credits"))
        for h, e in entries.items()
        if h != ask.holder
        and e.get("period") == period
        and _path("leases", h) not in result.deletes
    )
    holding_others = sum(
        1
        for h, e in entries.items()
        if h != ask.holder
        and _path("leases", h) not in result.deletes
        and (_int(e.get("credits")) or _int(e.get("rate")))
    )
    grant = Grant(
        holders=holding_others + 1,
        rate_limit=rate,
        refill=refill,
        has_credits=has_credits,
        window_start=ask.window_start,
        rate_granted=rate_granted,
        rate_unclaimed=unclaimed,
        credits_granted=granted,
        period=period,
        pool=pool,
        left=pool + others + holding,
    )
    return result, grant


def _share(wanted: int, needed: int, available: int) -> int:
    """What one lease takes: what it wants, but no more than a quarter of what
    is left (so that near the end the other processes get some), and always
    what requests waiting now need, if it is there."""
    if available <= 0:
        return 0
    return min(available, max(needed, min(wanted, -(-available // 4))))


def _landed(doc: Mapping[str, Any], holder: str, op: str) -> bool:
    entry = _entries(doc).get(holder)
    return entry is not None and entry.get("op") == op


@dataclass(frozen=True, slots=True)
class _Doubt:
    op: str
    #: Credits the op changed the holder's entry by (a give-back: negative).
    credits: int


class Ledger:
    """Leases on limit documents, over ``connection``; one op at a time per
    document is the caller's to ensure (limiter.py runs one per document)."""

    def __init__(
        self,
        connection: Connection,
        *,
        reads: Counter[str],
        writes: Counter[str],
        lease_expiry: float,
    ) -> None:
        self._connection = connection
        self._reads = reads
        self._writes = writes
        self._lease_expiry = lease_expiry
        # Ops whose commit answer was lost, by document: the next op of the
        # document finds out whether they landed.
        self._doubts: dict[str, _Doubt] = {}

    async def settle(
        self, collection: str, doc_id: str, make_ask: Callable[[], Ask]
    ) -> Grant:
        """Apply an ask to the document; what it gave. The ask is made after
        the read, so that it counts the requests that came meanwhile.
        StoreUnavailable if Firestore cannot be reached (the op may then have
        landed: the next op of the document finds out)."""
        connection = self._connection
        await connection.ensure_open()
        name = connection.path(collection, doc_id)
        adopted = 0
        for attempt in range(_TRIES):
            document = await self._read(name)
            if document is None:
                self._doubts.pop(name, None)
                return Grant(None, None, False, missing=True)
            doc = decode_fields(Document.pb(document).fields)
            ask = make_ask()
            doubt = self._doubts.pop(name, None)
            if doubt is not None and _landed(doc, ask.holder, doubt.op):
                # It landed: what it moved is this holder's now.
                self._writes["limits"] += 1
                adopted += doubt.credits
            if adopted:
                ask = replace(ask, held=ask.held + adopted)
            updated = Document.pb(document).update_time.ToNanoseconds() / 1e9
            change, grant = plan(
                doc_id, doc, ask, lease_expiry=self._lease_expiry, updated=updated
            )
            if not (change.sets or change.deletes or change.entry):
                return _with(grant, adopted)
            write = self._write(name, change, Document.pb(document).update_time)
            moved = grant.credits_granted - (ask.held if ask.give_back else 0)
            self._doubts[name] = _Doubt(ask.op, moved)
            try:
                await self._commit(write, f"lease on {collection}/{doc_id}")
            except Missing:
                self._doubts.pop(name, None)
                return Grant(None, None, False, missing=True)
            except Refused:
                self._doubts.pop(name, None)  # refused: it changed nothing
                await _backoff(attempt)
                continue
            self._doubts.pop(name, None)
            self._writes["limits"] += 1
            return _with(grant, adopted)
        raise StoreUnavailable(f"Too many writers on {collection}/{doc_id}; retry.")

    async def _read(self, name: str, cause: str = "limits") -> Any:
        document = await self._connection.get_document(name, "read of limits")
        self._reads[cause] += 1
        return document

    def _write(self, name: str, change: _Plan, update_time: Any) -> Write:
        fields = dict(change.sets)
        paths = [_path(field) for field in change.sets]
        transforms = []
        paths += change.deletes
        if change.entry is not None:
            fields["leases"] = {change.holder: change.entry}
            holder_path = _path("leases", change.holder)
            paths.append(holder_path)
            transforms.append(
                DocumentTransform.FieldTransform(
                    field_path=f"{holder_path}.at", set_to_server_value=_REQUEST_TIME
                )
            )
        return Write(
            update=Document(name=name, fields=encode_fields(fields)),
            update_mask=DocumentMask(field_paths=paths),
            update_transforms=transforms,
            current_document=Precondition(update_time=update_time),
        )

    async def _commit(self, write: Write, what: str) -> int:
        """Commit ``write``; its commit time (ns)."""
        connection = self._connection
        request = CommitRequest(database=connection.database, writes=[write])
        answer = await connection.call(
            what,
            lambda client: client.commit(
                request=request,
                retry=None,
                timeout=connection.attempt_timeout,
                metadata=connection.metadata,
            ),
            # Not retried blindly: a lost answer is resolved by the op id.
            retry=False,
        )
        return int(CommitResponse.pb(answer).commit_time.ToNanoseconds())

    async def read(self, collection: str, doc_id: str, *, cause: str) -> Any:
        """One document's fields, or None if there is none."""
        await self._connection.ensure_open()
        document = await self._read(self._connection.path(collection, doc_id), cause)
        return None if document is None else decode_fields(Document.pb(document).fields)

    async def change(
        self,
        collection: str,
        doc_id: str,
        changes: Callable[[Mapping[str, Any] | None], dict[str, Any]],
        *,
        cause: str,
    ) -> tuple[dict[str, Any], int]:
        """Set the fields ``changes(doc)`` returns, on the document as it is
        (None: there is none, and it is made); the document after, and the
        commit time (ns)."""
        connection = self._connection
        await connection.ensure_open()
        name = connection.path(collection, doc_id)
        for attempt in range(_TRIES):
            document = await self._read(name)
            doc = (
                None
                if document is None
                else decode_fields(Document.pb(document).fields)
            )
            sets = changes(doc)
            precondition = (
                Precondition(exists=False)
                if document is None
                else Precondition(update_time=Document.pb(document).update_time)
            )
            write = Write(
                update=Document(name=name, fields=encode_fields(sets)),
                update_mask=DocumentMask(field_paths=[_path(f) for f in sets]),
                current_document=precondition,
            )
            try:
                # Sets, not increments: sending them again changes nothing more.
                at = await self._commit(write, f"limits of {collection}/{doc_id}")
            except Refused:
                await _backoff(attempt)
                continue
            self._writes[cause] += 1
            return {**(doc or {}), **sets}, at
        raise StoreUnavailable(f"Too many writers on {collection}/{doc_id}; retry.")


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, _BACKOFF_SECONDS * (attempt + 1)))


def _with(grant: Grant, adopted: int) -> Grant:
    return replace(grant, adopted=adopted) if adopted else grant


#: Leave a limit as it is (``None`` removes it).
UNSET: Any = object()


def limit_changes(
    doc: Mapping[str, Any],
    now: datetime,
    *,
    rate_limit: RateLimit | None = UNSET,
    credits: int | None = UNSET,
    refill: Refill | None = UNSET,
) -> dict[str, Any]:
    """The fields that set these limits on ``doc`` (a key row or an owner).

    ``credits`` sets the credits left: the pool is what processes do not hold.
    Setting credits (or a refill on a document with credits) stamps the current
    period as refilled, so that the balance set now is not replaced before the
    next period.
    """
    sets: dict[str, Any] = {}
    if rate_limit is not UNSET:
        sets["rate_limit"] = rate_limit.limit if rate_limit else None
        sets["rate_window_seconds"] = rate_limit.window_seconds if rate_limit else None
    current = parse_limits("limits", doc)["refill"]
    if refill is not UNSET:
        sets["refill_amount"] = refill.amount if refill else None
        sets["refill_interval"] = refill.interval if refill else None
        current = refill
    period = current.period(now) if current else None
    if credits is not UNSET:
        held = sum(
            _int(e.get("credits"))
            for e in _entries(doc).values()
            if e.get("period") == period
        )
        sets["credits"] = None if credits is None else max(0, credits - held)
    has_credits = sets.get("credits", doc.get("credits")) is not None
    if current and has_credits and (credits is not UNSET or refill is not UNSET):
        sets["refilled_for"] = period
    return sets


@dataclass(frozen=True, slots=True)
class LimitView:
    """A document's limits and where its credits are, for people to read."""

    rate_limit: RateLimit | None
    refill: Refill | None
    #: Credits left (pool plus leases of this period), None without credits.
    credits: int | None
    #: Of those, held by processes now; credits of stopped processes, lost.
    held: int
    stranded: int
    next_refill: datetime | None
    #: Requests handed out in the current rate window.
    rate_used: int


def describe(doc_id: str, doc: Mapping[str, Any], now: datetime) -> LimitView:
    """What ``doc``'s limits stand at ``now``; InvalidRow if unreadable."""
    limits = parse_limits(doc_id, doc)
    rate: RateLimit | None = limits["rate_limit"]
    refill: Refill | None = limits["refill"]
    period = refill.period(now) if refill else None
    held = sum(
        _int(e.get("credits"))
        for e in _entries(doc).values()
        if e.get("period") == period
    )
    credits: int | None = None
    if doc.get("credits") is not None or refill is not None:
        if refill and doc.get("refilled_for") != period:
            credits, held = refill.amount, 0  # due: the next lease applies it
        else:
            credits = _int(doc.get("credits")) + held
    used = doc.get("rate_used")
    rate_used = 0
    if rate and isinstance(used, Mapping):
        if used.get("start") == rate.window_start(now.timestamp()):
            rate_used = _int(used.get("count"))
    return LimitView(
        rate_limit=rate,
        refill=refill,
        credits=credits,
        held=held,
        stranded=_int(doc.get("credits_stranded")),
        next_refill=refill.next_at(now) if refill else None,
        rate_used=rate_used,
    )
