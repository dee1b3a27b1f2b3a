"""405 answers whose ``Allow`` lists every method of the path (RFC 9110 15.5.6).

Starlette answers 405 from the first route whose path matches, so its ``Allow``
names that route's methods only: ``POST`` for ``/admin/keys``, which also has
``GET``. This asks each route instead.
"""

from typing import cast

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app serves at this request's path."""
    allowed = []
    for method in _METHODS:
        # A fresh scope: the request's own carries what routing left in it.
        probe = {
            "type": "http",
            "method": method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "headers": [],
            "query_string": b"",
        }
        if any(r.matches(probe)[0] is Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return allowed


async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """The exception handler for 405: FastAPI's answer, with the whole ``Allow``."""
    error = cast(HTTPException, exc)  # a status code's handler gets HTTPExceptions
    headers = {**(error.headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return JSONResponse({"detail": error.detail}, 405, headers=headers)
