"""Child processes (uvicorn servers, wrk, the Firestore emulator) and CPU pinning.
Each child gets its own session (process group), so that a Ctrl-C in the
terminal reaches only the harness, which then ends each child's group itself."""

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from google.cloud import firestore

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


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


Servers = dict[str, Server]  # by app or mode


class Children:
    """Every process the harness starts, so that all are ended on any exit. Each
    runs in the work folder with the checkout on its path: the demo app reads a
    .env file where it runs, and a developer's must not count."""

    def __init__(self, work: Path) -> None:
        self._work, self._procs = work, list[Proc]()

    def spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        cpu: int | None,
        out: int | IO[bytes],
    ) -> Proc:
        proc = subprocess.Popen(
            argv,
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=self._work,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._procs.append(proc)
        if cpu is not None:
            pin_tree(proc.pid, {cpu})  # before it starts threads of its own
        return proc

    def stop(self, proc: Proc) -> None:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(10)
        # A child's own children may outlive it in its group; end them too.
        _signal_group(proc, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def sync_client() -> closing[firestore.Client]:
    """A plain Firestore client (the sketch's kind), for bulk writes."""
    return closing(firestore.Client(project=PROJECT))


class Emulator:
    """A Firestore emulator of our own, started and stopped by the project's
    emulator.sh, pinned to ``cpu``."""

    def __init__(self, state_dir: Path, cpu: int | None) -> None:
        self.state_dir, self.cpu, self.port = state_dir, cpu, 0

    def _run(self, command: str, imported: Path | None = None) -> None:
        env = {**os.environ, "KEYSTORE_EMULATOR_DIR": str(self.state_dir)}
        env["KEYSTORE_EMULATOR_IMPORT"] = str(imported or "")
        if self.port:  # a restart comes back where the servers look for it
            env["KEYSTORE_EMULATOR_PORT"] = str(self.port)
        # taskset, not this process's affinity: the script and its JVM inherit
        # it, and a restart in the soak must not pin the loader beside the JVM.
        argv = [str(ROOT / "emulator.sh"), command]
        if self.cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(self.cpu), *argv]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchmarkError(f"emulator.sh {command} failed:\n{done.stderr}")

    def start(self, imported: Path | None = None) -> None:
        """Start (from an export, if given) and point our clients at it."""
        self._run("start", imported)
        self.port = int((self.state_dir / "port").read_text())
        os.environ["FIRESTORE_EMULATOR_HOST"] = f"{HOST}:{self.port}"
        os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
        # A first write: a fresh emulator's takes seconds, longer than the
        # deadline keystore gives a call.
        with sync_client() as client:
            client.collection("warm_up").document("first").set({"at": time.time()})

    def stop(self) -> None:
        self._run("stop")

    def _admin(self, method: str, path: str, body: str = "") -> None:
        url = f"http://{HOST}:{self.port}/emulator/v1/projects/{PROJECT}{path}"
        argv = ["curl", "-sSf", "-X", method, "-H", "content-type: application/json"]
        done = subprocess.run([*argv, "-d", body, url], capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchmarkError(f"emulator {method} {path}: {done.stderr[:300]}")

    def clear(self) -> None:
        """Delete every document."""
        self._admin("DELETE", "/databases/(default)/documents")

    def export(self) -> Path:
        """Everything to a new folder; its metadata file, for :meth:`start`."""
        target = self.state_dir / f"export-{time.time_ns()}"
        target.mkdir()
        database = f"projects/{PROJECT}/databases/(default)"
        body = {"database": database, "export_directory": str(target)}
        self._admin("POST", ":export", json.dumps(body))
        return next(target.rglob("*.overall_export_metadata"))
