"""Limits: what usage limits cost on the hot path, and their bounds across processes.

Three demo apps (ttl mode) on one collection. In process: a warm check of a key
with a rate limit and credits (verify, then spend) beside one without limits
and a set lookup. Over HTTP (wrk on one app): /v1/whoami of each key. Across
the three apps, one key at a steady 100 req/s: the share of requests that
waited on Firestore and the limit writes per hour; and a rate limit of L per
10 s window with a demand of 2L, spread evenly over the three apps or all on
one: the requests accepted per window, beside L.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from benchmarks.harness import Bench
from benchmarks.load import HEADER
from benchmarks.procs import PROJECT, Server, on_cpu
from benchmarks.rawhttp import Request, Stream, get, metrics, open_loop
from benchmarks.report import Section, judged, ratio
from benchmarks.stats import per_call_us
from keystore import ApiKeyStore, Settings
from keystore.limits import parse_rate_limit

#: Checked on every request, never reached.
UNBOUND = parse_rate_limit("1000000000/1d")
LIMIT, WINDOW = 200, 10
STEADY_RATE = 100.0
WHOAMI = "/v1/whoami"
TOTALS = {
    "checks": "keystore_limit_checks_total",
    "waits": "keystore_limit_waits_total",
    "writes": 'keystore_firestore_writes_total{cause="limits"}',
}


async def run(bench: Bench) -> Section:
    settings = Settings(project=PROJECT, collection=bench.collection("limits"))
    keys = await _make_keys(settings)
    with on_cpu(bench.cpus.server):
        bench.say("limits: in process: warm checks with and without limits")
        us = await _hot_path(settings, keys, 10_000 if bench.quick else 50_000)
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                bench.serve(
                    f"limits{i}",
                    "api.main:app",
                    KEYSTORE_COLLECTION=settings.collection,
                )
            )
            for i in range(3)
        ]
        with on_cpu(bench.cpus.load):
            rps = await _rps(bench, servers[0], keys)
            bench.say("limits: one key at 100/s over 3 apps, then 2L per window")
            spread = await _across(bench.quick, servers, keys)
    return _section(us, rps, spread)


async def _make_keys(settings: Settings) -> dict[str, str]:
    rate = parse_rate_limit(f"{LIMIT}/{WINDOW}s")
    async with ApiKeyStore(settings) as store:
        made = {
            "plain": await store.create(name="plain"),
            "limited": await store.create(
                name="limited", rate_limit=UNBOUND, credits=10**12
            ),
            "busy": await store.create(name="busy", rate_limit=UNBOUND, credits=10**9),
            "even": await store.create(name="even", rate_limit=rate),
            "one": await store.create(name="one", rate_limit=rate),
        }
    return {name: new.key for name, new in made.items()}


async def _hot_path(
    settings: Settings, keys: dict[str, str], n: int
) -> dict[str, float]:
    async with ApiKeyStore(settings) as store:
        held = {keys["plain"]}

        async def set_lookup() -> bool:
            return keys["plain"] in held

        async def verify() -> object:
            return await store.verify(keys["plain"])

        async def with_limits() -> object:
            record = await store.verify(keys["limited"])
            await store.spend(record)
            return record

        await with_limits()  # the first lease is taken: what follows is warm
        return await per_call_us(
            {"set": set_lookup, "verify": verify, "limits": with_limits}, n
        )


async def _rps(bench: Bench, server: Server, keys: dict[str, str]) -> dict[str, float]:
    best: dict[str, float] = {}
    order = ["plain", "limited"]
    for rep in range(
        1 if bench.quick else 2
    ):  # in turns, reversed: drift falls on both
        for name in order if rep % 2 == 0 else order[::-1]:
            result = await bench.loader.measure(server, WHOAMI, keys[name])
            bench.say(f"limits: whoami, key {name}: {result.rps:,.0f} req/s")
            best[name] = max(best.get(name, 0.0), result.rps)
    return best


async def _totals(servers: list[Server]) -> dict[str, float]:
    found = [await metrics(server.url) for server in servers]
    return {k: sum(m.get(name, 0.0) for m in found) for k, name in TOTALS.items()}


async def _across(
    quick: bool, servers: list[Server], keys: dict[str, str]
) -> dict[str, Any]:
    def spread(key: str, apps: list[Server]) -> Callable[[int], Request]:
        return lambda i: get(apps[i % len(apps)].url + WHOAMI, {HEADER: key})

    before = await _totals(servers)
    # The steady run ends where a window opens, so the next test starts at one.
    steady_seconds, windows = (4, 1) if quick else (30, 3)
    seconds = steady_seconds + WINDOW - (time.time() + steady_seconds) % WINDOW
    steady = await open_loop(
        spread(keys["busy"], servers), rate=STEADY_RATE, seconds=seconds
    )
    after = await _totals(servers)
    if (lag := time.time() % WINDOW) > 0.5:
        await asyncio.sleep(WINDOW - lag)
    # Whole windows only: a stray request in the next one would count as a window.
    span = (time.time() // WINDOW + windows) * WINDOW - time.time() - 0.1
    demand = 2 * LIMIT / WINDOW
    even, one = await asyncio.gather(
        open_loop(spread(keys["even"], servers), rate=demand, seconds=span),
        open_loop(spread(keys["one"], servers[:1]), rate=demand, seconds=span),
    )
    return {
        "steady": steady.summary(),
        "steady_seconds": seconds,
        "delta": {k: after[k] - before[k] for k in TOTALS},
        "accepted_even": _per_window(even),
        "accepted_one": _per_window(one),
    }


def _per_window(stream: Stream) -> list[int]:
    """Requests accepted in each window, by the time they were sent."""
    counts = Counter(int(a.sent // WINDOW) for a in stream.answers if a.status == 200)
    return [counts[w] for w in sorted(counts)]


def _section(
    us: dict[str, float], rps: dict[str, float], across: dict[str, Any]
) -> Section:
    s = Section("limits", ("figure", "keystore", "baseline, same run", "target"))
    s.data = {"us": us, "rps": rps, **across}
    slower = ratio(us["limits"], us["verify"])
    s.add(
        "µs per warm check, rate limit + credits (`verify` + `spend`), in process",
        f"{us['limits']:.2f}",
        f"{us['verify']:.2f} without limits; {us['set']:.2f} set lookup",
        judged("≤ 1.5x", slower <= 1.5, f"{slower:.2f}x"),
    )
    kept = ratio(rps["limited"], rps["plain"])
    s.add(
        "req/s, GET /v1/whoami, key with limits (one app)",
        f"{rps['limited']:,.0f}",
        f"{rps['plain']:,.0f} key without",
        judged("≥ 0.95x", kept >= 0.95, f"{kept:.3f}x"),
    )
    d, steady = across["delta"], across["steady"]
    waited = ratio(d["waits"], d["checks"])
    s.add(
        f"requests that waited on Firestore, one key at {STEADY_RATE:g}/s over 3 apps",
        f"{waited:.2%}",
        f"{d['checks']:,.0f} requests, statuses {steady['statuses']}",
        judged("≤ 2%", waited <= 0.02),
    )
    writes = d["writes"] / across["steady_seconds"] * 3600
    s.add(
        "limit writes per hour, same key",
        f"{writes:,.0f}",
        "3,600: one a second",
        judged("≤ 3,600", writes <= 3600),
    )
    for name, where in (("even", "spread over 3 apps"), ("one", "all on one app")):
        accepted = across[f"accepted_{name}"]
        s.add(
            f"accepted per {WINDOW} s window, L = {LIMIT}, demand 2L {where}",
            ", ".join(map(str, accepted)),
            f"L = {LIMIT}",
            judged(
                "0.8L..L",
                bool(accepted) and all(0.8 * LIMIT <= n <= LIMIT for n in accepted),
            ),
        )
    return s
