"""Soak: one demo app under mixed load while Firestore dies and comes back.

The app (ttl mode; a 5 s TTL, so rows age past it in the outage; usage counts
written only at shutdown, so every use counted in the outage must reach
Firestore after it) gets valid, revoked and random keys at 200 req/s. A third
of the way in the emulator is exported and stopped, and started again from the
export 15 s later. The phase before is the baseline; a failed check fails the run.
"""

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from benchmarks.harness import Bench
from benchmarks.procs import Server
from benchmarks.rawhttp import Answer, Request, Stream, get, open_loop
from benchmarks.report import Section, judged, ms
from keystore import ApiKeyStore, Settings
from keystore.keys import new_key

RATE = 200.0
TIMEOUT, RETRY_AFTER = 2.0, 2
#: Seconds after Firestore is back by which every answer must be right again:
#: the store finds it within a few rounds of a pause (RETRY_AFTER) and a probe
#: (TIMEOUT), and a freshly restarted emulator is slow at first.
RECOVERY = 15.0
MEMORY_GROWTH_MB = 50


@dataclass
class Soaked:
    """The answers; when Firestore went down and was back (time.time); the app's
    memory every 2 s; once it stopped, its log, and by key id the usage counts in
    Firestore and the 200s it served."""

    seconds: float
    outage: float
    stream: Stream = field(default_factory=Stream)
    down: float = 0.0
    up: float = 0.0
    memory_mb: list[float] = field(default_factory=list)
    log: str = ""
    counted: dict[str, int] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)

    def phase(self, answer: Answer) -> str:
        if answer.sent < self.down:
            return "before"
        return "outage" if answer.sent < self.up else "after"


async def run(bench: Bench) -> Section:
    soaked = Soaked(20.0, 6.0) if bench.quick else Soaked(75.0, 15.0)
    bench.emulator.clear()  # the export then holds this suite's rows only
    settings = Settings(collection=bench.collection("soak"))
    async with ApiKeyStore(settings) as store:
        valid = {
            (new := await store.create(name="v")).record.id: new.key for _ in range(50)
        }
        revoked = [await store.create(name="r") for _ in range(20)]
        for new in revoked:
            await store.revoke(new.record.id)
    env = {
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_CACHE_TTL": "5",
        "KEYSTORE_TIMEOUT": f"{TIMEOUT:g}",
        "KEYSTORE_RETRY_AFTER": str(RETRY_AFTER),
        "KEYSTORE_USAGE_FLUSH_INTERVAL": "3600",
        "KEYSTORE_LOG_FORMAT": "json",
    }
    # The loader is not pinned here: pinned beside the emulator, it would stall
    # while the JVM starts again and count that as the app's latency.
    async with bench.serve("soak", **env) as server:
        keys = {"valid": list(valid.values()), "revoked": [n.key for n in revoked]}
        await _soak(bench, server, keys, soaked)
    # The app has stopped (SIGTERM) and written its usage counts.
    async with ApiKeyStore(settings) as store:
        rows = [await store.get(key_id) for key_id in valid]
    soaked.counted = {row.id: getattr(row, "usage_count", -1) for row in rows}
    served = Counter(a.tag for a in soaked.stream.answers if a.status == 200)
    soaked.served = {key_id: served[f"valid {k}"] for key_id, k in valid.items()}
    soaked.log = (bench.work / "soak.log").read_text(errors="replace")
    return _section(soaked)


async def _soak(
    bench: Bench, server: Server, keys: dict[str, list[str]], soaked: Soaked
) -> None:
    rng = random.Random(7)

    def make(i: int) -> Request:
        roll = rng.random()
        kind = "valid" if roll < 0.7 else "revoked" if roll < 0.85 else "random"
        key = rng.choice(keys[kind]) if kind != "random" else new_key("ks")
        return get(server.url + "/v1/whoami", key, tag=f"{kind} {key}")

    async def faults() -> None:
        await asyncio.sleep(soaked.seconds / 3)
        export = await asyncio.to_thread(bench.emulator.export)
        soaked.down = time.time()
        await asyncio.to_thread(bench.emulator.stop)
        bench.say("soak: emulator stopped")
        await asyncio.sleep(soaked.outage)
        await asyncio.to_thread(bench.emulator.start, export)
        soaked.up = time.time()
        bench.say("soak: emulator back")

    async def sample() -> None:
        for _ in range(int(soaked.seconds / 2)):
            with open(f"/proc/{server.pid}/status") as f:
                rss = next(line for line in f if line.startswith("VmRSS:"))
            soaked.memory_mb.append(int(rss.split()[1]) / 1024)
            await asyncio.sleep(2)

    bench.say(f"soak: {soaked.seconds:g} s, Firestore down for {soaked.outage:g} s")
    # Connections enough that the requests an outage holds (unknown keys, up to
    # TIMEOUT each) leave room for the rest; with 32, valid keys queued here,
    # not in the app, for about a second behind them.
    load = open_loop(make, rate=RATE, seconds=soaked.seconds, cap=256)
    soaked.stream, *_ = await asyncio.gather(load, faults(), sample())
    # The app stops (and writes its counts) once Firestore has been back a while.
    await asyncio.sleep(max(0.0, soaked.up + 5 - time.time()))


def _problems(soaked: Soaked, growth_mb: float) -> list[str]:
    """What failed: one line per answer or check that did."""
    problems = []
    for a in soaked.stream.answers:
        kind, phase = a.tag.split()[0], soaked.phase(a)
        # A 503 is due from Firestore's stop (a request then under way, its
        # read waiting to be batched, say, may get one) to RECOVERY after.
        answered = a.sent + a.seconds
        late = answered < soaked.down or a.sent > soaked.up + RECOVERY
        if a.status not in (200, 401, 503):
            problems.append(f"{kind} key: status {a.status or 'none'} ({phase})")
        elif a.status == 503 and ("retry-after" not in a.headers or late):
            problems.append(
                f"a 503 outside the outage or without Retry-After ({phase})"
            )
        elif kind == "valid" and a.status != 200:
            problems.append(f"a valid key got {a.status} ({phase})")
        if a.seconds > TIMEOUT + 1:
            problems.append(f"a {kind} key took {a.seconds:.1f} s ({phase})")
    if soaked.stream.lost:
        problems.append(f"{soaked.stream.lost} requests unanswered or never sent")
    if "Traceback" in soaked.log:
        problems.append("the app logged a traceback")
    if soaked.counted != soaked.served:
        problems.append("usage counts in Firestore differ from the 200s served")
    if growth_mb > MEMORY_GROWTH_MB:
        problems.append(f"memory grew by {growth_mb:.0f} MB")
    return problems


def _section(soaked: Soaked) -> Section:
    s = Section("soak", ("figure", "soak", "baseline, same run", "check"))
    answers, memory = soaked.stream.answers, soaked.memory_mb
    growth = max(memory) - memory[len(memory) // 4]
    problems = _problems(soaked, growth)
    by: dict[tuple[str, str], list[Answer]] = {}
    for a in answers:
        by.setdefault((soaked.phase(a), a.tag.split()[0]), []).append(a)

    def share(phase: str, kind: str, status: int) -> str:
        group = by.get((phase, kind), [])
        return f"{sum(a.status == status for a in group):,} of {len(group):,}"

    def latency(phase: str) -> str:
        return ms(by.get((phase, "valid"), []), 50, 99, 100)

    def ok(word: str) -> bool:
        return not any(word in p for p in problems)

    s.add(
        "valid keys answered 200: during the outage; after",
        f"{share('outage', 'valid', 200)}; {share('after', 'valid', 200)}",
        f"before: {share('before', 'valid', 200)}",
        judged("all", ok("valid key got")),
    )
    s.add(
        "valid-key p50 / p99 / max ms: during the outage; after",
        f"{latency('outage')}; {latency('after')}",
        f"before: {latency('before')}",
        judged(f"every request ≤ {TIMEOUT + 1:g} s", ok(" took ")),
    )
    last = max((a.sent for a in answers if a.status == 503), default=soaked.up)
    s.add(
        "random keys answered 503 (with Retry-After): during; after",
        f"{share('outage', 'random', 503)}; {share('after', 'random', 503)}, the "
        f"last {max(0.0, last - soaked.up):.1f} s after Firestore was back",
        f"before: {share('before', 'random', 503)}",
        judged(f"only in the outage and ≤ {RECOVERY:g} s after", ok("a 503")),
    )
    s.add(
        "usage counts in Firestore",
        f"{sum(soaked.counted.values()):,}",
        f"{sum(soaked.served.values()):,} 200s served to valid keys",
        judged("equal, key by key", soaked.counted == soaked.served),
    )
    s.add(
        "app memory MB: first → last sample (growth after the first quarter)",
        f"{memory[0]:.0f} → {memory[-1]:.0f} ({growth:+.1f})",
        "-",
        judged(f"growth ≤ {MEMORY_GROWTH_MB} MB", growth <= MEMORY_GROWTH_MB),
    )
    start = answers[0].sent
    s.notes.append(
        f"{soaked.seconds:g} s at {RATE:g} req/s (70% valid, 15% revoked, 15% "
        f"random keys); Firestore down from {soaked.down - start:.1f} s "
        f"to {soaked.up - start:.1f} s."
    )
    # Other statuses, requests unanswered, tracebacks: no row, a failure.
    s.failures = sorted(set(problems))[:10]
    if s.failures:
        s.notes += [f"FAILED: {failure}." for failure in s.failures]
        log = soaked.log.splitlines()[-15:]
        s.notes.append("The app's log, last lines:\n\n    " + "\n    ".join(log))
    return s
