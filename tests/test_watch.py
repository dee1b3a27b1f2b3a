"""The listener's own Listen stream, against the emulator: what it hands over."""

import logging
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from google.cloud import firestore
from google.cloud.firestore_v1.types import Document, Value

from keystore import Settings
from keystore.collection import collection_query
from keystore.result import Change, ListenedResult
from keystore.watch import ListenStream

Snapshot = tuple[list[Change], int]


class Listening:
    """A ListenStream on the test's collection, its snapshots in a queue."""

    def __init__(
        self, client: firestore.Client, settings: Settings, **options: float
    ) -> None:
        self.snapshots: queue.Queue[Snapshot] = queue.Queue()
        #: Each snapshot's read time (ns), in order.
        self.read_times: list[int] = []
        database = f"projects/{client.project}/databases/{settings.database}"
        self.stream = ListenStream(
            client,
            database,
            collection_query(settings.collection),
            self._put,
            **options,
        )

    def _put(self, changes: list[Change], reads: int, read_time: int) -> None:
        self.read_times.append(read_time)
        self.snapshots.put((changes, reads))

    def next(self) -> Snapshot:
        return self.snapshots.get(timeout=10)

    def changes(self) -> tuple[dict[str, dict[str, Any] | None], int]:
        """The next snapshot, as rows by id, and its reads."""
        changes, reads = self.next()
        return dict(changes), reads


@pytest.fixture
def client(settings: Settings) -> Iterator[firestore.Client]:
    client = firestore.Client(project=settings.project)
    yield client
    client.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def listening(client: firestore.Client, settings: Settings) -> Iterator[Listening]:
    listening = Listening(client, settings)
    yield listening
    listening.stream.close()


def test_rows_decode_as_the_sdk_reads_them(
    client: firestore.Client, settings: Settings, listening: Listening
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
    collection.document("k1").set(row)
    listening.stream.start()
    rows, reads = listening.changes()
    assert rows == {"k1": collection.document("k1").get().to_dict()}
    assert rows["k1"] == row
    assert reads == 1


def test_snapshots_are_dated_on_the_clock_of_commits(
    client: firestore.Client, settings: Settings, listening: Listening
) -> None:
    # index.py lays a write made here over any snapshot read before its commit
    # time: the two must compare.
    listening.stream.start()
    assert listening.changes() == ({}, 1)
    empty_at = listening.read_times[-1]
    written = client.collection(settings.collection).document("k1").set({"n": 1})
    committed = written.update_time.timestamp_pb().ToNanoseconds()
    rows: dict[str, dict[str, Any] | None] = {}
    while "k1" not in rows:
        rows.update(listening.changes()[0])
    assert empty_at < committed <= listening.read_times[-1]


def test_each_snapshot_holds_only_what_changed(
    client: firestore.Client, settings: Settings, listening: Listening
) -> None:
    collection = client.collection(settings.collection)
    for i in range(5):
        collection.document(f"k{i}").set({"name": f"n{i}"})
    listening.stream.start()
    rows, reads = listening.changes()
    assert set(rows) == {f"k{i}" for i in range(5)} and reads == 5

    # The emulator sends every document again on each write; only the ones
    # that changed come through, and only those count as reads.
    batch = client.batch()
    batch.update(collection.document("k1"), {"name": "renamed"})
    batch.delete(collection.document("k2"))
    batch.set(collection.document("k9"), {"name": "new"})
    batch.commit()
    seen: dict[str, dict[str, Any] | None] = {}
    billed = 0
    while len(seen) < 3:
        rows, reads = listening.changes()
        seen.update(rows)
        billed += reads
    assert seen == {"k1": {"name": "renamed"}, "k2": None, "k9": {"name": "new"}}
    assert billed == 2
    # Any later snapshot only confirms that nothing else changed.
    while not listening.snapshots.empty():
        assert listening.next() == ([], 0)


def test_a_stream_past_its_lifetime_is_resumed_without_a_word(
    client: firestore.Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    collection = client.collection(settings.collection)
    collection.document("k1").set({"name": "one"})
    listening = Listening(client, settings, stream_seconds=1.0)
    listening.stream.start()
    try:
        assert listening.changes() == ({"k1": {"name": "one"}}, 1)
        time.sleep(2.5)  # two planned ends; each next stream resumes
        collection.document("k2").set({"name": "two"})
        rows: dict[str, dict[str, Any] | None] = {}
        billed = 0
        while "k2" not in rows:
            changes, reads = listening.changes()
            rows.update(changes)
            billed += reads
        # Only the new row: the resumed streams read nothing again.
        assert rows == {"k2": {"name": "two"}} and billed == 1
        assert listening.stream.is_active
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        listening.stream.close()


def test_an_empty_collection_is_one_snapshot_and_one_read(
    listening: Listening,
) -> None:
    listening.stream.start()
    assert listening.next() == ([], 1)


def test_close_ends_the_stream_and_its_thread(listening: Listening) -> None:
    listening.stream.start()
    listening.next()
    assert listening.stream.is_active
    before = threading.active_count()
    started = time.monotonic()
    listening.stream.close()
    assert not listening.stream.is_active
    assert time.monotonic() - started < 5
    assert threading.active_count() < before


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
