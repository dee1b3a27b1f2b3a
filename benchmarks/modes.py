"""Modes: keystore's three sync modes side by side, over 10,000 keys.

One demo app per mode (KEYSTORE_SYNC=ttl, reload, listen; usage counting off)
on one collection: revocation, Firestore reads, cached-key latency while
unknown keys arrive, start-up; in process, the warm check and memory per key.
Baselines from the same run: the settings, each app alone, a set lookup, the
sketch's cache, the floor app's start.
"""

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from benchmarks.harness import Bench
from benchmarks.load import HEADER
from benchmarks.procs import PROJECT, BenchmarkError, Server, on_cpu
from benchmarks.rawhttp import Request, fetch, get, metrics, open_loop, until_status
from benchmarks.report import Section, judged
from benchmarks.sketch import sync_client
from benchmarks.stats import Call, per_call_us
from keystore import ApiKeyStore, Settings
from keystore.keys import hash_key, new_key, new_key_id
from keystore.models import ApiKey
from keystore.settings import SYNC_MODES
from keystore.times import utcnow

MODES: tuple[str, ...] = SYNC_MODES
LOAD_KEYS, VALID_RATE = 50, 50.0
REVOKED = 20
#: Cached-key requests and unknown keys per second in the stall test.
CACHED_RATE = UNKNOWN_RATE = 100.0
READS = 'keystore_firestore_reads_total{cause="'
Keys = list[tuple[str, str]]  # (key id, key)


async def run(bench: Bench) -> Section:
    quick = bench.quick
    # quick: a 5 s TTL and reload interval, so that revocation ends soon.
    interval, n = (5.0, 2_000) if quick else (60.0, 10_000)
    settings = Settings(
        project=PROJECT,
        collection=bench.collection("modes"),
        cache_ttl=interval,
        reload_interval=interval,
        usage_flush_interval=0,
    )
    keys = [
        (key_id, new_key("ks", key_id)) for key_id in (new_key_id() for _ in range(n))
    ]
    bench.say(f"modes: writing {n:,} keys")
    await asyncio.to_thread(_write, settings.collection, keys)
    with on_cpu(bench.cpus.server):
        bench.say("modes: in process: warm checks, memory per key")
        ip = await _in_process(quick, settings, [k for _, k in keys])
    env = {
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_USAGE_FLUSH_INTERVAL": "0",
        "KEYSTORE_CACHE_TTL": f"{interval:g}",
        "KEYSTORE_RELOAD_INTERVAL": f"{interval:g}",
    }
    async with AsyncExitStack() as stack:
        servers: dict[str, Server] = {}
        ready: dict[str, dict[str, float]] = {}
        for mode in MODES:
            since = time.monotonic()
            server = bench.serve(mode, "api.main:app", **env, KEYSTORE_SYNC=mode)
            servers[mode] = await stack.enter_async_context(server)
            ready[mode] = await _ready(servers[mode], since)
        with on_cpu(bench.cpus.load):
            bench.say(f"modes: {REVOKED} rows deleted, then reads over a TTL")
            window = 7.0 if quick else interval + 2
            changes = await _revocation_and_reads(
                interval, window, servers, keys, settings
            )
            stalls = {}
            for mode in MODES:
                bench.say(f"modes: {mode}: a cached key while unknown keys arrive")
                stalls[mode] = await _stall(
                    2.0 if quick else 8.0, servers[mode], keys[0][1]
                )
    return _section(n, interval, ip, ready, changes, stalls)


def _write(collection: str, keys: Keys) -> None:
    """The keys' rows as keystore writes them, 500 to a batch (Firestore's most),
    a few batches at once: ``ApiKeyStore.create`` takes minutes for 10,000."""
    with sync_client() as client:
        rows = client.collection(collection)

        def commit(start: int) -> None:
            batch = client.batch()
            for key_id, key in keys[start : start + 500]:
                made = ApiKey(key_id, created_at=utcnow(), hash=hash_key(key))
                batch.set(rows.document(key_id), made.to_row())
            batch.commit()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(commit, range(0, len(keys), 500)))


async def _open(store: ApiKeyStore) -> ApiKeyStore:
    """``store`` opened and ready (reload, listen: loaded)."""
    await store.open()
    deadline = time.monotonic() + 120
    while not store.is_ready:
        if time.monotonic() > deadline:
            raise BenchmarkError(f"a {store.settings.sync} store not ready in 120 s")
        await asyncio.sleep(0.02)
    return store


async def _in_process(
    quick: bool, settings: Settings, keys: list[str]
) -> dict[str, Any]:
    key = keys[0]
    stores = [
        await _open(ApiKeyStore(replace(settings, sync=mode))) for mode in SYNC_MODES
    ]

    def check(store: ApiKeyStore) -> Call:
        return lambda: store.verify(key)

    async def set_lookup() -> bool:
        return key in {key}

    try:
        calls: dict[str, Call] = {s.settings.sync: check(s) for s in stores}
        us = await per_call_us(
            {**calls, "set": set_lookup}, 10_000 if quick else 50_000
        )
    finally:
        for store in stores:
            await store.aclose()
    memory = keys[: 100 if quick else 1000]
    per_key = [
        await _bytes_per_key(replace(settings, sync=m), memory) for m in SYNC_MODES
    ]
    return {"us": us, "bytes_per_key": dict(zip(MODES, per_key, strict=True))}


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _bytes_per_key(settings: Settings, keys: list[str]) -> float:
    """Python memory per row held (tracemalloc: not gRPC's buffers in C); reload,
    listen: from before open() to ready; ttl: as ``keys`` are looked up."""
    # No lookup budget: the ttl loop reads as fast as the emulator answers.
    store = ApiKeyStore(replace(settings, max_lookups_per_second=0))
    ttl = settings.sync == "ttl"
    if ttl:
        await _open(store)
        for k in keys[:20]:  # the client connected, its code paths warm
            await store.verify(k)
    tracemalloc.start()
    try:
        before, held = _traced(), len(store.source)
        await (asyncio.gather(*map(store.verify, keys[20:])) if ttl else _open(store))
        await asyncio.sleep(0.2)  # the listener's first snapshot lands
        return (_traced() - before) / max(1, len(store.source) - held)
    finally:
        tracemalloc.stop()
        await store.aclose()


async def _reads(server: Server) -> dict[str, float]:
    """Firestore documents read so far by one app, by cause."""
    found = (await metrics(server.url)).items()
    return {name[len(READS) : -2]: n for name, n in found if name.startswith(READS)}


async def _ready(server: Server, since: float) -> dict[str, float]:
    """Seconds from ``since`` to ready (/readyz), and the reads it took."""
    while (await fetch(get(f"{server.url}/readyz")))[0] != 200:
        if time.monotonic() > since + 120:
            raise BenchmarkError(f"{server.name} not ready in 120 s")
        await asyncio.sleep(0.02)
    seconds = time.monotonic() - since
    return {"seconds": seconds, "reads": sum((await _reads(server)).values())}


async def _revocation_and_reads(
    interval: float,
    window: float,
    servers: dict[str, Server],
    keys: Keys,
    settings: Settings,
) -> dict[str, Any]:
    """Seconds from the delete to the first refusal, per app and key; and, once
    listen has seen it, reads per hour of valid keys while ttl and reload catch up."""
    whoami = {mode: servers[mode].url + "/v1/whoami" for mode in MODES}
    load = [k for _, k in keys[:LOAD_KEYS]]
    revoked = keys[LOAD_KEYS : LOAD_KEYS + REVOKED]
    bystander = keys[LOAD_KEYS + REVOKED][1]
    # Each key used just before the delete: the worst case for ttl.
    for url in whoami.values():
        for key in [*load, *(k for _, k in revoked), bystander]:
            if (await fetch(get(url, {HEADER: key})))[0] != 200:
                raise BenchmarkError(f"{url} refused a valid key")
    # A key that stays valid, asked for throughout: how long the listen app
    # keeps requests waiting while it applies the change.
    asked = get(whoami["listen"], {HEADER: bystander})
    bystanders = asyncio.ensure_future(
        open_loop(lambda i: asked, rate=CACHED_RATE, seconds=5)
    )
    await asyncio.sleep(0.5)
    with sync_client() as client:
        batch = client.batch()  # one commit: every app sees one change
        for key_id, _ in revoked:
            batch.delete(client.collection(settings.collection).document(key_id))
        written = time.monotonic()  # before the commit is sent: the worst reading
        await asyncio.to_thread(batch.commit)

    def poll(mode: str, key: str) -> Awaitable[float | None]:
        request = get(whoami[mode], {HEADER: key})
        pause, deadline = (0.05 if mode == "listen" else 0.2), written + interval + 20
        return until_status(request, 401, written, pause, deadline)

    polls = {
        mode: asyncio.gather(*(poll(mode, k) for _, k in revoked)) for mode in MODES
    }
    await polls["listen"]
    await asyncio.sleep(0.5)  # reads still in flight
    started = time.monotonic()
    before = {mode: await _reads(servers[mode]) for mode in MODES}

    def cycle(url: str) -> Callable[[int], Request]:
        return lambda i: get(url, {HEADER: load[i % LOAD_KEYS]})

    await asyncio.gather(
        *(open_loop(cycle(u), rate=VALID_RATE, seconds=window) for u in whoami.values())
    )
    window = time.monotonic() - started
    after = {mode: await _reads(servers[mode]) for mode in MODES}
    seconds = {mode: list(await polls[mode]) for mode in MODES}
    reads = {m: sum(after[m].values()) - sum(before[m].values()) for m in MODES}
    # In ttl each revoked key is read once more, when its row's TTL runs out:
    # the cost of refusing it, not of the valid keys counted here.
    reads["ttl"] -= sum(
        1 for t in seconds["ttl"] if t is not None and written + t > started
    )
    return {
        "seconds": seconds,
        "bystanders": (await bystanders).summary(),
        "reads_per_hour": {mode: n * 3600 / window for mode, n in reads.items()},
    }


async def _stall(seconds: float, server: Server, key: str) -> dict[str, Any]:
    """A cached key at CACHED_RATE alone, then while unknown keys arrive."""
    url = server.url + "/v1/whoami"
    cached = get(url, {HEADER: key})
    idle = await open_loop(lambda i: cached, rate=CACHED_RATE, seconds=seconds)
    before = (await _reads(server)).get("check", 0)
    unknown = asyncio.ensure_future(
        open_loop(
            lambda i: get(url, {HEADER: new_key("ks")}),
            rate=UNKNOWN_RATE,
            seconds=seconds + 1,
        )
    )
    await asyncio.sleep(0.5)
    busy = await open_loop(lambda i: cached, rate=CACHED_RATE, seconds=seconds)
    misses = await unknown
    await asyncio.sleep(0.3)  # reads still in flight
    reads = (await _reads(server)).get("check", 0) - before
    return {
        "idle": idle.summary(),
        "busy": busy.summary(),
        "reads_per_unknown": reads / max(1, len(misses.answers)),
    }


def _section(
    n: int,
    interval: float,
    ip: dict[str, Any],
    ready: dict[str, dict[str, float]],
    changes: dict[str, Any],
    stalls: dict[str, Any],
) -> Section:
    s = Section("modes", ("figure", *MODES, "baseline, same run", "target"))
    s.data = {"inproc": ip, "ready": ready, "revocation": changes, "stalls": stalls}
    times = {
        m: sorted(float("inf") if t is None else t for t in changes["seconds"][m])
        for m in MODES
    }
    ok = times["listen"][-1] <= 2 and all(
        times[m][-1] <= interval + 1 for m in ("ttl", "reload")
    )
    s.add(
        f"revocation p50 / max s, {REVOKED} rows deleted at once",
        *(f"{times[m][REVOKED // 2]:.2f} / {times[m][-1]:.2f}" for m in MODES),
        f"TTL and reload interval {interval:g} s",
        judged("listen ≤ 2; ttl, reload ≤ interval", ok),
    )
    by, idle = changes["bystanders"], stalls["listen"]["idle"]
    s.add(
        "listen: a valid key's p99 / max ms while the change is read",
        "",
        "",
        f"{by['p99_ms']:.1f} / {by['max_ms']:.0f}",
        f"{idle['p99_ms']:.1f} / {idle['max_ms']:.0f} listen, alone",
        "(info)",
    )
    first = {m: ready[m]["reads"] for m in MODES}
    s.add(
        "Firestore reads to first ready",
        *(f"{first[m]:,.0f}" for m in MODES),
        f"{n:,} rows",
        judged("listen: one load", abs(first["listen"] - n) <= n / 100),
    )
    per_hour = changes["reads_per_hour"]
    s.add(
        f"Firestore reads per hour, {LOAD_KEYS} keys at {VALID_RATE:g} req/s",
        *(f"{per_hour[m]:,.0f}" for m in MODES),
        f"one per key per interval: {LOAD_KEYS * 3600 / interval:,.0f} ttl, "
        f"{n * 3600 / interval:,.0f} reload",
        judged("listen 0", per_hour["listen"] == 0),
    )
    s.add(
        f"Firestore reads per unknown key ({UNKNOWN_RATE:g}/s)",
        *(f"{stalls[m]['reads_per_unknown']:.2f}" for m in MODES),
        "-",
        "(info)",
    )
    for phase, label, baseline in (
        ("idle", f"cached-key p99 / max ms at {CACHED_RATE:g} req/s, alone", "-"),
        (
            "busy",
            f"same, while {UNKNOWN_RATE:g} unknown keys/s arrive",
            "the row above",
        ),
    ):
        cells = (stalls[m][phase] for m in MODES)
        s.add(
            label,
            *(f"{c['p99_ms']:.1f} / {c['max_ms']:.1f}" for c in cells),
            baseline,
            "(info)",
        )
    us, per_key = ip["us"], ip["bytes_per_key"]
    s.add(
        "µs per warm check (`verify`), in process",
        *(f"{us[m]:.2f}" for m in MODES),
        f"{us['set']:.2f} set lookup",
        judged("≤ 5", all(us[m] <= 5 for m in MODES)),
    )
    s.add(
        "bytes per key held in memory",
        *(f"{per_key[m]:,.0f}" for m in MODES),
        "ttl's, per key in use",
        "(info: ttl holds only keys in use)",
    )
    s.add(
        "s from process start to ready",
        *(f"{ready[m]['seconds']:.2f}" for m in MODES),
        "ttl's: it loads nothing",
        "(info)",
    )
    return s
