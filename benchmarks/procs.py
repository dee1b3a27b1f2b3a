"""Child processes: the emulator, uvicorn servers, loaders; pinning and clean-up.

Every child gets its own session (process group), so a Ctrl-C in the terminal
reaches only the benchmark, which then ends each child group itself.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class BenchmarkError(Exception):
    """Setup failed; the message says what and where its log is."""


@dataclass(frozen=True)
class Cpus:
    """Which CPU the servers get and which the loaders and emulator get.

    With both on one core the loader would steal time from the server it measures.
    """

    server: int | None
    load: int | None

    @classmethod
    def plan(cls) -> "Cpus":
        available = os.sched_getaffinity(0)
        if len(available) < 2:
            return cls(None, None)
        first, second = sorted(available)[:2]
        return cls(first, second)

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (fewer than 2 CPUs)"
        how = "taskset" if shutil.which("taskset") else "sched_setaffinity"
        return (
            f"servers on CPU {self.server}; loaders+emulator on CPU {self.load} ({how})"
        )


def pin_tree(pid: int, cpu: int | None) -> None:
    """Pin every thread of ``pid``; threads made later inherit from their maker."""
    if cpu is None:
        return
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {cpu})
        except OSError:
            pass  # the thread ended meanwhile


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid``, all its threads, user and system."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy ticks, all ticks) since boot, from /proc/stat."""
    ticks: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                numbers = [int(v) for v in values]
                idle = numbers[3] + numbers[4]  # idle + iowait
                ticks[int(name[3:])] = (sum(numbers) - idle, sum(numbers))
    return ticks


class CpuMeter:
    """How busy one process and each CPU were between start and stop.

    Other people's work on the same machine shows as CPU busy beyond what our
    processes used: the figure that says how much to trust a run.
    """

    def __init__(self, pid: int | None) -> None:
        self._pid = pid
        self._start = (time.monotonic(), cpu_seconds(pid) if pid else 0.0)
        self._ticks = busy_ticks()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._start[0]
        used = (cpu_seconds(self._pid) if self._pid else 0.0) - self._start[1]
        result = {"server_cpu_pct": 100 * used / elapsed if elapsed else 0.0}
        for cpu, (busy, total) in busy_ticks().items():
            before_busy, before_total = self._ticks.get(cpu, (busy, total))
            span = total - before_total
            result[f"cpu{cpu}_busy_pct"] = (
                100 * (busy - before_busy) / span if span else 0.0
            )
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Children:
    """Every process the benchmark starts, so that all are ended on any exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cpu: int | None,
        stdout: int | IO[bytes] | None = None,
        stderr: int | IO[bytes] | None = None,
    ) -> "subprocess.Popen[bytes]":
        args = list(argv)
        use_taskset = cpu is not None and shutil.which("taskset") is not None
        if use_taskset:
            args = ["taskset", "-c", str(cpu), *args]
        proc = subprocess.Popen(
            args,
            env=dict(env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self._procs.append(proc)
        if not use_taskset:
            pin_tree(proc.pid, cpu)
        return proc

    def stop(self, proc: "subprocess.Popen[bytes]", grace: float = 5.0) -> None:
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
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Emulator:
    """A Firestore emulator of our own, through the project's emulator.sh."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.host = ""

    def _run(self, command: str) -> str:
        env = {**os.environ, "KEYSTORE_EMULATOR_DIR": str(self.state_dir)}
        env.pop("KEYSTORE_EMULATOR_PORT", None)
        done = subprocess.run(
            [str(ROOT / "emulator.sh"), command],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise BenchmarkError(f"emulator.sh {command} failed:\n{done.stderr}")
        return done.stdout

    def start(self) -> str:
        out = self._run("start")
        for line in out.splitlines():
            if line.startswith("export FIRESTORE_EMULATOR_HOST="):
                self.host = line.partition("=")[2].strip()
        if not self.host:
            port = (self.state_dir / "port").read_text().strip()
            self.host = f"{HOST}:{port}"
        return self.host

    def stop(self) -> None:
        self._run("stop")

    def start_for(self, project: str, cpu: int | None) -> str:
        """Start, pin to ``cpu``, and point this process's Firestore clients at it."""
        host = self.start()
        self.pin(cpu)
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        os.environ["GOOGLE_CLOUD_PROJECT"] = project
        return host

    def pin(self, cpu: int | None) -> int:
        """Pin the emulator's processes (its script and the JVM); how many."""
        if cpu is None:
            return 0
        pgid = int((self.state_dir / "pid").read_text())
        pinned = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == pgid:
                    pin_tree(int(entry), cpu)
                    pinned += 1
            except OSError:
                continue
        return pinned


def uvicorn_argv(app: str, port: int, *, factory: bool) -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]
    argv += ["--log-level", "warning", "--no-access-log"]
    return argv + (["--factory"] if factory else [])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    pid: int


@contextmanager
def serve(
    children: Children,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cpu: int | None,
    log_dir: Path,
    timeout: float = 60.0,
) -> Iterator[Server]:
    """Run a uvicorn server until the block ends."""
    port = int(argv[argv.index("--port") + 1])
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = children.spawn(argv, env=env, cpu=cpu, stdout=out, stderr=out)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BenchmarkError(f"{name} server exited:\n{_tail(log)}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{name} server not ready:\n{_tail(log)}")
            time.sleep(0.1)
        yield Server(name, url, proc.pid)
    finally:
        children.stop(proc)
