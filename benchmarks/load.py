"""Load from the loaders' CPU: closed loops on one server (wrk, or rawhttp
without it), and the requests of open loops (rawhttp.open_loop)."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import rawhttp
from benchmarks.procs import BenchmarkError, Children, CpuMeter, Cpus, Server
from keystore.keys import new_key

LUA = Path(__file__).resolve().parent / "wrk_report.lua"
HEADER = "x-api-key"
Target = tuple[Server, str, str | None]  # server, path, key


def in_turn(url: str, keys: Sequence[str]) -> Callable[[int], rawhttp.Request]:
    """An open loop's requests: GET ``url`` with each of ``keys`` in turn."""
    return lambda i: rawhttp.get(url, {HEADER: keys[i % len(keys)]})


def unknown(url: str) -> Callable[[int], rawhttp.Request]:
    """An open loop's requests: GET ``url``, each with a new well-formed key that
    no cache can answer (in ttl mode, a Firestore read each)."""
    return lambda i: rawhttp.get(url, {HEADER: new_key("ks")})


@dataclass(frozen=True)
class Run:
    """One closed-loop run; ``errors``: answers not 2xx/3xx, failed connections;
    ``others_cpu_pct``: others' use of the server's CPU meanwhile."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    others_cpu_pct: float


def find_wrk() -> str | None:
    """wrk's path; installs Debian's package once if we may, else None."""
    if shutil.which("wrk") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return shutil.which("wrk")
    print("wrk is not installed; trying apt-get install wrk", file=sys.stderr)
    argv = ["apt-get", "install", "-y", "-qq", "wrk"]
    subprocess.run(argv, capture_output=True, timeout=300, check=False)
    return shutil.which("wrk")


class Loader:
    """Runs load against one server at a time, from the loaders' CPU."""

    def __init__(self, children: Children, cpus: Cpus, quick: bool) -> None:
        self._children, self._cpus, self._repeats = children, cpus, 1 if quick else 2
        #: Seconds of each discarded warm-up run, and of each measured run.
        self.warmup, self.seconds = (0.0, 2.0) if quick else (2.0, 8.0)
        # BENCH_LOADER=python forces the fallback, to test it where wrk is.
        self.wrk = None if os.environ.get("BENCH_LOADER") == "python" else find_wrk()
        #: Every run, for the JSON and for the count of failed requests.
        self.runs: list[Run] = []

    def describe(self) -> str:
        if self.wrk is None:
            return "benchmarks.rawhttp (no wrk)"
        done = subprocess.run([self.wrk, "-v"], capture_output=True, text=True)
        return (done.stdout + done.stderr).split(" [")[0]

    async def best(self, targets: Sequence[Target]) -> list[float]:
        """The best req/s of each target, measured in turns and, on a second
        pass, in reverse: drift in the machine's speed falls on all alike."""
        best = [0.0] * len(targets)
        for rep in range(self._repeats):
            for i in range(len(targets))[:: -1 if rep % 2 else 1]:
                best[i] = max(best[i], (await self.measure(*targets[i])).rps)
        return best

    async def measure(
        self,
        server: Server,
        path: str,
        key: str | None,
        conns: int = 32,
        pause: float = 0,
    ) -> Run:
        """A warm-up run (if any), discarded, then the measured one; ``pause``:
        ms each connection waits before each request."""
        url, headers = server.url + path, {HEADER: key} if key else {}
        if self.warmup:
            await self._figures(url, headers, self.warmup, conns, pause)
        meter = CpuMeter(server.pid, self._cpus.server)
        f = await self._figures(url, headers, self.seconds, conns, pause)
        rps = f["requests"] / f["duration_us"] * 1e6
        run = Run(
            rps, f["p50_us"] / 1e3, f["p99_us"] / 1e3, int(f["errors"]), meter.stop()
        )
        self.runs.append(run)
        return run

    async def _figures(
        self,
        url: str,
        headers: dict[str, str],
        seconds: float,
        conns: int,
        pause: float,
    ) -> dict[str, float]:
        if self.wrk is None:
            return await rawhttp.closed_loop(
                rawhttp.get(url, headers), seconds, conns, pause
            )
        # wrk takes whole seconds only; one thread, as the loaders have one CPU.
        argv = [self.wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", url]
        argv += ["--latency", "--timeout", "5s", "-s", str(LUA)]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        env = {**os.environ, "WRK_PAUSE_MS": f"{pause:g}"}
        proc = self._children.spawn(argv, env, self._cpus.load, subprocess.PIPE)
        try:
            out, _ = await asyncio.to_thread(proc.communicate, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"wrk hung on {url}") from None
        finally:
            self._children.stop(proc)
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("WRK_JSON "):
                figures: dict[str, float] = json.loads(line.removeprefix("WRK_JSON "))
                return figures
        raise BenchmarkError(f"wrk gave no figures for {url}:\n{out[-2000:]!r}")
