"""A Firestore real-time listener for one query, on the Listen RPC itself.

google-cloud-firestore's ``on_snapshot`` sorts the query's whole result, in
Python, on every change; and the emulator answers every write with a RESET of
every listener on the collection followed by its whole result. At 10,000 keys
one change cost about 2.5 s of CPU that way, and two seconds to arrive. Here
the stream keeps only each document's update time (``result.py``) and hands
over just the documents that changed: 0.4 s of CPU and 0.5-0.7 s per change
against the emulator at 10,000 keys; Firestore itself sends only the changed
documents.

The protocol, as the Listen RPC speaks it: documents arrive as changes,
deletes and removes, each naming its target (the query); RESET says the
target's documents will be sent again from scratch; CURRENT says it has been
sent whole; a NO_CHANGE for no target in particular marks a consistent
snapshot. An existence filter that disagrees with the documents held means
some were missed: the stream starts over.

Runs in a thread of its own, with the sync client (a blocking stream). After
an error it reconnects by itself with a growing pause, resuming from the last
consistent snapshot; every stream also ends after ``STREAM_SECONDS`` and the
next resumes at once, so that one gone quiet without an error is replaced.
"""

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from google.api_core import exceptions as google_errors
from google.cloud import firestore
from google.cloud.firestore_v1.types import (
    ListenRequest,
    ListenResponse,
    StructuredQuery,
    Target,
    TargetChange,
)

from keystore.result import Change, ListenedResult

logger = logging.getLogger(__name__)

#: Called in the listener's thread with the documents that changed (None:
#: gone), how many reads Firestore bills for them, and the time (ns) the
#: snapshot is consistent as of.
OnSnapshot = Callable[[list[Change], int, int], None]

#: The stream's one target; any number but 0 would do.
_TARGET_ID = 1

_FIRST_PAUSE = 0.25  # seconds before the first reconnect; doubles up to _MAX_PAUSE
_MAX_PAUSE = 10.0
#: Each stream ends after this many seconds and the next resumes where it
#: stopped (no reads if nothing changed): a stream that went quiet without an
#: error, as listeners are known to, is replaced within this time.
STREAM_SECONDS = 600.0


class _StartOver(Exception):
    """The stream no longer agrees with Firestore; a new one must be opened."""


class ListenStream:
    """Listens to ``query`` until ``close()``; snapshots go to ``on_snapshot``.

    ``database`` is ``projects/P/databases/D``; the query is over a top-level
    collection of it.
    """

    def __init__(
        self,
        client: firestore.Client,
        database: str,
        query: StructuredQuery,
        on_snapshot: OnSnapshot,
        *,
        stream_seconds: float = STREAM_SECONDS,
    ) -> None:
        self._client = client
        self._stream_seconds = stream_seconds
        self._database = database
        self._query = query
        self._on_snapshot = on_snapshot
        self._target = ListenedResult()
        self._closed = threading.Event()
        self._call: Any = None
        #: From the last consistent snapshot: a new stream resumes from there,
        #: so that a reconnect reads (and is billed for) only what changed.
        self._resume_token = b""
        self._thread = threading.Thread(
            target=self._run, name="keystore-listener", daemon=True
        )

    @property
    def is_active(self) -> bool:
        """True while the listener runs (connected, or about to reconnect)."""
        return self._thread.is_alive() and not self._closed.is_set()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop listening; returns once the thread has ended."""
        self._closed.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # -- in the listener's thread ---------------------------------------------

    def _run(self) -> None:
        pause = _FIRST_PAUSE
        failing = False
        while not self._closed.is_set():
            try:
                for _ in self._stream():
                    # A snapshot came through: the stream works.
                    pause = _FIRST_PAUSE
                    if failing:
                        failing = False
                        logger.info("The key listener is receiving changes again.")
            except Exception as exc:
                if self._closed.is_set():
                    break
                # gRPC's status as Google's exception classes name it.
                error = google_errors.from_grpc_error(exc)  # type: ignore[no-untyped-call]
                if isinstance(error, google_errors.DeadlineExceeded):
                    continue  # the stream's planned end: resume at once
                if not isinstance(error, google_errors.ServiceUnavailable):
                    # Not a lost connection: the resume token may be what the
                    # stream failed on, so the next one reads every row afresh.
                    self._resume_token = b""
                if not failing:
                    failing = True
                    logger.warning(
                        "The key listener lost its stream (%s); reconnecting.",
                        type(error).__name__ if error.code else type(exc).__name__,
                    )
            self._closed.wait(pause)
            pause = min(pause * 2, _MAX_PAUSE)

    def _stream(self) -> Iterator[None]:
        """Open one stream and yield after each snapshot it delivers."""
        ended = threading.Event()
        # The SDK's own gRPC stub and call metadata (its routing header, and the
        # emulator's credentials), as its on_snapshot uses them: the bare stub,
        # because the generated method around it would wait for a first answer
        # and retry with a request iterator already spent.
        client: Any = self._client
        self._call = None
        try:
            self._call = client._firestore_api._transport.listen(
                self._requests(ended),
                metadata=client._rpc_metadata,
                timeout=self._stream_seconds,
            )
            if self._closed.is_set():  # close() came before the call was set
                self._call.cancel()
            self._target.restart(resumed=bool(self._resume_token))
            for response in self._call:
                if self._handle(ListenResponse.pb(response)):
                    yield
        finally:
            ended.set()
            if self._call is not None:
                self._call.cancel()

    def _requests(self, ended: threading.Event) -> Iterator[ListenRequest]:
        yield ListenRequest(
            database=self._database,
            add_target=Target(
                target_id=_TARGET_ID,
                resume_token=self._resume_token,
                query=Target.QueryTarget(
                    parent=f"{self._database}/documents",
                    structured_query=self._query,
                ),
            ),
        )
        # The request side stays open for as long as the stream runs.
        ended.wait()

    def _handle(self, response: Any) -> bool:
        """Take in one response; True if it completed a snapshot."""
        kind = response.WhichOneof("response_type")
        target = self._target
        if kind == "document_change":
            change = response.document_change
            document = change.document
            doc_id = document.name.rpartition("/")[2]
            if _TARGET_ID in change.target_ids:
                target.put(doc_id, document.update_time.ToNanoseconds(), document)
            elif _TARGET_ID in change.removed_target_ids:
                target.drop(doc_id)
        elif kind in ("document_delete", "document_remove"):
            target.drop(getattr(response, kind).document.rpartition("/")[2])
        elif kind == "filter":
            if target.size() != response.filter.count:
                raise _StartOver("An existence filter disagrees with the stream.")
        elif kind == "target_change":
            return self._target_change(response.target_change)
        return False

    def _target_change(self, change: Any) -> bool:
        kinds = TargetChange.TargetChangeType
        kind = change.target_change_type
        if kind == kinds.REMOVE:
            raise _StartOver(f"Firestore removed the target: {change.cause.message}")
        if kind == kinds.RESET:
            self._target.reset()
        elif kind == kinds.CURRENT:
            self._target.is_current = True
        elif kind == kinds.NO_CHANGE and not change.target_ids:
            # A consistent snapshot, if the target has been sent whole.
            if not change.HasField("read_time") or not self._target.is_current:
                return False
            self._deliver(change.read_time.ToNanoseconds())
            if change.resume_token:
                self._resume_token = change.resume_token
            return True
        return False

    def _deliver(self, read_time: int) -> None:
        # Handed over even when nothing changed: it confirms the rows are current.
        changes, reads = self._target.snapshot()
        self._on_snapshot(changes, reads, read_time)
