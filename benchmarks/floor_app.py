"""The floor: the demo app's routes and response models with the cheapest key
check, a lookup in a set: what FastAPI itself allows for a key check here.
``uvicorn --factory benchmarks.floor_app:create_app``, FLOOR_KEYS comma-separated."""

import os
import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Response, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

POLICY = (b"ratelimit-policy", b'"key";q=1000000000;w=86400')


# Copies of api/routes.py's models: importing them would load keystore and the
# Google libraries here, whose objects slow this process's garbage collection.
class Health(BaseModel):
    status: str


class WhoAmI(BaseModel):
    id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None
    owner: str | None
    rate_limit: str | None
    credits: int | None


def _whoami(key: str, rate_limit: str | None, credits: int | None) -> WhoAmI:
    return WhoAmI(
        id=key[3:15],
        name="floor",
        scopes=["reports:read"],
        expires_at=None,
        owner=None,
        rate_limit=rate_limit,
        credits=credits,
    )


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

    # The limit is a counter and the two headers the demo app sends with one:
    # what FastAPI itself charges for a limit's response.
    left = [10**12]

    async def limited_key(
        response: Response, key: Annotated[str, Security(current_key)]
    ) -> str:
        left[0] -= 1
        state = b'"key";r=%d;t=%d' % (left[0], 86_400 - int(time.time()) % 86_400)
        response.headers.raw.extend([POLICY, (b"ratelimit", state)])
        return key

    # Routes on a router included in the app, as the demo app has them: FastAPI
    # matches an included router's routes at some cost of its own.
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get("/v1/whoami")
    async def whoami(key: Annotated[str, Security(current_key)]) -> WhoAmI:
        return _whoami(key, None, None)

    @router.get("/v1/whoami/limited")
    async def whoami_limited(key: Annotated[str, Security(limited_key)]) -> WhoAmI:
        return _whoami(key, "1000000000/1d", left[0])

    app = FastAPI(title="keystore benchmark floor")
    app.include_router(router)
    return app
