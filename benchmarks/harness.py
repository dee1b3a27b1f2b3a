"""What every suite is given: the emulator, the CPUs, a work folder, servers and
closed loops on them (wrk, or rawhttp without it); and the guard that ends
every child process whatever happens."""

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
from types import FrameType
from typing import Any

from benchmarks import rawhttp
from benchmarks.procs import HOST, BenchmarkError, Children, Cpus, Emulator, Server

LUA = Path(__file__).resolve().parent / "wrk_report.lua"
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
        self._start = self._now()

    def _now(self) -> tuple[float, float, int, int]:
        """The time, the server's CPU seconds (all threads, user and system), and
        its CPU's busy and all ticks since boot."""
        try:
            with open(f"/proc/{self._pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            own = 0.0
        with open("/proc/stat") as f:
            mine = f"cpu{self._cpu or 0} "
            line = next((li for li in f if li.startswith(mine)), "x 0 0 0 0")
        ticks = [int(v) for v in line.split()[1:]]
        return time.monotonic(), own, sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    def stop(self) -> float:
        if self._cpu is None:
            return 0.0
        (t0, own0, busy0, all0), (t1, own1, busy1, all1) = self._start, self._now()
        others = 100 * (busy1 - busy0) / max(1, all1 - all0)
        return max(0.0, others - 100 * (own1 - own0) / (t1 - t0))


def find_wrk() -> str | None:
    """wrk's path; installs Debian's package once if we may, else None: then
    rawhttp stands in (BENCH_LOADER=python forces that, to test it where wrk is)."""
    if os.environ.get("BENCH_LOADER") == "python":
        return None
    if shutil.which("wrk") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return shutil.which("wrk")
    print("wrk is not installed; trying apt-get install wrk", file=sys.stderr)
    argv = ["apt-get", "install", "-y", "-qq", "wrk"]
    subprocess.run(argv, capture_output=True, timeout=300, check=False)
    return shutil.which("wrk")


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
    started: float = field(default_factory=time.monotonic)
    wrk: str | None = field(default_factory=find_wrk)
    #: Every measured closed-loop run, for the heading.
    runs: list[Run] = field(default_factory=list)

    @property
    def run_seconds(self) -> tuple[float, float]:
        """Seconds of a closed loop's discarded warm-up, and of its measured run."""
        return (0.0, 2.0) if self.quick else (2.0, 8.0)

    def say(self, message: str) -> None:
        """Progress on stderr, so that stdout holds only the tables."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    def collection(self, suite: str) -> str:
        """A collection no other suite or run used."""
        return f"bench_{suite}_{uuid.uuid4().hex[:8]}"

    @asynccontextmanager
    async def serve(
        self, name: str, app: str, ready: str = "/healthz", **env: str
    ) -> AsyncIterator[Server]:
        """``app`` under uvicorn, one worker on the servers' CPU, with this
        emulator and quiet logs, from the first 200 on ``ready`` until the block
        ends; ``module:app`` names an app (api.main), any other name a factory."""
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        argv = [sys.executable, "-m", "uvicorn", app, "--port", str(port)]
        argv += ["--host", HOST, "--log-level", "warning", "--no-access-log"]
        argv += ["--factory"] if app.rpartition(":")[2] != "app" else []
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
            yield Server(name, url, proc.pid)
        finally:
            self.children.stop(proc)

    async def rounds(self, targets: Sequence[Target]) -> "Rounds":
        """req/s of each target in rounds of short runs in turns, each round in
        the other order. This VM's speed drifts by 10% and more for tens of
        seconds at a time: a ratio of two targets is taken within each round,
        where the drift falls on both alike, and its median over the rounds."""
        count, runs = (2, (0.0, 1.0)) if self.quick else (8, (1.0, 2.0))
        found = []
        for rep in range(count):
            rps = [0.0] * len(targets)
            for i in range(len(targets))[:: -1 if rep % 2 else 1]:
                rps[i] = (await self.measure(*targets[i], seconds=runs)).rps
            found.append(rps)
        return Rounds(found)

    async def measure(
        self,
        server: Server,
        path: str,
        key: str | None,
        level: Level = (32, 0.0),
        seconds: tuple[float, float] | None = None,
    ) -> Run:
        """A closed loop from the loaders' CPU: a warm-up run (if any), discarded,
        then the measured one (``seconds``: of each, else ``run_seconds``)."""
        url, (warmup, length) = server.url + path, seconds or self.run_seconds
        if warmup:
            await self._closed_loop(url, key, warmup, level)
        meter = CpuMeter(server.pid, self.cpus.server)
        f = await self._closed_loop(url, key, length, level)
        rps, p99_ms = f["requests"] / f["duration_us"] * 1e6, f["p99_us"] / 1e3
        self.runs.append(run := Run(rps, p99_ms, int(f["errors"]), meter.stop()))
        return run

    async def _closed_loop(
        self, url: str, key: str | None, seconds: float, level: Level
    ) -> dict[str, float]:
        conns, pause = level
        if self.wrk is None:
            return await rawhttp.closed_loop(rawhttp.get(url, key), seconds, *level)
        # wrk takes whole seconds only; one thread, as the loaders have one CPU.
        argv = [self.wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", url]
        argv += ["--latency", "--timeout", "5s", "-s", str(LUA)]
        argv += ["-H", f"{rawhttp.HEADER}: {key}"] if key else []
        env = {**os.environ, "WRK_PAUSE_MS": f"{pause:g}"}
        proc = self.children.spawn(argv, env, self.cpus.load, subprocess.PIPE)
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"wrk hung on {url}") from None
        finally:
            self.children.stop(proc)
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("WRK_JSON "):
                figures: dict[str, float] = json.loads(line.removeprefix("WRK_JSON "))
                return figures
        raise BenchmarkError(f"wrk gave no figures for {url}:\n{out[-2000:]!r}")

    def describe_loader(self) -> str:
        """What made the closed loops, for the heading."""
        if self.wrk is None:
            return "benchmarks.rawhttp (no wrk)"
        done = subprocess.run([self.wrk, "-v"], capture_output=True, text=True)
        return (done.stdout + done.stderr).split(" [")[0]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def guarded(quick: bool, run: Callable[[Bench], Coroutine[Any, Any, int]]) -> int:
    """``run`` with an emulator and child processes, all ended on any exit."""
    # A shell starts background jobs with SIGINT ignored; Ctrl-C or kill -INT must
    # still reach us, so that the clean-up below runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="keystore-bench-"))
    cpus, children = Cpus.plan(), Children(work)
    emulator = Emulator(work / "emulator", cpus.load)
    status = 1
    try:
        emulator.start()
        status = asyncio.run(run(Bench(quick, work, children, cpus, emulator)))
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
        shutil.rmtree(work, ignore_errors=True)
    return status
