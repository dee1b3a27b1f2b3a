"""Usage limits: their cost on the hot path, and their bounds across processes.

``python -m benchmarks.limits [--quick]``. Every figure is printed beside a
baseline measured in the same run:

- warm check µs with a rate limit and credits, beside the check without limits
  and beside a set lookup;
- /v1/whoami req/s of a key with limits, beside a key without and /healthz
  (one server, wrk);
- three servers on one emulator, one key at a steady 100 requests/s: the share
  of requests that waited on Firestore, and limit writes per hour;
- a rate limit of L per window with demand of twice L, spread evenly over the
  three servers and all on one: requests accepted per window, beside L.
"""

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import Loader
from benchmarks.procs import ROOT, Children, Cpus, Emulator, free_port, serve
from benchmarks.procs import uvicorn_argv as argv_for
from keystore import ApiKeyStore, Settings
from keystore.limits import parse_rate_limit

PROJECT = "demo-keystore"
RESULTS = ROOT / "benchmarks" / "results"
UNBOUND = parse_rate_limit("1000000000/1d")  # checked on every request, never hit


async def _per_call_us(
    calls: dict[str, Callable[[], Awaitable[object]]], n: int
) -> dict[str, float]:
    """µs per awaited call, best of 5 rounds taken in turn."""
    best = dict.fromkeys(calls, math.inf)
    for _ in range(5):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(n):
                await call()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / n * 1e6 for name, seconds in best.items()}


async def hot_path(settings: Settings, n: int) -> dict[str, float]:
    async with ApiKeyStore(settings) as store:
        plain = await store.create(name="plain")
        limited = await store.create(name="limited", rate_limit=UNBOUND, credits=10**12)
        keys = {plain.key}

        async def floor() -> bool:
            return plain.key in keys

        async def verify() -> object:
            return await store.verify(plain.key)

        async def with_limits() -> object:
            record = await store.verify(limited.key)
            await store.spend(record)
            return record

        await with_limits()
        return await _per_call_us(
            {"floor": floor, "verify": verify, "verify_and_limits": with_limits}, n
        )


async def drive(
    http: httpx.AsyncClient, bases: list[str], key: str, rate: float, seconds: float
) -> Counter[tuple[int, int]]:
    """Requests at ``rate``/s round robin; answers by (status, second they came)."""
    answers: Counter[tuple[int, int]] = Counter()

    async def one(base: str) -> None:
        r = await http.get(f"{base}/v1/whoami", headers={"x-api-key": key})
        answers[r.status_code, int(time.time())] += 1

    started, sent, pending = time.monotonic(), 0, []
    while (elapsed := time.monotonic() - started) < seconds:
        while sent < int(elapsed * rate) + 1:
            pending.append(asyncio.ensure_future(one(bases[sent % len(bases)])))
            sent += 1
        await asyncio.sleep(0.5 / rate)
    await asyncio.gather(*pending)
    return answers


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _totals(http: httpx.AsyncClient, bases: list[str]) -> dict[str, float]:
    texts = [(await http.get(f"{base}/metrics")).text for base in bases]
    names = {
        "checks": "keystore_limit_checks_total",
        "waits": "keystore_limit_waits_total",
        "writes": 'keystore_firestore_writes_total{cause="limits"}',
    }
    return {k: sum(_metric(t, name) for t in texts) for k, name in names.items()}


async def across_processes(
    settings: Settings, bases: list[str], seconds: float, windows: int
) -> dict[str, Any]:
    limit, window = 200, 10
    async with ApiKeyStore(settings) as store:
        busy = await store.create(name="busy", rate_limit=UNBOUND, credits=10**9)
        rate = parse_rate_limit(f"{limit}/{window}s")
        even = await store.create(name="even", rate_limit=rate)
        one = await store.create(name="one", rate_limit=rate)
    figures: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        before = await _totals(http, bases)
        await drive(http, bases, busy.key, 100, seconds)
        after = await _totals(http, bases)
        delta = {k: after[k] - before[k] for k in after}
        figures["steady_checks"] = delta["checks"]
        figures["waited_share"] = after["waits"] / after["checks"]
        figures["writes_per_hour"] = delta["writes"] / seconds * 3600
        # Start at a window's opening, run whole windows, demand twice the limit.
        await asyncio.sleep(window - time.time() % window + 0.05)
        demand = 2 * limit / window
        spread, single = await asyncio.gather(
            drive(http, bases, even.key, demand, windows * window - 0.1),
            drive(http, bases[:1], one.key, demand, windows * window - 0.1),
        )
    for name, answers in (("even", spread), ("one_process", single)):
        per_window: Counter[int] = Counter()
        for (status, second), count in answers.items():
            if status == 200:
                per_window[second // window] += count
        figures[f"accepted_{name}"] = [per_window[w] for w in sorted(per_window)]
    figures["limit"] = limit
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    quick = parser.parse_args().quick
    work = Path(tempfile.mkdtemp(prefix="keystore-limits-"))
    cpus = Cpus.plan()
    children = Children()
    emulator = Emulator(work / "emulator")
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.callback(children.close)
        emulator.start_for(PROJECT, cpus.load)
        stack.callback(emulator.stop)
        collection = f"bench_{uuid.uuid4().hex[:8]}"
        settings = Settings(project=PROJECT, collection=collection)
        results["hot_path_us"] = asyncio.run(
            hot_path(settings, 20_000 if quick else 100_000)
        )
        env = {
            **os.environ,
            "KEYSTORE_COLLECTION": collection,
            "KEYSTORE_LOG_LEVEL": "WARNING",
        }
        servers = [
            stack.enter_context(
                serve(
                    children,
                    f"server{i}",
                    argv_for("api.main:app", free_port(), factory=False),
                    env=env,
                    cpu=cpus.server,
                    log_dir=work,
                )
            )
            for i in range(3)
        ]
        loader = Loader(children, cpus, work)
        plain, limited = asyncio.run(_two_keys(settings))
        seconds = 3.0 if quick else 10.0
        url = servers[0].url
        results["rps"] = {
            name: loader.measure(
                f"{url}{path}", key, warmup=1.0, seconds=seconds, connections=32
            ).rps
            for name, path, key in (
                ("healthz", "/healthz", None),
                ("whoami", "/v1/whoami", plain),
                ("whoami_limited", "/v1/whoami", limited),
            )
        }
        results["processes"] = asyncio.run(
            across_processes(
                settings,
                [s.url for s in servers],
                10.0 if quick else 60.0,
                1 if quick else 3,
            )
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "limits.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))


async def _two_keys(settings: Settings) -> tuple[str, str]:
    async with ApiKeyStore(settings) as store:
        plain = await store.create(name="plain")
        limited = await store.create(name="limited", rate_limit=UNBOUND, credits=10**12)
    return plain.key, limited.key


def report(r: dict[str, Any]) -> str:
    us, rps, procs = r["hot_path_us"], r["rps"], r["processes"]
    limit = procs["limit"]
    rows = [
        (
            "warm check µs, rate limit + credits",
            f"{us['verify_and_limits']:.2f}",
            f"{us['verify']:.2f} without limits; {us['floor']:.2f} set lookup",
            f"ratio {us['verify_and_limits'] / us['verify']:.2f} (target ≤ 1.5)",
        ),
        (
            "req/s /v1/whoami, key with limits",
            f"{rps['whoami_limited']:.0f}",
            f"{rps['whoami']:.0f} key without; {rps['healthz']:.0f} /healthz",
            f"ratio {rps['whoami_limited'] / rps['whoami']:.3f} (target ≥ 0.95)",
        ),
        (
            "requests that waited on Firestore",
            f"{procs['waited_share']:.2%}",
            f"{procs['steady_checks']:.0f} requests at 100/s over 3 processes",
            "target ≤ 2%",
        ),
        (
            "limit writes per hour, busy key",
            f"{procs['writes_per_hour']:.0f}",
            "3,600 = one per second",
            "target ≤ about 3,600",
        ),
        (
            f"accepted per window, L={limit}/10s, even",
            str(procs["accepted_even"]),
            f"{0.8 * limit:.0f}..{limit}",
            "demand 2L over 3 processes",
        ),
        (
            f"accepted per window, L={limit}/10s, one process",
            str(procs["accepted_one_process"]),
            f"{0.8 * limit:.0f}..{limit}",
            "demand 2L on one process",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


if __name__ == "__main__":
    main()
