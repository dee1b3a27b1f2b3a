"""One document read with Firestore's time, and written only if unchanged.

Limit documents change by read, plan, commit: the commit carries the
precondition that the document's update time is still the one read, so two
writers never both act on one state. The read is a BatchGetDocuments of one
document, because its answer carries ``read_time``: Firestore's clock, which
every limit decision is taken by (refill periods, rate windows, lease
expiry), so that no process's own clock decides anything.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1.services.firestore import FirestoreAsyncClient
from google.cloud.firestore_v1.types import (
    BatchGetDocumentsRequest,
    BatchGetDocumentsResponse,
    CommitRequest,
    CommitResponse,
    Document,
    DocumentMask,
    DocumentTransform,
    Precondition,
    Write,
)

from keystore._firestore.connection import Connection
from keystore._firestore.values import decode_fields, encode_fields
from keystore.errors import StoreUnavailable

_REQUEST_TIME = DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME
_SIMPLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Read:
    """A document as read: its fields (None: there is none), its update time
    (the commit's precondition), and Firestore's time of the read (seconds)."""

    fields: dict[str, Any] | None
    update_time: Any
    read_time: float


def field_path(*parts: str) -> str:
    """A Firestore field path, quoting names that are not plain identifiers."""
    quoted = []
    for part in parts:
        if _SIMPLE_NAME.fullmatch(part):
            quoted.append(part)
        else:
            quoted.append("`" + part.replace("\\", "\\\\").replace("`", "\\`") + "`")
    return ".".join(quoted)


async def read(
    connection: Connection, path: str, what: str, *, insist: bool = False
) -> Read:
    """The document at ``path`` and the time Firestore read it: one read."""
    await connection.ensure_open(insist=insist)
    name = connection.path(path)
    request = BatchGetDocumentsRequest(database=connection.database, documents=[name])

    async def get(client: FirestoreAsyncClient) -> Read:
        found: Read | None = None
        stream = await client.batch_get_documents(
            request=request,
            retry=None,
            timeout=connection.attempt_timeout,
            metadata=connection.metadata,
        )
        async for message in stream:
            answer = BatchGetDocumentsResponse.pb(message)
            seconds = answer.read_time.ToNanoseconds() / 1e9
            if answer.HasField("found"):
                document = answer.found
                fields = decode_fields(document.fields)
                found = Read(fields, document.update_time, seconds)
            else:
                found = Read(None, None, seconds)
        if found is None:
            raise StoreUnavailable(f"Firestore sent no answer for the {what}.")
        return found

    return await connection.call(what, get, insist=insist)


async def commit(
    connection: Connection,
    path: str,
    sets: Mapping[str, Any],
    *,
    stamp: tuple[str, ...] | None,
    after: Read,
    what: str,
    insist: bool = False,
) -> float:
    """Set the top-level fields ``sets`` (and ``stamp``, a field path, to the
    commit's time) if the document is still as ``after`` read it; the commit's
    time, seconds. Refused if it changed since (nothing is written then).

    Sent once: an answer lost leaves the outcome unknown (StoreUnavailable),
    for the caller to find out from the document.
    """
    transforms = []
    if stamp is not None:
        transforms.append(
            DocumentTransform.FieldTransform(
                field_path=field_path(*stamp), set_to_server_value=_REQUEST_TIME
            )
        )
    precondition = (
        Precondition(exists=False)
        if after.update_time is None
        else Precondition(update_time=after.update_time)
    )
    write = Write(
        update=Document(name=connection.path(path), fields=encode_fields(sets)),
        update_mask=DocumentMask(field_paths=[field_path(name) for name in sets]),
        update_transforms=transforms,
        current_document=precondition,
    )
    request = CommitRequest(database=connection.database, writes=[write])
    answer = await connection.call(
        what,
        lambda client: client.commit(
            request=request,
            retry=None,
            timeout=connection.attempt_timeout,
            metadata=connection.metadata,
        ),
        retry=False,
        insist=insist,
    )
    return float(CommitResponse.pb(answer).commit_time.ToNanoseconds() / 1e9)
