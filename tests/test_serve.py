"""`uvicorn api.main:app` as a user runs it: a real server process on a real port."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Security

from keystore import ApiKey, ApiKeyAuth, ApiKeyStore, Settings, get_store, reset_store
from tests.conftest import ROOT, serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(process: subprocess.Popen[str], base: str) -> None:
    """Wait for /healthz to answer; fail with the server's output if it died."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            return
        except httpx.TransportError:
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.1)
    raise AssertionError(f"{base} did not come up")


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    # The header name comes from a .env file, to show the app reads one.
    (tmp_path / ".env").write_text(
        f"KEYSTORE_COLLECTION={settings.collection}\nKEYSTORE_HEADER=x-demo-key\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)],
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, base)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    # uvicorn re-raises the signal once its graceful shutdown is done.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


@pytest.mark.anyio
async def test_uvicorn_serves_the_app(server: str, settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="served")
    async with httpx.AsyncClient(base_url=server) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        r = await http.get("/v1/whoami", headers={"x-demo-key": made.key})
        assert r.status_code == 200, r.text
        assert r.json()["name"] == "served"
        r = await http.get("/v1/whoami", headers={"x-api-key": made.key})
        assert r.status_code == 401, r.text


@pytest.mark.anyio
async def test_optional_key(settings: Settings) -> None:
    """auto_error=False: no key gives None; a bad key is still refused."""
    app = FastAPI()
    optional = ApiKeyAuth(auto_error=False)

    @app.get("/maybe")
    async def maybe(
        key: Annotated[ApiKey | None, Security(optional)],
    ) -> dict[str, str | None]:
        return {"id": key.id if key else None}

    get_store(settings)
    try:
        async with serve(app) as client:
            assert (await client.get("/maybe")).json() == {"id": None}
            r = await client.get("/maybe", headers={"x-api-key": "nope"})
            assert r.status_code == 401, r.text
    finally:
        await reset_store()


def test_the_dockerfile_command_serves(settings: Settings, tmp_path: Path) -> None:
    """The container's CMD, run as is (no Docker here): it serves on $PORT."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd_line = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    command = json.loads(cmd_line.removeprefix("CMD "))
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "KEYSTORE_COLLECTION": settings.collection,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert "Application shutdown complete" in output
