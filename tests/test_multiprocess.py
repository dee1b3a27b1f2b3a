"""Several server processes against one emulator: changes reach every one of them."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore

from keystore import ApiKeyStore, Settings
from tests.test_serve import free_port, wait_until_up

pytestmark = pytest.mark.anyio


def start_servers(
    settings: Settings, cwd: Path, count: int, **env: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    for _ in range(count):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)],
            cwd=cwd,
            env={**os.environ, "KEYSTORE_COLLECTION": settings.collection, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until_up(process, base)
        yield process, base


async def until_all(
    http: httpx.AsyncClient, bases: list[str], key: str, status: int, limit: float
) -> float:
    """Poll every server until each answers ``status`` for ``key``; the time taken."""
    started = time.monotonic()
    waiting = set(bases)
    async with asyncio.timeout(limit):
        while waiting:
            for base in list(waiting):
                r = await http.get(f"{base}/v1/whoami", headers={"x-api-key": key})
                if r.status_code == status:
                    waiting.discard(base)
            await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("mode", "limit"),
    [
        ("listen", 2.0),  # the listen mode's promise
        ("reload", 1.0 + 1.0),  # one reload interval, plus the time to load
    ],
)
async def test_changes_reach_every_process(
    settings: Settings, tmp_path: Path, mode: str, limit: float
) -> None:
    servers = list(
        start_servers(
            settings, tmp_path, 2, KEYSTORE_SYNC=mode, KEYSTORE_RELOAD_INTERVAL="1"
        )
    )
    bases = [base for _, base in servers]
    db = firestore.AsyncClient(project=settings.project)
    rows = db.collection(settings.collection)
    try:
        async with httpx.AsyncClient() as http:
            for base in bases:  # ready: the first full load is done
                async with asyncio.timeout(10):
                    while (await http.get(f"{base}/readyz")).status_code != 200:
                        await asyncio.sleep(0.05)
            async with ApiKeyStore(settings) as store:
                made = await store.create(name="shared")
                other = await store.create(name="other")
            assert await until_all(http, bases, made.key, 200, limit) <= limit
            await rows.document(made.record.id).update({"disabled": True})
            assert await until_all(http, bases, made.key, 401, limit) <= limit
            assert await until_all(http, bases, other.key, 200, limit) <= limit
            await rows.document(other.record.id).delete()
            assert await until_all(http, bases, other.key, 401, limit) <= limit
    finally:
        for process, _ in servers:
            process.send_signal(signal.SIGTERM)
        for process, _ in servers:
            process.communicate(timeout=30)
