"""Usage counts: gathered in memory, flushed as increments, exact across processes."""

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from google.cloud import firestore

from keystore import ApiKey, ApiKeyStore, KeyNotFound, NewKey, Settings
from keystore._firestore.connection import Connection
from keystore._firestore.documents import KeyCollection
from keystore._firestore.usage import DayDocuments
from keystore.usage import UsageCounter, day_name
from tests.conftest import Emulator, running_server
from tests.interceptors import Hold

pytestmark = pytest.mark.anyio


async def test_uses_are_flushed_as_one_write_per_key_and_day(
    store: ApiKeyStore, settings: Settings
) -> None:
    made = await store.create(name="n")
    other = await store.create(name="m")
    for _ in range(7):
        assert await store.does_api_key_exist(made.key)
    assert await store.does_api_key_exist(other.key)
    assert await store.flush_usage() == 8
    # Two keys, each: the row, its day and the write's marker.
    assert store.writes["usage"] == 6
    usage = await store.usage(made.record.id)
    assert usage.total == 7 and usage.last_used_at is not None
    assert [count for _, count, _ in usage.days] == [7]
    assert await store.flush_usage() == 0  # nothing new, nothing written
    assert store.writes["usage"] == 6


async def test_refused_checks_are_not_counted(store: ApiKeyStore) -> None:
    made = await store.create(name="n")
    await store.update(made.record.id, disabled=True)
    assert not await store.does_api_key_exist(made.key)
    assert await store.flush_usage() == 0


async def test_counts_of_a_revoked_key_are_billed_not_resurrected(
    store: ApiKeyStore, settings: Settings
) -> None:
    made = await store.create(name="n")
    assert await store.does_api_key_exist(made.key)
    await store.revoke(made.record.id)
    writes = store.writes["usage"]
    assert await store.flush_usage() == 1
    assert store.writes["usage"] - writes == 2  # the day document and the marker
    with pytest.raises(KeyNotFound):
        await store.get(made.record.id)
    client = firestore.Client(project=settings.project)
    days = client.collection(settings.collection).document(made.record.id)
    [day] = [snapshot.to_dict() for snapshot in days.collection("usage").stream()]
    assert (day["count"], day["key_id"], day["owner"]) == (1, made.record.id, None)


async def test_counts_survive_an_outage(
    emulator: Emulator, make_settings: Callable[..., Settings]
) -> None:
    async with ApiKeyStore(make_settings(timeout=2.0, retry_after=1)) as store:
        made = await store.create(name="n")
        for _ in range(5):
            assert await store.does_api_key_exist(made.key)
        emulator.pause()
        try:
            assert await store.flush_usage() == 0  # nothing could be written: kept
        finally:
            emulator.pause(False)
        await asyncio.sleep(1.1)  # the store's pause after a failure
        assert await store.flush_usage() == 5
        assert (await store.usage(made.record.id)).total == 5


async def test_pending_counts_are_bounded(settings: Settings) -> None:
    counter = UsageCounter(
        DayDocuments(KeyCollection(Connection(settings))), max_pending=3
    )
    for key_id in ("a", "b"):
        counter.add(key_id)
    assert not counter.full.is_set()
    counter.add("a")  # the same key and day: no new entry
    counter.add("c")
    assert counter.full.is_set() and len(counter) == 3


def test_day_names() -> None:
    assert day_name(0) == "1970-01-01"
    assert day_name(20_415) == "2025-11-23"


async def test_two_processes_count_exactly(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="shared")
    env = {
        "KEYSTORE_COLLECTION": settings.collection,
        # Counts reach Firestore only at shutdown: the flush on SIGTERM is tested.
        "KEYSTORE_USAGE_FLUSH_INTERVAL": "3600",
    }
    with (
        running_server(tmp_path, env) as first,
        running_server(tmp_path, env) as second,
    ):
        async with httpx.AsyncClient() as http:

            async def hit(base: str) -> None:
                r = await http.get(f"{base}/v1/whoami", headers={"x-api-key": made.key})
                assert r.status_code == 200, r.text

            bases = [first.base, second.base]
            await asyncio.gather(*(hit(base) for base in bases for _ in range(60)))
    for server in (first, second):
        assert "Application shutdown complete" in server.output, server.output
        assert made.key not in server.output
    async with ApiKeyStore(settings) as store:
        usage = await store.usage(made.record.id)
    assert usage.total == 120
    assert [count for _, count, _ in usage.days] == [120]


async def test_no_plaintext_key_in_any_document_or_log(
    store: ApiKeyStore, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        made = await store.create(name="n", scopes=["a"])
        rotated = await store.rotate(made.record.id, grace=timedelta(0))
        imported = "legacy-plaintext-key-0123456789"
        await store.import_keys([("old", imported)])
        for key in (made.key, rotated.key, "ks_garbage", imported):
            await store.does_api_key_exist(key)
        await store.flush_usage()
    db = firestore.AsyncClient(project=settings.project)
    dump = []
    async for document in db.collection(settings.collection).stream():
        dump.append(repr(document.to_dict()))
        async for day in document.reference.collection("usage").stream():
            dump.append(repr(day.to_dict()))
    text = "\n".join(dump) + caplog.text
    assert len(dump) >= 4
    for key in (made.key, rotated.key, imported):
        assert key not in text


async def test_counts_of_a_flush_under_way_at_shutdown_are_written(
    settings: Settings,
) -> None:
    counting = settings.model_copy(update={"usage_flush_interval": 0.3})
    async with ApiKeyStore(settings) as admin:
        made = [await admin.create(name=f"k{i}") for i in range(40)]
    hold = Hold(delay=0.5)
    store = ApiKeyStore(counting, interceptors=[hold])
    await store.open()
    for key in made:
        assert await store.does_api_key_exist(key.key)
    hold.armed = True
    await hold.started.wait()  # the periodic flush is under way
    await store.aclose()  # SIGTERM: it finishes, nothing is cancelled away
    assert await _total_uses(settings, made) == 40


async def test_counts_are_written_at_shutdown_during_the_pause_after_a_timeout(
    settings: Settings,
) -> None:
    slow = settings.model_copy(update={"timeout": 0.5, "retry_after": 5})
    async with ApiKeyStore(settings) as admin:
        made = [await admin.create(name=f"k{i}") for i in range(10)]
    hold = Hold(delay=1.0, armed=True)  # a stalled CPU: the call times out
    async with ApiKeyStore(slow, interceptors=[hold]) as store:
        for key in made:
            assert await store.does_api_key_exist(key.key)
        assert await store.flush_usage() == 0  # timed out: kept, 5 s pause
        hold.armed = False
        assert store.connection.is_unavailable
    # SIGTERM inside the pause: the last flush goes anyway, and what may have
    # landed of the timed-out one is not counted twice (its marker).
    assert await _total_uses(settings, made) == 10


async def _total_uses(settings: Settings, made: list[NewKey]) -> int:
    async with ApiKeyStore(settings) as reader:
        records = [await reader.get(key.record.id) for key in made]
    return sum(r.usage_count for r in records if isinstance(r, ApiKey))
