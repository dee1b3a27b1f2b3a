"""The sketch, the design as first drawn: the baseline for what unknown keys cost.
A synchronous Firestore document get (the id: the key's SHA-256 hex) behind
``cachetools.cached(TTLCache(ttl=60))``, keyed by the plaintext key."""

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from cachetools import TTLCache, cached
from google.cloud import firestore

Row = dict[str, Any]
THREADS = 200


class Sketch:
    """One cached lookup and the count of Firestore gets behind it; ``threaded``
    when it is asked from threads (a ``def`` dependency in FastAPI's pool), not
    straight from the event loop (the sketch's ``async def`` dependency)."""

    def __init__(
        self, client: firestore.Client, collection: str, *, threaded: bool = False
    ) -> None:
        self._collection = client.collection(collection)
        self._count_lock = threading.Lock()
        self.reads = 0
        cache: TTLCache[Any, Row | None] = TTLCache(maxsize=10_000, ttl=60)
        # cachetools asks for a lock under threads; it is let go while Firestore
        # is asked, so it does not serialize the gets (nor merge them).
        lock = threading.Lock() if threaded else None
        self.lookup = cached(cache, lock=lock)(self._get)

    def _get(self, key: str) -> Row | None:
        with self._count_lock:
            self.reads += 1
        doc_id = hashlib.sha256(key.encode()).hexdigest()
        snapshot = self._collection.document(doc_id).get()
        return (snapshot.to_dict() or {}) if snapshot.exists else None


def gets_from_threads(
    client: firestore.Client, collection: str, keys: list[str]
) -> int:
    """A threaded sketch's Firestore gets for ``keys`` asked at once from THREADS
    threads (its ``def`` dependency in FastAPI's pool): one per key not cached."""
    sketch = Sketch(client, collection, threaded=True)
    barrier = threading.Barrier(min(len(keys), THREADS))

    def one(key: str) -> object:
        with suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)
        return sketch.lookup(key)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, keys))
    return sketch.reads
