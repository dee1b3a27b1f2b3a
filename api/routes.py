"""The service's endpoints."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response, Security
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from keystore import ApiKey, ApiKeyAuth, KeystoreCollector, get_store

#: The scope that GET /v1/reports asks for, to show how scopes work.
REPORTS_SCOPE = "reports:read"
#: What GET /v1/reports/full costs a key with credits, to show route costs.
FULL_REPORT_COST = 5


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    sync: str
    keys_in_memory: int
    #: Seconds since the keys in memory were last confirmed current (reload, listen).
    index_age_seconds: float | None
    #: The CPU this instance appears to get: "always allocated", "throttled
    #: between requests" (timers fired late while idle), or "not known yet".
    cpu: str
    #: Times the event loop did not run for a second or more, and the longest.
    stalls: int
    longest_stall_seconds: float
    #: Restarts of each background task after an unexpected error (logged).
    background_restarts: dict[str, int]


class WhoAmI(BaseModel):
    id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None
    owner: str | None
    rate_limit: str | None
    #: Credits left, as this instance knows them; None: no credit limit.
    credits: int | None


class Report(BaseModel):
    key_id: str
    report: str


def build_router(auth: ApiKeyAuth) -> APIRouter:
    """The routes, guarded by ``auth`` (its header name comes from settings)."""
    router = APIRouter()
    CurrentKey = Annotated[ApiKey, Security(auth)]
    ReportsKey = Annotated[ApiKey, Security(auth, scopes=[REPORTS_SCOPE])]
    FullReportKey = Annotated[
        ApiKey, Security(auth.costing(FULL_REPORT_COST), scopes=[REPORTS_SCOPE])
    ]

    @router.get("/healthz", tags=["ops"])
    async def healthz() -> Health:
        """Liveness: answers without touching Firestore."""
        return Health(status="ok")

    @router.get("/readyz", tags=["ops"], responses={503: {"model": Ready}})
    async def readyz(response: Response) -> Ready:
        """Readiness: 200 while keys can be checked; 503 before the first full
        load (reload, listen) and once the rows are older than they are trusted."""
        store = get_store()
        view = store.view
        age = view.age()
        ready = Ready(
            ready=store.is_ready,
            sync=store.settings.sync,
            keys_in_memory=len(view),
            index_age_seconds=None if age is None else round(age, 3),
            cpu=view.stalls.cpu,
            stalls=view.stalls.count,
            longest_stall_seconds=round(view.stalls.longest, 3),
            background_restarts=store.background_restarts,
        )
        if not ready.ready:
            response.status_code = 503
        return ready

    registry = CollectorRegistry()
    registry.register(KeystoreCollector())

    @router.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Counters in the Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/whoami", tags=["v1"])
    async def whoami(key: CurrentKey) -> WhoAmI:
        """The calling key's id, name and scopes."""
        return WhoAmI(
            id=key.id,
            name=key.name,
            scopes=list(key.scopes),
            expires_at=key.expires_at,
            owner=key.owner,
            rate_limit=str(key.rate_limit) if key.rate_limit else None,
            credits=key.credits_left,
        )

    @router.get("/v1/reports", tags=["v1"])
    async def reports(key: ReportsKey) -> Report:
        """Needs the scope ``reports:read``; other keys get 403."""
        return Report(key_id=key.id, report="All systems nominal.")

    @router.get("/v1/reports/full", tags=["v1"])
    async def full_report(key: FullReportKey) -> Report:
        """Needs ``reports:read``; costs 5 credits of a key with credits."""
        return Report(key_id=key.id, report="All systems nominal, in detail.")

    return router
