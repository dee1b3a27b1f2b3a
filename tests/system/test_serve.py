"""`uvicorn api.main:app` as a user runs it: a real server process on a real port."""

import json
import sys
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Security

from keystore import ApiKey, ApiKeyAuth, ApiKeyStore, Settings, get_store, reset_store
from tests.conftest import ROOT, running_server, serve


@pytest.mark.anyio
async def test_uvicorn_serves_the_app(settings: Settings, tmp_path: Path) -> None:
    # The header name comes from a .env file, to show the app reads one.
    (tmp_path / ".env").write_text(
        f"KEYSTORE_COLLECTION={settings.collection}\nKEYSTORE_HEADER=x-demo-key\n"
    )
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="served")
    with running_server(tmp_path, {}) as server:
        async with httpx.AsyncClient(base_url=server.base) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            r = await http.get("/v1/whoami", headers={"x-demo-key": made.key})
            assert r.status_code == 200, r.text
            assert r.json()["name"] == "served"
            r = await http.get("/v1/whoami", headers={"x-api-key": made.key})
            assert r.status_code == 401, r.text
    # SIGTERM: a graceful shutdown (uvicorn re-raises the signal once it is done).
    assert server.process.returncode in (0, -15), server.output
    assert "Application shutdown complete" in server.output


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
    env = {
        "KEYSTORE_COLLECTION": settings.collection,
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
    }
    with running_server(tmp_path, env, command) as server:
        assert httpx.get(f"{server.base}/readyz").status_code == 200
    assert "Application shutdown complete" in server.output


def test_app_attribute_is_built_on_first_access(
    firestore_env: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import logging

    import api.main

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        app = api.main.app
        assert isinstance(app, FastAPI) and api.main.app is app
    finally:
        api.main._app_from_env.cache_clear()
        root.handlers, root.level = handlers, level
    with pytest.raises(AttributeError):
        api.main.nothing  # noqa: B018
