"""What one process holds of one limit document, and when it may spend it.

Pure: every method takes the time (``now``, this process's monotonic clock,
seconds) from its caller, and no method does I/O.

A lease is spent only while it is valid **here**, by a clock that needs no
other: every deadline is measured from the moment the op that brought it was
sent (``sent``), on the monotonic clock, against the server time the op's read
was made at (``grant.now``). Between the two, server time moved by at most
what the monotonic clock did, so:

- the lease is spent until ``expiry - margin`` after its entry was stamped:
  before any other process could take the entry for a stopped one's (it needs
  ``expiry`` by Firestore's clock), however long this process went without
  CPU;
- credits until their refill period ends, requests until their window ends.

An op whose answer was lost leaves the last known state in force, less any
give-back that may have landed: the next op finds out which, and commits
even if it changes nothing else, so that no earlier op can land after it.
"""

import asyncio
import math

from keystore.limits.document import Entry
from keystore.limits.lease import Ask, Grant
from keystore.limits.values import RateLimit, Refill

#: Top up when a lease holds less than this share of what it was sized to.
LOW_WATER = 1 / 4
#: Horizon per holder of leases on a document: n holders topping up every
#: 3/4 of n x 4/3 seconds write the document once a second together.
SECONDS_PER_HOLDER = 4 / 3


def margin(expiry: float) -> float:
    """How long before ``expiry`` a holder stops spending its lease: room for
    a monotonic clock up to 2% slow against Firestore's (NTP keeps them within
    0.05%)."""
    return expiry / 50


class Allowance:
    """What this process holds of one limited document."""

    __slots__ = (
        "collection",
        "doc_id",
        "name",
        "holder",
        "rate",
        "shared",
        "refill",
        "has_credits",
        "known",
        "policy",
        "item",
        "epoch",
        "entry",
        "spent",
        "requests",
        "stamped",
        "stale",
        "credits_held",
        "rate_held",
        "rate_unclaimed",
        "window",
        "window_end",
        "window_until",
        "credits_until",
        "fast_until",
        "credits_low",
        "rate_low",
        "credits_exhausted",
        "rate_exhausted",
        "credits_left",
        "unknown",
        "returning",
        "recheck_at",
        "degraded_until",
        "server_now",
        "server_seen",
        "holders",
        "local_window",
        "local_count",
        "last_used",
        "since",
        "requests_since",
        "spent_since",
        "request_rate",
        "credit_rate",
        "op",
        "waiting",
        "waiting_cost",
        "gone",
        "evicted",
        "seen_version",
    )

    def __init__(
        self, collection: str, doc_id: str, name: str, holder: str, now: float
    ) -> None:
        self.collection, self.doc_id, self.name = collection, doc_id, name
        #: This allowance's entry name in the document: one per allowance,
        #: never reused, so that two allowances never share an entry.
        self.holder = holder
        self.rate: RateLimit | None = None
        self.shared = False  # the rate window is shared by the processes
        self.refill: Refill | None = None
        self.has_credits = False
        self.known = False  # limits known (owners: from the first lease)
        self.policy = b""  # the RateLimit-Policy item
        self.item = b'"%s";r=%%d;t=%%d' % name.encode()  # the RateLimit item
        # The state the last op whose outcome is known left, and this
        # process's exact counts: credits spent in ``epoch``, requests spent
        # from leases of the window starting at ``window`` (earlier ones no
        # longer matter: their leases are void).
        self.epoch: int | None = None
        self.entry: Entry | None = None
        self.spent = 0
        self.requests = 0
        #: When the entry was last stamped, at the latest (monotonic).
        self.stamped = 0.0
        #: The row changed (an operator set the credits): wait for a lease.
        self.stale = False
        # What may be spent now, and until when (monotonic).
        self.credits_held = 0
        self.rate_held = 0
        self.rate_unclaimed = 0
        self.window: int | None = None  # server start of the window held
        self.window_end = 0.0  # and its end, server time
        self.window_until = 0.0  # the end, by the monotonic clock, at the latest
        self.credits_until = 0.0
        # The fast path runs while now < fast_until and enough is held; below
        # the lows, a top-up starts.
        self.fast_until = 0.0
        self.credits_low = self.rate_low = -1.0
        self.credits_exhausted = self.rate_exhausted = False
        self.credits_left: int | None = None  # estimate, for the route
        #: An op's outcome is unknown: the next op commits to fence it off.
        self.unknown = False
        #: A give-back is under way: nothing is spent until it ends.
        self.returning = False
        self.recheck_at = 0.0
        self.degraded_until = 0.0  # a failed op: no lease asked before then
        # Server time at monotonic ``server_seen``, from the last read.
        self.server_now = self.server_seen = 0.0
        self.holders = 1
        # Counted here alone: short windows, and shared ones after a failure.
        self.local_window: int | None = None
        self.local_count = 0
        # Use since the last lease, for sizing the next one.
        self.last_used = self.since = now
        self.requests_since = self.spent_since = 0
        self.request_rate = self.credit_rate = 0.0
        self.op: asyncio.Task[bool] | None = None
        self.waiting = self.waiting_cost = 0
        #: The document is gone (a revoked key): refused until the row changes.
        self.gone = False
        #: Dropped by the sweeper: a record bound to it binds anew.
        self.evicted = False
        #: The version of the row the limits were last taken from.
        self.seen_version: object = None

    # -- limits ---------------------------------------------------------------

    def configure(
        self, rate: RateLimit | None, refill: Refill | None, has_credits: bool
    ) -> None:
        """Take these limits (from a key's row, or any lease's grant)."""
        self.rate, self.refill, self.has_credits, self.known = (
            rate,
            refill,
            has_credits,
            True,
        )
        self.shared = rate is not None and rate.is_shared
        policy = f'"{self.name}";q={rate.limit};w={rate.window_seconds}' if rate else ""
        self.policy = policy.encode()

    # -- what a lease asks ---------------------------------------------------

    def note_use(self, now: float) -> None:
        """Measure recent use, once per op, before it is planned."""
        # At least half a second: a burst in the first moments is not a rate.
        elapsed = max(now - self.since, 0.5)
        self.request_rate = _smoothed(self.request_rate, self.requests_since / elapsed)
        self.credit_rate = _smoothed(self.credit_rate, self.spent_since / elapsed)
        self.requests_since = self.spent_since = 0
        self.since = now

    def horizon(self, lease_seconds: float) -> float:
        """Seconds of use one lease covers: ``lease_seconds``, longer when
        many holders share the document, so that together they write it about
        once a second at most (a lease lasts three quarters of its horizon)."""
        return max(lease_seconds, self.holders * SECONDS_PER_HOLDER)

    def ask(
        self, op: str, lease_seconds: float, *, give_back: bool, stamp: bool
    ) -> Ask:
        """The ask of one op; reads the state, changes nothing."""
        return Ask(
            holder=self.holder,
            op=op,
            spent={} if self.epoch is None else {self.epoch: self.spent},
            requests={} if self.window is None else {self.window: self.requests},
            credit_rate=self.credit_rate,
            request_rate=self.request_rate,
            horizon=self.horizon(lease_seconds),
            waiting=self.waiting,
            waiting_cost=self.waiting_cost,
            give_back=give_back,
            stamp=stamp or self.unknown,
        )

    # -- what an op brings -----------------------------------------------------

    def settle(
        self, grant: Grant, *, sent: float, committed: bool, expiry: float
    ) -> None:
        """Take the state an op left, known for certain: ``committed`` (its
        commit's answer came) or read only (it had nothing to change, and no
        earlier op of this allowance is in doubt). ``sent``: when its read was
        sent, by the monotonic clock."""
        self.configure(grant.rate_limit, grant.refill, grant.has_credits)
        self.server_now, self.server_seen = grant.now, sent
        self.holders = grant.holders
        if grant.epoch != self.epoch:
            self.epoch, self.spent = grant.epoch, 0  # earlier leases are void
        self.entry = entry = grant.entry
        self.unknown = self.stale = False
        valid_until = 0.0
        # A commit stamps the entry after the read, at or after grant.now; a
        # read alone leaves the stamp it found.
        stamped = grant.now if committed else grant.stamped_at
        if entry is not None and stamped is not None:
            self.stamped = sent + (stamped - grant.now)
            valid_until = self.stamped + expiry - margin(expiry)
        self.credits_held = 0
        self.credits_until = 0.0
        if grant.has_credits and entry is not None:
            self.credits_held = entry.unspent(self.spent)
            period = math.inf
            if grant.period_end is not None:
                period = sent + (grant.period_end - grant.now)
            self.credits_until = min(valid_until, period)
        self.credits_left = grant.left
        self.credits_exhausted = grant.has_credits and grant.pool == 0
        self.rate_held = 0
        if grant.window_start is not None and grant.window_end is not None:
            if grant.window_start != self.window:
                self.window, self.requests = grant.window_start, 0
            self.window_end = grant.window_end
            self.window_until = min(valid_until, sent + (grant.window_end - grant.now))
            if entry is not None:
                self.rate_held = entry.requests_unspent(self.window, self.requests)
            self.rate_unclaimed = grant.rate_unclaimed
            self.rate_exhausted = grant.rate_unclaimed == 0 and self.rate_held == 0

    def lost(self, *, give_back: bool) -> None:
        """An op's outcome is unknown: the last known state stands, but what a
        give-back may have returned is spent no more."""
        self.unknown = True
        if give_back:
            self.credits_held = self.rate_held = 0

    def drop(self) -> None:
        """Hold nothing (the document is gone, or holds no limits any more)."""
        self.entry = None
        self.credits_held = self.rate_held = 0
        self.credits_until = self.window_until = 0.0

    @property
    def holds_anything(self) -> bool:
        """True if a give-back has something to do: an entry, or a doubt."""
        return self.entry is not None or self.unknown

    # -- the fast path's deadline ----------------------------------------------

    def refresh(self, now: float, lease_seconds: float) -> None:
        """Set the fast path's deadline and the top-up marks after a change."""
        until = math.inf
        if self.has_credits:
            until = self.credits_until
        if self.rate is not None:
            # A shared window ends; a process's own count takes the slow path.
            until = min(until, self.window_until) if self.shared else 0
        if self.name == "owner":
            until = min(until, self.recheck_at)
        if (
            not self.known
            or self.gone
            or self.stale
            or self.returning
            or self.evicted
            or now < self.degraded_until
        ):
            until = 0
        self.fast_until = until
        horizon = self.horizon(lease_seconds)
        self.rate_low = self.credits_low = -1.0
        if self.shared and not self.rate_exhausted:
            left = min(horizon, self.window_until - now)
            self.rate_low = self.request_rate * left * LOW_WATER
        if self.has_credits and not self.credits_exhausted:
            self.credits_low = self.credit_rate * horizon * LOW_WATER

    def estimated_server_time(self, now: float) -> float:
        """Server time now, as the last read tells (0 before any read)."""
        return self.server_now + (now - self.server_seen)

    def take_credits(self, cost: int) -> None:
        """Spend ``cost`` credits of the lease (the caller checked them held)."""
        self.credits_held -= cost
        self.spent += cost
        self.spent_since += cost
        if self.credits_left is not None:
            self.credits_left -= cost

    def take_request(self) -> None:
        """Spend one request of the shared window's lease."""
        self.rate_held -= 1
        self.requests += 1


def _smoothed(before: float, now: float) -> float:
    """Recent use: the last measure, weighed equally with those before it."""
    return now if before == 0 else (before + now) / 2
