"""Several server processes against one emulator: changes reach every one of them."""

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore

from keystore import ApiKeyStore, Settings
from tests.conftest import running_server

pytestmark = pytest.mark.anyio


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
    env = {
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_SYNC": mode,
        "KEYSTORE_RELOAD_INTERVAL": "1",
    }
    with (
        running_server(tmp_path, env) as first,
        running_server(tmp_path, env) as second,
    ):
        await check_every_process(settings, [first.base, second.base], limit)


async def check_every_process(
    settings: Settings, bases: list[str], limit: float
) -> None:
    db = firestore.AsyncClient(project=settings.project)
    rows = db.collection(settings.collection)
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
