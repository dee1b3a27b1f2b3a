"""Writes of whole documents, for a commit that makes them all or none:
create, update (optionally only if unchanged since a read), delete."""

from dataclasses import dataclass
from typing import Any

from google.cloud.firestore_v1.types import (
    Document,
    DocumentMask,
    DocumentTransform,
    Precondition,
    Write,
)

from keystore._firestore.conditional import Read, field_path
from keystore._firestore.connection import Connection
from keystore._firestore.values import encode_fields

_REQUEST_TIME = DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME

#: A document's fields, by name.
Fields = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Create:
    """Make the document at ``path`` (``collection/id``); it must not exist.
    ``stamp`` names a field set to the commit's time."""

    path: str
    fields: Fields
    stamp: str | None = None

    def write(self, connection: Connection) -> Write:
        return Write(
            update=Document(
                name=connection.path(self.path), fields=encode_fields(self.fields)
            ),
            update_transforms=_stamp(self.stamp),
            current_document=Precondition(exists=False),
        )


@dataclass(frozen=True, slots=True)
class Update:
    """Set top-level ``fields`` of the document at ``path`` (None: delete the
    field); it must exist, and with ``after``, be unchanged since that read.
    ``stamp`` names a field set to the commit's time."""

    path: str
    fields: Fields
    after: Read | None = None
    stamp: str | None = None

    def write(self, connection: Connection) -> Write:
        if self.after is None:
            precondition = Precondition(exists=True)
        elif self.after.update_time is None:
            precondition = Precondition(exists=False)
        else:
            precondition = Precondition(update_time=self.after.update_time)
        kept = {name: value for name, value in self.fields.items() if value is not None}
        return Write(
            update=Document(
                name=connection.path(self.path), fields=encode_fields(kept)
            ),
            update_mask=DocumentMask(field_paths=[field_path(n) for n in self.fields]),
            update_transforms=_stamp(self.stamp),
            current_document=precondition,
        )


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the document at ``path``; it must exist, and with ``after``, be
    unchanged since that read."""

    path: str
    after: Read | None = None

    def write(self, connection: Connection) -> Write:
        if self.after is None or self.after.update_time is None:
            precondition = Precondition(exists=True)
        else:
            precondition = Precondition(update_time=self.after.update_time)
        return Write(delete=connection.path(self.path), current_document=precondition)


def _stamp(name: str | None) -> list[DocumentTransform.FieldTransform]:
    """Set the field ``name`` (if any) to the commit's time."""
    if name is None:
        return []
    return [
        DocumentTransform.FieldTransform(
            field_path=field_path(name), set_to_server_value=_REQUEST_TIME
        )
    ]
