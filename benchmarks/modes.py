"""Modes: keystore's three sync modes side by side, over 10,000 keys: one demo
app per mode (usage counting off) on one collection, and in process one store
per mode. Baselines from the same run: a set lookup, the settings, each app
alone, and ttl, which loads nothing."""

import asyncio
import gc
import os
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from functools import partial

from benchmarks import rawhttp
from benchmarks.harness import Bench
from benchmarks.procs import BenchmarkError, Servers, on_cpu, sync_client
from benchmarks.report import Call, Section, add_warm_checks, judged, ms, per_call_us
from keystore import ApiKeyStore, Settings
from keystore.keys import hash_key, new_key, new_key_id
from keystore.models import ApiKey
from keystore.settings import SYNC_MODES as MODES
from keystore.times import utcnow

LOAD_KEYS, VALID_RATE = 50, 50.0
REVOKED = 20
#: Cached-key requests and unknown keys per second in the stall test.
CACHED_RATE = UNKNOWN_RATE = 100.0
READS = 'keystore_firestore_reads_total{cause="'
Keys = list[tuple[str, str]]  # (key id, key)


async def run(bench: Bench) -> Section:
    s = Section("modes", ("figure", *MODES, "baseline, same run", "target"))
    # quick: a 5 s TTL and reload interval, so that revocation ends soon.
    interval, n = (5.0, 2_000) if bench.quick else (60.0, 10_000)
    env = {
        "KEYSTORE_COLLECTION": bench.collection("modes"),
        "KEYSTORE_USAGE_FLUSH_INTERVAL": "0",
        "KEYSTORE_CACHE_TTL": str(interval),
        "KEYSTORE_RELOAD_INTERVAL": str(interval),
    }
    settings = Settings.from_env({**os.environ, **env})  # as the apps read them
    keys = [(i, new_key("ks", i)) for i in (new_key_id() for _ in range(n))]
    bench.say(f"modes: writing {n:,} keys")
    await asyncio.to_thread(_write, settings.collection, keys)
    with on_cpu(bench.cpus.server):
        bench.say("modes: in process: warm checks, memory per key")
        await _in_process(s, bench.quick, settings, [key for _, key in keys])
    async with AsyncExitStack() as stack:
        servers: Servers = {}
        ready: dict[str, tuple[float, float]] = {}
        for mode in MODES:
            since = time.monotonic()
            app = bench.serve(mode, ready="/readyz", **env, KEYSTORE_SYNC=mode)
            servers[mode] = server = await stack.enter_async_context(app)
            ready[mode] = time.monotonic() - since, await _reads(server.url)
        s.add(
            "s from process start to ready (/readyz); Firestore reads to get there",
            *(f"{ready[m][0]:.2f}; {ready[m][1]:,.0f}" for m in MODES),
            f"ttl, which loads nothing; {n:,} rows",
            judged("listen: one load", abs(ready["listen"][1] - n) <= n / 100),
        )
        with on_cpu(bench.cpus.load):
            bench.say(f"modes: {REVOKED} rows deleted, then reads over a TTL")
            await _changes(s, bench, settings, servers, keys)
            bench.say("modes: a cached key alone, then while unknown keys arrive")
            await _stalls(s, 2.0 if bench.quick else 8.0, servers, keys[0][1])
    return s


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
    s: Section, quick: bool, settings: Settings, keys: list[str]
) -> None:
    async with AsyncExitStack() as stack:
        calls: dict[str, Call] = {}
        for mode in MODES:
            store = await _open(ApiKeyStore(settings.model_copy(update={"sync": mode})))
            stack.push_async_callback(store.aclose)
            await store.verify(keys[0])
            calls[mode] = partial(store.verify, keys[0])
        add_warm_checks(s, await per_call_us(calls, quick), MODES)
    held = keys[: 100 if quick else 1000]
    per_key = [await _bytes_per_key(settings, mode, held) for mode in MODES]
    s.add(
        "bytes per key held in memory (tracemalloc)",
        *(f"{b:,.0f}" for b in per_key),
        "ttl's, per key in use",
        "(info: ttl holds only keys in use)",
    )


async def _bytes_per_key(settings: Settings, mode: str, keys: list[str]) -> float:
    """Python memory per row held (not gRPC's buffers in C); reload, listen:
    from before open() to ready; ttl: as ``keys`` are looked up."""
    # No lookup budget: the ttl loop reads as fast as the emulator answers.
    update = {"sync": mode, "max_lookups_per_second": 0}
    store = ApiKeyStore(settings.model_copy(update=update))
    if mode == "ttl":
        await _open(store)
        for key in keys[:20]:  # the client connected, its code paths warm
            await store.verify(key)
    tracemalloc.start()
    try:
        gc.collect()
        before, held = tracemalloc.get_traced_memory()[0], len(store.view)
        if mode == "ttl":  # one at a time, as requests come: rows, not calls in flight
            for key in keys[20:]:
                await store.verify(key)
        else:
            await _open(store)
            await asyncio.sleep(0.2)  # the listener's first snapshot lands
        gc.collect()
        added = tracemalloc.get_traced_memory()[0] - before
        return added / max(1, len(store.view) - held)
    finally:
        tracemalloc.stop()
        await store.aclose()


async def _reads(url: str) -> float:
    """Firestore documents read so far by one app."""
    found = (await rawhttp.metrics(url)).items()
    return sum(n for name, n in found if name.startswith(READS))


async def _changes(
    s: Section, bench: Bench, settings: Settings, servers: Servers, keys: Keys
) -> None:
    """Seconds from a delete of REVOKED rows to each one's refusal in each app;
    then, once listen has seen it, reads per hour of valid keys in each."""
    whoami = {mode: server.url + "/v1/whoami" for mode, server in servers.items()}
    load = [key for _, key in keys[:LOAD_KEYS]]
    revoked = keys[LOAD_KEYS : LOAD_KEYS + REVOKED]
    # Each key used just before the delete: the worst case for ttl.
    for url in whoami.values():
        for key in [*load, *(key for _, key in revoked)]:
            if (await rawhttp.fetch(rawhttp.get(url, key)))[0] != 200:
                raise BenchmarkError(f"{url} refused a valid key")
    # A valid key asked for throughout, in listen: how long the app keeps
    # requests waiting while it applies the change; the 2 s before, alone.
    asked = rawhttp.in_turn(whoami["listen"], load[:1])
    bystander = asyncio.ensure_future(rawhttp.open_loop(asked, CACHED_RATE, 6))
    await asyncio.sleep(2)
    with sync_client() as client:
        batch = client.batch()  # one commit: every app sees one change
        for key_id, _ in revoked:
            batch.delete(client.collection(settings.collection).document(key_id))
        # Before the commit is sent: the worst reading.
        written, written_at = time.monotonic(), time.time()
        await asyncio.to_thread(batch.commit)
    interval = settings.cache_ttl  # the reload interval too

    def refused(mode: str, key: str) -> asyncio.Future[float]:
        pause, deadline = (0.05 if mode == "listen" else 0.2), written + interval + 20
        asked = rawhttp.get(whoami[mode], key)
        polled = rawhttp.until_refused(asked, written, pause, deadline)
        return asyncio.ensure_future(polled)

    polls = {mode: [refused(mode, key) for _, key in revoked] for mode in MODES}
    await asyncio.gather(*polls["listen"])
    await asyncio.sleep(0.5)  # reads still in flight
    before = {mode: await _reads(servers[mode].url) for mode in MODES}
    started, window = time.monotonic(), 7.0 if bench.quick else interval + 2
    streams = (rawhttp.in_turn(url, load) for url in whoami.values())
    await asyncio.gather(*(rawhttp.open_loop(st, VALID_RATE, window) for st in streams))
    window = time.monotonic() - started
    reads = {mode: await _reads(servers[mode].url) - before[mode] for mode in MODES}
    times = {m: sorted(await asyncio.gather(*polls[m])) for m in MODES}
    ok = times["listen"][-1] <= 2 and all(
        times[m][-1] <= interval + 1 for m in ("ttl", "reload")
    )
    s.add(
        f"revocation p50 / max s, {REVOKED} rows deleted at once",
        *(f"{times[m][REVOKED // 2]:.2f} / {times[m][-1]:.2f}" for m in MODES),
        f"TTL and reload interval {interval:g} s",
        judged("listen ≤ 2; ttl, reload ≤ interval", ok),
    )
    answers = (await bystander).answers
    s.add(
        "listen: a valid key's p99 / max ms while the change is read",
        "",
        "",
        ms((a for a in answers if a.sent >= written_at), 99, 100),
        f"{ms((a for a in answers if a.sent < written_at), 99, 100)} the 2 s before",
        "(info)",
    )
    # In ttl each revoked key is read once more, when its row's TTL runs out:
    # the cost of refusing it, not of the valid keys counted here.
    reads["ttl"] -= sum(1 for t in times["ttl"] if written + t > started)
    s.add(
        f"Firestore reads per hour, {LOAD_KEYS} keys at {VALID_RATE:g} req/s",
        *(f"{reads[m] * 3600 / window:,.0f}" for m in MODES),
        f"one per key per interval: {LOAD_KEYS * 3600 / interval:,.0f} ttl, "
        f"{len(keys) * 3600 / interval:,.0f} reload",
        judged("listen 0", reads["listen"] == 0),
    )


async def _stalls(s: Section, seconds: float, servers: Servers, key: str) -> None:
    """A cached key at CACHED_RATE alone, then while unknown keys arrive."""
    alone, busy = [], []
    for server in servers.values():
        url = server.url + "/v1/whoami"
        asked = rawhttp.in_turn(url, [key])
        alone.append(await rawhttp.open_loop(asked, CACHED_RATE, seconds))
        loop = rawhttp.open_loop(asked, CACHED_RATE, seconds)
        stream, _ = await rawhttp.beside_unknown(url, UNKNOWN_RATE, seconds + 1, loop)
        busy.append(stream)
    for label, streams, baseline in (
        (f"cached-key p99 / max ms at {CACHED_RATE:g} req/s, alone", alone, "-"),
        (f"same, while {UNKNOWN_RATE:g} unknown keys/s arrive", busy, "the row above"),
    ):
        s.add(label, *(ms(st.answers, 99, 100) for st in streams), baseline, "(info)")
