"""A deterministic simulation of the lease protocol, checking its invariants
after every step of seeded random schedules.

This is a checker of the protocol's logic, beside (never instead of) the
emulator tests. Real keystore code runs in it: each simulated process is a
real ``Limiter`` with its ``Allowance``s, and every op is planned by the real
``lease.plan``. What is modelled is Firestore's side of one limit document:
reads that carry the server's time, and commits with an update-time
precondition (a commit that changes nothing leaves the update time as it
is, as Firestore does). ``SimLedger`` replaces ``ledger.Ledger``: the same
loop of read, plan and conditional commit, over that model and the network
between, where the schedule loses, refuses, aborts, delays and reorders.

Time is virtual: the server's clock is ``Sim.now``; each process's monotonic
clock runs at its own rate (within 0.5%) from its own origin. A schedule
mixes requests, deliveries, time passing, idle sweeps, SIGSTOPs (a process
gets no CPU: nothing it sends goes out) for up to twice the lease expiry,
SIGKILLs (what it sent may still land), new processes, operators setting or
editing the credits by hand, and refills at midnight. A failing seed
replays: ``Sim(seed).run()``.
"""

import asyncio
import copy
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keystore.errors import (
    CreditsExhausted,
    InvalidRow,
    KeyNotFound,
    RateLimited,
    StoreUnavailable,
)
from keystore.limits.allowance import Allowance
from keystore.limits.document import read_doc
from keystore.limits.edits import limit_edit
from keystore.limits.lease import Ask, plan
from keystore.limits.ledger import TRIES, Contended, Outcome, OutcomeUnknown
from keystore.limits.limiter import Limiter
from keystore.limits.values import RateLimit, Refill
from keystore.models import ApiKey

PATH = "keys/k"
EXPIRY = 20.0
LEASE_SECONDS = 2.0
#: The schedules start a minute before midnight: a daily refill falls due.
START = datetime(2026, 12, 1, 23, 59, tzinfo=UTC).timestamp()


#: What a schedule's step may do; each schedule weighs them its own way.
ACTIONS = (
    "request",
    "deliver",
    "time",
    "sweep",
    "late",
    "stop",
    "kill",
    "start",
    "operator",
    "reread",
    "leap",
)
PROFILES = (
    # steady: mostly requests and deliveries
    (40, 25, 12, 6, 3, 2, 0.3, 1.5, 2, 4, 2),
    # idle and back: sweeps and time, with faults
    (30, 25, 20, 15, 5, 2, 0.3, 1.5, 1, 3, 3),
    # churn: stops, kills, starts, operators
    (30, 25, 10, 6, 5, 6, 2, 3, 6, 5, 3),
)


class Violation(AssertionError):
    """An invariant broke; the message says which, with the seed."""


@dataclass
class Doc:
    """Firestore's side of one document: its fields and update time."""

    fields: dict[str, Any] | None
    version: int = 1

    def read(self) -> tuple[dict[str, Any] | None, int]:
        return copy.deepcopy(self.fields), self.version

    def commit(
        self, sets: dict[str, Any], stamp: str | None, version: int, now: float
    ) -> bool:
        """Apply if unchanged since ``version``; True if it was (landed)."""
        if self.fields is None or version != self.version:
            return False
        before = copy.deepcopy(self.fields)
        for name, value in sets.items():
            if value is None:
                self.fields.pop(name, None)
            else:
                self.fields[name] = copy.deepcopy(value)
        if stamp is not None:
            self.fields["leases"][stamp]["at"] = datetime.fromtimestamp(now, UTC)
        if self.fields != before:
            self.version += 1
        return True


def _slot(allowance: Allowance, name: str) -> int:
    """The value in an allowance's slot (0 before it is first set)."""
    try:
        return int(Allowance.__dict__[name].__get__(allowance))
    except AttributeError:
        return 0


def _set_slot(allowance: Allowance, name: str, value: int) -> None:
    Allowance.__dict__[name].__set__(allowance, value)


class Tracked(Allowance):
    """An allowance whose counts report every credit and request spent."""

    sim: "Sim"
    proc: "Proc"

    @property
    def spent(self) -> int:
        return _slot(self, "spent")

    @spent.setter
    def spent(self, value: int) -> None:
        before = _slot(self, "spent")
        if hasattr(self, "proc") and value > before:
            self.sim.spent_credits(self, value - before)
        _set_slot(self, "spent", value)

    @property
    def requests(self) -> int:
        return _slot(self, "requests")

    @requests.setter
    def requests(self, value: int) -> None:
        before = _slot(self, "requests")
        if hasattr(self, "proc") and value > before:
            self.sim.spent_requests(self, value - before, leased=True)
        _set_slot(self, "requests", value)

    @property
    def local_count(self) -> int:
        return _slot(self, "local_count")

    @local_count.setter
    def local_count(self, value: int) -> None:
        before = _slot(self, "local_count")
        if hasattr(self, "proc") and value == before + 1:
            self.sim.spent_requests(self, 1, leased=False)
        _set_slot(self, "local_count", value)


class SimLimiter(Limiter):
    """A Limiter whose allowances report what they spend."""

    sim: "Sim"
    proc: "Proc"

    def _allowance(self, collection: str, doc_id: str, name: str) -> Allowance:
        allowance = self._allowances.get((collection, doc_id))
        if allowance is None:
            allowance = Tracked(
                collection, doc_id, name, self.proc.new_holder(), self._timer()
            )
            allowance.sim, allowance.proc = self.sim, self.proc
            self._allowances[collection, doc_id] = allowance
        return allowance


class SimLedger:
    """``ledger.Ledger``'s loop, over the model and the schedule's network."""

    def __init__(self, sim: "Sim", proc: "Proc") -> None:
        self.sim, self.proc = sim, proc

    async def lease(
        self, path: str, make_ask: Callable[[], Ask], *, insist: bool = False
    ) -> Outcome:
        sim = self.sim
        for _ in range(TRIES):
            sent = self.proc.timer()
            await sim.hop(self.proc)
            if sim.fault("read"):
                raise StoreUnavailable("read lost")
            fields, version = sim.doc.read()
            now = sim.now
            ask = make_ask()
            try:
                change, grant = plan("k", fields, ask, now=now, expiry=EXPIRY)
            except InvalidRow:
                raise
            if not change.needed:
                return Outcome(grant, committed=False, sent=sent)
            stamp = ask.holder if change.stamp else None
            fate = sim.commit_fate()
            await sim.hop(self.proc)
            sim.events[fate] += 1
            if ask.give_back:
                sim.events[f"give-back {fate}"] += 1
            if fate == "refused":
                continue
            if fate == "lost before":
                raise OutcomeUnknown("lost before it landed")
            if fate == "late":
                sim.late.append((change.sets, stamp, version))
                raise OutcomeUnknown("late")
            if not sim.doc.commit(change.sets, stamp, version, sim.now):
                sim.events["precondition failed"] += 1
                continue
            if grant.credits_returned and not ask.give_back:
                sim.events["back from a stop, reconciled"] += 1
            sim.landed()
            if fate == "lost after":
                raise OutcomeUnknown("lost after it landed")
            return Outcome(grant, committed=True, sent=sent)
        raise Contended("too many writers")


@dataclass
class Proc:
    """One simulated process."""

    sim: "Sim"
    name: str
    drift: float
    origin: float
    limiter: SimLimiter = field(init=False)
    hops: list["asyncio.Future[None]"] = field(default_factory=list)
    tasks: set["asyncio.Task[Any]"] = field(default_factory=set)
    stopped_until: float = 0.0
    dead: bool = False
    holders: list[str] = field(default_factory=list)
    #: The key's row as this process's sync mode last read it (a record is
    #: bound to the allowances of the process that reads it).
    record: ApiKey | None = None

    def __post_init__(self) -> None:
        limiter = SimLimiter(
            SimLedger(self.sim, self),  # type: ignore[arg-type]
            keys="keys",
            owners="owners",
            lease_seconds=LEASE_SECONDS,
            lease_expiry=EXPIRY,
            retry_after=1,
            recheck_seconds=1.0,
            wait_seconds=1e9,  # virtual time: nothing waits in real time
            timer=self.timer,
        )
        limiter.sim, limiter.proc = self.sim, self
        self.limiter = limiter

    def timer(self) -> float:
        return self.origin + (self.sim.now - START) * (1 + self.drift)

    def new_holder(self) -> str:
        holder = f"h{self.name}{len(self.holders)}"
        self.holders.append(holder)
        return holder

    @property
    def running(self) -> bool:
        return not self.dead and self.sim.now >= self.stopped_until


class Sim:
    """One schedule, from ``seed``; ``run()`` raises Violation on a broken
    invariant and returns what happened."""

    def __init__(self, seed: int, *, steps: int = 160) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = steps
        self.now = START
        rng = self.rng
        self.cost = rng.choice([1, 1, 2, 3])
        self.refill = (
            Refill(rng.choice([10, 40, 200]), "day") if rng.random() < 0.4 else None
        )
        self.rate = (
            RateLimit(rng.choice([5, 20, 60]), rng.choice([10, 30]))
            if rng.random() < 0.5
            else None
        )
        credits = (
            rng.choice([0, 5, 30, 150, 1000])
            if self.refill or rng.random() < 0.9
            else None
        )
        if self.rate is None and credits is None and self.refill is None:
            credits = 100
        fields: dict[str, Any] = {"hash": "0" * 64}
        if credits is not None:
            fields.update(credits=credits, credits_written=credits)
        if self.refill is not None:
            fields.update(refill_amount=self.refill.amount, refill_interval="day")
            # The balance was set the day before: the refill falls due at midnight.
            fields["refilled_for"] = "2026-12-01"
        if self.rate is not None:
            fields.update(
                rate_limit=self.rate.limit, rate_window_seconds=self.rate.window_seconds
            )
        self.doc = Doc(fields)
        self.faults = rng.choice([0.0, 0.05, 0.15, 0.3, 0.5])
        self.weights = rng.choice(PROFILES)
        self.late: list[tuple[dict[str, Any], str | None, int]] = []
        self.procs: list[Proc] = []
        #: Per epoch: the balance it started with, credits spent from it.
        self.balance: dict[int, int] = {0: credits or 0}
        self.spent_by_epoch: Counter[int] = Counter()
        #: Credits of epoch e still held by processes when e ended (by edit).
        self.held_at_end: dict[int, int] = {}
        self.spent_after_end: Counter[int] = Counter()
        self.refills: Counter[str] = Counter()
        self.leased_requests: Counter[int] = Counter()
        self.alone: Counter[tuple[str, int]] = Counter()
        self.by_window: Counter[int] = Counter()
        self.kills = 0
        self.outcomes: Counter[str] = Counter()
        #: What the schedule went through, to show it covers the hard paths.
        self.events: Counter[str] = Counter()
        self.auto = False
        self.errors: list[BaseException] = []
        self._epoch_seen = 0
        self._refilled_seen = fields.get("refilled_for")

    # -- the network and Firestore --------------------------------------------

    async def hop(self, proc: Proc) -> None:
        """A message of ``proc``'s crossing the network, delivered when the
        schedule says (at once once the schedule winds down)."""
        if self.auto:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        proc.hops.append(future)
        await future

    def fault(self, kind: str) -> bool:
        return not self.auto and self.rng.random() < self.faults / 2

    def commit_fate(self) -> str:
        if self.auto or self.rng.random() >= self.faults:
            return "ok"
        return self.rng.choice(["refused", "lost before", "lost after", "late"])

    def landed(self) -> None:
        """A commit landed: note what the document went through."""
        fields = self.doc.fields
        assert fields is not None
        epoch = fields.get("credits_epoch", 0)
        refilled = fields.get("refilled_for")
        refill = refilled != self._refilled_seen
        if refill:
            if self._refilled_seen is not None and refilled <= self._refilled_seen:
                self.fail(
                    f"refilled_for went back: {self._refilled_seen} -> {refilled}"
                )
            self.refills[str(refilled)] += 1
            self._refilled_seen = refilled
        if (fields.get("stranded") or {}) and not self.auto:
            self.events["stranded recorded"] += 1
        if epoch != self._epoch_seen:
            self.events["refill" if refill else "rebased by an operator"] += 1
            # What the epoch began with: the pool, and what its first op
            # (the one that started it) leased out at once.
            leased = sum(e.get("credits", 0) for e in fields.get("leases", {}).values())
            self.new_epoch(epoch, fields.get("credits", 0) + leased)

    def new_epoch(self, epoch: int, balance: int) -> None:
        """A refill or an operator started ``epoch``: the old one's leases are
        void, each still spendable by its holder until its next op."""
        old = self._epoch_seen
        self.held_at_end[old] = sum(
            a.credits_held
            for proc in self.procs
            if not proc.dead
            for a in proc.limiter._allowances.values()
            if a.epoch == old and a.has_credits
        )
        self.balance[epoch] = balance
        self._epoch_seen = epoch

    # -- what the processes spend -----------------------------------------------

    def spent_credits(self, a: Allowance, amount: int) -> None:
        assert a.epoch is not None
        self.spent_by_epoch[a.epoch] += amount
        if a.epoch != self._epoch_seen:
            self.spent_after_end[a.epoch] += amount
        fields = self.doc.fields or {}
        if a.epoch == fields.get("credits_epoch", 0):
            if a.holder in (fields.get("stranded") or {}):
                self.fail(f"{a.holder} spent after its lease was recorded stranded")
            at = ((fields.get("leases") or {}).get(a.holder) or {}).get("at")
            if at is not None and at.timestamp() + EXPIRY <= self.now:
                self.fail(
                    f"{a.holder} spent a lease any other process may take as stranded"
                )
        self.check_credits()

    def spent_requests(self, a: Allowance, amount: int, *, leased: bool) -> None:
        rate = a.rate
        if rate is None or not rate.is_shared:
            return
        if leased:
            assert a.window is not None
            self.leased_requests[a.window] += amount
            self.by_window[a.window] += amount
            if self.leased_requests[a.window] > rate.limit:
                count = self.leased_requests[a.window]
                self.fail(f"window {a.window}: {count} leased > {rate.limit}")
        else:
            window = a.local_window or 0
            self.alone[a.holder, window] += amount
            self.by_window[window] += amount
            share = math.ceil(rate.limit / max(1, a.holders))
            if self.alone[a.holder, window] > share:
                self.fail(
                    f"{a.holder} took {self.alone[a.holder, window]} alone > {share}"
                )
        live = sum(1 for p in self.procs if not p.dead)
        for window, count in self.by_window.items():
            if count > 2 * rate.limit + 2 * live + len(self.procs):
                self.fail(f"window {window}: {count} accepted, limit {rate.limit}")

    def check_credits(self) -> None:
        for epoch, spent in self.spent_by_epoch.items():
            if spent > self.balance.get(epoch, 0):
                self.fail(
                    f"epoch {epoch}: spent {spent} of {self.balance.get(epoch, 0)}"
                )
            if self.spent_after_end[epoch] > self.held_at_end.get(epoch, math.inf):
                after, held = self.spent_after_end[epoch], self.held_at_end[epoch]
                self.fail(f"epoch {epoch}: {after} spent after it ended, {held} held")

    def fail(self, what: str) -> None:
        raise Violation(f"seed {self.seed}: {what}")

    # -- the schedule ---------------------------------------------------------

    def record(self) -> ApiKey:
        """The key's row as a sync mode would hand it to the dependency."""
        fields = self.doc.fields or {}
        doc = read_doc("k", fields)
        return ApiKey(
            id="k",
            hash="0" * 64,
            rate_limit=doc.rate_limit,
            refill=doc.refill,
            credits=doc.credits_held_left if doc.has_credits else None,
            credits_epoch=doc.epoch,
            credits_edited=doc.is_edited,
        )

    def add_proc(self) -> Proc:
        rng = self.rng
        proc = Proc(
            self, f"p{len(self.procs)}", rng.uniform(-0.005, 0.005), rng.uniform(0, 1e6)
        )
        self.procs.append(proc)
        return proc

    def spawn(self, proc: Proc, work: Any) -> None:
        task = asyncio.ensure_future(work)
        proc.tasks.add(task)
        task.add_done_callback(proc.tasks.discard)

    async def request(self, proc: Proc, record: ApiKey) -> None:
        try:
            await proc.limiter.spend(record, self.cost)
            self.outcomes["200"] += 1
        except (CreditsExhausted, RateLimited):
            self.outcomes["429"] += 1
        except (StoreUnavailable, KeyNotFound):
            self.outcomes["503"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a 500: the checker's failure too
            self.errors.append(exc)

    async def settle(self) -> None:
        """Let the tasks run a few turns of the loop (not always until each
        waits on the network: what is still running overlaps the next step,
        one more way for a schedule to interleave)."""
        for _ in range(3):
            await asyncio.sleep(0)

    async def step(self) -> None:
        rng = self.rng
        live = [p for p in self.procs if not p.dead]
        running = [p for p in live if p.running]
        action = rng.choices(ACTIONS, self.weights)[0]
        if action == "request" and running:
            proc = rng.choice(running)
            if proc.record is None:
                proc.record = self.record()
            for _ in range(rng.choice([1, 1, 3, 10])):
                self.spawn(proc, self.request(proc, proc.record))
        elif action == "deliver":
            waiting = [p for p in running if p.hops]
            if waiting:
                proc = rng.choice(waiting)
                future = proc.hops.pop(0)
                if not future.done():
                    future.set_result(None)
        elif action == "time":
            self.now += rng.choice([0.05, 0.2, 0.5, 1.0, 3.0])
        elif action == "sweep" and running:
            proc = rng.choice(running)
            # The idle sweep; or everything given back at once, requests or not.
            idle = rng.choice([2 * LEASE_SECONDS, 2 * LEASE_SECONDS, 0.0])
            self.spawn(proc, proc.limiter.sweeper.sweep(idle_for=idle))
        elif action == "late" and self.late:
            sets, stamp, version = self.late.pop(rng.randrange(len(self.late)))
            if self.doc.commit(sets, stamp, version, self.now):
                self.events["late commit landed"] += 1
                self.landed()
        elif action == "stop" and running:
            proc = rng.choice(running)  # SIGSTOP, sometimes past the expiry
            pause = rng.choice([1.0, 5.0, EXPIRY * 1.5, EXPIRY * 2])
            self.events["stopped past the expiry" if pause > EXPIRY else "stopped"] += 1
            proc.stopped_until = self.now + pause
        elif action == "kill" and live:
            self.kill(rng.choice(live))
        elif action == "start" and len(live) < 4:
            self.add_proc()
        elif action == "operator":
            self.operator(rng)
        elif action == "reread" and live:
            rng.choice(live).record = self.record()  # its sync mode reads the row
        elif action == "leap":
            self.now += EXPIRY / 2
        await self.settle()

    def kill(self, proc: Proc) -> None:
        """SIGKILL: its tasks end; a commit it sent may still land."""
        self.kills += 1
        proc.dead = True
        for task in proc.tasks:
            task.cancel()
        for future in proc.hops:
            if not future.done():
                future.cancel()
        proc.hops.clear()

    def operator(self, rng: random.Random) -> None:
        """``set-limits --credits N``, or ``credits`` edited in the console."""
        fields = self.doc.fields
        assert fields is not None
        amount = rng.choice([0, 3, 20, 100])
        if rng.random() < 0.5:
            self.events["set-limits"] += 1
            edit = limit_edit("k", fields, credits=amount)
            sets = dict(edit.sets)
            if edit.stamp_balance:
                sets["credits_set_at"] = datetime.fromtimestamp(self.now, UTC)
            self.doc.commit(sets, None, self.doc.version, self.now)
        elif "credits" in fields:
            fields["credits"] = amount + fields.get("credits_written", 0) + 1
            self.doc.version += 1
            return
        else:
            return
        self.landed()

    async def run(self) -> "Sim":
        for _ in range(self.rng.choice([1, 2, 3])):
            self.add_proc()
        for _ in range(self.steps):
            await self.step()
            self.check_credits()
            if self.errors:
                self.fail(f"a request raised {self.errors[0]!r}")
        await self.wind_down()
        return self

    async def wind_down(self) -> None:
        """Faults end, stopped processes resume, late commits land or die;
        then every live process stops as at SIGTERM (give everything back),
        and a lease after the expiry records what the killed ones held."""
        self.auto = True
        self.now += EXPIRY * 2
        for proc in self.procs:
            proc.stopped_until = 0.0
            for future in proc.hops:
                if not future.done():
                    future.set_result(None)
            proc.hops.clear()
        for sets, stamp, version in self.late:
            if self.rng.random() < 0.5 and self.doc.commit(
                sets, stamp, version, self.now
            ):
                self.landed()
        self.late.clear()
        await self.settle()
        for proc in self.procs:
            if not proc.dead:
                await asyncio.gather(*proc.tasks, return_exceptions=True)
                left = await proc.limiter.sweeper.give_back()
                if left:
                    self.fail(f"{proc.name} could not give back with no faults")
        self.now += EXPIRY * 2
        sweeper = self.add_proc()
        # One op after the expiry: it records what the killed ones held.
        await SimLedger(self, sweeper).lease(
            PATH, lambda: Ask(holder="sweeper", op="last", give_back=True, stamp=True)
        )
        self.check_end()

    def check_end(self) -> None:
        fields = self.doc.fields
        assert fields is not None
        doc = read_doc("k", fields)
        if not doc.has_credits:
            return
        epoch = doc.epoch
        left = doc.credits_held_left
        spent = self.spent_by_epoch[epoch]
        given = self.balance[epoch]
        stranded = doc.stranded_credits
        if any(e.held for e in doc.leases.values()):
            self.fail(f"leases still held at the end: {doc.leases}")
        if left + spent > given or given > left + spent + stranded:
            self.fail(
                f"end: left {left} + spent {spent}, stranded {stranded}, given {given}"
            )
        self.events[
            "ended exact" if left + spent == given else "ended with a kill"
        ] += 1
        if not self.kills and left + spent != given:
            self.fail(f"end with no kill: left {left} + spent {spent} != given {given}")
        for period, count in self.refills.items():
            if count > 1:
                self.fail(f"the refill of {period} applied {count} times")


def run(seed: int, steps: int = 160) -> Sim:
    """One schedule, in an event loop of its own."""
    return asyncio.run(Sim(seed, steps=steps).run())


def summary(sims: list[Sim]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for sim in sims:
        for name, count in sim.outcomes.items():
            totals[name] += count
        totals["kills"] += sim.kills
        for name, count in sim.events.items():
            totals[name] += count
        totals["refills"] += sum(sim.refills.values())
        totals["epochs"] += len(sim.balance)
    return dict(totals)
