"""The sketch: the design as first drawn, kept as the baseline keystore must beat.

A plain synchronous ``google.cloud.firestore.Client`` document get, called straight
from an ``async def`` FastAPI dependency, behind ``cachetools.cached(TTLCache(...))``
keyed by the plaintext key. Rows are documents whose id is the key's SHA-256 hex.

``uvicorn --factory benchmarks.sketch_app:create_app_from_env`` with SKETCH_COLLECTION
set (and the emulator's FIRESTORE_EMULATOR_HOST / GOOGLE_CLOUD_PROJECT). Beside the
sketch's own routes it serves a variant whose dependency is a plain ``def`` (FastAPI
runs it in its thread pool), and GET /reads and POST /reset so that the benchmark can
count Firestore gets from outside.
"""

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Annotated, Any

from cachetools import TTLCache, cached
from fastapi import APIRouter, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader
from google.cloud import firestore

from benchmarks.models import HEADER, Health, WhoAmI

Row = dict[str, Any]


def document_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def seed(client: firestore.Client, collection: str, key: str, row: Row) -> None:
    """Store ``row`` as the sketch's document for ``key``."""
    client.collection(collection).document(document_id(key)).set(row)


@contextmanager
def sync_client(project: str) -> Iterator[firestore.Client]:
    """The sketch's kind of client, closed at the end of the block."""
    client = firestore.Client(project=project)
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]  # unannotated upstream


class Sketch:
    """One cached lookup and the count of Firestore gets behind it."""

    def __init__(
        self,
        client: firestore.Client,
        collection: str,
        *,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self._collection = client.collection(collection)
        self._count_lock = threading.Lock()
        self.reads = 0
        self.cache: TTLCache[Any, Row | None] = TTLCache(maxsize=10_000, ttl=60)
        self.lookup = cached(self.cache, lock=lock)(self._get)

    def _get(self, key: str) -> Row | None:
        with self._count_lock:
            self.reads += 1
        snapshot = self._collection.document(document_id(key)).get()
        if not snapshot.exists:
            return None
        row: Row = snapshot.to_dict() or {}
        return row

    def reset(self) -> None:
        self.cache.clear()
        self.reads = 0


def _unauthorized() -> HTTPException:
    return HTTPException(
        401, "Invalid API key.", headers={"WWW-Authenticate": "APIKey"}
    )


def _whoami(row: Row) -> WhoAmI:
    return WhoAmI(
        id=str(row.get("id", "")),
        name=str(row.get("name", "")),
        scopes=list(row.get("scopes", [])),
        expires_at=row.get("expires_at"),
    )


def create_app(client: firestore.Client, collection: str) -> FastAPI:
    # The plain-def variant needs the lock cachetools asks for under threads; the
    # lock is released while Firestore is asked, so it does not serialize gets.
    sketch = Sketch(client, collection)
    threaded = Sketch(client, collection, lock=threading.Lock())
    header = APIKeyHeader(name=HEADER, auto_error=False)

    async def current_key(key: Annotated[str | None, Security(header)]) -> Row:
        if key is None:
            raise _unauthorized()
        row = sketch.lookup(key)
        if row is None:
            raise _unauthorized()
        return row

    def current_key_threaded(key: Annotated[str | None, Security(header)]) -> Row:
        if key is None:
            raise _unauthorized()
        row = threaded.lookup(key)
        if row is None:
            raise _unauthorized()
        return row

    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get("/v1/whoami")
    async def whoami(row: Annotated[Row, Security(current_key)]) -> WhoAmI:
        return _whoami(row)

    @router.get("/v1/whoami-threaded")
    async def whoami_threaded(
        row: Annotated[Row, Security(current_key_threaded)],
    ) -> WhoAmI:
        return _whoami(row)

    @router.get("/reads")
    async def reads() -> dict[str, int]:
        return {"async": sketch.reads, "threaded": threaded.reads}

    @router.post("/reset")
    async def reset() -> dict[str, int]:
        sketch.reset()
        threaded.reset()
        return {"async": 0, "threaded": 0}

    app = FastAPI(title="keystore benchmark sketch")
    app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    client = firestore.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"])
    return create_app(client, os.environ["SKETCH_COLLECTION"])
