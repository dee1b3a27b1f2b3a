"""HTTP load: wrk when it can be had, else benchmarks.rawload; and the miss stream.

Loaders run in their own processes, pinned away from the server they measure.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.models import HEADER
from benchmarks.procs import BenchmarkError, Children, CpuMeter, Cpus

LUA = Path(__file__).resolve().parent / "wrk_report.lua"


@dataclass(frozen=True)
class LoadResult:
    """One closed-loop run: how many requests, how fast, how long they took."""

    tool: str
    path: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    status_errors: int
    socket_errors: int
    #: The server's CPU use and each CPU's busy share during the run, in %.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": self.rps}


def find_wrk() -> str | None:
    """wrk's path; installs Debian's package once if we may, else None."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("wrk is not installed; trying apt-get install wrk ...", file=sys.stderr)
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=180,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("wrk")


class Loader:
    """Runs load against one URL from the loaders' CPU."""

    def __init__(self, children: Children, cpus: Cpus, work_dir: Path) -> None:
        self._children = children
        self._cpus = cpus
        self._work_dir = work_dir
        self._runs = 0
        # BENCH_LOADER=python forces the fallback, to test it on a machine with wrk.
        forced = os.environ.get("BENCH_LOADER", "") == "python"
        self.wrk = None if forced else find_wrk()

    def describe(self) -> str:
        if self.wrk is None:
            return "benchmarks.rawload (asyncio, no wrk)"
        done = subprocess.run([self.wrk, "-v"], capture_output=True, text=True)
        return (done.stdout + done.stderr).splitlines()[0].split(" [")[0]

    def run(
        self,
        url: str,
        key: str | None,
        *,
        seconds: float,
        connections: int,
        pause_ms: float = 0.0,
        watch: int | None = None,
    ) -> LoadResult:
        header = [f"{HEADER}: {key}"] if key else []
        if self.wrk is not None:
            # wrk takes whole seconds only.
            whole = max(1, round(seconds))
            argv = [self.wrk, "-t1", f"-c{connections}", f"-d{whole}s"]
            argv += ["--latency", "--timeout", "5s", "-s", str(LUA)]
            for h in header:
                argv += ["-H", h]
            argv.append(url)
        else:
            argv = [sys.executable, "-m", "benchmarks.rawload", url]
            argv += ["--seconds", str(seconds), "--connections", str(connections)]
            argv += ["--pause-ms", str(pause_ms)]
            for h in header:
                argv += ["--header", h]
        meter = CpuMeter(watch)
        proc = self._children.spawn(
            argv,
            env={**os.environ, "WRK_PAUSE_MS": f"{pause_ms:g}"},
            cpu=self._cpus.load,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"load generator hung on {url}") from None
        finally:
            self._children.stop(proc)
        cpu = meter.stop()
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("WRK_JSON "):
                figures = json.loads(line.removeprefix("WRK_JSON "))
                break
        else:
            raise BenchmarkError(
                f"load generator gave no figures for {url}:\n"
                + (out + err).decode(errors="replace")[-2000:]
            )
        return LoadResult(
            tool="wrk" if self.wrk else "rawload",
            path=url.split("/", 3)[-1],
            connections=connections,
            requests=int(figures["requests"]),
            seconds=float(figures["duration_us"]) / 1e6,
            p50_ms=float(figures["p50_us"]) / 1e3,
            p90_ms=float(figures["p90_us"]) / 1e3,
            p99_ms=float(figures["p99_us"]) / 1e3,
            max_ms=float(figures["max_us"]) / 1e3,
            status_errors=int(figures["status_errors"]),
            socket_errors=int(figures["socket_errors"]),
            cpu=cpu,
        )

    def measure(
        self,
        url: str,
        key: str | None,
        *,
        warmup: float,
        seconds: float,
        connections: int,
        pause_ms: float = 0.0,
        watch: int | None = None,
    ) -> LoadResult:
        """A discarded warm-up run, then the measured one."""
        self.run(url, key, seconds=warmup, connections=connections, pause_ms=pause_ms)
        return self.run(
            url,
            key,
            seconds=seconds,
            connections=connections,
            pause_ms=pause_ms,
            watch=watch,
        )

    def measure_under_misses(
        self,
        url: str,
        key: str,
        *,
        rate: float,
        warmup: float,
        seconds: float,
        connections: int,
        pause_ms: float = 0.0,
        watch: int | None = None,
    ) -> tuple[LoadResult, dict[str, Any]]:
        """:meth:`measure` while benchmarks.misses sends unknown keys at ``rate``/s."""
        self._runs += 1
        ready = self._work_dir / f"misses-{self._runs}.ready"
        out = self._work_dir / f"misses-{self._runs}.json"
        log = self._work_dir / f"misses-{self._runs}.log"
        # The stream outlasts the warm-up and the measured run on both sides.
        stream_seconds = warmup + seconds + 1.5
        argv = [sys.executable, "-m", "benchmarks.misses", url, "--rate", str(rate)]
        argv += ["--seconds", str(stream_seconds), "--ready", str(ready)]
        argv += ["--out", str(out)]
        with log.open("wb") as sink:
            proc = self._children.spawn(
                argv, env=os.environ, cpu=self._cpus.load, stdout=sink, stderr=sink
            )
        try:
            deadline = time.monotonic() + 30
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchmarkError(f"miss stream did not start:\n{_read(log)}")
                time.sleep(0.02)
            result = self.measure(
                url,
                key,
                warmup=warmup,
                seconds=seconds,
                connections=connections,
                pause_ms=pause_ms,
                watch=watch,
            )
            try:
                proc.wait(stream_seconds + 20)
            except subprocess.TimeoutExpired:
                raise BenchmarkError("miss stream did not stop") from None
            if proc.returncode != 0 or not out.exists():
                raise BenchmarkError(f"miss stream failed:\n{_read(log)}")
            misses: dict[str, Any] = json.loads(out.read_text())
        finally:
            self._children.stop(proc)
        return result, misses


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"
