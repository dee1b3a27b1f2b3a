"""The floor: the demo app's shape with the cheapest possible key check.

Its dependency only looks the header up in an in-memory set, so its whoami/healthz
ratio is what FastAPI itself allows for a guarded endpoint on this machine.

``uvicorn --factory benchmarks.floor_app:create_app_from_env`` with FLOOR_KEYS set
to the accepted keys, comma-separated.
"""

import os
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader

from benchmarks.models import HEADER, Health, WhoAmI


def create_app(keys: frozenset[str]) -> FastAPI:
    """An app that accepts exactly ``keys`` on GET /v1/whoami."""
    header = APIKeyHeader(name=HEADER, auto_error=False)

    async def current_key(key: Annotated[str | None, Security(header)]) -> str:
        if key is None or key not in keys:
            raise HTTPException(
                401, "Invalid API key.", headers={"WWW-Authenticate": "APIKey"}
            )
        return key

    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get("/v1/whoami")
    async def whoami(key: Annotated[str, Security(current_key)]) -> WhoAmI:
        return WhoAmI(
            id=key[3:15], name="floor", scopes=["reports:read"], expires_at=None
        )

    app = FastAPI(title="keystore benchmark floor")
    app.include_router(router)
    return app


def create_app_from_env() -> FastAPI:
    keys = frozenset(k for k in os.environ.get("FLOOR_KEYS", "").split(",") if k)
    return create_app(keys)
