"""The sketch served over HTTP: the design as first drawn (sketch.py) behind
an ``async def`` dependency, as it was, so that a key's first check blocks
the event loop for one Firestore get. The baseline for a first check's
latency. ``SKETCH_COLLECTION`` holds its rows (document id: the key's
SHA-256 hex)."""

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from google.cloud import firestore

from benchmarks.sketch import Sketch


def create_app() -> FastAPI:
    sketch = Sketch(firestore.Client(), os.environ["SKETCH_COLLECTION"])

    async def api_key(x_api_key: Annotated[str | None, Header()] = None) -> Any:
        row = sketch.lookup(x_api_key) if x_api_key else None
        if row is None:
            raise HTTPException(401, "Invalid API key.")
        return row

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/whoami")
    async def whoami(row: Annotated[Any, Depends(api_key)]) -> dict[str, Any]:
        return {"name": row.get("name")}

    return app
