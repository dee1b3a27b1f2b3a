"""The admin API: manage keys over HTTP, under ``/admin/keys``; owners' usage
for billing under ``/admin/owners/{owner}/usage``.

Every route needs a key with the scope ``admin``. A caller can only hand out
scopes it holds itself, and no more than its limits hold (grants.py), so an
admin key cannot mint a key stronger than its own.
Responses never carry a hash; a plaintext key appears only in the answers to
create and rotate. Each action logs one line naming the actor and the target.
"""

import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, Security

from keystore.dependency import ApiKeyAuth, unavailable
from keystore.errors import (
    InsufficientCredits,
    InvalidRow,
    KeyNotFound,
    StoreUnavailable,
)
from keystore.grants import Grantor, Refusal, check_create, check_rotate, check_update
from keystore.limits import parse_rate_limit, parse_refill
from keystore.models import ApiKey, BrokenRow
from keystore.openapi import UNREADABLE_BODY, refusal
from keystore.reports import MONTH_PATTERN, OwnerUsage, month_span
from keystore.schemas import (
    OWNER_PATTERN,
    BrokenKeyOut,
    DayUsage,
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyRotate,
    KeyUpdate,
    UsageOut,
)
from keystore.store import ApiKeyStore, get_store

logger = logging.getLogger(__name__)

ADMIN_SCOPE = "admin"

T = TypeVar("T")

#: The limit fields, as the admin API takes them.
LIMIT_FIELDS = ("rate_limit", "credits", "refill")


def _out(row: ApiKey | BrokenRow) -> KeyOut | BrokenKeyOut:
    if isinstance(row, BrokenRow):
        return BrokenKeyOut(id=row.id, broken_field=row.field, problem=row.problem)
    return KeyOut.of(row)


def _require_held(actor: ApiKey, scopes: list[str] | tuple[str, ...]) -> None:
    missing = sorted(set(scopes) - set(actor.scopes))
    if missing:
        raise HTTPException(
            403, f"Cannot grant the scope '{missing[0]}': the calling key lacks it."
        )


def _parsed_limits(changes: dict[str, object]) -> dict[str, object]:
    """The limit fields of a body, parsed: ``100/1m`` to a RateLimit."""
    limits: dict[str, object] = {}
    for name in LIMIT_FIELDS:
        if name in changes:
            value = changes[name]
            if name == "rate_limit" and isinstance(value, str):
                value = parse_rate_limit(value)
            elif name == "refill" and isinstance(value, str):
                value = parse_refill(value)
            limits[name] = value
    return limits


async def _grantor(store: ApiKeyStore, actor: ApiKey) -> Grantor:
    """The caller and what bounds it (its owner's credits: one read)."""
    owner_has_credits = False
    if actor.owner is not None:
        view = await _found(store.owner_limits(actor.owner))
        owner_has_credits = view is not None and view.credits is not None
    return Grantor(actor, owner_has_credits=owner_has_credits)


def _refused(refusal: Refusal) -> HTTPException:
    return HTTPException(403, str(refusal))


def _audit(action: str, actor: ApiKey, target: str) -> None:
    logger.info(
        "admin %s: actor=%s target=%s",
        action,
        actor.id,
        target,
        extra={
            "admin_action": action,
            "actor_key_id": actor.id,
            "target_key_id": target,
        },
    )


# What the routes answer beside the dependency's refusals and FastAPI's 422,
# each on the routes that can give it.
_GRANTING = refusal(
    403, "The calling key lacks the scope `admin`, or a scope or limit it would grant."
)
_MISSING = refusal(404, "No key with this id.")
_BROKEN = refusal(409, "The key's row has a field keystore cannot read; fix it first.")
_BROKEN_OWNER = refusal(
    409, "The owner's document has a limit keystore cannot read; fix it first."
)


async def _store() -> ApiKeyStore:
    return get_store()


def build_admin_router(
    auth: ApiKeyAuth, *, include_in_schema: bool = True
) -> APIRouter:
    """The /admin/keys routes, guarded by ``auth`` with the scope ``admin``."""
    Admin = Annotated[ApiKey, Security(auth, scopes=[ADMIN_SCOPE])]
    Store = Annotated[ApiKeyStore, Depends(_store)]
    # 401, 403, 429 and 503 are the dependency's: ApiKeyAuth.document(app).
    router = APIRouter(
        prefix="/admin", tags=["admin"], include_in_schema=include_in_schema
    )

    @router.post("/keys", status_code=201, responses=UNREADABLE_BODY | _GRANTING)
    async def create_key(body: KeyCreate, actor: Admin, store: Store) -> KeyCreated:
        """Make a key; the response holds the plaintext key, shown this once."""
        _require_held(actor, body.scopes)
        limits = _parsed_limits(body.model_dump())
        grantor = await _grantor(store, actor)
        try:
            owner = check_create(grantor, body.owner, limits)
        except Refusal as refusal:
            raise _refused(refusal) from None
        made = await _found(
            store.create(
                name=body.name,
                scopes=body.scopes,
                expires_at=body.expires_at,
                owner=owner,
                funded_by=actor if grantor.pays_credits else None,
                **limits,  # type: ignore[arg-type]
            )
        )
        _audit("create", actor, made.record.id)
        return KeyCreated.made(made)

    @router.get("/keys")
    async def list_keys(
        actor: Admin,
        store: Store,
        disabled: bool = False,
        expired: bool = False,
        scope: str | None = None,
    ) -> list[KeyOut | BrokenKeyOut]:
        """Every key (never a key or a hash); filters keep the matching keys only."""
        listing = store.list_keys(disabled=disabled, expired=expired, scope=scope)
        rows = await _found(listing)
        _audit("list", actor, "*")
        return [_out(row) for row in rows]

    @router.get("/keys/{key_id}", responses=_MISSING)
    async def get_key(key_id: str, actor: Admin, store: Store) -> KeyOut | BrokenKeyOut:
        """One key by id."""
        row = await _found(store.get(key_id))
        _audit("get", actor, key_id)
        return _out(row)

    @router.patch(
        "/keys/{key_id}", responses=UNREADABLE_BODY | _GRANTING | _MISSING | _BROKEN
    )
    async def update_key(
        key_id: str, body: KeyUpdate, actor: Admin, store: Store
    ) -> KeyOut:
        """Change name, scopes, disabled, expires_at, owner or limits; fields
        left out stay."""
        changes = body.model_dump(exclude_unset=True)
        if changes.get("scopes") is not None:
            _require_held(actor, changes["scopes"])
        limits = _parsed_limits(changes)
        for name in LIMIT_FIELDS:
            changes.pop(name, None)
        if actor.has_limits:
            target = await _found(store.get(key_id))
            if isinstance(target, ApiKey):
                try:
                    check_update(await _grantor(store, actor), target, changes, limits)
                except Refusal as refusal:
                    raise _refused(refusal) from None
        record = await _found(store.update(key_id, limits=limits, **changes))
        _audit("update", actor, key_id)
        return KeyOut.of(record)

    @router.delete("/keys/{key_id}", status_code=204, responses=_MISSING)
    async def delete_key(key_id: str, actor: Admin, store: Store) -> Response:
        """Revoke a key: its row is deleted."""
        await _found(store.revoke(key_id))
        _audit("delete", actor, key_id)
        return Response(status_code=204)

    @router.post(
        "/keys/{key_id}/rotate",
        status_code=201,
        responses=UNREADABLE_BODY | _GRANTING | _MISSING | _BROKEN,
    )
    async def rotate_key(
        key_id: str, actor: Admin, store: Store, body: KeyRotate | None = None
    ) -> KeyCreated:
        """A new key with the same name and scopes; the old one expires after the
        grace period."""
        body = body or KeyRotate()
        old = await _found(store.get(key_id))
        if isinstance(old, ApiKey):
            # Rotating hands the caller a key with the target's scopes, and
            # its limits: only one it could have made.
            _require_held(actor, old.scopes)
            try:
                check_rotate(await _grantor(store, actor), old)
            except Refusal as refusal:
                raise _refused(refusal) from None
        made = await _found(
            store.rotate(
                key_id,
                grace=timedelta(seconds=body.grace_seconds),
                expires_at=body.expires_at,
            )
        )
        _audit("rotate", actor, key_id)
        return KeyCreated.made(made)

    @router.get("/keys/{key_id}/usage", responses=_MISSING)
    async def key_usage(
        key_id: str,
        actor: Admin,
        store: Store,
        days: Annotated[int, Query(ge=1, le=366)] = 30,
    ) -> UsageOut:
        """Total uses, last use, and uses per day (UTC), newest first."""
        usage = await _found(store.usage(key_id, days=days))
        _audit("usage", actor, key_id)
        return UsageOut(
            id=usage.key_id,
            total=usage.total,
            last_used_at=usage.last_used_at,
            days=[
                DayUsage(day=day, count=count, credits=credits)
                for day, count, credits in usage.days
            ],
        )

    @router.get("/owners/{owner}/usage", responses=_BROKEN_OWNER)
    async def owner_usage(
        owner: Annotated[str, Path(max_length=200, pattern=OWNER_PATTERN)],
        month: Annotated[str, Query(pattern=MONTH_PATTERN)],
        actor: Admin,
        store: Store,
    ) -> OwnerUsage:
        """An owner's uses and credits per UTC day and key in ``month``
        (YYYY-MM), keys revoked since included: one invoice line."""
        report = await _found(store.owner_usage(owner, *month_span(month)))
        _audit("owner usage", actor, owner)
        return report

    return router


async def _found(pending: Awaitable[T]) -> T:
    """The store's answer; its refusals as 404, 409 and 503."""
    try:
        return await pending
    except KeyNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidRow as exc:
        raise HTTPException(409, f"{exc} Fix the row first.") from None
    except InsufficientCredits as exc:
        raise HTTPException(403, f"Cannot grant {exc.wanted} credits: {exc}") from None
    except StoreUnavailable:
        raise unavailable(get_store().settings.retry_after) from None
