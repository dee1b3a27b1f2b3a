"""The listener's own Listen stream, against the emulator: what it hands over."""

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.types import Document, Value

from keystore import Settings
from keystore._firestore.connection import Connection
from keystore._firestore.documents import collection_query
from keystore._firestore.listen import ListenStream
from keystore._firestore.listen_result import Change, ListenedResult

Snapshot = tuple[list[Change], int]

pytestmark = pytest.mark.anyio


class Listening:
    """A ListenStream on the test's collection, its snapshots in a queue."""

    def __init__(
        self, connection: Connection, settings: Settings, **options: float
    ) -> None:
        self.snapshots: asyncio.Queue[Snapshot] = asyncio.Queue()
        #: Each snapshot's read time (ns), in order.
        self.read_times: list[int] = []
        self.stream = ListenStream(
            connection, collection_query(settings.collection), self._put, **options
        )

    def _put(self, changes: list[Change], reads: int, read_time: int) -> None:
        self.read_times.append(read_time)
        self.snapshots.put_nowait((changes, reads))

    async def next(self) -> Snapshot:
        async with asyncio.timeout(10):
            return await self.snapshots.get()

    async def changes(self) -> tuple[dict[str, dict[str, Any] | None], int]:
        """The next snapshot, as rows by id, and its reads."""
        changes, reads = await self.next()
        return dict(changes), reads


@pytest.fixture
def client(settings: Settings) -> firestore.AsyncClient:
    return firestore.AsyncClient(project=settings.project)


@pytest.fixture
async def connection(settings: Settings) -> AsyncIterator[Connection]:
    connection = Connection(settings)
    yield connection
    await connection.aclose()


@pytest.fixture
async def listening(
    connection: Connection, settings: Settings
) -> AsyncIterator[Listening]:
    listening = Listening(connection, settings)
    yield listening
    await listening.stream.close()


async def test_rows_decode_as_the_sdk_reads_them(
    client: firestore.AsyncClient, settings: Settings, listening: Listening
) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row = {
        "text": "név",
        "count": 7,
        "ratio": 0.5,
        "on": True,
        "nothing": None,
        "when": when,
        "list": ["a", 1, {"nested": False}],
        "map": {"inner": {"deep": "x"}},
        "blob": b"\x00\x01",
    }
    collection = client.collection(settings.collection)
    await collection.document("k1").set(row)
    listening.stream.start()
    rows, reads = await listening.changes()
    # A query read to its end: the SDK's document get leaves a stream open.
    assert rows == {"k1": [d.to_dict() async for d in collection.stream()][0]}
    assert rows["k1"] == row
    assert reads == 1


async def test_snapshots_are_dated_on_the_clock_of_commits(
    client: firestore.AsyncClient, settings: Settings, listening: Listening
) -> None:
    # index.py lays a write made here over any snapshot read before its commit
    # time: the two must compare.
    listening.stream.start()
    assert await listening.changes() == ({}, 1)
    empty_at = listening.read_times[-1]
    document = client.collection(settings.collection).document("k1")
    written = await document.set({"n": 1})
    committed = written.update_time.timestamp_pb().ToNanoseconds()
    rows: dict[str, dict[str, Any] | None] = {}
    while "k1" not in rows:
        rows.update((await listening.changes())[0])
    assert empty_at < committed <= listening.read_times[-1]


async def test_each_snapshot_holds_only_what_changed(
    client: firestore.AsyncClient, settings: Settings, listening: Listening
) -> None:
    collection = client.collection(settings.collection)
    for i in range(5):
        await collection.document(f"k{i}").set({"name": f"n{i}"})
    listening.stream.start()
    rows, reads = await listening.changes()
    assert set(rows) == {f"k{i}" for i in range(5)} and reads == 5

    # The emulator sends every document again on each write; only the ones
    # that changed come through, and only those count as reads.
    batch = client.batch()
    batch.update(collection.document("k1"), {"name": "renamed"})
    batch.delete(collection.document("k2"))
    batch.set(collection.document("k9"), {"name": "new"})
    await batch.commit()
    seen: dict[str, dict[str, Any] | None] = {}
    billed = 0
    while len(seen) < 3:
        rows, reads = await listening.changes()
        seen.update(rows)
        billed += reads
    assert seen == {"k1": {"name": "renamed"}, "k2": None, "k9": {"name": "new"}}
    assert billed == 2
    # Any later snapshot only confirms that nothing else changed.
    while not listening.snapshots.empty():
        assert await listening.next() == ([], 0)


async def test_a_stream_past_its_lifetime_is_resumed_without_a_word(
    client: firestore.AsyncClient,
    connection: Connection,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collection = client.collection(settings.collection)
    await collection.document("k1").set({"name": "one"})
    listening = Listening(connection, settings, stream_seconds=0.3)
    listening.stream.start()
    try:
        assert await listening.changes() == ({"k1": {"name": "one"}}, 1)
        await asyncio.sleep(1)  # planned ends; each next stream resumes
        await collection.document("k2").set({"name": "two"})
        rows: dict[str, dict[str, Any] | None] = {}
        billed = 0
        while "k2" not in rows:
            changes, reads = await listening.changes()
            rows.update(changes)
            billed += reads
        # Only the new row: the resumed streams read nothing again.
        assert rows == {"k2": {"name": "two"}} and billed == 1
        assert listening.stream.is_active
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await listening.stream.close()


async def test_an_empty_collection_is_one_snapshot_and_one_read(
    listening: Listening,
) -> None:
    listening.stream.start()
    assert await listening.next() == ([], 1)


async def test_close_ends_the_stream(listening: Listening) -> None:
    listening.stream.start()
    await listening.next()
    assert listening.stream.is_active
    async with asyncio.timeout(5):
        await listening.stream.close()
    assert not listening.stream.is_active


def _document(name: str) -> Any:
    return Document.pb(Document(fields={"name": Value(string_value=name)}))


def test_a_reset_drops_the_rows_not_sent_again() -> None:
    # The bookkeeping behind a RESET, as the emulator sends one on every write.
    target = ListenedResult()
    target.put("a", 1, _document("a"))
    target.put("b", 1, _document("b"))
    target.is_current = True
    assert target.snapshot() == ([("a", {"name": "a"}), ("b", {"name": "b"})], 2)
    target.reset()
    target.put("a", 1, _document("a"))  # resent unchanged: not passed on
    target.put("c", 2, _document("c"))
    target.drop("c")  # deleted again before the snapshot
    assert target.size() == 1  # what an existence filter is compared with
    assert target.snapshot() == ([("b", None)], 0)
    target.restart(resumed=False)
    target.put("a", 1, _document("a"))
    assert target.snapshot() == ([], 1)  # a new stream is billed whole
    # A resumed stream sends only what changed since: nothing else is dropped,
    # and only the change is billed.
    target.restart(resumed=True)
    target.put("d", 3, _document("d"))
    target.is_current = True
    assert target.snapshot() == ([("d", {"name": "d"})], 1)
    assert set(target.versions) == {"a", "d"}
