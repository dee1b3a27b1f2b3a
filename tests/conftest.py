"""Fixtures: one real Firestore emulator per session, a fresh collection per test."""

import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import hypothesis
import pytest
from fastapi import FastAPI

from api.main import create_app
from keystore import ApiKeyStore, Settings, reset_store
from tests.interceptors import Recorder

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis: "ci" (the default) runs the same few hundred examples on every
# run; HYPOTHESIS_PROFILE=thorough runs 10,000 new ones per test (README).
hypothesis.settings.register_profile("ci", max_examples=300, derandomize=True)
hypothesis.settings.register_profile("thorough", max_examples=10_000)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
PROJECT = "demo-keystore"


@dataclass
class Emulator:
    """The session's Firestore emulator, started and stopped through emulator.sh."""

    state_dir: Path
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str) -> str:
        env = {**os.environ, "KEYSTORE_EMULATOR_DIR": str(self.state_dir)}
        if self.port:
            env["KEYSTORE_EMULATOR_PORT"] = str(self.port)
        done = subprocess.run(
            [str(ROOT / "emulator.sh"), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self) -> None:
        self._run("start")
        self.port = int((self.state_dir / "port").read_text())

    def stop(self) -> None:
        self._run("stop")

    def pause(self, paused: bool = True) -> None:
        """Freeze (or thaw) the emulator: connections stay open, nothing answers."""
        group = int((self.state_dir / "pid").read_text())
        os.killpg(group, signal.SIGSTOP if paused else signal.SIGCONT)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    # A missing emulator fails here, loudly: these tests never skip.
    emu = Emulator(state_dir=tmp_path_factory.mktemp("emulator"))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No KEYSTORE_* setting or Google variable leaks in from the shell."""
    for name in list(os.environ):
        if name.startswith("KEYSTORE_") or name in (
            "FIRESTORE_EMULATOR_HOST",
            "GOOGLE_CLOUD_PROJECT",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "FIREBASE_AUTH_EMULATOR_HOST",
            "K_SERVICE",
        ):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def unfrozen_gc() -> Iterator[None]:
    """The app freezes the collector's view at startup; each test starts unfrozen,
    so that one test's garbage is not kept alive for the rest of the run."""
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.fixture
def anyio_backend() -> str:
    # The store's single flight and the gRPC client are asyncio-based.
    return "asyncio"


@pytest.fixture
def firestore_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """Point the Google client library at the emulator, as emulator.sh does."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    return emulator


@pytest.fixture
def settings(firestore_env: Emulator) -> Settings:
    """Settings of one test: its own collection, so no test sees another's rows."""
    suffix = uuid.uuid4().hex[:12]
    return Settings(
        project=PROJECT,
        collection=f"keys_{suffix}",
        owners_collection=f"owners_{suffix}",
        # Generous: a fresh emulator's first answers are slow; tests about
        # deadlines set their own.
        timeout=5.0,
        retry_after=1,
    )


class Timer:
    """A monotonic clock that moves only when told to, as in cachetools' tests."""

    def __init__(self) -> None:
        self.time = 1000.0

    def __call__(self) -> float:
        return self.time

    def tick(self, seconds: float) -> None:
        self.time += seconds


@pytest.fixture
def timer() -> Timer:
    return Timer()


@pytest.fixture
def rpc_calls() -> Recorder:
    """Every RPC the ``store`` fixture's store sends, as sent."""
    return Recorder()


@pytest.fixture
async def store(
    settings: Settings, timer: Timer, rpc_calls: Recorder
) -> AsyncIterator[ApiKeyStore]:
    async with ApiKeyStore(
        settings, timer=timer, interceptors=rpc_calls.interceptors
    ) as opened:
        yield opened


@pytest.fixture
def document_reads(rpc_calls: Recorder) -> Callable[[], int]:
    """Count the document-read RPCs the ``store`` fixture's store really sends."""
    return lambda: rpc_calls.count("GetDocument", "BatchGetDocuments")


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an in-process HTTP client."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    try:
        async with serve(create_app(settings)) as c:
            yield c
    finally:
        await reset_store()


@pytest.fixture
def make_settings(settings: Settings) -> Callable[..., Settings]:
    """This test's settings with some fields changed."""
    return lambda **changes: settings.model_copy(update=changes)


@dataclass
class AuthEmulator:
    """The session's Firebase Auth emulator, through emulator.sh; customers
    sign up and in over its REST API, as a browser does."""

    state_dir: Path
    host: str = ""

    def _run(self, command: str) -> str:
        env = {**os.environ, "KEYSTORE_EMULATOR_DIR": str(self.state_dir)}
        env["GOOGLE_CLOUD_PROJECT"] = PROJECT
        done = subprocess.run(
            [str(ROOT / "emulator.sh"), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,  # the first run installs firebase-tools
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self) -> None:
        exported = self._run("auth-start").strip()
        self.host = exported.rpartition("=")[2]

    def stop(self) -> None:
        self._run("auth-stop")

    def sign_up(self, email: str, password: str = "secret-password") -> str:
        """A new customer's Firebase ID token."""
        return self._accounts("signUp", email, password)

    def sign_in(self, email: str, password: str = "secret-password") -> str:
        return self._accounts("signInWithPassword", email, password)

    def _accounts(self, action: str, email: str, password: str) -> str:
        r = httpx.post(
            f"http://{self.host}/identitytoolkit.googleapis.com/v1/accounts:{action}",
            params={"key": "emulator"},
            json={"email": email, "password": password, "returnSecureToken": True},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["idToken"])


@pytest.fixture(scope="session")
def auth_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthEmulator]:
    emu = AuthEmulator(state_dir=tmp_path_factory.mktemp("auth"))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def firebase_env(
    auth_emulator: AuthEmulator, monkeypatch: pytest.MonkeyPatch
) -> AuthEmulator:
    """Point firebase-admin at the Auth emulator, as emulator.sh serve does."""
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", auth_emulator.host)
    return auth_emulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process of the test's; ``output`` is filled once it has stopped."""

    process: subprocess.Popen[str]
    base: str
    port: int
    output: str = ""


@contextmanager
def running_server(
    cwd: Path,
    env: dict[str, str],
    command: list[str] | None = None,
    *,
    args: Sequence[str] = (),
) -> Iterator[Server]:
    """``uvicorn api.main:app`` with ``args`` (or ``command``, given the port)
    until SIGTERM."""
    port = free_port()
    argv = command or [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--port",
        "{port}",
        *args,
    ]
    process = subprocess.Popen(
        [arg.replace("{port}", str(port)) for arg in argv],
        cwd=cwd,
        env={**os.environ, "PORT": str(port), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(process, f"http://127.0.0.1:{port}", port)
    # Read as it comes: a full pipe would block the server's next log line.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()))
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{server.base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None:
                    reader.join(timeout=10)
                    raise AssertionError("".join(lines)) from None
                assert time.monotonic() < deadline, f"{server.base} did not come up"
                time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
        server.output = "".join(lines)
