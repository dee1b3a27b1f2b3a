"""The customers' side of the demo: keystore's self-service routes under
``/v1/me``, for customers signed in with Firebase Authentication, and a page
at ``/v1/me/`` to use them from a browser."""

import json
import os
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.firebase_auth import EMULATOR_VARIABLE, FirebaseOwner
from keystore import Settings, build_self_service_router

PREFIX = "/v1/me"
_PAGE = Path(__file__).with_name("account.html")


def build_customer_router(settings: Settings) -> APIRouter:
    """The self-service routes, owned by the Firebase user, and the page."""
    router = APIRouter()
    router.include_router(
        build_self_service_router(FirebaseOwner(settings.project), prefix=PREFIX)
    )

    @router.get(f"{PREFIX}/", include_in_schema=False)
    async def page() -> HTMLResponse:
        emulator = os.environ.get(EMULATOR_VARIABLE)
        return HTMLResponse(_page(emulator, os.environ.get("FIREBASE_API_KEY")))

    return router


@cache
def _page(emulator: str | None, api_key: str | None) -> str:
    config = {
        "base": PREFIX,
        # Firebase Authentication's REST API, or the emulator's copy of it;
        # the emulator takes any API key.
        "authUrl": f"http://{emulator}/identitytoolkit.googleapis.com/v1"
        if emulator
        else "https://identitytoolkit.googleapis.com/v1",
        "apiKey": api_key or ("emulator" if emulator else ""),
    }
    # In a script element: no "</" may close it early.
    blob = json.dumps(config).replace("<", "\\u003c")
    return _PAGE.read_text(encoding="utf-8").replace("/*CONFIG*/{}", blob)
