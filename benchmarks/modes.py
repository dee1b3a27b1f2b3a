"""keystore's three sync modes side by side, with two references, in one run.

    .venv/bin/python -m benchmarks.modes           # about 5 minutes, one table
    .venv/bin/python -m benchmarks.modes --quick   # about 1.5 minutes, harness check

One emulator holds 10,000 keys (written 500 to a batch in keystore's row format).
Three uvicorn apps (``api.main:app`` with KEYSTORE_SYNC=ttl, reload, listen, usage
counting off) are measured for Firestore reads, stalls and throughput; three more
of the same, started alongside on a second collection of 10,000 keys, take the
revocations, so that neither the polling of revoked keys nor the applying of the
deletes adds to what the first three are measured for. References, measured in
the same run:

* sketch (sketch_app.py): a sync Firestore get behind ``cachetools`` in an async
  dependency; its rows are the same keys, in its own collection;
* fss (fss_app.py): the PyPI package fastapi-simple-security (SQLite), installed
  into its own virtualenv, benchmarks/.venv-fss, on first use;
* floor (floor_app.py): a set lookup, the most FastAPI allows.

Phases: in-process figures (warm check, memory per key); apps start (time to
ready); 20 rows deleted at once and polled until refused, and once listen has
seen it, 62 s of valid-key traffic to count reads while ttl and reload catch up;
unknown keys per app, with a cached-key stream to see stalls; wrk throughput.
Results also go to benchmarks/results/modes.json (git-ignored).
"""

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks import modes_inproc, seed
from benchmarks.load import Loader
from benchmarks.models import HEADER
from benchmarks.modes_report import MODES, build, format_table
from benchmarks.procs import (
    ROOT,
    BenchmarkError,
    Children,
    Cpus,
    Emulator,
    Server,
    cpu_seconds,
    free_port,
    serve,
    uvicorn_argv,
)
from benchmarks.run import Progress, guarded, machine
from benchmarks.sketch_app import Sketch, document_id, sync_client
from benchmarks.streams import Connection, open_loop, request, until_status
from keystore import Settings

PROJECT = "demo-keystore"
RESULTS = ROOT / "benchmarks" / "results"
FSS_VENV = ROOT / "benchmarks" / ".venv-fss"
FSS_PACKAGE = "fastapi-simple-security"
#: Causes of reads that come with time, not with requests (see keystore.sources).
PERIODIC = frozenset({"reload", "listen"})


@dataclass(frozen=True)
class Config:
    keys: int = 10_000
    load_keys: int = 50
    revoked: int = 20
    memory_keys: int = 1_000
    #: At least one TTL and one reload interval, so each shows its periodic reads.
    valid_window: float = 62.0
    valid_rate: float = 50.0
    unknown_rate: float = 100.0
    unknown_seconds: float = 10.0
    cached_rate: float = 100.0
    #: How long a valid key is asked for around the listen app's revocation.
    bystander_seconds: float = 5.0
    #: How long a revoked key is polled before it counts as never refused.
    revoke_deadline: float = 80.0
    #: Polling intervals: fast where the answer comes in about a second.
    fast_poll: float = 0.05
    slow_poll: float = 0.2
    warmup: float = 1.0
    seconds: float = 4.0
    repeats: int = 2
    connections: int = 32
    checks: int = 100_000
    #: Only for --quick: shorter TTL and reload interval, so revocation ends soon.
    short_intervals: bool = False

    @classmethod
    def quick(cls) -> "Config":
        return cls(
            keys=2_000,
            valid_window=8.0,
            unknown_seconds=3.0,
            revoke_deadline=12.0,
            seconds=2.0,
            repeats=1,
            checks=20_000,
            short_intervals=True,
        )


# -- fastapi-simple-security's own virtualenv ---------------------------------


_PROBE = (
    "import importlib.util as u, sys; "
    "sys.exit(not all(u.find_spec(m) for m in ('fastapi_simple_security', 'uvicorn')))"
)


def fss_python(say: Progress) -> tuple[Path | None, str]:
    """The fss virtualenv's python, made on first use; or None and why not."""
    python = FSS_VENV / "bin" / "python"
    # find_spec, not import: importing the package creates its SQLite file
    # (sqlite.db in the working directory unless told otherwise).
    probe = [str(python), "-c", _PROBE]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python, "installed"
    say(f"installing {FSS_PACKAGE} into {FSS_VENV.relative_to(ROOT)}")
    # Its own virtualenv: the package may pin a FastAPI other than keystore's.
    steps = [
        [sys.executable, "-m", "venv", str(FSS_VENV)],
        [str(python), "-m", "pip", "install", "-q", FSS_PACKAGE, "uvicorn"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=240)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(step[:3])}: {exc}"
        if done.returncode != 0:
            return None, f"{' '.join(step[:4])} failed: {done.stderr.strip()[-300:]}"
    return python, "installed now"


def fss_check_cost(
    children: Children, python: Path, cpu: int | None, work: Path
) -> dict[str, Any]:
    env = {
        **os.environ,
        "FASTAPI_SIMPLE_SECURITY_SECRET": secrets.token_hex(16),
        "FASTAPI_SIMPLE_SECURITY_DB_LOCATION": str(work / "fss-check.db"),
    }
    argv = [str(python), "-m", "benchmarks.fss_app", "--checks", "2000"]
    proc = children.spawn(
        argv, env=env, cpu=cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        raise BenchmarkError("fss check-cost run hung") from None
    finally:
        children.stop(proc)
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("FSS_JSON "):
            figures: dict[str, Any] = json.loads(line.removeprefix("FSS_JSON "))
            return figures
    raise BenchmarkError(f"fss check-cost run failed:\n{err.decode()[-1500:]}")


# -- apps ---------------------------------------------------------------------


def _keystore_env(
    cfg: Config, mode: str, collection: str | None = None
) -> dict[str, str]:
    env = {
        **os.environ,
        "KEYSTORE_COLLECTION": collection or os.environ["KEYSTORE_COLLECTION"],
        "KEYSTORE_SYNC": mode,
        "KEYSTORE_USAGE_FLUSH_INTERVAL": "0",
        "KEYSTORE_LOG_LEVEL": "WARNING",
    }
    if cfg.short_intervals:
        env |= {"KEYSTORE_CACHE_TTL": "5", "KEYSTORE_RELOAD_INTERVAL": "5"}
    return env


def _settings_text(cfg: Config) -> str:
    env = _keystore_env(cfg, "ttl")
    s = Settings.from_env(env)
    return (
        f"KEYSTORE_CACHE_TTL {s.cache_ttl:g}s, KEYSTORE_RELOAD_INTERVAL "
        f"{s.reload_interval:g}s, listen watchdog {s.watchdog_interval:g}s, sketch "
        "TTL 60s; each revoked key was used once just before the write, so ttl and "
        "sketch show their worst case; fss revoked through its /auth/revoke"
    )


def reads_by_cause(server: Server) -> dict[str, int]:
    """Firestore documents read so far by one app, by cause."""
    if server.name.startswith("sketch"):
        reads = httpx.get(f"{server.url}/reads", timeout=10).json()
        return {"check": int(reads["async"])}
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("keystore_firestore_reads_total{"):
            labels, _, value = line.partition("} ")
            counts[labels.split('"')[1]] = int(float(value))
    return counts


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {c: n - before.get(c, 0) for c, n in after.items() if n - before.get(c, 0)}


def _wait_ready(server: Server, since: float, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - since
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise BenchmarkError(f"{server.name} not ready in {timeout:g}s")


@dataclass(frozen=True)
class Fss:
    server: Server
    secret: str
    keys: list[str]

    def whoami(self, key: str) -> str:
        return f"{self.server.url}/v1/whoami?api-key={key}"


def _fss_keys(server: Server, secret: str, n: int) -> list[str]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        keys = []
        for i in range(n):
            answer = client.get(
                "/auth/new",
                params={"name": f"bench-{i}", "never_expires": "true"},
                headers={"secret-key": secret},
            )
            answer.raise_for_status()
            keys.append(str(answer.json()))
    return keys


# -- phase A: reads under valid keys, and the revocations ---------------------


async def _status(conn: Connection, url: str, key: str | None) -> int:
    return await conn.ask(request(url, {HEADER: key} if key else None))


async def _warm(url: str, keys: Sequence[str | None], want: int = 200) -> None:
    conn = Connection(url)
    try:
        for key in keys:
            status = await _status(conn, url, key)
            if status != want:
                raise BenchmarkError(f"{url} answered {status} to a valid key")
    finally:
        conn.close()


async def _valid_reads(
    cfg: Config, servers: dict[str, Server], keys: list[str]
) -> dict[str, Any]:
    for server in servers.values():
        await _warm(server.url + "/v1/whoami", keys)
    before = {name: reads_by_cause(s) for name, s in servers.items()}
    started = time.monotonic()
    streams = await asyncio.gather(
        *(
            open_loop(
                s.url + "/v1/whoami",
                [request(s.url + "/v1/whoami", {HEADER: k}) for k in keys],
                rate=cfg.valid_rate,
                seconds=cfg.valid_window,
            )
            for s in servers.values()
        )
    )
    window = time.monotonic() - started
    after = {name: reads_by_cause(s) for name, s in servers.items()}
    return {
        "window_s": window,
        "reads": {name: _diff(after[name], before[name]) for name in servers},
        "traffic": {
            name: result.summary()
            for name, result in zip(servers, streams, strict=True)
        },
    }


async def _revocation(
    cfg: Config,
    servers: dict[str, Server],
    fss: Fss | None,
    ids: list[str],
    keys: list[str],
    sketch_keys: list[str],
    bystander: str,
    collection: str,
    sketch_collection: str,
    listen_done: asyncio.Event,
) -> dict[str, Any]:
    """Seconds from the write to the first refusal, per app and key; and the CPU
    the listen app used meanwhile (applying the change, answering the polls)."""
    chosen = {
        name: sketch_keys if name.endswith("sketch") else keys for name in servers
    }
    for name, server in servers.items():
        await _warm(server.url + "/v1/whoami", chosen[name])
    if fss is not None:
        for key in fss.keys[: cfg.revoked]:
            await _warm(fss.whoami(key), [None])
    docs = [(collection, key_id) for key_id in ids]
    docs += [(sketch_collection, document_id(key)) for key in sketch_keys]
    listen_pid = servers["listen"].pid if "listen" in servers else None
    cpu_before = cpu_seconds(listen_pid) if listen_pid else 0.0
    bystanders: asyncio.Future[Any] | None = None
    if listen_pid:
        # A key that stays valid, asked for throughout: how long the listen app
        # keeps other requests waiting while it applies the change.
        url = servers["listen"].url + "/v1/whoami"
        bystanders = asyncio.ensure_future(
            open_loop(
                url,
                [request(url, {HEADER: bystander})],
                rate=cfg.cached_rate,
                seconds=cfg.bystander_seconds,
            )
        )
        await asyncio.sleep(0.5)
    with sync_client(PROJECT) as client:
        written = time.monotonic()  # before the commit is sent: the worst reading
        await asyncio.to_thread(seed.delete, client, docs)
    deadline = written + cfg.revoke_deadline

    async def poll(server: Server, key: str) -> float | None:
        url = server.url + "/v1/whoami"
        interval = cfg.fast_poll if server.name.endswith("listen") else cfg.slow_poll
        return await until_status(
            url,
            request(url, {HEADER: key}),
            401,
            since=written,
            interval=interval,
            deadline=deadline,
        )

    async def fss_revoke(key: str) -> float | None:
        assert fss is not None
        conn = Connection(fss.server.url)
        revoke = request(
            f"{fss.server.url}/auth/revoke?api-key={key}", {"secret-key": fss.secret}
        )
        since = time.monotonic()
        try:
            status = await conn.ask(revoke)
        finally:
            conn.close()
        if status != 200:
            raise BenchmarkError(f"fss /auth/revoke answered {status}")
        url = fss.whoami(key)
        return await until_status(
            url,
            request(url),
            403,  # the package refuses a revoked key with 403
            since=since,
            interval=cfg.fast_poll,
            deadline=since + cfg.revoke_deadline,
        )

    names = list(servers)
    waits = {
        name: asyncio.ensure_future(
            asyncio.gather(*(poll(servers[name], key) for key in chosen[name]))
        )
        for name in names
    }
    listen_cpu: list[float] = []
    listen_bystanders: dict[str, Any] = {}

    async def listen_cost() -> None:
        if "listen" in waits and listen_pid:
            await asyncio.wait([waits["listen"]])
            listen_cpu.append(cpu_seconds(listen_pid) - cpu_before)
        if bystanders is not None:
            listen_bystanders.update((await bystanders).summary())
        listen_done.set()

    async def fss_after_listen() -> list[float | None]:
        # fss answers each poll with a thread and an SQLite write; run at the same
        # time, its CPU use on the servers' CPU would slow the listen app down.
        if "listen" in waits:
            await asyncio.wait([waits["listen"]])
            await asyncio.sleep(0.1)  # after listen_cost has read the CPU time
        return list(
            await asyncio.gather(*(fss_revoke(k) for k in fss_keys[: cfg.revoked]))
        )

    fss_keys = fss.keys if fss is not None else []
    if fss is not None:
        waits["fss"] = asyncio.ensure_future(fss_after_listen())
        names.append("fss")
    found, _ = await asyncio.gather(asyncio.gather(*waits.values()), listen_cost())
    return {
        "seconds": {
            name.removeprefix("revoke-"): list(times)
            for name, times in zip(names, found, strict=True)
        },
        "listen_cpu_s": listen_cpu[0] if listen_cpu else None,
        "listen_bystanders": listen_bystanders,
    }


async def _phase_a(
    cfg: Config,
    servers: dict[str, Server],
    revokers: dict[str, Server],
    fss: Fss | None,
    seeded: seed.Seeded,
    revoked: seed.Seeded,
    collections: tuple[str, str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    load = seeded.keys[: cfg.load_keys]
    sketch_keys = seeded.keys[cfg.load_keys : cfg.load_keys + cfg.revoked]
    listen_done = asyncio.Event()
    revocation = asyncio.ensure_future(
        _revocation(
            cfg,
            revokers,
            fss,
            revoked.ids[: cfg.revoked],
            revoked.keys[: cfg.revoked],
            sketch_keys,
            revoked.keys[cfg.revoked],
            *collections,
            listen_done,
        )
    )
    # The valid-key traffic starts once listen has seen the change: its figure is
    # the one with a target of seconds, and the other apps share its CPU.
    await asyncio.wait(
        [revocation, asyncio.ensure_future(listen_done.wait())],
        timeout=cfg.revoke_deadline + 60,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if revocation.done():
        revocation.result()  # raises here if the revocation set-up failed
    valid = await _valid_reads(cfg, servers, load)
    return valid, await revocation


# -- phase B: unknown keys, and how long cached keys wait meanwhile -----------


def _unknown_window(
    cfg: Config,
    children: Children,
    cpus: Cpus,
    work: Path,
    server: Server,
    key: str,
) -> dict[str, Any]:
    url = server.url + "/v1/whoami"
    asyncio.run(_warm(url, [key]))
    ready, out, log = (
        work / f"unknown-{server.name}.{x}" for x in ("r", "json", "log")
    )
    argv = [sys.executable, "-m", "benchmarks.misses", url]
    argv += ["--rate", str(cfg.unknown_rate), "--seconds", str(cfg.unknown_seconds)]
    argv += ["--ready", str(ready), "--out", str(out)]
    before = reads_by_cause(server)
    with log.open("wb") as sink:
        proc = children.spawn(
            argv, env=os.environ, cpu=cpus.load, stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"miss stream did not start:\n{log.read_text()}")
            time.sleep(0.01)
        cached = asyncio.run(
            open_loop(
                url,
                [request(url, {HEADER: key})],
                rate=cfg.cached_rate,
                seconds=cfg.unknown_seconds,
            )
        )
        try:
            proc.wait(cfg.unknown_seconds + 20)
        except subprocess.TimeoutExpired:
            raise BenchmarkError("miss stream did not stop") from None
        if proc.returncode != 0 or not out.exists():
            raise BenchmarkError(f"miss stream failed:\n{log.read_text()[-2000:]}")
        unknown: dict[str, Any] = json.loads(out.read_text())
    finally:
        children.stop(proc)
    time.sleep(0.3)  # reads still in flight when the stream ended
    return {
        "reads": _diff(reads_by_cause(server), before),
        "cached": cached.summary(),
        "unknown": unknown,
    }


# -- phase C: throughput ------------------------------------------------------


def _throughput(
    cfg: Config,
    loader: Loader,
    targets: dict[str, tuple[Server, str, str | None]],
    say: Progress,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for app, (server, whoami, key) in targets.items():
        runs: dict[str, list[dict[str, Any]]] = {"healthz": [], "whoami": []}
        urls = {"healthz": server.url + "/healthz", "whoami": whoami}
        # healthz, whoami, then whoami, healthz: drift falls on both alike.
        order = ["healthz", "whoami"]
        for rep in range(cfg.repeats):
            for endpoint in order if rep % 2 == 0 else order[::-1]:
                result = loader.measure(
                    urls[endpoint],
                    key if endpoint == "whoami" else None,
                    warmup=cfg.warmup,
                    seconds=cfg.seconds,
                    connections=cfg.connections,
                    watch=server.pid,
                )
                runs[endpoint].append(result.as_dict())
        best = {e: max(float(run["rps"]) for run in rs) for e, rs in runs.items()}
        failed = sum(
            int(run["status_errors"]) + int(run["socket_errors"])
            for run in runs["whoami"]
        )
        out[app] = {
            "healthz": best["healthz"],
            "whoami": best["whoami"],
            "ratio": best["whoami"] / best["healthz"],
            "failed_whoami": failed,
            "runs": runs,
        }
        say(
            f"{app}: healthz {best['healthz']:,.0f}/s, whoami {best['whoami']:,.0f}/s"
            f", ratio {best['whoami'] / best['healthz']:.3f}"
            + (f", {failed} failed" if failed else "")
        )
    return out


# -- the run ------------------------------------------------------------------


def _in_process(
    cfg: Config,
    cpus: Cpus,
    settings: Settings,
    seeded: seed.Seeded,
    sketch_collection: str,
) -> dict[str, Any]:
    memory_keys = seeded.keys[100 : 100 + cfg.memory_keys]
    everywhere = os.sched_getaffinity(0)
    # On the servers' CPU, alone, as a server would run these checks.
    if cpus.server is not None:
        os.sched_setaffinity(0, {cpus.server})
    base = replace(settings, usage_flush_interval=0)
    try:
        with sync_client(PROJECT) as client:
            sketch = Sketch(client, sketch_collection)
            us = asyncio.run(
                modes_inproc.warm_checks_us(base, sketch, seeded.keys[0], cfg.checks)
            )
            sketch_figures = modes_inproc.sketch_bytes_per_key(sketch, memory_keys)
        keystore = asyncio.run(modes_inproc.keystore_bytes_per_key(base, memory_keys))
    finally:
        os.sched_setaffinity(0, everywhere)
    for mode in MODES:
        keystore[mode]["us_verify"] = us[mode]
    sketch_figures["us_check"] = us["sketch"]
    return {"keystore": keystore, "sketch": sketch_figures, "floor_us": us["floor"]}


def _run(
    cfg: Config, work: Path, children: Children, emulator: Emulator, say: Progress
) -> dict[str, Any]:
    cpus = Cpus.plan()
    loader = Loader(children, cpus, work)
    results: dict[str, Any] = {
        "machine": machine(cpus, loader),
        "config": asdict(cfg),
    }
    python, fss_state = fss_python(say)
    results["fss"] = {"install": fss_state}
    if python is None:
        results["fss"]["error"] = "not installable"
        say(f"fastapi-simple-security unavailable: {fss_state}")

    say("starting the Firestore emulator")
    host = emulator.start_for(PROJECT, cpus.load)
    run_id = uuid.uuid4().hex[:10]
    collection = f"modes_{run_id}"
    sketch_collection = f"modes_{run_id}_sketch"
    os.environ["KEYSTORE_COLLECTION"] = collection
    settings = Settings(project=PROJECT, collection=collection)

    started = time.monotonic()
    seeded = seed.make_keys(cfg.keys, settings.prefix)
    sketch_rows = 100 + cfg.memory_keys
    # The revocation apps read a collection of their own, as large: the deletes
    # must not also cost the apps that are counting reads (a listener applies
    # every change it sees).
    revoke_collection = f"{collection}_revoke"
    revoked = seed.make_keys(cfg.keys, settings.prefix)
    with sync_client(PROJECT) as client:
        seed.write(client, seeded, collection, sketch_collection, sketch_rows)
        seed.write(client, revoked, revoke_collection, sketch_collection, 0)
    results["seed_seconds"] = time.monotonic() - started
    say(
        f"emulator on {host}; {cfg.keys:,} keys in {collection} "
        f"(+{sketch_rows:,} sketch rows) in {results['seed_seconds']:.1f}s"
    )

    say("in-process: warm checks and memory per key, each mode")
    results["inproc"] = _in_process(cfg, cpus, settings, seeded, sketch_collection)
    for mode in MODES:
        ip = results["inproc"]["keystore"][mode]
        say(
            f"  {mode}: {ip['us_verify']:.2f} µs/check, "
            f"{ip['bytes_per_key']:,.0f} B/key over {ip['rows']:,} rows"
        )
    if python is not None:
        try:
            results["fss"]["check"] = fss_check_cost(
                children, python, cpus.server, work
            )
        except BenchmarkError as exc:
            results["fss"]["error"] = "check-cost run failed"
            say(str(exc))

    env = {
        **os.environ,
        "FLOOR_KEYS": seeded.keys[0],
        "SKETCH_COLLECTION": sketch_collection,
    }
    with ExitStack() as stack:

        def start(name: str, argv: list[str], env: dict[str, str]) -> Server:
            return stack.enter_context(
                serve(children, name, argv, env=env, cpu=cpus.server, log_dir=work)
            )

        say("starting the apps, one at a time, timing each to ready")
        servers: dict[str, Server] = {}
        ready: dict[str, dict[str, float]] = {}
        for mode in MODES:
            since = time.monotonic()
            server = start(
                mode,
                uvicorn_argv("api.main:app", free_port(), factory=False),
                _keystore_env(cfg, mode),
            )
            healthz = time.monotonic() - since
            ready[mode] = {"healthz_s": healthz, "ready_s": _wait_ready(server, since)}
            ready[mode]["reads"] = sum(reads_by_cause(server).values())
            servers[mode] = server
            say(f"  {mode}: ready in {ready[mode]['ready_s']:.2f}s")
        for name, app in (
            ("sketch", "benchmarks.sketch_app:create_app_from_env"),
            ("floor", "benchmarks.floor_app:create_app_from_env"),
        ):
            since = time.monotonic()
            servers[name] = start(
                name, uvicorn_argv(app, free_port(), factory=True), env
            )
            ready[name] = {"healthz_s": time.monotonic() - since}
        fss: Fss | None = None
        if python is not None:
            secret = secrets.token_hex(16)
            fss_env = {
                **os.environ,
                "FASTAPI_SIMPLE_SECURITY_SECRET": secret,
                "FASTAPI_SIMPLE_SECURITY_DB_LOCATION": str(work / "fss.db"),
            }
            argv = uvicorn_argv(
                "benchmarks.fss_app:create_app", free_port(), factory=True
            )
            since = time.monotonic()
            try:
                server = start("fss", [str(python), *argv[1:]], fss_env)
                ready["fss"] = {"healthz_s": time.monotonic() - since}
                fss = Fss(server, secret, _fss_keys(server, secret, cfg.revoked + 1))
            except (BenchmarkError, httpx.HTTPError) as exc:
                results["fss"]["error"] = "app failed to start"
                say(f"fss app failed: {exc}")
        results["ready"] = ready

        reads_apps = {m: servers[m] for m in (*MODES, "sketch")}
        with ExitStack() as revoking:
            say("starting the revocation apps (same modes, their own collection)")
            revokers: dict[str, Server] = {}
            for mode in MODES:
                revokers[mode] = revoking.enter_context(
                    serve(
                        children,
                        f"revoke-{mode}",
                        uvicorn_argv("api.main:app", free_port(), factory=False),
                        env=_keystore_env(cfg, mode, revoke_collection),
                        cpu=cpus.server,
                        log_dir=work,
                    )
                )
                _wait_ready(revokers[mode], time.monotonic())
            revokers["sketch"] = revoking.enter_context(
                serve(
                    children,
                    "revoke-sketch",
                    uvicorn_argv(
                        "benchmarks.sketch_app:create_app_from_env",
                        free_port(),
                        factory=True,
                    ),
                    env=env,
                    cpu=cpus.server,
                    log_dir=work,
                )
            )
            say(
                f"reads under valid keys ({cfg.valid_window:g}s) while "
                f"{cfg.revoked} rows are deleted and polled until refused"
            )
            everywhere = os.sched_getaffinity(0)
            # The pollers and streams run here: on the loaders' CPU, not the servers'.
            if cpus.load is not None:
                os.sched_setaffinity(0, {cpus.load})
            try:
                valid, revocation = asyncio.run(
                    _phase_a(
                        cfg,
                        reads_apps,
                        revokers,
                        fss,
                        seeded,
                        revoked,
                        (revoke_collection, sketch_collection),
                    )
                )
            finally:
                os.sched_setaffinity(0, everywhere)
        results["valid"] = valid
        results["revocation"] = {**revocation, "settings": _settings_text(cfg)}
        for name, times in revocation["seconds"].items():
            done = sorted(t for t in times if t is not None)
            say(
                f"  revoked on {name}: {len(done)}/{len(times)} refused, "
                f"max {done[-1] if done else float('nan'):.2f}s"
            )

        say(f"unknown keys at {cfg.unknown_rate:g}/s, one app at a time")
        stall: dict[str, Any] = {}
        if cpus.load is not None:
            os.sched_setaffinity(0, {cpus.load})
        try:
            for name, server in reads_apps.items():
                stall[name] = _unknown_window(
                    cfg, children, cpus, work, server, seeded.keys[0]
                )
                s = stall[name]
                say(
                    f"  {name}: reads {s['reads']}, cached p99 "
                    f"{s['cached']['p99_ms']:.2f} ms max {s['cached']['max_ms']:.1f} ms"
                )
        finally:
            os.sched_setaffinity(0, everywhere)
        results["stall"] = stall
        results["reads"] = _reads(cfg, results)

        say("throughput: healthz and whoami under wrk")
        key = seeded.keys[0]
        targets: dict[str, tuple[Server, str, str | None]] = {
            name: (servers[name], servers[name].url + "/v1/whoami", key)
            for name in (*MODES, "floor")
        }
        if fss is not None:
            # The package reads the key from its own header or the query; the
            # query keeps wrk's command line the same for every app.
            targets["fss"] = (fss.server, fss.whoami(fss.keys[-1]), None)
        results["throughput"] = _throughput(cfg, loader, targets, say)
    return results


def _reads(cfg: Config, r: dict[str, Any]) -> dict[str, Any]:
    """Reads per hour: periodic reads over the long window, per-request ones in
    each window, each extrapolated over its own window."""
    window = float(r["valid"]["window_s"])
    valid: dict[str, float] = {}
    unknown: dict[str, float] = {}
    for app, causes in r["valid"]["reads"].items():
        valid[app] = sum(causes.values()) * 3600 / window
        periodic = sum(n for c, n in causes.items() if c in PERIODIC) * 3600 / window
        s = r["stall"][app]
        seconds = float(cfg.unknown_seconds)
        per_request = sum(n for c, n in s["reads"].items() if c not in PERIODIC)
        unknown[app] = periodic + per_request * 3600 / seconds
    first = {m: r["ready"][m]["reads"] for m in MODES}
    return {
        "valid_window_s": window,
        "valid_per_hour": valid,
        "unknown_per_hour": unknown,
        "first_ready": first,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.modes")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs and 5 s TTL/reload interval, to check the harness only",
    )
    args = parser.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    out = RESULTS / ("modes-quick.json" if args.quick else "modes.json")
    results, status, say = guarded("keystore-modes-", lambda *parts: _run(cfg, *parts))
    if results is None:
        return status or 1
    results["elapsed_seconds"] = round(say.elapsed, 1)
    rows = build(results)
    m = results["machine"]
    print(
        f"keystore sync modes: nproc {m['nproc']}, Python {m['python']}, "
        f"{m['date']}, load avg at start {m['loadavg_at_start'][0]:.2f}, "
        f"{results['elapsed_seconds']}s"
    )
    print(f"loader: {m['loader']}; {m['pinning']}")
    extra = _foreign_load(results)
    if extra:
        print(
            "servers' CPU busy beyond the measured server during wrk runs (others' "
            f"work): median {extra[len(extra) // 2]:.0f}%, max {extra[-1]:.0f}%"
        )
    print(
        f"{cfg.keys:,} keys in one emulator; usage counting off; "
        f"fss: {_fss_state(results)}"
    )
    print()
    print(format_table(rows))
    print()
    print(
        "Marks: + ahead of every competing reference (sketch, fss), = level "
        "(within 2%), - behind one. floor is a ceiling, not a rival."
    )
    print(f"Revocation settings: {results['revocation']['settings']}.")
    print(
        "Reads/h: periodic reads (reload, listen resync) over the "
        f"{results['reads']['valid_window_s']:.0f} s window, plus per-request reads "
        "in each window, each scaled to an hour. Stalls: a cached key at "
        f"{cfg.cached_rate:g}/s while unknown keys arrive, one app at a time."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**results, "rows": rows}, indent=2, default=str) + "\n")
    print(f"JSON: {out.relative_to(ROOT)}")
    return status


def _foreign_load(r: dict[str, Any]) -> list[float]:
    """Per wrk run, how busy the servers' CPU was beyond the server's own use:
    other processes on a shared machine, which make the run less trustworthy."""
    cpu = r["machine"]["server_cpu"]
    extra = [
        max(
            0.0,
            float(run["cpu"].get(f"cpu{cpu}_busy_pct", 0.0))
            - float(run["cpu"].get("server_cpu_pct", 0.0)),
        )
        for app in r["throughput"].values()
        for runs in app["runs"].values()
        for run in runs
        if run.get("cpu")
    ]
    return sorted(extra)


def _fss_state(r: dict[str, Any]) -> str:
    fss = r["fss"]
    return f"{fss['install']}" + (f", {fss['error']}" if "error" in fss else "")


if __name__ == "__main__":
    raise SystemExit(main())
