"""The key collection's documents: rows by key id, and their usage documents.

Reads decode the wire's protobufs straight into dicts (``values.py``); writes
are commits that take effect once (``commits.py``). Documents read and written
are counted by cause, for tests, benchmarks and metrics. The calls themselves,
their deadlines and their errors belong to ``connection.py``.
"""

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

from google.cloud.firestore_v1.services.firestore import FirestoreAsyncClient
from google.cloud.firestore_v1.types import (
    Document,
    RunQueryRequest,
    RunQueryResponse,
    StructuredQuery,
)

from keystore._firestore import conditional
from keystore._firestore.commits import Commit, Commits
from keystore._firestore.conditional import Read
from keystore._firestore.connection import Connection
from keystore._firestore.errors import Missing, Refused
from keystore._firestore.values import decode_fields, encode_value
from keystore._firestore.writes import Create, Delete, Update
from keystore.errors import KeyNotFound
from keystore.keys import is_document_id

Row = dict[str, Any]
#: Rows by key id (None: there is none), and the time (ns) they were read at.
Rows = tuple[dict[str, Row | None], int]


def _not_found(key_id: str) -> KeyNotFound:
    return KeyNotFound(f"No key with id '{key_id}'.")


def collection_query(collection: str) -> StructuredQuery:
    """Every document of the top-level ``collection``: a load, or a listener."""
    return StructuredQuery(
        from_=[StructuredQuery.CollectionSelector(collection_id=collection)]
    )


def equal(field: str, value: Any) -> StructuredQuery.Filter:
    """A query's filter: ``field`` equals ``value``."""
    return StructuredQuery.Filter(
        field_filter=StructuredQuery.FieldFilter(
            field=StructuredQuery.FieldReference(field_path=field),
            op=StructuredQuery.FieldFilter.Operator.EQUAL,
            value=encode_value(value),
        )
    )


class Listing(NamedTuple):
    """Every row, as (key id, row) pairs, as they stood at ``read_time`` (ns)."""

    rows: list[tuple[str, Row]]
    read_time: int


class KeyCollection:
    """Rows of the key collection, by key id."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.settings = connection.settings
        self.name = connection.settings.collection
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.commits = Commits(connection, f"{self.name}_writes", self.reads)

    async def open(self) -> None:
        """Connect (done by the first call otherwise)."""
        await self.connection.open()

    async def aclose(self) -> None:
        await self.connection.aclose()

    def _path(self, key_id: str, *more: str) -> str:
        if not is_document_id(key_id):
            raise _not_found(key_id)  # no such row can exist: no call
        return self.connection.path(self.name, key_id, *more)

    async def get(self, key_id: str, *, cause: str) -> Row | None:
        """One row, or None if there is none: one document read."""
        document = await self.connection.get_document(
            self._path(key_id), f"read of key {key_id}"
        )
        self.reads[cause] += 1
        if document is None:
            return None
        return decode_fields(Document.pb(document).fields)

    async def get_many(self, key_ids: list[str], *, cause: str) -> "Rows":
        """Several rows in one BatchGetDocuments call: each id's row, or None,
        and the time (ns) Firestore read them at. Firestore bills a read per
        document asked for, found or not."""
        connection = self.connection
        await connection.ensure_open()
        names = [self._path(key_id) for key_id in key_ids]

        async def read(client: FirestoreAsyncClient) -> tuple[list[Any], int]:
            return await connection.batch_get(names)

        documents, read_time = await connection.call(
            f"read of {len(key_ids)} keys", read
        )
        self.reads[cause] += len(key_ids)
        found: dict[str, Row | None] = dict.fromkeys(key_ids)
        for document in documents:
            found[document.name.rpartition("/")[2]] = decode_fields(document.fields)
        return found, read_time

    async def all(self, *, cause: str, timeout: float | None = None) -> Listing:
        """Every row, and the time the rows are as of."""
        await self.connection.ensure_open()
        documents, read_time = await self.query(
            "list of keys",
            self.connection.path(),
            collection_query(self.name),
            timeout=timeout,
        )
        # Firestore bills a query that returns nothing as one read.
        self.reads[cause] += max(1, len(documents))
        rows = [
            (document.name.rpartition("/")[2], decode_fields(document.fields))
            for document in documents
        ]
        return Listing(rows, read_time)

    async def owned(self, owner: str, *, cause: str) -> Listing:
        """The rows whose ``owner`` is ``owner``: a query on that field (its
        single-field index), one read per row found (one if none)."""
        await self.connection.ensure_open()
        query = collection_query(self.name)
        query.where = equal("owner", owner)
        documents, read_time = await self.query(
            f"list of the keys of owner {owner}", self.connection.path(), query
        )
        self.reads[cause] += max(1, len(documents))
        rows = [
            (document.name.rpartition("/")[2], decode_fields(document.fields))
            for document in documents
        ]
        return Listing(rows, read_time)

    async def query(
        self,
        what: str,
        parent: str,
        query: StructuredQuery,
        *,
        timeout: float | None = None,
    ) -> tuple[list[Any], int]:
        """The documents ``query`` finds under ``parent``, and a time they are as of.

        Firestore may move the read time on while the query runs, promising
        only that the documents already sent have not changed since; a row
        made behind its cursor meanwhile may be missing. The earliest read
        time is the one that holds for the whole answer.
        """
        connection = self.connection
        request = RunQueryRequest(parent=parent, structured_query=query)

        async def run(client: FirestoreAsyncClient) -> tuple[list[Any], int]:
            documents: list[Any] = []
            read_time: int | None = None
            stream = await client.run_query(
                request=request,
                retry=None,
                timeout=timeout or connection.attempt_timeout,
                metadata=connection.metadata,
            )
            async for message in stream:
                answer = RunQueryResponse.pb(message)
                if read_time is None and answer.HasField("read_time"):
                    read_time = answer.read_time.ToNanoseconds()
                if answer.HasField("document"):
                    documents.append(answer.document)
            return documents, read_time or 0

        return await connection.call(what, run, timeout=timeout)

    # Writes return their commit time (ns): a view of the rows read at or after
    # it holds the write (sync/ keeps this process's writes until then).

    def path(self, key_id: str) -> str:
        """The path of a key's row; KeyNotFound for an id no row can have."""
        if not is_document_id(key_id):
            raise _not_found(key_id)  # no such row can exist: no call
        return f"{self.name}/{key_id}"

    async def read(self, path: str, *, cause: str) -> Read:
        """The document at ``path`` (``collection/id``), with Firestore's time."""
        found = await conditional.read(self.connection, path, f"read of {path}")
        self.reads[cause] += 1
        return found

    async def apply(
        self, changes: Sequence["Create | Update | Delete"], *, what: str, cause: str
    ) -> int:
        """Commit ``changes`` atomically, once (commits.py): all or none.
        Missing if an updated or deleted document does not exist; Refused if
        a created one exists, or an update's document changed since its read."""
        await self.connection.ensure_open()
        writes = [change.write(self.connection) for change in changes]
        at = await self.commits.send(Commit(writes, what))
        self.writes[cause] += len(changes) + 1  # and the marker
        return at

    async def create(self, key_id: str, row: Row, *, cause: str) -> int | None:
        """Add a row; None if one with this id exists already."""
        try:
            return await self.apply(
                [Create(self.path(key_id), row)],
                what=f"create of key {key_id}",
                cause=cause,
            )
        except Refused:
            return None

    async def update(self, key_id: str, fields: Row, *, cause: str) -> int:
        """Change fields of an existing row; KeyNotFound if there is none."""
        try:
            return await self.apply(
                [Update(self.path(key_id), fields)],
                what=f"write of key {key_id}",
                cause=cause,
            )
        except Missing:
            raise _not_found(key_id) from None

    async def delete(self, key_id: str, *, cause: str) -> int:
        """Delete a row; KeyNotFound if there is none."""
        try:
            return await self.apply(
                [Delete(self.path(key_id))], what=f"delete of key {key_id}", cause=cause
            )
        except Missing:
            raise _not_found(key_id) from None
