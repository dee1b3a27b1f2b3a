"""What every suite is given (the emulator, the CPUs, the loader, a work folder),
and the guard that ends every child process whatever happens."""

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.emulator import Emulator
from benchmarks.load import Loader
from benchmarks.procs import BenchmarkError, Children, Cpus, Server, serve


@dataclass
class Bench:
    quick: bool
    work: Path
    children: Children
    cpus: Cpus
    emulator: Emulator
    loader: Loader
    started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        """Progress on stderr, so that stdout holds only the tables."""
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)

    def collection(self, suite: str) -> str:
        """A collection no other suite or run used."""
        return f"bench_{suite}_{uuid.uuid4().hex[:8]}"

    def serve(
        self, name: str, app: str, **env: str
    ) -> AbstractAsyncContextManager[Server]:
        """``app`` on the servers' CPU, with this emulator and quiet logs."""
        env = {**os.environ, "KEYSTORE_LOG_LEVEL": "WARNING", **env}
        return serve(self.children, name, app, env, self.cpus.server, self.work)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def guarded(quick: bool, run: Callable[[Bench], Coroutine[Any, Any, int]]) -> int:
    """``run`` with an emulator and child processes, all ended on any exit."""
    # A shell starts background jobs with SIGINT ignored; Ctrl-C or kill -INT must
    # still reach us, so that the clean-up below runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="keystore-bench-"))
    cpus, children = Cpus.plan(), Children()
    emulator = Emulator(work / "emulator", cpus.load)
    status = 1
    try:
        emulator.start()
        loader = Loader(children, cpus, quick)
        status = asyncio.run(run(Bench(quick, work, children, cpus, emulator, loader)))
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
