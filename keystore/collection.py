"""The key collection in Firestore: the one place that talks to Firestore.

Every call has a deadline, retries included, and Google's errors become
StoreUnavailable here. After a failure no call is sent for ``retry_after``
seconds, so an outage costs callers no waiting. Reads and writes are counted by
cause, for tests, benchmarks and metrics.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from google.api_core import exceptions as google_errors
from google.api_core import grpc_helpers_async
from google.api_core.retry import AsyncRetry, if_transient_error
from google.auth.exceptions import GoogleAuthError
from google.cloud import firestore
from google.cloud.firestore_v1.types import (
    Document,
    GetDocumentRequest,
    RunQueryRequest,
    RunQueryResponse,
    StructuredQuery,
)

from keystore.errors import ConfigError, KeyNotFound, StoreUnavailable
from keystore.settings import Settings
from keystore.values import decode_fields

logger = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]

#: Per-day usage documents live in this subcollection of each key's document.
USAGE_SUBCOLLECTION = "usage"


def _is_refused(exc: BaseException) -> bool:
    """True if the call failed because Firestore could not be reached at all."""
    if isinstance(exc, google_errors.RetryError) and exc.cause is not None:
        exc = exc.cause
    return isinstance(exc, google_errors.ServiceUnavailable)


def _is_cancelling() -> bool:
    """True if the running task itself is being cancelled (or timed out)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _not_found(key_id: str) -> KeyNotFound:
    return KeyNotFound(f"No key with id '{key_id}'.")


def _nanos(timestamp: Any) -> int:
    """A time Firestore returned (as the SDK gives it), in ns since the epoch."""
    return int(timestamp.timestamp_pb().ToNanoseconds())


def collection_query(collection: str) -> StructuredQuery:
    """Every document of the top-level ``collection``: a load, or a listener."""
    return StructuredQuery(
        from_=[StructuredQuery.CollectionSelector(collection_id=collection)]
    )


class Listing(NamedTuple):
    """Every row, as (key id, row) pairs, as they stood at ``read_time`` (ns)."""

    rows: list[tuple[str, Row]]
    read_time: int


class KeyCollection:
    """Rows of the key collection, by key id."""

    def __init__(
        self, settings: Settings, *, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self._timer = timer
        self._retry = AsyncRetry(
            initial=0.05,
            maximum=0.5,
            multiplier=2,
            predicate=if_transient_error,
            # Retries stop before the deadline, so that a refused connection
            # surfaces as itself (and renews the client) rather than as a timeout.
            timeout=settings.timeout * 0.75,
        )
        self._client: firestore.AsyncClient | None = None
        self._direct_calls: _Direct | None = None
        self._opening = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._unavailable_until = float("-inf")
        #: True from a failed call to the next call that succeeds.
        self.is_degraded = False
        self._renewed_at = float("-inf")

    @property
    def is_unavailable(self) -> bool:
        """True while keystore waits out a Firestore failure."""
        return self._timer() < self._unavailable_until

    async def open(self) -> None:
        """Create the Firestore client (done by the first call otherwise)."""
        await self._collection()

    async def aclose(self) -> None:
        """Close the Firestore client; a later call opens a new one."""
        client, self._client = self._client, None
        for task in list(self._closing):
            task.cancel()
        if client is not None:
            # The async client has no public close; its transport owns the channel.
            await client._firestore_api.transport.close()

    async def get(self, key_id: str, *, cause: str) -> Row | None:
        """One row, or None if there is none: one document read."""
        await self._collection()
        read = self._retry(self._direct().read)
        document = await self._call(f"read of key {key_id}", lambda: read(key_id))
        self.reads[cause] += 1
        return None if document is None else decode_fields(document.fields)

    async def all(self, *, cause: str, timeout: float | None = None) -> Listing:
        """Every row, and the time the rows are as of."""
        await self._collection()
        scan = self._retry(self._direct().scan)
        documents, read_time = await self._call("list of keys", scan, timeout=timeout)
        # Firestore bills a query that returns nothing as one read.
        self.reads[cause] += max(1, len(documents))
        rows = [
            (document.name.rpartition("/")[2], decode_fields(document.fields))
            for document in documents
        ]
        return Listing(rows, read_time)

    # Writes return their commit time (ns): a view of the rows read at or after
    # it holds the write (index.py keeps this process's writes until then).

    async def create(self, key_id: str, row: Row, *, cause: str) -> int | None:
        """Add a row; None if one with this id exists already."""
        document = (await self._collection()).document(key_id)
        try:
            written = await self._call(
                f"create of key {key_id}",
                lambda: document.create(row, retry=self._retry),
                expected=(google_errors.Conflict,),
            )
        except google_errors.Conflict:
            return None
        self.writes[cause] += 1
        return _nanos(written.update_time)

    async def update(self, key_id: str, fields: Row, *, cause: str) -> int:
        """Change fields of an existing row; KeyNotFound if there is none."""
        return await self.commit({}, {key_id: fields}, cause=cause)

    async def commit(
        self, creates: Mapping[str, Row], updates: Mapping[str, Row], *, cause: str
    ) -> int:
        """Create and update rows atomically: all of them or, on any error, none."""
        collection = await self._collection()
        batch = collection._client.batch()
        for key_id, row in creates.items():
            batch.create(collection.document(key_id), row)
        for key_id, fields in updates.items():
            batch.update(collection.document(key_id), fields)
        names = ", ".join([*creates, *updates])
        try:
            await self._call(
                f"write of key {names}",
                lambda: batch.commit(retry=self._retry),
                expected=(google_errors.NotFound,),
            )
        except google_errors.NotFound:
            raise _not_found(next(iter(updates))) from None
        self.writes[cause] += len(creates) + len(updates)
        return _nanos(batch.commit_time)

    async def delete(self, key_id: str, *, cause: str) -> int:
        """Delete a row; KeyNotFound if there is none."""
        collection = await self._collection()
        if not key_id or "/" in key_id:
            raise _not_found(key_id)
        document = collection.document(key_id)
        try:
            deleted = await self._call(
                f"delete of key {key_id}",
                lambda: document.delete(
                    option=collection._client.write_option(exists=True),
                    retry=self._retry,
                ),
                expected=(google_errors.NotFound,),
            )
        except google_errors.NotFound:
            raise _not_found(key_id) from None
        self.writes[cause] += 1
        return _nanos(deleted)

    async def add_usage(self, key_id: str, day: str, count: int) -> None:
        """Add ``count`` uses on ``day`` to a row and its day document, atomically.

        Increments are applied by Firestore, so any number of processes may add
        at once. KeyNotFound if the row is gone: nothing is written then.
        """
        collection = await self._collection()
        row = collection.document(key_id)
        batch = collection._client.batch()
        batch.update(
            row,
            {
                "usage_count": firestore.Increment(count),
                "last_used_at": firestore.SERVER_TIMESTAMP,
            },
        )
        batch.set(
            row.collection(USAGE_SUBCOLLECTION).document(day),
            {"day": day, "count": firestore.Increment(count)},
            merge=True,
        )
        try:
            await self._call(
                f"usage write of key {key_id}",
                lambda: batch.commit(retry=self._retry),
                expected=(google_errors.NotFound,),
            )
        except google_errors.NotFound:
            raise _not_found(key_id) from None
        self.writes["usage"] += 2

    async def usage_days(self, key_id: str, days: int) -> list[tuple[str, int]]:
        """The last ``days`` day documents of a key, newest first: (day, count)."""
        usage = (
            (await self._collection()).document(key_id).collection(USAGE_SUBCOLLECTION)
        )
        query = usage.order_by("day", direction="DESCENDING").limit(days)

        async def fetch() -> list[Any]:
            return [snap async for snap in query.stream(retry=self._retry)]

        snapshots = await self._call(f"usage read of key {key_id}", fetch)
        self.reads["admin"] += max(1, len(snapshots))
        rows = [snap.to_dict() or {} for snap in snapshots]
        return [
            (str(row.get("day", "")), row["count"])
            for row in rows
            if type(row.get("count")) is int
        ]

    async def _collection(self) -> Any:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await self._new_client()
        return self._client.collection(self.settings.collection)

    def _direct(self) -> "_Direct":
        client: Any = self._client
        if self._direct_calls is None or self._direct_calls.client is not client:
            self._direct_calls = _Direct(client, self.settings)
        return self._direct_calls

    async def _new_client(self) -> firestore.AsyncClient:
        try:
            # Finding credentials may read files or ask the metadata server.
            return await asyncio.to_thread(
                firestore.AsyncClient,
                project=self.settings.project,
                database=self.settings.database,
            )
        except GoogleAuthError as exc:
            raise ConfigError(
                "No Google credentials: set FIRESTORE_EMULATOR_HOST for the emulator, "
                "or run 'gcloud auth application-default login'."
            ) from exc

    async def _call(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        expected: tuple[type[Exception], ...] = (),
        timeout: float | None = None,
    ) -> T:
        if self.is_unavailable:
            raise StoreUnavailable("Firestore is unavailable; retrying shortly.")
        try:
            async with asyncio.timeout(timeout or self.settings.timeout):
                try:
                    result = await call()
                except asyncio.CancelledError as exc:
                    if _is_cancelling():
                        raise
                    # Not this task's cancel: gRPC cancelled the call, as it
                    # does to calls on a channel closed after a renewal (a long
                    # load may outlive its client).
                    raise google_errors.Cancelled(  # type: ignore[no-untyped-call]
                        "The call was cancelled."
                    ) from exc
        except expected:
            raise
        # Anything else from Google or the network means Firestore gave no usable
        # answer; callers see one error for all of it.
        except (google_errors.GoogleAPIError, TimeoutError, OSError) as exc:
            self._unavailable_until = self._timer() + self.settings.retry_after
            # One warning per outage, not one per failed call: an outage under
            # load would otherwise write hundreds of lines a second.
            log = logger.debug if self.is_degraded else logger.warning
            self.is_degraded = True
            if _is_refused(exc):
                self._renew_client()
            log(
                "Firestore failed the %s (%s); answering from memory for %ss.",
                what,
                type(exc).__name__,
                self.settings.retry_after,
            )
            raise StoreUnavailable(f"Firestore did not answer the {what}.") from exc
        self._unavailable_until = float("-inf")
        if self.is_degraded:
            logger.warning("Firestore answers again.")
            self.is_degraded = False
        return result

    def _renew_client(self) -> None:
        # After a failure gRPC waits longer and longer (up to 2 minutes) before it
        # reconnects a channel; a new client connects at once, so the store finds
        # Firestore as soon as it is back. The old one closes once its calls are done.
        # Calls that fail together renew the client once.
        if self._timer() - self._renewed_at < self.settings.retry_after:
            return
        self._renewed_at = self._timer()
        client, self._client = self._client, None
        if client is not None:
            task = asyncio.get_running_loop().create_task(self._close_later(client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, client: firestore.AsyncClient) -> None:
        await asyncio.sleep(self.settings.timeout)
        await client._firestore_api.transport.close()


class _Direct:
    """Reads on the client's own gRPC channel, past the SDK's layers.

    The SDK's document get is a streaming BatchGet and its query stream builds a
    snapshot object per row; a plain GetDocument costs a third less CPU, a plain
    RunQuery less than half (a check in ttl mode, a whole load in reload). The
    rows decode in ``values.py``. Errors are mapped as the SDK maps them.
    """

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        channel = client._firestore_api.transport.grpc_channel
        self._get = grpc_helpers_async.wrap_errors(  # type: ignore[no-untyped-call]
            channel.unary_unary(
                "/google.firestore.v1.Firestore/GetDocument",
                request_serializer=GetDocumentRequest.serialize,
                response_deserializer=Document.pb().FromString,
            )
        )
        self._query = grpc_helpers_async.wrap_errors(  # type: ignore[no-untyped-call]
            channel.unary_stream(
                "/google.firestore.v1.Firestore/RunQuery",
                request_serializer=RunQueryRequest.serialize,
                response_deserializer=RunQueryResponse.pb().FromString,
            )
        )
        self._metadata = client._rpc_metadata  # routing header; emulator credentials
        self._parent = (
            f"projects/{client.project}/databases/{settings.database}/documents"
        )
        self._collection = settings.collection
        self._timeout = settings.timeout

    async def read(self, key_id: str) -> Any:
        """The row's document; None if there is no row."""
        request = GetDocumentRequest(name=f"{self._parent}/{self._collection}/{key_id}")
        try:
            return await self._get(
                request, metadata=self._metadata, timeout=self._timeout
            )
        except google_errors.NotFound:
            return None

    async def scan(self) -> tuple[list[Any], int]:
        """Every document of the collection, and a time they are as of (ns).

        Firestore may move the read time on while the query runs, promising
        only that the documents already sent have not changed since; a row
        made behind its cursor meanwhile may be missing. The earliest read
        time is the one that holds for the whole answer. The caller bounds
        the time.
        """
        request = RunQueryRequest(
            parent=self._parent, structured_query=collection_query(self._collection)
        )
        documents: list[Any] = []
        read_time: int | None = None
        async for answer in await self._query(request, metadata=self._metadata):
            if read_time is None and answer.HasField("read_time"):
                read_time = answer.read_time.ToNanoseconds()
            if answer.HasField("document"):
                documents.append(answer.document)
        return documents, read_time or 0
