"""Self-service: customers create, rotate and revoke their own keys, and see
their usage, under ``/keys`` and ``/usage``.

keystore does not decide how customers sign in: the app passes ``owner``, a
FastAPI dependency that returns the signed-in customer's owner id (and
answers 401 itself when no one is). Every route acts on that owner's keys
only: another owner's key id is answered 404, exactly as an id that does not
exist. A policy (``SelfServicePolicy``, or the ``KEYSTORE_SELF_SERVICE_*``
settings) bounds what a customer may do; customers set no limits, so the
owner's shared limits bound every key they make.
"""

import logging
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError

from keystore.dependency import unavailable
from keystore.errors import (
    InvalidRow,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    StoreUnavailable,
    TooManyKeys,
)
from keystore.manage import check_owner
from keystore.models import ApiKey, BrokenRow
from keystore.openapi import UNREADABLE_BODY, refusal
from keystore.policy import PolicyRefusal, SelfServicePolicy, Throttle, Throttled
from keystore.reports import DAY_PATTERN, OwnerUsage, span, this_month
from keystore.schemas import (
    BrokenKeyOut,
    KeyCreated,
    KeyOut,
    SelfKeyCreate,
    SelfKeyRotate,
)
from keystore.store import get_store
from keystore.times import utcnow

logger = logging.getLogger(__name__)

T = TypeVar("T")


_RETRY_AFTER = {"Retry-After": {"required": True, "schema": {"type": "integer"}}}
# Every answer beside 2xx and FastAPI's 422, on every route: the owner
# dependency's 401, 403 for an id that cannot own keys (and the policy's
# refusals), the throttle's 429 and the store's 503.
_ALWAYS = (
    refusal(
        401,
        "No customer is signed in (the app's `owner` dependency).",
        {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    )
    | refusal(
        403,
        "Refused: a scope customers may not grant, a lifetime longer than the "
        "service allows, a disabled or expired key to rotate, or an account "
        "that cannot own keys.",
    )
    | refusal(
        429,
        "Too many self-service requests; retry after `Retry-After`.",
        _RETRY_AFTER,
    )
    | refusal(
        503,
        "The key store cannot answer now; retry after `Retry-After`.",
        _RETRY_AFTER,
    )
)
_MISSING = refusal(404, "The caller has no key with this id.")
_CAP = refusal(409, "At the cap on live keys per owner (or a row needs an operator).")
_BROKEN_OWNER = refusal(
    409, "The owner's document has a limit keystore cannot read: an operator's."
)


class _Rules:
    """The router's policy, from settings on first use if the app set none,
    and its throttle."""

    def __init__(self, policy: SelfServicePolicy | None) -> None:
        self._policy = policy
        self._throttle: Throttle | None = None

    @property
    def policy(self) -> SelfServicePolicy:
        if self._policy is None:
            self._policy = SelfServicePolicy.from_settings(get_store().settings)
        return self._policy

    def throttle(self, owner: str) -> None:
        if self._throttle is None:
            self._throttle = Throttle(self.policy.rate_limit)
        try:
            self._throttle(owner)
        except Throttled as exc:
            raise HTTPException(
                429, str(exc), headers={"Retry-After": str(exc.retry_after)}
            ) from None


def build_self_service_router(
    owner: Callable[..., Any],
    *,
    policy: SelfServicePolicy | None = None,
    prefix: str = "",
    tags: list[str] | None = None,
    include_in_schema: bool = True,
) -> APIRouter:
    """The self-service routes; ``owner``: a FastAPI dependency that returns
    the signed-in customer's owner id. ``policy``: from settings if None."""
    router = APIRouter(
        prefix=prefix,
        tags=list(tags or ["self-service"]),
        include_in_schema=include_in_schema,
        responses=_ALWAYS,
    )
    rules = _Rules(policy)

    async def caller(who: Annotated[str, Depends(owner)]) -> str:
        try:
            check_owner(who)
        except ValueError:
            # The app's dependency gave an id that cannot name an owner.
            raise HTTPException(403, "This account cannot own keys.") from None
        rules.throttle(who)
        return who

    Owner = Annotated[str, Depends(caller)]

    @router.get("/keys")
    async def list_keys(who: Owner) -> list[KeyOut | BrokenKeyOut]:
        """Your keys, oldest first (never a key or its hash)."""
        rows = await _found(get_store().list_keys(owner=who))
        _audit("list", who, "*")
        return [_out(row) for row in rows]

    @router.post("/keys", status_code=201, responses=UNREADABLE_BODY | _CAP)
    async def create_key(body: SelfKeyCreate, who: Owner) -> KeyCreated:
        """Make a key of yours; the response holds the key, shown this once."""
        policy = rules.policy
        try:
            policy.check_scopes(body.scopes)
            expires_at = policy.expiry(body.expires_at, utcnow())
        except PolicyRefusal as exc:
            raise HTTPException(403, str(exc)) from None
        except ValueError as exc:
            raise _invalid(str(exc), "body", "expires_at") from None
        made = await _found(
            get_store().create(
                name=body.name,
                scopes=body.scopes,
                expires_at=expires_at,
                owner=who,
                most_live=policy.max_keys,
            )
        )
        _audit("create", who, made.record.id)
        return KeyCreated.made(made)

    @router.post(
        "/keys/{key_id}/rotate",
        status_code=201,
        responses=UNREADABLE_BODY | _MISSING | _CAP,
    )
    async def rotate_key(
        key_id: str, who: Owner, body: SelfKeyRotate | None = None
    ) -> KeyCreated:
        """A new key with the same name, scopes and limits, expiring no later
        than the old one; the old one keeps working for ``grace_seconds``,
        then expires."""
        policy = rules.policy
        try:
            made = await _found(
                get_store().rotate(
                    key_id,
                    grace=timedelta(seconds=(body or SelfKeyRotate()).grace_seconds),
                    most_live=policy.max_keys,
                    owner=who,
                    terms=lambda old: policy.renewal(old, utcnow()),
                )
            )
        except PolicyRefusal as exc:
            raise HTTPException(403, str(exc)) from None
        _audit("rotate", who, key_id)
        return KeyCreated.made(made)

    @router.delete("/keys/{key_id}", status_code=204, responses=_MISSING)
    async def revoke_key(key_id: str, who: Owner) -> Response:
        """Revoke a key of yours at once; its uses stay on your usage."""
        await _found(get_store().revoke(key_id, owner=who))
        _audit("revoke", who, key_id)
        return Response(status_code=204)

    @router.get("/usage", responses=_BROKEN_OWNER)
    async def usage(
        who: Owner,
        first: Annotated[str | None, Query(alias="from", pattern=DAY_PATTERN)] = None,
        last: Annotated[str | None, Query(alias="to", pattern=DAY_PATTERN)] = None,
    ) -> OwnerUsage:
        """Your uses and credits spent per UTC day, per key and in all, from
        ``from`` to ``to`` (inclusive; by default from the first of ``to``'s
        month, to today), keys revoked since included; and your credits left."""
        try:
            end = _day(last) or this_month()[1]
            days = (_day(first) or end.replace(day=1), end)
            span(*days)  # ValueError: more than a report covers
        except ValueError as exc:
            raise _invalid(str(exc), "query", _culprit(first, last)) from None
        report = await _found(get_store().owner_usage(who, *days))
        _audit("usage", who, "*")
        return report

    return router


def _culprit(first: str | None, last: str | None) -> str:
    """Which of the usage span's parameters an invalid span is blamed on."""
    if last is None:
        return "from"
    try:
        date.fromisoformat(last)
    except ValueError:
        return "to"
    return "from" if first else "to"


def _day(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


def _invalid(message: str, *where: str) -> RequestValidationError:
    # FastAPI answers it as its own 422s, so that clients read one shape.
    return RequestValidationError(
        [{"type": "value_error", "loc": where, "msg": message}]
    )


def _out(row: ApiKey | BrokenRow) -> KeyOut | BrokenKeyOut:
    if isinstance(row, BrokenRow):
        return BrokenKeyOut(id=row.id, broken_field=row.field, problem=row.problem)
    return KeyOut.of(row)


def _audit(action: str, owner: str, target: str) -> None:
    logger.info(
        "self-service %s: owner=%s target=%s",
        action,
        owner,
        target,
        extra={
            "self_service_action": action,
            "owner": owner,
            "target_key_id": target,
        },
    )


async def _found(pending: Awaitable[T]) -> T:
    """The store's answer; its refusals as 403, 404, 409 and 503."""
    try:
        return await pending
    except KeyNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except KeyDisabled:
        raise HTTPException(
            403, "This key is disabled; it cannot be rotated."
        ) from None
    except KeyExpired:
        raise HTTPException(403, "This key has expired; make a new one.") from None
    except TooManyKeys as exc:
        raise HTTPException(409, str(exc)) from None
    except InvalidRow as exc:
        raise HTTPException(409, f"{exc} An operator must fix it.") from None
    except StoreUnavailable:
        raise unavailable(get_store().settings.retry_after) from None
