"""Child processes (uvicorn servers, wrk), CPU pinning and CPU meters.

Every child gets its own session (process group), so a Ctrl-C in the terminal
reaches only the harness, which then ends each child's group itself.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks.rawhttp import fetch, get

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PROJECT = "demo-keystore"
Proc = subprocess.Popen[bytes]


class BenchmarkError(Exception):
    """Setup failed; the message says what and where."""


@dataclass(frozen=True)
class Cpus:
    """The servers' CPU, and the loaders' (wrk, streams, the emulator): with both
    on one core a loader would steal time from the server it measures."""

    server: int | None
    load: int | None

    @classmethod
    def plan(cls) -> "Cpus":
        available = sorted(os.sched_getaffinity(0))
        return cls(*available[:2]) if len(available) >= 2 else cls(None, None)


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid``; threads made later inherit from their maker."""
    with suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with suppress(OSError):  # the thread ended meanwhile
                os.sched_setaffinity(int(tid), cpus)


@contextmanager
def on_cpu(cpu: int | None) -> Iterator[None]:
    """This process on ``cpu`` for the block: in-process figures on the servers'
    CPU, as a server would run them; streams and polls on the loaders'."""
    everywhere = os.sched_getaffinity(0)
    if cpu is not None:
        pin_tree(os.getpid(), {cpu})
    try:
        yield
    finally:
        pin_tree(os.getpid(), everywhere)


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid``, all its threads, user and system."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ticks(cpu: int) -> tuple[int, int]:
    """(busy, all) ticks of ``cpu`` since boot."""
    with open("/proc/stat") as f:
        line = next((li for li in f if li.startswith(f"cpu{cpu} ")), "x 0 0 0 0")
    numbers = [int(v) for v in line.split()[1:]]
    return sum(numbers) - numbers[3] - numbers[4], sum(numbers)


class CpuMeter:
    """Others' use of the server's CPU from start to stop (busy beyond the
    server's own use), in %: what says how far to trust a run on this machine."""

    def __init__(self, pid: int, cpu: int | None) -> None:
        self._pid, self._cpu = pid, cpu
        self._start = time.monotonic(), cpu_seconds(pid), _ticks(cpu or 0)

    def stop(self) -> float:
        elapsed = time.monotonic() - self._start[0]
        server = 100 * (cpu_seconds(self._pid) - self._start[1]) / elapsed
        (busy, total), before = _ticks(self._cpu or 0), self._start[2]
        others = 100 * (busy - before[0]) / max(1, total - before[1]) - server
        return max(0.0, others) if self._cpu is not None else 0.0


class Children:
    """Every process the harness starts, so that all are ended on any exit."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cpu: int | None,
        out: int | IO[bytes],
        cwd: Path = ROOT,
    ) -> Proc:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._procs.append(proc)
        if cpu is not None:
            pin_tree(proc.pid, {cpu})  # before it starts threads of its own
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(grace)
        # A child's own children may outlive it in its group; end them too.
        _signal_group(proc.pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    pid: int


@asynccontextmanager
async def serve(
    children: Children,
    name: str,
    app: str,
    env: Mapping[str, str],
    cpu: int | None,
    work: Path,
) -> AsyncIterator[Server]:
    """``app`` under uvicorn, one worker, until the block ends; ``module:app``
    names an app (api.main), any other name a factory (the floor)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--host", HOST]
    argv += ["--log-level", "warning", "--no-access-log"]
    argv += ["--factory"] if app.rpartition(":")[2] != "app" else []
    # From the work folder, the checkout on the path: the demo app reads a .env
    # file where it runs, and a developer's must not count.
    env = {**env, "PYTHONPATH": str(ROOT)}
    log = work / f"{name}.log"
    with log.open("wb") as out:
        proc = children.spawn(argv, env, cpu, out, cwd=work)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while (await fetch(get(f"{url}/healthz")))[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                lines = log.read_text(errors="replace").splitlines()[-20:]
                raise BenchmarkError(f"{name} did not start:\n" + "\n".join(lines))
            await asyncio.sleep(0.05)
        yield Server(name, url, proc.pid)
    finally:
        children.stop(proc)
