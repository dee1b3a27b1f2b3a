"""The service's endpoints."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Security
from pydantic import BaseModel

from keystore import ApiKey, ApiKeyAuth

#: The scope that GET /v1/reports asks for, to show how scopes work.
REPORTS_SCOPE = "reports:read"


class Health(BaseModel):
    status: str


class WhoAmI(BaseModel):
    id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None


class Report(BaseModel):
    key_id: str
    report: str


def build_router(auth: ApiKeyAuth) -> APIRouter:
    """The routes, guarded by ``auth`` (its header name comes from settings)."""
    router = APIRouter()
    CurrentKey = Annotated[ApiKey, Security(auth)]
    ReportsKey = Annotated[ApiKey, Security(auth, scopes=[REPORTS_SCOPE])]

    @router.get("/healthz", tags=["ops"])
    async def healthz() -> Health:
        """Liveness: answers without touching Firestore."""
        return Health(status="ok")

    @router.get("/v1/whoami", tags=["v1"])
    async def whoami(key: CurrentKey) -> WhoAmI:
        """The calling key's id, name and scopes."""
        return WhoAmI(
            id=key.id, name=key.name, scopes=list(key.scopes), expires_at=key.expires_at
        )

    @router.get("/v1/reports", tags=["v1"])
    async def reports(key: ReportsKey) -> Report:
        """Needs the scope ``reports:read``; other keys get 403."""
        return Report(key_id=key.id, report="All systems nominal.")

    return router
