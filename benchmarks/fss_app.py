"""The second reference: fastapi-simple-security (PyPI), SQLite-backed API keys.

Runs only in its own virtualenv (benchmarks/.venv-fss, made by benchmarks.modes),
since the package may pin other FastAPI versions than keystore's. Its dependency
``api_key_security`` reads the key from the ``api-key`` header or query parameter,
runs one SQLite SELECT per check (a new connection each time) and starts a thread
that writes the use count; keys are made and revoked through its own router
(``/auth/new``, ``/auth/revoke``, guarded by the ``secret-key`` header).

    uvicorn --factory benchmarks.fss_app:create_app     # the app
    python -m benchmarks.fss_app --checks 2000          # µs per check_key, as JSON

Environment: FASTAPI_SIMPLE_SECURITY_SECRET and FASTAPI_SIMPLE_SECURITY_DB_LOCATION.
"""

import argparse
import json
import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI

# Installed only in the package's own virtualenv, so mypy (run from the project's
# virtualenv) cannot see it.
from fastapi_simple_security import (  # type: ignore[import-not-found,unused-ignore]
    api_key_router,
    api_key_security,
)

from benchmarks.models import Health, WhoAmI


def create_app() -> FastAPI:
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get("/v1/whoami")
    async def whoami(key: Annotated[str, Depends(api_key_security)]) -> WhoAmI:
        # The package keeps no name or scopes a check could return.
        return WhoAmI(id=key[:8], name="fss", scopes=[], expires_at=None)

    app = FastAPI(title="keystore benchmark: fastapi-simple-security")
    app.include_router(router)
    app.include_router(api_key_router, prefix="/auth", tags=["_auth"])
    return app


def check_cost(n: int) -> dict[str, Any]:
    """µs per ``check_key`` of a valid key, as its dependency calls it."""
    from fastapi_simple_security._sqlite_access import (  # type: ignore[import-not-found,unused-ignore]
        sqlite_access,
    )

    key: str = sqlite_access.create_key("bench", True)
    for _ in range(50):
        sqlite_access.check_key(key)
    _join_writers()
    start = time.perf_counter()
    for _ in range(n):
        sqlite_access.check_key(key)
    elapsed = time.perf_counter() - start
    # Each valid check left a thread writing its use count; they must end before
    # the process does, and their time is not the caller's.
    _join_writers()
    return {"us_check_key": elapsed / n * 1e6, "checks": n}


def _join_writers() -> None:
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=2000)
    args = parser.parse_args()
    print("FSS_JSON " + json.dumps(check_cost(args.checks)))


if __name__ == "__main__":
    main()
