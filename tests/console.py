"""What an operator does in the Firestore console: plain reads and writes with
the SDK's own client, no keystore. The synchronous client, run off the event
loop: its calls end where they start (the async client's document get leaves
a stream open past the test's event loop)."""

import asyncio
from typing import Any

from google.cloud import firestore

from keystore import Settings


def _document(settings: Settings, collection: str, doc_id: str) -> Any:
    client = firestore.Client(project=settings.project)
    return client.collection(collection).document(doc_id)


async def read(
    settings: Settings, doc_id: str, *, collection: str | None = None
) -> dict[str, Any] | None:
    """A document's fields as the console shows them; None if there is none."""
    document = _document(settings, collection or settings.collection, doc_id)
    snapshot = await asyncio.to_thread(document.get)
    return snapshot.to_dict()  # type: ignore[no-any-return]


async def edit(
    settings: Settings, doc_id: str, *, collection: str | None = None, **fields: Any
) -> None:
    """Change fields of a document, as typed in the console (None: null)."""
    document = _document(settings, collection or settings.collection, doc_id)
    await asyncio.to_thread(document.update, fields)


async def add(
    settings: Settings,
    doc_id: str,
    fields: dict[str, Any],
    *,
    collection: str | None = None,
) -> None:
    """Make (or replace) a document by hand."""
    document = _document(settings, collection or settings.collection, doc_id)
    await asyncio.to_thread(document.set, fields)
