"""Limits soak: three servers share credits and rate limits while their
Firestore calls fail; one is killed, one stopped past its lease expiry and
resumed. Credits and usage counts must come out exact.

Each server reaches the emulator through its own ``FaultyLink`` (faults.py:
answers held past the deadline or cut, on about 5% of the chunks Firestore
sends back). Three keys: one with credits that run out, one with credits to
spare and a rate limit, one whose owner has the credits. Requests go round the
servers at a fixed rate. Server 0 is killed (SIGKILL) a quarter of the way in;
server 1 is stopped (SIGSTOP) for longer than the lease expiry halfway in,
and resumed. The faults end before the last seconds, then the live servers
stop (SIGTERM) and, past the expiry, one more lease records what the killed
one held. For each key: credits given, accepted, left, stranded; uses served
by the servers that were not killed, and uses counted in Firestore (usage is
written at shutdown only, so the killed server's are lost whole, by design).
"""

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from benchmarks.faults import FaultyLink
from benchmarks.harness import Bench
from benchmarks.procs import HOST, Server
from benchmarks.rawhttp import Request, Stream, get, open_loop
from benchmarks.report import Section, judged
from keystore import ApiKey, ApiKeyStore, LimitExceeded, Settings
from keystore.limits import parse_rate_limit

RATE = 90.0
EXPIRY = 6.0
FAULT_RATE = 0.05
SERVERS = 3


@dataclass
class Key:
    name: str
    key_id: str
    key: str
    given: int
    owner: str | None = None
    accepted: int = 0
    left: int = 0
    held: int = 0
    stranded: int = 0
    served: int = 0
    counted: int = 0


@dataclass
class Soak:
    seconds: float
    keys: list[Key] = field(default_factory=list)
    stream: Stream = field(default_factory=Stream)
    links: list[FaultyLink] = field(default_factory=list)
    killed_at: float = 0.0
    log: str = ""


async def run(bench: Bench) -> Section:
    soak = Soak(24.0 if bench.quick else 60.0)
    settings = Settings(
        collection=bench.collection("soak_limits"),
        owners_collection=bench.collection("soak_owners"),
        usage_flush_interval=0,
    )
    async with ApiKeyStore(settings) as store:
        await store.set_owner_limits("acme", credits=1200)
        made = [
            ("runs out", await store.create(name="a", credits=1200), 1200, None),
            (
                "to spare",
                await store.create(
                    name="b", credits=100_000, rate_limit=parse_rate_limit("600/10s")
                ),
                100_000,
                None,
            ),
            ("owner's", await store.create(name="c", owner="acme"), 1200, "acme"),
        ]
    soak.keys = [Key(n, m.record.id, m.key, g, o) for n, m, g, o in made]
    emulator = (HOST, bench.emulator.port)
    soak.links = [FaultyLink(emulator, seed=i) for i in range(SERVERS)]
    for link in soak.links:
        link.start()
    env = {
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_OWNERS_COLLECTION": settings.owners_collection,
        "KEYSTORE_LEASE_EXPIRY": f"{EXPIRY:g}",
        "KEYSTORE_LEASE_SECONDS": "2",
        "KEYSTORE_RETRY_AFTER": "1",
        "KEYSTORE_USAGE_FLUSH_INTERVAL": "3600",  # at shutdown only
        "KEYSTORE_LOG_LEVEL": "INFO",
    }
    try:
        async with (
            bench.serve(
                "soak-limits-0",
                FIRESTORE_EMULATOR_HOST=f"{HOST}:{soak.links[0].port}",
                **env,
            ) as s0,
            bench.serve(
                "soak-limits-1",
                FIRESTORE_EMULATOR_HOST=f"{HOST}:{soak.links[1].port}",
                **env,
            ) as s1,
            bench.serve(
                "soak-limits-2",
                FIRESTORE_EMULATOR_HOST=f"{HOST}:{soak.links[2].port}",
                **env,
            ) as s2,
        ):
            await _soak(bench, [s0, s1, s2], soak)
    finally:
        for link in soak.links:
            link.close()
    await _tally(settings, soak)
    soak.log = "\n".join(
        (bench.work / f"soak-limits-{i}.log").read_text(errors="replace")
        for i in range(SERVERS)
    )
    return _section(soak)


async def _soak(bench: Bench, servers: list[Server], soak: Soak) -> None:
    def make(i: int) -> Request:
        key = soak.keys[i % len(soak.keys)]
        n = i // len(soak.keys) % SERVERS
        if soak.killed_at and n == 0:
            n = 1 + i % 2  # after the kill, to the others
        return get(servers[n].url + "/v1/whoami", key.key, tag=f"{n} {key.key_id}")

    async def events() -> None:
        for link in soak.links:
            link.rate = FAULT_RATE
        await asyncio.sleep(soak.seconds / 4)
        _signal(servers[0], signal.SIGKILL)
        soak.killed_at = time.time()
        bench.say("soak-limits: server 0 killed")
        await asyncio.sleep(soak.seconds / 4)
        _signal(servers[1], signal.SIGSTOP)
        bench.say("soak-limits: server 1 stopped")
        await asyncio.sleep(EXPIRY * 1.5)
        _signal(servers[1], signal.SIGCONT)
        bench.say("soak-limits: server 1 resumed")
        await asyncio.sleep(max(0.0, soak.seconds / 2 - EXPIRY * 1.5 - 6))
        for link in soak.links:
            link.rate = 0.0  # the last seconds, and the shutdown, without faults

    load = open_loop(make, rate=RATE, seconds=soak.seconds, cap=512)
    soak.stream, _ = await asyncio.gather(load, events())


def _signal(server: Server, sig: signal.Signals) -> None:
    os.killpg(server.pid, sig)


async def _tally(settings: Settings, soak: Soak) -> None:
    """Past the expiry, one lease per key records what the killed server held;
    then what each key's documents hold."""
    await asyncio.sleep(EXPIRY + 1)
    served = Counter(
        a.tag.split()[1]
        for a in soak.stream.answers
        if a.status == 200 and a.tag.split()[0] != "0"
    )
    accepted = Counter(a.tag.split()[1] for a in soak.stream.answers if a.status == 200)
    swept = Counter[str]()
    async with ApiKeyStore(settings) as store:
        for key in soak.keys:
            # A request's lease sweeps the stale entries (it costs a credit);
            # a key with none left refuses it, its entries counted as held.
            try:
                await store.spend(await store.verify(key.key), 1)
            except LimitExceeded:
                continue
            swept[key.key_id] += 1
    async with ApiKeyStore(settings) as store:
        for key in soak.keys:
            view = (
                await store.owner_limits(key.owner)
                if key.owner
                else await store.limits(key.key_id)
            )
            assert view is not None and view.credits is not None
            key.left, key.stranded, key.held = view.credits, view.stranded, view.held
            key.accepted = accepted[key.key_id] + swept[key.key_id]
            key.served = served[key.key_id]
            row = await store.get(key.key_id)
            key.counted = row.usage_count if isinstance(row, ApiKey) else -1


def _section(soak: Soak) -> Section:
    s = Section("soak-limits", ("key", "soak", "baseline, same run", "check"))
    problems = []
    for key in soak.keys:
        exact = (
            key.left + key.accepted
            <= key.given
            <= (key.left + key.accepted + key.stranded)
        )
        s.add(
            f"{key.name}: credits accepted + left, stranded",
            f"{key.accepted:,} + {key.left:,} = {key.accepted + key.left:,}, "
            f"{key.stranded:,} stranded, {key.held:,} still held",
            f"{key.given:,} given",
            judged("≤ given ≤ that + stranded", exact),
        )
        s.add(
            f"{key.name}: uses counted in Firestore",
            f"{key.counted:,}",
            f"{key.served:,} served by the servers not killed",
            judged("equal", key.counted == key.served),
        )
        if not exact:
            problems.append(f"{key.name}: credits do not add up")
        if key.counted != key.served:
            problems.append(
                f"{key.name}: {key.counted} uses counted, {key.served} served"
            )
    statuses = soak.stream.statuses
    bad = {
        status: n
        for status, n in statuses.items()
        if status not in ("200", "429", "503", "0")
    }
    lost = sum(
        1 for a in soak.stream.answers if a.status == 0 and a.tag.split()[0] != "0"
    )
    if bad or lost:
        problems.append(f"answers other than 200, 429, 503: {bad}, {lost} unanswered")
    if "Traceback" in soak.log:
        problems.append("a server logged a traceback")
    faults = sum(link.delayed + link.cut for link in soak.links)
    s.notes.append(
        f"{soak.seconds:g} s at {RATE:g} req/s over {SERVERS} servers, answers "
        f"{statuses}; {faults} Firestore answers held past the deadline or cut "
        f"({sum(link.cut for link in soak.links)} cut); server 0 killed, server 1 "
        f"stopped {EXPIRY * 1.5:g} s (lease expiry {EXPIRY:g} s) and resumed."
    )
    s.failures = problems
    s.notes += [f"FAILED: {p}." for p in problems]
    if problems:
        lines = [line for line in soak.log.splitlines() if line.strip()][-40:]
        s.notes.append("The servers' logs, last lines:\n\n    " + "\n    ".join(lines))
    return s
