"""A Firestore emulator of our own, through the project's emulator.sh."""

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.cloud import firestore

from benchmarks.procs import HOST, PROJECT, ROOT, BenchmarkError


@contextmanager
def sync_client() -> Iterator[firestore.Client]:
    """A plain Firestore client (the sketch's kind), for bulk writes."""
    client = firestore.Client(project=PROJECT)
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]  # unannotated upstream


class Emulator:
    """Started and stopped by emulator.sh, pinned to ``cpu``."""

    def __init__(self, state_dir: Path, cpu: int | None) -> None:
        self.state_dir, self.cpu, self.port = state_dir, cpu, 0

    def _run(self, command: str, **env: str) -> None:
        env = {**os.environ, "KEYSTORE_EMULATOR_DIR": str(self.state_dir), **env}
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
        self._run("start", KEYSTORE_EMULATOR_IMPORT=str(imported or ""))
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
