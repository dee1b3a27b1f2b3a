"""A server stopped (SIGSTOP, as a CPU-throttled instance is) while rows are
deleted, disabled or expired, with requests waiting for it: once it runs
again (SIGCONT), every one of them is answered from what Firestore holds now,
401 on the first try. In listen mode whatever the stall's length; in reload
and ttl, as their intervals promise (here shorter than the stall)."""

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from keystore import ApiKeyStore, Settings
from tests.conftest import running_server
from tests.console import edit as console_edit

pytestmark = pytest.mark.anyio

STALL = 3.0


@pytest.mark.parametrize(
    "env",
    [
        {"KEYSTORE_SYNC": "listen"},
        {"KEYSTORE_SYNC": "reload", "KEYSTORE_RELOAD_INTERVAL": "2"},
        {"KEYSTORE_SYNC": "ttl", "KEYSTORE_CACHE_TTL": "2"},
    ],
    ids=["listen", "reload", "ttl"],
)
async def test_changes_made_during_a_stall_are_seen_on_the_first_request(
    settings: Settings, tmp_path: Path, env: dict[str, str]
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = [await admin.create(name=f"k{i}") for i in range(4)]
    server_env = {"KEYSTORE_COLLECTION": settings.collection, **env}
    with running_server(tmp_path, server_env) as server:
        fresh = httpx.Limits(max_keepalive_connections=0)  # no connection from before
        async with httpx.AsyncClient(timeout=30, limits=fresh) as http:

            async def whoami(key: str) -> int:
                r = await http.get(
                    f"{server.base}/v1/whoami", headers={"x-api-key": key}
                )
                return r.status_code

            async with asyncio.timeout(15):  # every row in memory, each used once
                while [await whoami(m.key) for m in made] != [200] * 4:
                    await asyncio.sleep(0.1)
            server.process.send_signal(signal.SIGSTOP)
            try:
                async with ApiKeyStore(settings) as admin:
                    await admin.revoke(made[0].record.id)
                await console_edit(settings, made[1].record.id, disabled=True)
                past = datetime.now(UTC) - timedelta(seconds=1)
                await console_edit(settings, made[2].record.id, expires_at=past)
                waiting = [asyncio.ensure_future(whoami(m.key)) for m in made]
                await asyncio.sleep(STALL)
            finally:
                server.process.send_signal(signal.SIGCONT)
            assert [await w for w in waiting] == [401, 401, 401, 200]
            assert [await whoami(m.key) for m in made] == [401, 401, 401, 200]
            ready = (await http.get(f"{server.base}/readyz")).json()
    assert ready["cpu"] == "throttled between requests"
    assert ready["stalls"] >= 1
