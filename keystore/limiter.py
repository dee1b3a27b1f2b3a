"""Usage limits on the request path: answered from leases held in memory.

Each limited document (a key row, an owner document) has an allowance here:
the requests of the current rate window and the credits this process holds.
A request takes from them without I/O. When one runs low, a lease (ledger.py)
tops it up in the background, sized to what this process used lately, so the
request path waits on Firestore only when a lease is empty: a process's first
request for a key, the first of a rate window, or a burst beyond the estimate.

Bounds, with n processes and leases sized to ``lease_seconds`` of use:
- credits: never more accepted than given (leases are taken, never made up);
  at most n leases are held unspent at any time; a stopped process gives back
  what it held (one held by a killed process is lost, and recorded).
- rate, windows of ``SHARED_WINDOW_SECONDS`` or more: at most the limit per
  fixed window (leases end with their window); at least the limit less what
  the processes held unspent when it ended, at most one lease each.
- rate, shorter windows, and any window while Firestore cannot be reached:
  counted by each process alone, at most the limit per process.

The request path has two halves. The fast one (``spend``) only compares and
subtracts: it runs while every allowance holds enough and none has reached
its deadline (``fast_until``: the end of the rate window, of the refill
period, of the UTC day, or of an outage's pause). Everything else, and the
first request after a deadline, takes the slow one.
"""

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from keystore.background import Background
from keystore.errors import (
    CreditsExhausted,
    InvalidRow,
    KeyNotFound,
    RateLimited,
    StoreUnavailable,
)
from keystore.ledger import Ask, Grant, Ledger
from keystore.limits import RateLimit, Refill, seconds_until
from keystore.models import ApiKey

logger = logging.getLogger(__name__)

_DAY_SECONDS = 86_400
#: A lease is topped up when it holds less than this share of its target.
_LOW_WATER = 1 / 4
#: Horizon per process holding leases on a document: n processes topping up
#: every 3/4 of n x 4/3 seconds write it once a second together.
_SECONDS_PER_HOLDER = 4 / 3


#: The draft's header names, as a response spells them out of raw_headers.
_HEADER_NAMES = {b"ratelimit-policy": "RateLimit-Policy", b"ratelimit": "RateLimit"}


class Allowance:
    """What this process holds of one limited document."""

    __slots__ = (
        "collection",
        "doc_id",
        "name",
        "rate",
        "shared",
        "refill",
        "has_credits",
        "known",
        "revoked",
        "policy",
        "state",
        "fast_until",
        "rate_low",
        "credits_low",
        "window",
        "rate_held",
        "rate_unclaimed",
        "rate_exhausted",
        "local_window",
        "local_count",
        "credits_held",
        "period",
        "period_end",
        "credits_left",
        "reported",
        "credits_exhausted",
        "exhausted_seen",
        "recheck_at",
        "degraded_until",
        "leased_at",
        "last_used",
        "holders",
        "requests",
        "spent",
        "since",
        "request_rate",
        "credit_rate",
        "day_end",
        "spent_today",
        "op",
        "waiting",
        "waiting_cost",
    )

    def __init__(self, collection: str, doc_id: str, name: str, now: float) -> None:
        self.collection, self.doc_id, self.name = collection, doc_id, name
        self.rate: RateLimit | None = None
        self.shared = False  # the rate window is shared by the processes
        self.refill: Refill | None = None
        self.has_credits = False
        self.known = False  # config known (owners: from the first lease)
        self.revoked = False
        self.policy = b""  # the RateLimit-Policy item
        self.state = b'"%s";r=%%d;t=%%d' % name.encode()  # the RateLimit item
        # The fast path runs until this moment, while holding at least 1
        # request and the request's credits; below the lows, it tops up.
        self.fast_until = 0.0
        self.rate_low = self.credits_low = -1.0
        # The shared rate window, requests held of it, and none unclaimed.
        self.window = -1
        self.rate_held = self.rate_unclaimed = 0
        self.rate_exhausted = False
        # Counted here alone: short windows, and shared ones in an outage.
        self.local_window = -1
        self.local_count = 0
        # Credits held, the refill period they belong to and its end.
        self.credits_held = 0
        self.period: str | None = None
        self.period_end = math.inf
        self.credits_left = 0  # estimate of all credits left, for the route
        self.reported = 0  # what this process's entry says it holds
        self.credits_exhausted = False
        self.exhausted_seen: int | None = None
        self.recheck_at = 0.0
        self.degraded_until = 0.0  # an outage: no lease asked before then
        self.leased_at = self.last_used = self.since = now
        self.holders = 1
        # Use since the last lease, for sizing the next one.
        self.requests = self.spent = 0
        self.request_rate = self.credit_rate = 0.0
        # Credits spent today (UTC), for the usage counts.
        self.day_end = (now // _DAY_SECONDS + 1) * _DAY_SECONDS
        self.spent_today = 0
        self.op: asyncio.Task[bool] | None = None
        self.waiting = self.waiting_cost = 0


class Limiter:
    """Rate limits and credits of keys and owners, for one process."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        keys: str,
        owners: str,
        lease_seconds: float,
        lease_expiry: float,
        retry_after: int,
        recheck_seconds: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self._keys, self._owners = keys, owners
        self._lease_seconds = lease_seconds
        self._lease_expiry = lease_expiry
        self._retry_after = retry_after
        self._recheck = recheck_seconds
        self._wall = wall
        self.holder = "h" + uuid.uuid4().hex
        self._allowances: dict[tuple[str, str], Allowance] = {}
        #: Requests refused, by cause ("rate", "credits"); credits spent.
        self.refused: Counter[str] = Counter()
        self.credits_spent = 0
        #: Requests checked against limits, and those that waited for a lease.
        self.checks = 0
        self.waits = 0
        self.waits_again = 0
        # Credits spent by keys on days gone by, not yet taken by the counts.
        self._spent_days: Counter[tuple[str, int]] = Counter()
        self.sweeper = Background(self._sweep_forever, name="lease sweeper")
        self._invalid_warned: set[str] = set()

    def __len__(self) -> int:
        return len(self._allowances)

    # -- the request path -------------------------------------------------------

    async def spend(self, record: ApiKey, cost: int = 1) -> None:
        """Let one request of ``record`` through at ``cost`` credits, or raise
        RateLimited, CreditsExhausted, KeyNotFound (the row is gone), or
        StoreUnavailable (credits not held and Firestore unreachable)."""
        if not self.spend_now(record, cost):
            await self._spend_slowly(record.allowances, cost, self._wall())

    def spend_now(self, record: ApiKey, cost: int = 1) -> bool:
        """Spend from what this process holds, if that answers: True if the
        request passed; False if ``spend`` must decide (it may wait)."""
        # One flat function, no coroutine: the hot path, in microseconds.
        allowances = record.allowances or self._bind(record)
        now = self._wall()
        for a in allowances:
            if (
                now >= a.fast_until
                or (a.shared and a.rate_held < 1)
                or (cost and a.has_credits and a.credits_held < cost)
            ):
                return False
        self.checks += 1
        for a in allowances:
            a.requests += 1
            a.last_used = now
            if a.shared:
                a.rate_held -= 1
            if cost and a.has_credits:
                a.credits_held -= cost
                a.credits_left -= cost
                a.spent += cost
                a.spent_today += cost
                self.credits_spent += cost
            if (a.rate_held < a.rate_low or a.credits_held < a.credits_low) and (
                a.op is None
            ):
                a.op = asyncio.ensure_future(self._run_lease(a))
        return True

    def _bind(self, record: ApiKey) -> tuple[Allowance, ...]:
        """The allowances of ``record``, kept on it (a record is immutable:
        a changed row comes as a new record, bound anew)."""
        found = []
        if record.rate_limit is not None or record.has_credit_limit:
            allowance = self._allowance(self._keys, record.id, "key")
            self._configure(allowance, record)
            found.append(allowance)
        if record.owner is not None:
            found.append(self._allowance(self._owners, record.owner, "owner"))
        bound = tuple(found)
        object.__setattr__(record, "allowances", bound)
        return bound

    def _allowance(self, collection: str, doc_id: str, name: str) -> Allowance:
        allowance = self._allowances.get((collection, doc_id))
        if allowance is None:
            allowance = Allowance(collection, doc_id, name, self._wall())
            self._allowances[collection, doc_id] = allowance
        return allowance

    def _configure(self, a: Allowance, record: ApiKey) -> None:
        # A key's limits come with its row, as fresh as the sync mode keeps it.
        self._set_limits(a, record.rate_limit, record.refill, record.has_credit_limit)
        if a.exhausted_seen != record.credits:
            # The row changed (an operator added credits, say): ask again.
            if a.exhausted_seen is not None:
                a.credits_exhausted = False
            a.exhausted_seen = record.credits
        self._refresh(a, self._wall())

    def _set_limits(
        self, a: Allowance, rate: RateLimit | None, refill: Refill | None, credits: bool
    ) -> None:
        a.rate, a.refill, a.has_credits, a.known = rate, refill, credits, True
        a.shared = rate is not None and rate.is_shared
        policy = f'"{a.name}";q={rate.limit};w={rate.window_seconds}' if rate else ""
        a.policy = policy.encode()

    def _refresh(self, a: Allowance, now: float) -> None:
        """Set the fast path's deadline and the top-up marks after a change."""
        until = min(a.period_end, a.day_end)
        if a.rate is not None:
            # A shared window ends; a process's own counts take the slow path.
            until = min(until, a.window + a.rate.window_seconds) if a.shared else 0
        if a.name == "owner":
            until = min(until, a.recheck_at)
        if not a.known or a.revoked or now < a.degraded_until:
            until = 0
        a.fast_until = until
        horizon = self._horizon(a)
        a.rate_low = a.credits_low = -1.0
        if a.shared and not a.rate_exhausted and a.rate is not None:
            left = min(horizon, a.window + a.rate.window_seconds - now)
            a.rate_low = a.request_rate * left * _LOW_WATER
        if a.has_credits and not a.credits_exhausted:
            a.credits_low = a.credit_rate * horizon * _LOW_WATER

    async def _spend_slowly(
        self, allowances: Sequence[Allowance], cost: int, now: float
    ) -> None:
        self.checks += 1
        for a in allowances:
            a.requests += 1
            a.last_used = now
            if now >= a.day_end:
                self._roll_day(a, now)
        short = [a for a in allowances if not self._check(a, cost, now)]
        if short:
            # One wait, for every lease this request needs at once; a second
            # only if the first was planned before this request came.
            self.waits += 1
            for last in (False, True):
                await asyncio.gather(*(self._lease(a, cost) for a in short))
                now = self._wall()
                short = []
                for a in allowances:
                    if not self._check(a, cost, now):
                        if last:
                            self._refuse(a, now)
                        short.append(a)
                if not short:
                    break
                self.waits_again += 1
        for a in allowances:
            self._take(a, cost, now)
            self._refresh(a, now)
            if (a.rate_held < a.rate_low or a.credits_held < a.credits_low) and (
                a.op is None and now >= a.degraded_until
            ):
                a.op = asyncio.ensure_future(self._run_lease(a))

    def _check(self, a: Allowance, cost: int, now: float) -> bool:
        """True if memory lets the request through; False if a lease is needed
        first; raises the refusals that memory can tell."""
        if a.revoked:
            raise KeyNotFound()
        if not a.known:
            return False
        if a.name == "owner" and now >= a.recheck_at and a.op is None:
            # An owner's limits are learnt from its leases: refresh them.
            a.op = asyncio.ensure_future(self._run_lease(a))
        degraded = now < a.degraded_until
        rate = a.rate
        if rate is not None:
            start = rate.window_start(now)
            if not a.shared or degraded:
                if start != a.local_window:
                    a.local_window, a.local_count = start, 0
                if a.local_count >= rate.limit:
                    self._refuse_rate(rate, now)
            else:
                if start != a.window:
                    a.window, a.rate_held, a.rate_exhausted = start, 0, False
                if a.rate_held < 1:
                    if a.rate_exhausted:
                        self._refuse_rate(rate, now)
                    return False
        if cost and a.has_credits:
            if now >= a.period_end:
                a.credits_held, a.credits_exhausted = 0, False
            if a.credits_held < cost:
                if a.credits_exhausted and now < a.recheck_at:
                    self._refuse_credits(a, now)
                if degraded:
                    raise StoreUnavailable("Credits cannot be leased now.")
                return False
        return True

    def _refuse(self, a: Allowance, now: float) -> None:
        """Still short after a lease: refuse for the limit that is short."""
        if a.revoked:
            raise KeyNotFound()
        if not a.known:
            raise StoreUnavailable("The limits could not be read.")
        if a.rate is not None and a.shared and a.rate_held < 1:
            self._refuse_rate(a.rate, now)
        if now < a.degraded_until:
            raise StoreUnavailable("Credits cannot be leased now.")
        self._refuse_credits(a, now)

    def _refuse_rate(self, rate: RateLimit, now: float) -> None:
        self.refused["rate"] += 1
        end = rate.window_start(now) + rate.window_seconds
        raise RateLimited(seconds_until(end, now))

    def _refuse_credits(self, a: Allowance, now: float) -> None:
        self.refused["credits"] += 1
        retry = None if a.refill is None else seconds_until(a.period_end, now)
        raise CreditsExhausted(retry)

    def _take(self, a: Allowance, cost: int, now: float) -> None:
        if a.rate is not None:
            if not a.shared or now < a.degraded_until:
                a.local_count += 1
            else:
                a.rate_held -= 1
        if cost and a.has_credits:
            a.credits_held -= cost
            a.credits_left = max(0, a.credits_left - cost)
            a.spent += cost
            a.spent_today += cost
            self.credits_spent += cost

    def _roll_day(self, a: Allowance, now: float) -> None:
        if a.spent_today and a.name == "key":
            self._spent_days[a.doc_id, int(a.day_end // _DAY_SECONDS) - 1] += (
                a.spent_today
            )
        a.spent_today = 0
        a.day_end = (now // _DAY_SECONDS + 1) * _DAY_SECONDS

    def take_spent(self) -> Counter[tuple[str, int]]:
        """Credits spent by keys since the last call, by (key id, UTC day)."""
        spent, self._spent_days = self._spent_days, Counter()
        for a in self._allowances.values():
            if a.spent_today and a.name == "key":
                spent[a.doc_id, int(a.day_end // _DAY_SECONDS) - 1] += a.spent_today
                a.spent_today = 0
        return spent

    # -- what a response tells -----------------------------------------------------

    def headers(self, record: ApiKey) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` for the rate limits of
        ``record`` (draft-ietf-httpapi-ratelimit-headers); none without one."""
        return {
            _HEADER_NAMES[name]: value.decode()
            for name, value in self.raw_headers(record)
        }

    def raw_headers(self, record: ApiKey) -> list[tuple[bytes, bytes]]:
        """``headers`` as ASGI raw headers, to add to a response as they are."""
        # Bytes formatted in place: this runs on every response.
        now = self._wall()
        policies, states = [], []
        for a in record.allowances or self._bind(record):
            rate = a.rate
            if rate is None:
                continue
            start = rate.window_start(now)
            if a.shared and a.window == start and now >= a.degraded_until:
                remaining = a.rate_held + a.rate_unclaimed
            elif a.local_window == start:
                remaining = rate.limit - a.local_count
            else:
                remaining = rate.limit
            policies.append(a.policy)
            reset = seconds_until(start + rate.window_seconds, now)
            states.append(a.state % (max(0, remaining), reset))
        if not policies:
            return []
        return [
            (b"ratelimit-policy", b", ".join(policies)),
            (b"ratelimit", b", ".join(states)),
        ]

    # -- leases -------------------------------------------------------------------

    def _horizon(self, a: Allowance) -> float:
        """Seconds of use one lease covers: ``lease_seconds``, longer when many
        processes share the document, so that together they write it about
        once a second at most (a lease lasts three quarters of its horizon)."""
        return max(self._lease_seconds, a.holders * _SECONDS_PER_HOLDER)

    async def _lease(self, a: Allowance, cost: int) -> None:
        """Wait for a lease on ``a``: the one under way, or a new one."""
        if a.op is None:
            a.op = asyncio.ensure_future(self._run_lease(a))
        a.waiting += 1
        a.waiting_cost += cost
        try:
            await asyncio.shield(a.op)
        finally:
            a.waiting -= 1
            a.waiting_cost -= cost

    async def _run_lease(
        self, a: Allowance, *, give_back: bool = False, renew: bool = False
    ) -> bool:
        """One lease on ``a``; False if Firestore could not give it."""
        try:
            grant = await self.ledger.settle(
                a.collection,
                a.doc_id,
                lambda: self._ask(a, give_back=give_back, renew=renew),
            )
        except StoreUnavailable as exc:
            a.degraded_until = self._wall() + self._retry_after
            a.fast_until = 0
            logger.debug("lease on %s %s failed: %s", a.name, a.doc_id, exc)
            return False
        except InvalidRow as exc:
            a.degraded_until = self._wall() + self._retry_after
            a.fast_until = 0
            if a.doc_id not in self._invalid_warned:
                self._invalid_warned.add(a.doc_id)
                logger.warning("%s", exc)
            return False
        finally:
            a.op = None
        self._apply(a, grant, give_back=give_back)
        return True

    def _ask(self, a: Allowance, *, give_back: bool, renew: bool = False) -> Ask:
        now = self._wall()
        # At least half a second: a burst in the first moments is not a rate.
        elapsed = max(now - a.since, 0.5)
        a.request_rate = _smoothed(a.request_rate, a.requests / elapsed)
        a.credit_rate = _smoothed(a.credit_rate, a.spent / elapsed)
        a.requests = a.spent = 0
        a.since = now
        horizon = self._horizon(a)
        rate, window = a.rate, None
        rate_held = rate_want = rate_now = credit_want = credits_now = 0
        if rate is not None and a.shared:
            window = rate.window_start(now)
            rate_held = a.rate_held if a.window == window else 0
            if not give_back:
                left_in_window = window + rate.window_seconds - now
                target = math.ceil(a.request_rate * min(horizon, left_in_window))
                # Requests waiting now need one each, and as many more may
                # come while the lease is under way.
                rate_now = max(0, a.waiting - rate_held)
                rate_want = max(target - rate_held, 2 * rate_now)
        if not give_back:
            target = math.ceil(a.credit_rate * horizon)
            credits_now = max(0, a.waiting_cost - a.credits_held)
            credit_want = max(target - a.credits_held, 2 * credits_now)
        return Ask(
            holder=self.holder,
            op=uuid.uuid4().hex,
            now=now,
            rate=rate_want,
            rate_now=rate_now,
            window_start=window,
            rate_held=rate_held,
            rate_back=rate_held if give_back else 0,
            credits=credit_want,
            credits_now=credits_now,
            held=a.credits_held,
            held_period=a.period,
            give_back=give_back,
            renew=renew,
        )

    def _apply(self, a: Allowance, grant: Grant, *, give_back: bool) -> None:
        now = self._wall()
        a.recheck_at = now + self._recheck
        a.leased_at = now
        a.holders = grant.holders
        if grant.missing:
            if a.name == "key":
                a.revoked = True  # the row is gone: the key was revoked
            else:
                self._set_limits(a, None, None, False)  # an owner without limits
            self._refresh(a, now)
            return
        self._set_limits(a, grant.rate_limit, grant.refill, grant.has_credits)
        if grant.window_start is not None:
            if a.window != grant.window_start:
                a.window, a.rate_held = grant.window_start, 0
            a.rate_held = 0 if give_back else a.rate_held + grant.rate_granted
            a.rate_unclaimed = grant.rate_unclaimed
            a.rate_exhausted = grant.rate_unclaimed == 0 and a.rate_held == 0
        if a.period != grant.period:
            a.credits_held = 0  # an earlier period's: the refill replaced them
        a.period = grant.period
        a.period_end = (
            math.inf
            if grant.refill is None
            else grant.refill.next_at(datetime.fromtimestamp(now, UTC)).timestamp()
        )
        if give_back:
            a.credits_held = 0
        else:
            a.credits_held += grant.credits_granted + grant.adopted
        a.reported = a.credits_held
        a.credits_left = grant.left
        a.credits_exhausted = (
            a.has_credits and grant.pool == 0 and grant.credits_granted == 0
        )
        self._refresh(a, now)

    # -- background: idle leases go back ------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self._lease_seconds, self._lease_expiry / 4))
            await self.give_back(idle_for=2 * self._lease_seconds)
            await self._renew_stale()

    async def _renew_stale(self) -> None:
        """Renew the entries of leases held longer than a third of the expiry."""
        now = self._wall()
        stale = [
            a
            for a in self._allowances.values()
            if a.reported
            and a.op is None
            and now - a.leased_at >= self._lease_expiry / 3
        ]
        for a in stale:
            a.op = asyncio.ensure_future(self._run_lease(a, renew=True))
        await asyncio.gather(*(asyncio.shield(a.op) for a in stale if a.op))

    async def give_back(self, *, idle_for: float = 0.0) -> int:
        """Give back what is held for documents unused for ``idle_for`` seconds;
        the number of documents Firestore could not take it back for."""
        now = self._wall()
        idle = [a for a in self._allowances.values() if now - a.last_used >= idle_for]
        done = await asyncio.gather(*(self._give_back(a) for a in idle))
        return done.count(False)

    async def _give_back(self, a: Allowance) -> bool:
        if a.op is not None:
            await asyncio.shield(a.op)  # a top-up under way: then give it back
        if a.op is None and (a.credits_held or a.rate_held or a.reported):
            a.op = asyncio.ensure_future(self._run_lease(a, give_back=True))
            return await asyncio.shield(a.op)
        return True


def _smoothed(before: float, now: float) -> float:
    """Recent use: the last measure, weighed equally with those before it."""
    return now if before == 0 else (before + now) / 2
