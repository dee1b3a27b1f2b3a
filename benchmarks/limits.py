"""Limits: what usage limits cost on the hot path, and their bounds across
processes. Three demo apps (ttl mode) on one collection; in process one store.
Baselines from the same run: a key without limits, a set lookup, the limit L."""

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack

from benchmarks.harness import FLOOR, Bench
from benchmarks.procs import Server, on_cpu
from benchmarks.rawhttp import Request, get, metrics, open_loop
from benchmarks.report import Section, judged, per_call_us, ratio
from keystore import ApiKeyStore, Settings
from keystore.limits import parse_rate_limit

#: Checked on every request, never reached.
UNBOUND = parse_rate_limit("1000000000/1d")
LIMIT, WINDOW = 200, 10
STEADY_RATE = 100.0
WHOAMI = "/v1/whoami"
Keys = dict[str, str]  # by name
TOTALS = {
    "checks": "keystore_limit_checks_total",
    "waits": "keystore_limit_waits_total",
    "writes": 'keystore_firestore_writes_total{cause="limits"}',
}


async def run(bench: Bench) -> Section:
    s = Section("limits", ("figure", "keystore", "baseline, same run", "target"))
    settings = Settings(collection=bench.collection("limits"))
    rate = parse_rate_limit(f"{LIMIT}/{WINDOW}s")
    async with ApiKeyStore(settings) as store:
        made = {
            "plain": await store.create(name="plain"),
            "limited": await store.create(name="l", rate_limit=UNBOUND, credits=10**12),
            "busy": await store.create(name="busy", rate_limit=UNBOUND, credits=10**9),
            "even": await store.create(name="even", rate_limit=rate),
            "one": await store.create(name="one", rate_limit=rate),
        }
    keys = {name: new.key for name, new in made.items()}
    with on_cpu(bench.cpus.server):
        bench.say("limits: in process: warm checks with and without limits")
        await _hot_path(s, bench.quick, settings, keys)
    async with AsyncExitStack() as stack:
        env = {"KEYSTORE_COLLECTION": settings.collection}
        apps = (bench.serve(f"limits{i}", **env) for i in range(3))
        servers = [await stack.enter_async_context(app) for app in apps]
        floor_app = bench.serve("floor", FLOOR, FLOOR_KEYS=",".join(keys.values()))
        floor = await stack.enter_async_context(floor_app)
        with on_cpu(bench.cpus.load):
            await _rps(s, bench, [servers[0], floor], keys)
            bench.say("limits: one key at 100/s over 3 apps, then 2L per window")
            await _across(s, bench.quick, servers, keys)
    return s


async def _hot_path(s: Section, quick: bool, settings: Settings, keys: Keys) -> None:
    async with ApiKeyStore(settings) as store:
        # As the dependency checks a key: verify, then let it through (which
        # counts the use, and spends from the limits if it has any).
        async def verify() -> object:
            record = await store.verify(keys["plain"])
            store.try_spend(record)
            return record

        async def with_limits() -> object:
            record = await store.verify(keys["limited"])
            if not store.try_spend(record):
                await store.spend(record)
            return record

        await with_limits()  # the first lease is taken: what follows is warm
        calls = {"verify": verify, "limits": with_limits}
        us = await per_call_us(calls, quick)
    slower = ratio(us["limits"], us["verify"])
    s.add(
        "µs per warm check, rate limit + credits (`verify` + `try_spend`), in process",
        f"{us['limits']:.2f}",
        f"{us['verify']:.2f} without limits; {us['set']:.2f} set lookup",
        judged("≤ 1.5x", slower <= 1.5, f"{slower:.2f}x"),
    )


async def _rps(s: Section, bench: Bench, apps: list[Server], keys: Keys) -> None:
    """whoami with and without limits, in the demo app and in the floor app."""
    app, floor = apps
    found = await bench.rounds(
        [
            (app, WHOAMI, keys["plain"]),
            (app, WHOAMI, keys["limited"]),
            (floor, WHOAMI, keys["plain"]),
            (floor, WHOAMI + "/limited", keys["plain"]),
        ]
    )
    plain, limited, floor_plain, floor_limited = (found.median(i) for i in range(4))
    kept, floor_kept = found.ratio(1, 0), found.ratio(3, 2)
    note = f"{kept:.3f}x; the floor's {floor_kept:.3f}x"
    if floor_kept < 0.95:
        note += ": the target is above what FastAPI itself charges for the headers"
    s.add(
        f"req/s, GET /v1/whoami, key with limits (one app, wrk, median of "
        f"{len(found.rps)} rounds)",
        f"{limited:,.0f}",
        f"{plain:,.0f} key without; floor {floor_limited:,.0f} / {floor_plain:,.0f}",
        judged("≥ 0.95x", kept >= 0.95, note),
    )


async def _totals(servers: list[Server]) -> dict[str, float]:
    found = [await metrics(server.url) for server in servers]
    return {k: sum(m.get(name, 0.0) for m in found) for k, name in TOTALS.items()}


def _spread(key: str, apps: list[Server]) -> Callable[[int], Request]:
    return lambda i: get(apps[i % len(apps)].url + WHOAMI, key)


async def _across(s: Section, quick: bool, servers: list[Server], keys: Keys) -> None:
    before = await _totals(servers)
    # The steady run ends where a window opens, so the next test starts at one.
    seconds, windows = (4.0, 1) if quick else (30.0, 3)
    seconds += WINDOW - (time.time() + seconds) % WINDOW
    steady = await open_loop(_spread(keys["busy"], servers), STEADY_RATE, seconds)
    after = await _totals(servers)
    d = {k: after[k] - before[k] for k in TOTALS}
    waited, writes = ratio(d["waits"], d["checks"]), d["writes"] / seconds * 3600
    s.add(
        f"requests that waited on Firestore, one key at {STEADY_RATE:g}/s over 3 apps",
        f"{waited:.2%}",
        f"{d['checks']:,.0f} requests, statuses {steady.statuses}",
        judged("≤ 2%", waited <= 0.02),
    )
    s.add(
        "limit writes per hour, same key",
        f"{writes:,.0f}",
        "3,600: one a second",
        judged("≤ 3,600", writes <= 3600),
    )
    if (lag := time.time() % WINDOW) > 0.5:
        await asyncio.sleep(WINDOW - lag)
    # Whole windows only: a stray request in the next one would count as a window.
    span = (time.time() // WINDOW + windows) * WINDOW - time.time() - 0.1
    demand = 2 * LIMIT / WINDOW
    even, one = await asyncio.gather(
        open_loop(_spread(keys["even"], servers), demand, span),
        open_loop(_spread(keys["one"], servers[:1]), demand, span),
    )
    for stream, where in ((even, "spread over 3 apps"), (one, "all on one app")):
        # Requests accepted in each window, by the time they were sent.
        sent = (a.sent for a in stream.answers if a.status == 200)
        counts = Counter(int(t // WINDOW) for t in sent)
        accepted = [counts[w] for w in sorted(counts)]
        ok = bool(accepted) and all(0.8 * LIMIT <= n <= LIMIT for n in accepted)
        s.add(
            f"accepted per {WINDOW} s window, L = {LIMIT}, demand 2L {where}",
            ", ".join(map(str, accepted)),
            f"L = {LIMIT}",
            judged("0.8L..L", ok),
        )
