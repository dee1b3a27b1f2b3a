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

from google.cloud.firestore_v1.services.firestore import FirestoreAsyncClient
from google.cloud.firestore_v1.types import (
    CommitRequest,
    CommitResponse,
    Document,
    Precondition,
    Write,
)

from keystore._firestore.connection import Connection
from keystore._firestore.errors import Refused
from keystore._firestore.values import encode_fields
from keystore.times import utcnow

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

    async def send(self, commit: Commit, *, insist: bool = False) -> int:
        """Commit ``commit``, or find that it landed already; its commit time (ns).

        Refused if it was refused and had not landed (Missing: an update of a
        row that is gone; Refused: a create of a row that exists).
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

        try:
            answer = await connection.call(commit.what, send, insist=insist)
        except Refused:
            # A precondition failed: a repeat of a commit that landed fails one
            # (its marker's, or another's first: a delete's row is gone).
            marker = connection.path(self._markers, commit.write_id)
            document = await connection.get_document(marker, commit.what, insist=insist)
            self._reads["marker"] += 1
            if document is None:
                raise
            return int(Document.pb(document).create_time.ToNanoseconds())
        return int(CommitResponse.pb(answer).commit_time.ToNanoseconds())
