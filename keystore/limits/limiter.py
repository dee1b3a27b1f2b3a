"""Usage limits on the request path: answered from leases held in memory.

A limited record (a key with limits, or an owner) is bound to its
allowances (allowance.py): what this process holds of the documents its
limits live in. A request takes from them without I/O (``try_spend``); when
one runs low, a lease tops it up in the background (ledger.py), so the
request path waits on Firestore only when a lease is empty, has ended, or
the row changed (``spend``). docs/limits.md states the bounds.
"""

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from keystore.errors import (
    CreditsExhausted,
    KeyNotFound,
    RateLimited,
    StoreUnavailable,
)
from keystore.limits.allowance import Allowance
from keystore.limits.ledger import Ledger
from keystore.limits.ops import Ops
from keystore.limits.sweeper import Sweeper
from keystore.limits.values import RateLimit, seconds_until
from keystore.models import ApiKey

logger = logging.getLogger(__name__)

#: One limit for a response's RateLimit headers: its RateLimit-Policy item,
#: the RateLimit item's template, the requests left and seconds to reset.
RateItem = tuple[bytes, bytes, int, int]


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
        wait_seconds: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys, self._owners = keys, owners
        self._lease_seconds = lease_seconds
        self._wait_seconds = wait_seconds
        self._timer = timer
        self._allowances: dict[tuple[str, str], Allowance] = {}
        #: Runs the ops on allowances; gives back what is idle, at shutdown too.
        self.ops = Ops(
            ledger,
            lease_seconds=lease_seconds,
            lease_expiry=lease_expiry,
            retry_after=retry_after,
            recheck_seconds=recheck_seconds,
            timer=timer,
        )
        self.sweeper = Sweeper(
            self.ops,
            self._allowances,
            keys=keys,
            lease_seconds=lease_seconds,
            lease_expiry=lease_expiry,
            timer=timer,
        )
        #: Requests refused, by cause ("rate", "credits"); credits spent.
        self.refused: Counter[str] = Counter()
        self.credits_spent = 0
        #: Requests checked against limits, and those that waited for a lease.
        self.checks = 0
        self.waits = 0

    def __len__(self) -> int:
        """Allowances held in memory."""
        return len(self._allowances)

    # -- the request path -------------------------------------------------------

    def try_spend(self, record: ApiKey, cost: int = 1) -> int:
        """Spend from what this process holds, if that answers: the credits
        the request was charged (0 or ``cost``); -1 if ``spend`` must decide."""
        # One flat function, no coroutine: the hot path, in microseconds.
        allowances = record.allowances
        if allowances is None:
            allowances = self._bind(record)
        now = self._timer()
        for a in allowances:
            if (
                now >= a.fast_until
                or (a.shared and a.rate_held < 1)
                or (cost and a.has_credits and a.credits_held < cost)
            ):
                return -1
        self.checks += 1
        charged = 0
        for a in allowances:
            a.requests_since += 1
            a.last_used = now
            if a.shared:
                a.rate_held -= 1
                a.requests += 1
            if cost and a.has_credits:
                a.credits_held -= cost
                a.spent += cost
                a.spent_since += cost
                charged = cost
                if a.credits_left is not None:
                    a.credits_left -= cost
            if (a.rate_held < a.rate_low or a.credits_held < a.credits_low) and (
                a.op is None
            ):
                self.ops.start(a)
        self.credits_spent += charged
        return charged

    async def spend(self, record: ApiKey, cost: int = 1) -> int:
        """Let one request of ``record`` through at ``cost`` credits: the
        credits charged; or RateLimited, CreditsExhausted, KeyNotFound (the
        row is gone), or StoreUnavailable (no lease to be had now)."""
        charged = self.try_spend(record, cost)
        if charged >= 0:
            return charged
        allowances = self._allowances_of(record)
        now = self._timer()
        self.checks += 1
        for a in allowances:
            a.requests_since += 1
            a.last_used = now
        short = [a for a in allowances if not self._check(a, cost, now)]
        if short:
            # One wait for every lease this request needs at once; a second
            # only if the first was planned before this request came.
            self.waits += 1
            for last in (False, True):
                await self._wait(short, cost)
                now = self._timer()
                short = [a for a in allowances if not self._check(a, cost, now)]
                if not short:
                    break
                if last:
                    self._refuse(short[0], cost, now)
        charged = 0
        for a in allowances:
            charged = max(charged, self._take(a, cost, now))
            a.refresh(now, self._lease_seconds)
            if (a.rate_held < a.rate_low or a.credits_held < a.credits_low) and (
                a.op is None and now >= a.degraded_until
            ):
                self.ops.start(a)
        self.credits_spent += charged
        return charged

    def credits_left(self, record: ApiKey) -> int | None:
        """Credits left of the key itself, as this process knows them now."""
        for a in record.allowances or ():
            if a.name == "key" and a.has_credits and a.credits_left is not None:
                return max(0, a.credits_left)
        return record.credits

    def rate_items(self, record: ApiKey) -> list[RateItem]:
        """The rate limits of ``record`` and its owner, as they stand now."""
        now = self._timer()
        items = []
        allowances = record.allowances
        if allowances is None:
            allowances = self._bind(record)
        for a in allowances:
            rate = a.rate
            if rate is None:
                continue
            if a.shared and now < a.degraded_until:
                start = rate.window_start(a.estimated_server_time(now))
                remaining = rate.limit - self._taken(a, start)
                reset = start + rate.window_seconds - a.estimated_server_time(now)
            elif a.shared and a.window is not None and now < a.window_until:
                remaining = a.rate_held + a.rate_unclaimed
                reset = a.window_end - a.estimated_server_time(now)
            elif a.shared:
                remaining, reset = rate.limit, rate.window_seconds
            else:
                start = rate.window_start(now)
                remaining = rate.limit - (
                    a.local_count if a.local_window == start else 0
                )
                reset = start + rate.window_seconds - now
            items.append(
                (a.policy, a.item, max(0, remaining), seconds_until(reset, 0.0))
            )
        return items

    # -- binding records to allowances ----------------------------------------

    def _bind(self, record: ApiKey) -> tuple[Allowance, ...]:
        """The allowances of ``record``, kept on it (a record is immutable: a
        changed row comes as a new record, bound anew)."""
        found = []
        if record.has_own_limits:
            doc = record.limits_in or record.id
            allowance = self._allowance(self._keys, doc, "key")
            self._see(allowance, record)
            found.append(allowance)
        if record.owner is not None:
            found.append(self._allowance(self._owners, record.owner, "owner"))
        bound = tuple(found)
        object.__setattr__(record, "allowances", bound)
        return bound

    def _allowances_of(self, record: ApiKey) -> tuple[Allowance, ...]:
        allowances = record.allowances
        if allowances is None or any(a.evicted for a in allowances):
            allowances = self._bind(record)
        return allowances

    def _allowance(self, collection: str, doc_id: str, name: str) -> Allowance:
        allowance = self._allowances.get((collection, doc_id))
        if allowance is None:
            holder = "h" + uuid.uuid4().hex
            allowance = Allowance(collection, doc_id, name, holder, self._timer())
            self._allowances[collection, doc_id] = allowance
        return allowance

    def _see(self, a: Allowance, record: ApiKey) -> None:
        """A key's row as the sync mode read it: its limits, and whether an
        operator changed its credits since this process's last lease."""
        if a.seen_version is record:
            return
        a.seen_version = record
        a.gone = False  # a row was read: the key exists (again)
        if record.limits_in is not None:
            return  # the limits live in another row: learnt from its leases
        if not a.known:
            a.configure(record.rate_limit, record.refill, record.has_credit_limit)
        elif (
            record.credits_edited
            or (a.epoch is not None and record.credits_epoch > a.epoch)
            or (record.rate_limit, record.refill, record.has_credit_limit)
            != (a.rate, a.refill, a.has_credits)
        ):
            a.stale = True  # its next request waits for a lease that tells
        a.refresh(self._timer(), self._lease_seconds)

    # -- the slow path --------------------------------------------------------

    def _check(self, a: Allowance, cost: int, now: float) -> bool:
        """True if memory lets the request through; False if a lease is needed
        first; raises the refusals that memory can tell."""
        if a.gone:
            raise KeyNotFound()
        degraded = now < a.degraded_until
        if a.returning:
            return False  # a give-back under way: then a lease
        if not a.known:
            if degraded:
                raise StoreUnavailable("The limits cannot be read now.")
            return False
        if a.stale and not degraded:
            return False  # the row changed: a lease tells how
        if a.name == "owner" and now >= a.recheck_at and a.op is None and not degraded:
            self.ops.start(a)  # an owner's limits are learnt from its leases
        rate = a.rate
        if rate is not None:
            if not a.shared:
                start = rate.window_start(now)
                if start != a.local_window:
                    a.local_window, a.local_count = start, 0
                if a.local_count >= rate.limit:
                    self._refuse_rate(start + rate.window_seconds - now)
            else:
                if now >= a.window_until:
                    a.rate_held, a.rate_exhausted = 0, False
                if a.rate_held < 1:
                    if degraded:
                        self._check_alone(a, rate, now)
                    elif a.rate_exhausted:
                        self._refuse_rate(a.window_until - now)
                    else:
                        return False
        if cost and a.has_credits:
            if now >= a.credits_until:
                a.credits_held = 0
            if a.credits_held < cost:
                if a.credits_exhausted and now < a.recheck_at and a.op is None:
                    self._refuse_credits(a, now)
                if degraded:
                    raise StoreUnavailable("Credits cannot be leased now.")
                return False
        return True

    def _check_alone(self, a: Allowance, rate: RateLimit, now: float) -> None:
        """After a failed lease, a shared window is counted here alone, up to
        this process's share of it (the limit over the holders it last saw),
        less what it already took of the window from leases."""
        server_now = a.estimated_server_time(now)
        start = rate.window_start(server_now)
        share = math.ceil(rate.limit / max(1, a.holders))
        if self._taken(a, start) >= share:
            self._refuse_rate(start + rate.window_seconds - server_now)

    def _taken(self, a: Allowance, start: int) -> int:
        """Requests of the shared window at ``start`` this process let through:
        counted alone, and spent from leases."""
        if start != a.local_window:
            a.local_window, a.local_count = start, 0
        return a.local_count + (a.requests if a.window == start else 0)

    def _refuse(self, a: Allowance, cost: int, now: float) -> None:
        """Still short after a lease: refuse for the limit that is short."""
        if a.gone:
            raise KeyNotFound()
        if not a.known or a.stale or a.returning or now < a.degraded_until:
            raise StoreUnavailable("The limits cannot be read now.")
        if a.shared and a.rate is not None and a.rate_held < 1:
            self._refuse_rate(a.window_until - now)
        self._refuse_credits(a, now)

    def _refuse_rate(self, seconds: float) -> None:
        self.refused["rate"] += 1
        raise RateLimited(seconds_until(seconds, 0.0))

    def _refuse_credits(self, a: Allowance, now: float) -> None:
        self.refused["credits"] += 1
        retry = None
        if a.refill is not None:
            # Until the next refill, by Firestore's clock as last read.
            server_now = a.estimated_server_time(now)
            end = a.refill.next_at(datetime.fromtimestamp(server_now, UTC))
            retry = seconds_until(end.timestamp(), server_now)
        raise CreditsExhausted(retry)

    def _take(self, a: Allowance, cost: int, now: float) -> int:
        if a.rate is not None:
            if not a.shared or a.rate_held < 1:
                a.local_count += 1  # counted here alone
            else:
                a.take_request()
        if cost and a.has_credits:
            a.take_credits(cost)
            return cost
        return 0

    async def _wait(self, short: Sequence[Allowance], cost: int) -> None:
        """Wait for a lease on each of ``short``: the one under way, or a new
        one; StoreUnavailable past the wait's deadline (the op goes on)."""
        for a in short:
            a.waiting += 1
            a.waiting_cost += cost
            if a.op is None:
                self.ops.start(a)
        try:
            async with asyncio.timeout(self._wait_seconds):
                await asyncio.gather(
                    *(asyncio.shield(a.op) for a in short if a.op is not None)
                )
        except TimeoutError:
            raise StoreUnavailable("No lease within the deadline.") from None
        finally:
            for a in short:
                a.waiting -= 1
                a.waiting_cost -= cost

    # -- ops -----------------------------------------------------------------
