"""Commits that take effect once, however often they are sent.

A commit whose answer is lost may have landed: sending it again would count a
use twice, or answer "exists" for a key that was just made. So each commit
carries a marker document, created in the same atomic commit with the
precondition that it does not exist yet. A repeat of a commit that landed
fails that precondition and changes nothing; finding the marker then says the
first one landed, and its creation time is that commit's time.

Cost: one more document write per commit. Markers carry ``expires_at``, a
week on: a Firestore TTL policy on that field (collection group
``<collection>_writes``) deletes them; no retry comes that late.
"""

import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as google_errors
from google.cloud.firestore_v1.services.firestore import FirestoreAsyncClient
from google.cloud.firestore_v1.types import (
    CommitRequest,
    CommitResponse,
    Document,
    GetDocumentRequest,
    Precondition,
    Write,
)

from keystore.connection import Connection
from keystore.times import utcnow
from keystore.values import encode_fields

#: How long a marker is kept (by a TTL policy the operator sets up).
MARKER_LIFETIME = timedelta(days=7)


def _marker(name: str) -> Write:
    return Write(
        update=Document(
            name=name,
            fields=encode_fields({"expires_at": utcnow() + MARKER_LIFETIME}),
        ),
        current_document=Precondition(exists=False),
    )


def new_write_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Commit:
    """Writes to commit atomically, once: sending it again is always safe."""

    writes: Sequence[Write]
    what: str
    #: Names the marker; the same for every sending of this commit.
    write_id: str = field(default_factory=new_write_id)


class Commits:
    """Sends :class:`Commit` s over ``connection``; markers in ``markers``.

    A marker looked up after a refused commit counts in ``reads["marker"]``.
    """

    def __init__(
        self, connection: Connection, markers: str, reads: Counter[str]
    ) -> None:
        self._connection = connection
        self._markers = markers
        self._reads = reads

    async def send(
        self, commit: Commit, *, expected: tuple[type[Exception], ...] = ()
    ) -> int:
        """Commit ``commit``, or find that it landed already; its commit time (ns).

        ``expected`` errors are raised as they are (NotFound for an update of
        a row that is gone, Conflict for a create of a row that exists).
        """
        connection = self._connection

        def send(client: FirestoreAsyncClient) -> Awaitable[Any]:
            # Paths need the database, known once the connection is open.
            marker = connection.path(self._markers, commit.write_id)
            request = CommitRequest(
                database=connection.database,
                writes=[*commit.writes, _marker(marker)],
            )
            return client.commit(
                request=request,
                retry=None,
                timeout=connection.attempt_timeout,
                metadata=connection.metadata,
            )

        refusals: tuple[type[Exception], ...] = (google_errors.Conflict, *expected)
        try:
            answer = await connection.call(commit.what, send, expected=refusals)
        except refusals:
            # A precondition failed: a repeat of a commit that landed fails one
            # (its marker's, or another's first: a delete's row is gone).
            marker = connection.path(self._markers, commit.write_id)
            landed = await self._landed(marker, commit.what)
            if landed is None:
                raise
            return landed
        return int(CommitResponse.pb(answer).commit_time.ToNanoseconds())

    async def _landed(self, marker: str, what: str) -> int | None:
        """The commit time of the commit that made ``marker``; None if none did."""
        connection = self._connection
        try:
            document = await connection.call(
                what,
                lambda client: client.get_document(
                    request=GetDocumentRequest(name=marker),
                    retry=None,
                    timeout=connection.attempt_timeout,
                    metadata=connection.metadata,
                ),
                expected=(google_errors.NotFound,),
            )
        except google_errors.NotFound:
            return None
        finally:
            self._reads["marker"] += 1
        return int(Document.pb(document).create_time.ToNanoseconds())
