"""Many keys in the emulator at once, written as keystore writes them.

``ApiKeyStore.create`` costs a round trip per key; 10,000 keys that way take
minutes. Here the rows are built with keystore's own record type and key format
and committed 500 to a batch (Firestore's limit) from a few threads.
"""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from google.cloud import firestore

from benchmarks.sketch_app import document_id
from keystore.keys import hash_key, new_key, new_key_id
from keystore.models import ApiKey
from keystore.times import utcnow

BATCH = 500
SCOPES = ("reports:read",)


@dataclass(frozen=True)
class Seeded:
    """The key ids and plaintext keys written, in the same order."""

    ids: list[str]
    keys: list[str]


def make_keys(n: int, prefix: str) -> Seeded:
    ids = [new_key_id() for _ in range(n)]
    return Seeded(ids, [new_key(prefix, key_id) for key_id in ids])


def keystore_row(key_id: str, key: str, index: int) -> dict[str, Any]:
    record = ApiKey(
        id=key_id,
        name=f"bench-{index}",
        scopes=SCOPES,
        created_at=utcnow(),
        hash=hash_key(key),
    )
    return record.to_row()


def sketch_row(key_id: str, index: int) -> dict[str, Any]:
    return {
        "id": key_id,
        "name": f"bench-{index}",
        "scopes": list(SCOPES),
        "expires_at": None,
    }


def _commit(
    client: firestore.Client, docs: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    batch = client.batch()
    for collection, doc_id, row in docs:
        batch.set(client.collection(collection).document(doc_id), row)
    batch.commit()


def write(
    client: firestore.Client,
    seeded: Seeded,
    collection: str,
    sketch_collection: str,
    sketch_count: int,
) -> None:
    """Every key as a keystore row; the first ``sketch_count`` also as sketch rows."""
    docs = [
        (collection, key_id, keystore_row(key_id, key, i))
        for i, (key_id, key) in enumerate(zip(seeded.ids, seeded.keys, strict=True))
    ]
    docs += [
        (sketch_collection, document_id(key), sketch_row(key_id, i))
        for i, (key_id, key) in enumerate(
            zip(seeded.ids[:sketch_count], seeded.keys[:sketch_count], strict=True)
        )
    ]
    chunks = [docs[i : i + BATCH] for i in range(0, len(docs), BATCH)]
    # A few commits in flight at once: the emulator is the slow side, not us.
    with ThreadPoolExecutor(4) as pool:
        for done in pool.map(lambda chunk: _commit(client, chunk), chunks):
            del done


def delete(client: firestore.Client, docs: Sequence[tuple[str, str]]) -> None:
    """Delete (collection, document id) pairs in one atomic batch."""
    batch = client.batch()
    for collection, doc_id in docs:
        batch.delete(client.collection(collection).document(doc_id))
    batch.commit()
