"""SnapshotView on its own: rows in memory, and this process's writes laid over
views of the rows read before them."""

from keystore._firestore.connection import Connection
from keystore._firestore.documents import KeyCollection
from keystore.keys import hash_key
from keystore.models import ApiKey
from keystore.settings import Settings
from keystore.sync.snapshot import SnapshotView
from keystore.sync.stall import StallWatch

ROW = ApiKey(id="k1", name="one", hash=hash_key("a key")).to_row()


def view() -> SnapshotView:
    """A view with no Firestore behind it: nothing here reads one."""
    rows = KeyCollection(Connection(Settings(project="nowhere")))
    return SnapshotView(max_age=60, timer=lambda: 0.0, rows=rows, stalls=StallWatch())


def source() -> SnapshotView:
    index = view()
    index.replace([("k1", ROW)], as_of=10)
    return index


def test_a_revoke_here_outlives_views_read_before_it() -> None:
    index = source()
    index.remember("k1", None, at=20)
    assert index.peek("k1") is None
    index.replace([("k1", ROW)], as_of=15)  # a load that raced the revoke
    assert index.peek("k1") is None
    index.change([("k1", ROW)], as_of=18)  # a snapshot still on its way
    assert index.peek("k1") is None


def test_a_view_read_after_the_write_takes_over() -> None:
    index = source()
    index.remember("k1", None, at=20)
    index.change([], as_of=20)  # holds the revoke: nothing left to lay over
    index.change([("k1", ROW)], as_of=30)  # made again elsewhere, later
    assert index.peek("k1") is not None
    index.replace([], as_of=40)
    assert index.peek("k1") is None


def test_a_key_made_here_before_the_first_load_is_kept() -> None:
    index = view()
    made = ApiKey(id="k2", name="two", hash=hash_key("another key"))
    index.remember("k2", made, at=20)  # no rows yet: held for the first load
    index.replace([("k1", ROW)], as_of=15)
    assert index.peek("k2") == made
    assert index.peek("k1") is not None


def test_a_write_a_view_already_holds_changes_nothing() -> None:
    index = source()
    index.change([("k1", None)], as_of=30)  # revoked elsewhere, seen at 30
    index.remember("k1", ApiKey(id="k1", name="old"), at=25)  # an earlier write
    assert index.peek("k1") is None


def test_writes_here_that_finish_out_of_order_keep_the_later() -> None:
    index = source()
    index.remember("k1", None, at=30)
    index.remember("k1", ApiKey(id="k1", name="older", hash=hash_key("k")), at=20)
    assert index.peek("k1") is None


def test_a_load_older_than_the_rows_held_is_ignored() -> None:
    index = source()
    index.change([("k1", None)], as_of=30)
    index.replace([("k1", ROW)], as_of=20)  # two loads overlapped
    assert index.peek("k1") is None


def test_changes_older_than_the_rows_held_are_ignored() -> None:
    index = source()
    index.change([("k1", None)], as_of=30)
    index.change([("k1", ROW)], as_of=20)
    assert index.peek("k1") is None
