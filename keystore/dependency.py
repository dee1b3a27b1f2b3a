"""The FastAPI dependency: a request's API key in, its ApiKey record out.

This is the only module that speaks HTTP: 401 with ``WWW-Authenticate`` for a
missing or unusable key, 403 for a missing scope, 429 with ``Retry-After`` when
a usage limit refuses, 503 with ``Retry-After`` when the store cannot answer.
Responses to a key with a rate limit carry the ``RateLimit-Policy`` and
``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers). ``document(app)``
lists all of these in the app's OpenAPI document (openapi.py).
"""

import copy

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.openapi.models import APIKey as APIKeyScheme
from fastapi.openapi.models import APIKeyIn
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase

from keystore import openapi
from keystore.errors import KeyRejected, LimitExceeded, StoreBusy, StoreUnavailable
from keystore.limits.limiter import RateItem
from keystore.models import ApiKey
from keystore.settings import Settings
from keystore.store import get_store


def _rated(record: ApiKey) -> bool:
    """True if ``record`` may have a rate limit: its own, or its owner's."""
    return (
        record.rate_limit is not None
        or record.owner is not None
        or record.limits_in is not None
    )


def _raw_headers(items: list[RateItem]) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-
    headers) for ``items``, as ASGI raw headers; none without a rate limit."""
    if not items:
        return []
    # Bytes formatted in place: this runs on every response to a limited key.
    return [
        (b"ratelimit-policy", b", ".join([item[0] for item in items])),
        (b"ratelimit", b", ".join([item[1] % (item[2], item[3]) for item in items])),
    ]


def rate_limit_headers(items: list[RateItem]) -> dict[str, str]:
    """The RateLimit headers of ``items`` (``store.rate_limits(record)``), as
    the draft spells their names."""
    return {_HEADER_NAMES[name]: value.decode() for name, value in _raw_headers(items)}


_HEADER_NAMES = {b"ratelimit-policy": "RateLimit-Policy", b"ratelimit": "RateLimit"}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "APIKey"})


def unavailable(retry_after: int, *, busy: bool = False) -> HTTPException:
    """The 503 for a store that cannot answer now (or is too busy to)."""
    return HTTPException(
        503,
        "Key store busy; retry shortly."
        if busy
        else "Key store unavailable; retry later.",
        headers={"Retry-After": "1" if busy else str(retry_after)},
    )


class ApiKeyAuth(SecurityBase):
    """Use as ``Security(auth, scopes=[...])``; returns the caller's ApiKey.

    A request spends ``cost`` credits of a key with credits (``costing(n)``
    makes the same dependency at another cost; 0 verifies without spending).
    With ``auto_error=False`` a request without a key gets None instead of 401;
    a key that is present but not valid is still refused.
    """

    def __init__(
        self,
        *,
        header: str = "x-api-key",
        query_param: str | None = None,
        auto_error: bool = True,
        scheme_name: str = "ApiKey",
        cost: int = 1,
    ) -> None:
        if cost < 0:
            raise ValueError("A route's cost must not be negative.")
        self.cost = cost
        self.header = header
        self.query_param = query_param
        self.auto_error = auto_error
        self.scheme_name = scheme_name
        self.model = APIKeyScheme.model_validate(
            {
                "in": APIKeyIn.header,
                "name": header,
                "description": "An API key issued with `keystore create`.",
            }
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, auto_error: bool = True
    ) -> "ApiKeyAuth":
        """The dependency for the header and query parameter named in ``settings``."""
        return cls(
            header=settings.header,
            query_param=settings.query_param,
            auto_error=auto_error,
        )

    def costing(self, cost: int) -> "ApiKeyAuth":
        """This dependency at ``cost`` credits per request."""
        other = copy.copy(self)
        if cost < 0:
            raise ValueError("A route's cost must not be negative.")
        other.cost = cost
        return other

    async def __call__(
        self, request: Request, response: Response, security_scopes: SecurityScopes
    ) -> ApiKey | None:
        key = self._presented_key(request)
        if key is None:
            if self.auto_error:
                raise _unauthorized("Missing API key.")
            return None
        store = get_store()
        try:
            record = await store.verify(key)
        except KeyRejected as exc:
            raise _unauthorized(exc.reason) from None
        except StoreUnavailable as exc:
            busy = isinstance(exc, StoreBusy)
            raise unavailable(store.settings.retry_after, busy=busy) from None
        for scope in security_scopes.scopes:
            if scope not in record.scopes:
                # Counts against nothing, but tells the limits as they stand.
                headers = (
                    rate_limit_headers(store.rate_limits(record))
                    if _rated(record)
                    else {}
                )
                detail = f"API key lacks the scope '{scope}'."
                raise HTTPException(403, detail, headers=headers or None)
        # A request is let through, counted and charged once, by the first
        # dependency that lets it through (a router's, say); another on the
        # same request checks only its scopes.
        passed = request.scope.setdefault("keystore.passed", set())
        if record.id in passed:
            return record
        try:
            if not store.try_spend(record, self.cost):
                await store.spend(record, self.cost)
        except LimitExceeded as exc:
            headers = rate_limit_headers(store.rate_limits(record))
            if exc.retry_after is not None:
                headers["Retry-After"] = str(exc.retry_after)
            raise HTTPException(429, exc.reason, headers=headers) from None
        except KeyRejected as exc:
            raise _unauthorized(exc.reason) from None
        except StoreUnavailable:
            raise unavailable(store.settings.retry_after) from None
        passed.add(record.id)
        if _rated(record):
            # New names, added as they are: FastAPI copies them to the answer.
            response.headers.raw.extend(_raw_headers(store.rate_limits(record)))
        return record

    def document(self, app: FastAPI) -> None:
        """List this dependency's answers (401, 403, 429, 503, the RateLimit
        headers) in ``app``'s OpenAPI document (openapi.py)."""
        openapi.document(app, self.scheme_name)

    def _presented_key(self, request: Request) -> str | None:
        values = request.headers.getlist(self.header)
        if not values and self.query_param:
            values = request.query_params.getlist(self.query_param)
        values = [value.strip() for value in values if value.strip()]
        if len(set(values)) > 1:
            raise _unauthorized("Send one API key, not several.")
        return values[0] if values else None
