"""Closed-loop load on one server from the loaders' CPU: wrk, or rawhttp without."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks import rawhttp
from benchmarks.procs import BenchmarkError, Children, CpuMeter, Cpus, Server

LUA = Path(__file__).resolve().parent / "wrk_report.lua"
HEADER = "x-api-key"


@dataclass(frozen=True)
class Run:
    """One closed-loop run; ``errors``: answers not 2xx/3xx, failed connections;
    CPU use of the server and of others on its CPU, in %."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_pct: float
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
        self._children, self._cpus = children, cpus
        #: Seconds of each discarded warm-up run, and of each measured run.
        self.warmup, self.seconds = (0.0, 2.0) if quick else (2.0, 8.0)
        # BENCH_LOADER=python forces the fallback, to test it where wrk is.
        self.wrk = None if os.environ.get("BENCH_LOADER") == "python" else find_wrk()
        #: Per run, others' use of the servers' CPU, in %.
        self.others: list[float] = []

    def describe(self) -> str:
        if self.wrk is None:
            return "benchmarks.rawhttp (no wrk)"
        done = subprocess.run([self.wrk, "-v"], capture_output=True, text=True)
        return (done.stdout + done.stderr).split(" [")[0]

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
        headers = {HEADER: key} if key else {}
        if self.warmup:
            await self._figures(server.url + path, headers, self.warmup, conns, pause)
        meter = CpuMeter(server.pid, self._cpus.server)
        f = await self._figures(server.url + path, headers, self.seconds, conns, pause)
        used, others = meter.stop()
        self.others.append(others)
        rps = f["requests"] / f["duration_us"] * 1e6
        return Run(
            rps, f["p50_us"] / 1e3, f["p99_us"] / 1e3, int(f["errors"]), used, others
        )

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
        argv = [
            self.wrk,
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
        ]
        argv += ["--timeout", "5s", "-s", str(LUA), url]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        env = {**os.environ, "WRK_PAUSE_MS": f"{pause:g}"}
        proc = self._children.spawn(
            argv, env=env, cpu=self._cpus.load, out=subprocess.PIPE
        )
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
