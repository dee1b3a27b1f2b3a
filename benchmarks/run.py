"""The whole benchmark, start to end: emulator, keys, servers, load, table, JSON."""

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from benchmarks import inproc, sketch_app
from benchmarks.load import Loader
from benchmarks.models import HEADER
from benchmarks.procs import (
    ROOT,
    BenchmarkError,
    Children,
    Cpus,
    Emulator,
    Server,
    free_port,
    serve,
    uvicorn_argv,
)
from benchmarks.report import (
    build_rows,
    foreign_load,
    format_breakdown,
    format_table,
    write_json,
)
from keystore import ApiKeyStore, NewKey, Settings

PROJECT = "demo-keystore"
RESULTS = ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Config:
    warmup: float = 2.0
    seconds: float = 8.0
    repeats: int = 2
    connections: int = 32
    #: Load levels for the latency test, as (connections, pause ms before each
    #: request). Without a pause the server is saturated, and the cached keys'
    #: p99 grows with any work added, stall or not; with 8 connections pausing
    #: 3 ms the load is steady at about half the server's req/s, where a stall
    #: (a blocked event loop) shows most: the level the target is for.
    latency_levels: tuple[tuple[int, float], ...] = ((32, 0.0), (8, 0.0), (8, 3.0))
    #: Unknown keys per second during the latency test; the steady load is also
    #: measured at ``light_miss_rate``, to show the cost grows with the rate.
    miss_rate: float = 250.0
    light_miss_rate: float = 50.0
    herd: int = 200
    malformed: int = 10_000
    checks: int = 50_000

    @classmethod
    def quick(cls) -> "Config":
        """A smoke test of the harness in about a minute; its figures mean little."""
        return cls(
            warmup=1.0,
            seconds=2.0,
            repeats=1,
            latency_levels=((8, 3.0),),
            malformed=1_000,
            checks=20_000,
        )


class Progress:
    """Progress lines on stderr, so that stdout holds only the results."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self._start
        print(f"[{elapsed:5.1f}s] {message}", file=sys.stderr, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start


async def _make_key(settings: Settings) -> NewKey:
    async with ApiKeyStore(settings) as store:
        return await store.create(name="bench", scopes=["reports:read"])


async def _sketch_herd(url: str, key: str, n: int, path: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        (await client.post("/reset")).raise_for_status()
        answers = await asyncio.gather(
            *(client.get(path, headers={HEADER: key}) for _ in range(n)),
            return_exceptions=True,
        )
        reads = (await client.get("/reads")).json()
    statuses = Counter(
        str(a.status_code) if isinstance(a, httpx.Response) else type(a).__name__
        for a in answers
    )
    kind = "threaded" if path.endswith("threaded") else "async"
    return {"reads": int(reads[kind]), "statuses": dict(statuses)}


def _check_key(url: str, key: str, name: str) -> None:
    """Fail before measuring if the valid key is not accepted: else we'd time 401s."""
    response = httpx.get(f"{url}/v1/whoami", headers={HEADER: key}, timeout=10)
    if response.status_code != 200:
        raise BenchmarkError(f"{name} refused the benchmark key: {response.text}")


def machine(cpus: Cpus, loader: Loader) -> dict[str, Any]:
    """What a run was measured on, for its JSON."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": os.getloadavg(),
        "loader": loader.describe(),
        "pinning": cpus.describe(),
        "server_cpu": cpus.server,
    }


def _in_process(
    cfg: Config, cpus: Cpus, settings: Settings, new: NewKey, sketch_collection: str
) -> dict[str, Any]:
    sizes = inproc.Sizes(herd=cfg.herd, malformed=cfg.malformed, checks=cfg.checks)
    everywhere = os.sched_getaffinity(0)
    # On the servers' CPU, alone, as a server would run these checks; the sketch's
    # bulk count of garbage reads is not timed, so it may use both CPUs.
    if cpus.server is not None:
        os.sched_setaffinity(0, {cpus.server})
    try:
        keystore = asyncio.run(
            inproc.keystore_figures(settings, new.key, new.record.hash, sizes)
        )
        sketch = inproc.sketch_unknown(
            PROJECT, sketch_collection, settings.prefix, sizes
        )
    finally:
        os.sched_setaffinity(0, everywhere)
    sketch |= inproc.sketch_malformed(
        PROJECT, sketch_collection, settings.prefix, sizes
    )
    return {"keystore": keystore, "sketch": sketch}


def _run(
    cfg: Config, work: Path, children: Children, emulator: Emulator, say: Progress
) -> dict[str, Any]:
    cpus = Cpus.plan()
    loader = Loader(children, cpus, work)
    results: dict[str, Any] = {
        "machine": machine(cpus, loader),
        "config": asdict(cfg),
    }

    say("starting the Firestore emulator")
    host = emulator.start_for(PROJECT, cpus.load)
    run_id = uuid.uuid4().hex[:10]
    collection = f"bench_{run_id}"
    sketch_collection = f"bench_{run_id}_sketch"
    os.environ["KEYSTORE_COLLECTION"] = collection
    # No lookup budget in process: the unknown-key figures measure what one
    # Firestore read costs, which the budget would cut short.
    settings = Settings(
        project=PROJECT, collection=collection, max_lookups_per_second=0
    )

    new = asyncio.run(_make_key(settings))
    key = new.key
    with sketch_app.sync_client(PROJECT) as client:
        row = {"id": new.record.id, "name": "bench", "scopes": ["reports:read"]}
        sketch_app.seed(client, sketch_collection, key, {**row, "expires_at": None})
    say(f"emulator on {host}; key {new.record.id} in {collection}")

    say("in-process: warm checks, unknown keys, herd, malformed keys")
    results["inproc"] = _in_process(cfg, cpus, settings, new, sketch_collection)

    env = {**os.environ, "FLOOR_KEYS": key, "SKETCH_COLLECTION": sketch_collection}
    apps = {
        "keystore": uvicorn_argv("api.main:app", free_port(), factory=False),
        "floor": uvicorn_argv(
            "benchmarks.floor_app:create_app_from_env", free_port(), factory=True
        ),
        "sketch": uvicorn_argv(
            "benchmarks.sketch_app:create_app_from_env", free_port(), factory=True
        ),
    }
    say("starting the three apps under uvicorn")
    # All three wait on the servers' CPU; an idle uvicorn costs it nothing.
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                serve(children, name, argv, env=env, cpu=cpus.server, log_dir=work)
            )
            for name, argv in apps.items()
        }
        for server in servers.values():
            _check_key(server.url, key, server.name)
        results["throughput"] = _throughput(cfg, loader, servers, key, say)
        results["latency"] = _latency(cfg, loader, servers, key, say)
        # The store logs each Firestore call it gave up on; under load these are
        # its own deadline expiring, and each one opens its retry_after window.
        log = (work / "keystore.log").read_text(errors="replace")
        results["keystore_log"] = {
            "firestore_failures": log.count("Firestore failed the"),
            "tail": log.splitlines()[-5:],
        }
        say("sketch herd over HTTP")
        sketch_url = servers["sketch"].url
        results["sketch_herd"] = {
            kind: asyncio.run(_sketch_herd(sketch_url, key, cfg.herd, path))
            for kind, path in (
                ("async", "/v1/whoami"),
                ("threaded", "/v1/whoami-threaded"),
            )
        }
    return results


def _throughput(
    cfg: Config, loader: Loader, servers: dict[str, Server], key: str, say: Progress
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    throughput: dict[str, dict[str, list[dict[str, Any]]]] = {
        app: {"healthz": [], "whoami": []} for app in ("keystore", "floor")
    }
    order = [
        ("keystore", "healthz"),
        ("floor", "healthz"),
        ("keystore", "whoami"),
        ("floor", "whoami"),
    ]
    # Interleaved, and reversed on the second pass, so that drift in the machine's
    # load falls on both apps and both endpoints alike.
    for rep in range(cfg.repeats):
        for app, endpoint in order if rep % 2 == 0 else order[::-1]:
            server = servers[app]
            path = "/healthz" if endpoint == "healthz" else "/v1/whoami"
            result = loader.measure(
                server.url + path,
                key if endpoint == "whoami" else None,
                warmup=cfg.warmup,
                seconds=cfg.seconds,
                connections=cfg.connections,
                watch=server.pid,
            )
            say(f"{app} {path}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms")
            throughput[app][endpoint].append(result.as_dict())
    return throughput


def _latency(
    cfg: Config, loader: Loader, servers: dict[str, Server], key: str, say: Progress
) -> dict[str, dict[str, dict[str, Any]]]:
    latency: dict[str, dict[str, dict[str, Any]]] = {}
    runs = [(c, pause, cfg.miss_rate) for c, pause in cfg.latency_levels]
    runs += [
        (c, pause, cfg.light_miss_rate) for c, pause in cfg.latency_levels if pause
    ]
    for connections, pause_ms, rate in runs:
        level = f"c{connections}" + (f"-pause{pause_ms:g}ms" if pause_ms else "")
        if rate != cfg.miss_rate:
            level += f"-{rate:g}rps"
        latency[level] = {}
        for app in ("keystore", "sketch"):
            server = servers[app]
            url = server.url + "/v1/whoami"
            idle = loader.measure(
                url,
                key,
                warmup=cfg.warmup,
                seconds=cfg.seconds,
                connections=connections,
                pause_ms=pause_ms,
                watch=server.pid,
            )
            busy, stream = loader.measure_under_misses(
                url,
                key,
                rate=rate,
                warmup=cfg.warmup,
                seconds=cfg.seconds,
                connections=connections,
                pause_ms=pause_ms,
                watch=server.pid,
            )
            say(
                f"{app} /v1/whoami {level}: p99 {idle.p99_ms:.2f} ms idle, "
                f"{busy.p99_ms:.2f} ms during misses; misses answered "
                f"{stream['answered_rps']:.0f}/s {stream['statuses']}"
            )
            latency[level][app] = {
                "idle": idle.as_dict(),
                "misses": busy.as_dict(),
                "stream": stream,
            }
    return latency


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


Run = Callable[[Path, Children, Emulator, Progress], dict[str, Any]]


def guarded(prefix: str, run: Run) -> tuple[dict[str, Any] | None, int, Progress]:
    """``run`` with a work folder, child processes and an emulator, all cleaned up
    whatever happens; returns its results (None on failure) and an exit status."""
    # A shell starts background jobs with SIGINT ignored; Ctrl-C or kill -INT must
    # still reach us, so that the clean-up below runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    say = Progress()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children()
    emulator = Emulator(work / "emulator")
    status = 0
    results: dict[str, Any] | None = None
    try:
        results = run(work, children, emulator, say)
    except KeyboardInterrupt:
        print("benchmark interrupted; cleaning up", file=sys.stderr)
        status = 130
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.close()
        try:
            emulator.stop()
        except (BenchmarkError, OSError) as exc:
            print(f"could not stop the emulator: {exc}", file=sys.stderr)
            status = status or 1
        shutil.rmtree(work, ignore_errors=True)
    return results, status, say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="short runs, to check the harness only"
    )
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    out = RESULTS / ("quick.json" if args.quick else "latest.json")
    results, status, say = guarded("keystore-bench-", lambda *parts: _run(cfg, *parts))
    if results is None:
        return status or 1
    results["elapsed_seconds"] = round(say.elapsed, 1)
    results["foreign_load"] = foreign_load(results)
    rows = build_rows(results)
    m = results["machine"]
    print(
        f"keystore benchmarks: nproc {m['nproc']}, Python {m['python']}, {m['date']}, "
        f"load avg at start {m['loadavg_at_start'][0]:.2f}, "
        f"{results['elapsed_seconds']}s"
    )
    print(f"loader: {m['loader']}; {m['pinning']}")
    if results["foreign_load"]:
        f = results["foreign_load"]
        print(
            f"servers' CPU busy beyond the server process (other work, kernel): "
            f"median {f['median_pct']:.0f}%, max {f['max_pct']:.0f}% of the runs"
        )
    print()
    print(format_table(rows))
    print()
    print(format_breakdown(results["inproc"]["keystore"]["breakdown_us"]))
    write_json(out, results, rows)
    print(f"\nJSON: {out.relative_to(ROOT)}")
    return status
