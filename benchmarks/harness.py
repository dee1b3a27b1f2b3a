"""What every suite is given (the emulator, the CPUs, a work folder, servers and
wrk's closed loops on them), and the guard that ends every child process."""

import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from benchmarks import rawhttp
from benchmarks.procs import HOST, BenchmarkError, Children, Cpus, Emulator, Server

LUA = Path(__file__).resolve().parent / "wrk_report.lua"
DEMO, FLOOR = "api.main:app", "benchmarks.floor_app:create_app"
Target = tuple[Server, str, str | None]  # server, path, key
#: A closed loop's load: connections, and ms each waits before each request.
Level = tuple[int, float]


@dataclass(frozen=True)
class Run:
    """One closed-loop run; ``errors``: answers not 2xx/3xx, failed connections;
    ``others_cpu_pct``: others' use of the server's CPU meanwhile."""

    rps: float
    p99_ms: float
    errors: int
    others_cpu_pct: float


class CpuMeter:
    """Others' use of the server's CPU from start to stop (busy beyond the
    server's own use), in %: what says how far to trust a run on this machine."""

    def __init__(self, pid: int, cpu: int | None) -> None:
        self._pid, self._cpu = pid, cpu
        self._start = self._ticks()

    def _ticks(self) -> tuple[int, int, int]:
        """The server's CPU ticks (all threads), its CPU's busy and all ticks."""
        with open(f"/proc/{self._pid}/stat") as f:
            own = sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])
        with open("/proc/stat") as f:
            line = next(li for li in f if li.startswith(f"cpu{self._cpu or 0} "))
        ticks = [int(v) for v in line.split()[1:]]
        return own, sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    def stop(self) -> float:
        (own0, busy0, all0), (own1, busy1, all1) = self._start, self._ticks()
        others = max(0, busy1 - busy0 - (own1 - own0)) / max(1, all1 - all0)
        return 100 * others if self._cpu is not None else 0.0


def find_wrk() -> str:
    """wrk's path, once Debian's package is installed if it was missing and we may."""
    if not shutil.which("wrk") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is not installed; trying apt-get install wrk", file=sys.stderr)
        argv = ["apt-get", "install", "-y", "-qq", "wrk"]
        subprocess.run(argv, capture_output=True, timeout=300, check=False)
    if wrk := shutil.which("wrk"):
        return wrk
    raise BenchmarkError("wrk is missing; install it (Debian: apt-get install wrk).")


@dataclass(frozen=True)
class Rounds:
    """req/s by round, then by target (Bench.rounds)."""

    rps: list[list[float]]

    def median(self, i: int) -> float:
        return statistics.median(r[i] for r in self.rps)

    def ratio(self, i: int, j: int) -> float:
        """The median over the rounds of target i's req/s over target j's."""
        return statistics.median(r[i] / r[j] if r[j] else 0.0 for r in self.rps)


@dataclass
class Bench:
    quick: bool
    work: Path
    children: Children
    cpus: Cpus
    emulator: Emulator
    wrk: str
    started: float = field(default_factory=time.monotonic)
    #: Every measured closed-loop run, for the heading.
    runs: list[Run] = field(default_factory=list)

    def say(self, message: str) -> None:
        """Progress on stderr, so that stdout holds only the tables."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    def collection(self, suite: str) -> str:
        """A collection no other suite or run used."""
        return f"bench_{suite}_{uuid.uuid4().hex[:8]}"

    @asynccontextmanager
    async def serve(
        self,
        name: str,
        app: str = DEMO,
        ready: str = "/healthz",
        options: Sequence[str] = (),
        **env: str,
    ) -> AsyncIterator[Server]:
        """``app`` under uvicorn, one worker on the servers' CPU, quiet logs, from
        the first 200 on ``ready`` until the block ends; ``module:app`` names an
        app, any other name a factory; ``options``: uvicorn's, added last."""
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        argv = [sys.executable, "-m", "uvicorn", app, "--port", str(port)]
        argv += ["--host", HOST, "--log-level", "warning", "--no-access-log"]
        argv += ["--factory"] if app.rpartition(":")[2] != "app" else []
        argv += options
        env = {**os.environ, "KEYSTORE_LOG_LEVEL": "WARNING", **env}
        log = self.work / f"{name}.log"
        with log.open("wb") as out:
            proc = self.children.spawn(argv, env, self.cpus.server, out)
        url = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + 60
            while (await rawhttp.fetch(rawhttp.get(url + ready)))[0] != 200:
                if proc.poll() is not None or time.monotonic() > deadline:
                    lines = log.read_text(errors="replace").splitlines()[-20:]
                    raise BenchmarkError(f"{name} not ready:\n" + "\n".join(lines))
                await asyncio.sleep(0.02)
            yield Server(url, proc.pid)
        finally:
            self.children.stop(proc)

    async def rounds(self, targets: Sequence[Target]) -> Rounds:
        """req/s of each target in rounds of short runs, each round in the other
        order. This VM's speed drifts 10% and more for tens of seconds: a ratio is
        taken within a round, where the drift falls on both alike."""
        count, warmup = (2, 0.0) if self.quick else (16, 1.0)
        found = []
        for rep in range(count):
            order = range(len(targets))[:: -1 if rep % 2 else 1]
            # Warm after the first round: each run is the 2 s measured.
            seconds = (0.0 if rep else warmup, 1.0 if self.quick else 2.0)
            runs = {i: await self.measure(targets[i], seconds) for i in order}
            found.append([runs[i].rps for i in range(len(targets))])
        return Rounds(found)

    async def measure(
        self, target: Target, seconds: tuple[float, float], level: Level = (32, 0.0)
    ) -> Run:
        """A closed loop: a warm-up run of ``seconds[0]`` (if any), discarded,
        then the measured one of ``seconds[1]``."""
        warmup, length = seconds
        if warmup:
            await self._wrk(target, warmup, level)
        self.runs.append(run := await self._wrk(target, length, level))
        return run

    async def _wrk(self, target: Target, seconds: float, level: Level) -> Run:
        """wrk from the loaders' CPU with one thread, as they have one CPU."""
        (server, path, key), (conns, pause) = target, level
        url = server.url + path
        # wrk takes whole seconds only.
        argv = [self.wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", url]
        argv += ["--latency", "--timeout", "5s", "-s", str(LUA)]
        argv += ["-H", f"{rawhttp.HEADER}: {key}"] if key else []
        env = {**os.environ, "WRK_PAUSE_MS": f"{pause:g}"}
        meter = CpuMeter(server.pid, self.cpus.server)
        proc = self.children.spawn(argv, env, self.cpus.load, subprocess.PIPE)
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"wrk hung on {url}") from None
        finally:
            self.children.stop(proc)
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("WRK_JSON "):
                f = json.loads(line.removeprefix("WRK_JSON "))
                rps, p99_ms = f["requests"] / f["duration_us"] * 1e6, f["p99_us"] / 1e3
                return Run(rps, p99_ms, int(f["errors"]), meter.stop())
        raise BenchmarkError(f"wrk gave no figures for {url}:\n{out[-2000:]!r}")


def guarded(quick: bool, run: Callable[[Bench], Coroutine[Any, Any, int]]) -> int:
    """``run`` with an emulator and child processes, all ended on any exit."""
    # A shell starts background jobs with SIGINT ignored; Ctrl-C, kill -INT and
    # kill must still reach us (as KeyboardInterrupt), so that the clean-up runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="keystore-bench-"))
    cpus, children = Cpus.plan(), Children(work)
    emulator = Emulator(work / "emulator", cpus.load)
    status = 1
    try:
        wrk = find_wrk()
        emulator.start()
        bench = Bench(quick, work, children, cpus, emulator, wrk)
        # On uvloop, as the served apps run (the server extra brings it): the
        # figures timed in process are then what a server's loop costs.
        status = uvloop.run(run(bench))
    except KeyboardInterrupt:
        print("benchmark interrupted; cleaning up", file=sys.stderr)
        status = 130
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.close()
        try:
            emulator.stop()
        except (BenchmarkError, OSError) as exc:
            print(f"could not stop the emulator: {exc}", file=sys.stderr)
        if os.environ.get("KEYSTORE_BENCH_KEEP"):
            print(f"the work folder (servers' logs) is kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status
