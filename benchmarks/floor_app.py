"""The floor: the demo app's routes with the cheapest possible key check.

Its dependency only looks the header up in a set, so its guarded route's
req/s is what FastAPI itself allows for a key check on this machine. The
responses copy api/routes.py's shapes, so that only the key check differs.

``uvicorn --factory benchmarks.floor_app:create_app``, FLOOR_KEYS set to the
accepted keys, comma-separated.
"""

import os
import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Response, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel


class Health(BaseModel):
    status: str


class WhoAmI(BaseModel):
    id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None = None
    owner: str | None = None
    rate_limit: str | None = None
    credits: int | None = None


def create_app() -> FastAPI:
    """An app that accepts exactly the keys in FLOOR_KEYS on GET /v1/whoami."""
    keys = frozenset(filter(None, os.environ["FLOOR_KEYS"].split(",")))
    header = APIKeyHeader(name="x-api-key", auto_error=False)

    async def current_key(key: Annotated[str | None, Security(header)]) -> str:
        if key is None or key not in keys:
            raise HTTPException(
                401, "Invalid API key.", headers={"WWW-Authenticate": "APIKey"}
            )
        return key

    left = [10**12]

    async def limited_key(
        response: Response, key: Annotated[str, Security(current_key)]
    ) -> str:
        left[0] -= 1
        reset = 86_400 - int(time.time()) % 86_400
        response.headers.raw.extend(
            [
                (b"ratelimit-policy", b'"key";q=1000000000;w=86400'),
                (b"ratelimit", b'"key";r=%d;t=%d' % (left[0], reset)),
            ]
        )
        return key

    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get("/v1/whoami")
    async def whoami(key: Annotated[str, Security(current_key)]) -> WhoAmI:
        return WhoAmI(id=key[3:15], name="floor", scopes=["reports:read"])

    @router.get("/v1/whoami/limited")
    async def whoami_limited(key: Annotated[str, Security(limited_key)]) -> WhoAmI:
        return WhoAmI(
            id=key[3:15],
            name="floor",
            scopes=["reports:read"],
            rate_limit="1000000000/1d",
            credits=left[0],
        )

    app = FastAPI(title="keystore benchmark floor")
    app.include_router(router)
    return app
