"""The admin API: manage keys over HTTP, under ``/admin/keys``.

Every route needs a key with the scope ``admin``. A caller can only hand out
scopes it holds itself, so an admin key cannot mint a key stronger than its own.
Responses never carry a hash; a plaintext key appears only in the answers to
create and rotate. Each action logs one line naming the actor and the target.
"""

import logging
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Response, Security
from pydantic import BaseModel, ConfigDict, Field

from keystore.dependency import ApiKeyAuth, unavailable
from keystore.errors import InvalidRow, KeyNotFound, StoreUnavailable
from keystore.models import ApiKey, BrokenRow, NewKey
from keystore.store import ApiKeyStore, get_store

logger = logging.getLogger(__name__)

ADMIN_SCOPE = "admin"

T = TypeVar("T")

Name = Annotated[str, Field(min_length=1, max_length=200)]
Scope = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")]
Scopes = Annotated[list[Scope], Field(max_length=50)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyCreate(_Body):
    name: Name
    scopes: Scopes = []
    expires_at: datetime | None = None


class KeyUpdate(_Body):
    name: Name | None = None
    scopes: Scopes | None = None
    disabled: bool | None = None
    #: null removes the expiry; leaving the field out keeps it.
    expires_at: datetime | None = None


class KeyRotate(_Body):
    #: How long the old key keeps working, seconds (default one day).
    grace_seconds: int = Field(default=86_400, ge=0, le=90 * 86_400)
    expires_at: datetime | None = None


class KeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    disabled: bool
    expires_at: datetime | None
    created_at: datetime | None
    usage_count: int
    last_used_at: datetime | None
    rotated_from: str | None
    rotated_to: str | None

    @classmethod
    def of(cls, record: ApiKey) -> "KeyOut":
        return cls(
            id=record.id,
            name=record.name,
            scopes=list(record.scopes),
            disabled=record.disabled,
            expires_at=record.expires_at,
            created_at=record.created_at,
            usage_count=record.usage_count,
            last_used_at=record.last_used_at,
            rotated_from=record.rotated_from,
            rotated_to=record.rotated_to,
        )


class BrokenKeyOut(BaseModel):
    id: str
    broken_field: str
    problem: str


class KeyCreated(KeyOut):
    #: The plaintext key, shown this once.
    key: str

    @classmethod
    def made(cls, made: NewKey) -> "KeyCreated":
        return cls(**KeyOut.of(made.record).model_dump(), key=made.key)


class DayUsage(BaseModel):
    day: str
    count: int


class UsageOut(BaseModel):
    id: str
    total: int
    last_used_at: datetime | None
    days: list[DayUsage]


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


async def _store() -> ApiKeyStore:
    return get_store()


def build_admin_router(
    auth: ApiKeyAuth, *, include_in_schema: bool = True
) -> APIRouter:
    """The /admin/keys routes, guarded by ``auth`` with the scope ``admin``."""
    Admin = Annotated[ApiKey, Security(auth, scopes=[ADMIN_SCOPE])]
    Store = Annotated[ApiKeyStore, Depends(_store)]
    router = APIRouter(
        prefix="/admin/keys",
        tags=["admin"],
        include_in_schema=include_in_schema,
        responses={
            401: {"description": "Missing or invalid API key"},
            403: {"description": "The key lacks a scope"},
            503: {"description": "Firestore unavailable"},
        },
    )

    @router.post("", status_code=201)
    async def create_key(body: KeyCreate, actor: Admin, store: Store) -> KeyCreated:
        """Make a key; the response holds the plaintext key, shown this once."""
        _require_held(actor, body.scopes)
        made = await store.create(
            name=body.name, scopes=body.scopes, expires_at=body.expires_at
        )
        _audit("create", actor, made.record.id)
        return KeyCreated.made(made)

    @router.get("")
    async def list_keys(
        actor: Admin,
        store: Store,
        disabled: bool = False,
        expired: bool = False,
        scope: str | None = None,
    ) -> list[KeyOut | BrokenKeyOut]:
        """Every key (never a key or a hash); filters keep the matching keys only."""
        rows = await store.list_keys(disabled=disabled, expired=expired, scope=scope)
        _audit("list", actor, "*")
        return [_out(row) for row in rows]

    @router.get("/{key_id}")
    async def get_key(key_id: str, actor: Admin, store: Store) -> KeyOut | BrokenKeyOut:
        """One key by id."""
        row = await _found(store.get(key_id))
        _audit("get", actor, key_id)
        return _out(row)

    @router.patch("/{key_id}")
    async def update_key(
        key_id: str, body: KeyUpdate, actor: Admin, store: Store
    ) -> KeyOut:
        """Change name, scopes, disabled or expires_at; fields left out stay."""
        changes = body.model_dump(exclude_unset=True)
        if changes.get("scopes") is not None:
            _require_held(actor, changes["scopes"])
        for field in ("name", "scopes", "disabled"):
            if field in changes and changes[field] is None:
                raise HTTPException(422, f"Field '{field}' cannot be null.")
        record = await _found(store.update(key_id, **changes))
        _audit("update", actor, key_id)
        return KeyOut.of(record)

    @router.delete("/{key_id}", status_code=204)
    async def delete_key(key_id: str, actor: Admin, store: Store) -> Response:
        """Revoke a key: its row is deleted."""
        await _found(store.revoke(key_id))
        _audit("delete", actor, key_id)
        return Response(status_code=204)

    @router.post("/{key_id}/rotate", status_code=201)
    async def rotate_key(
        key_id: str, actor: Admin, store: Store, body: KeyRotate | None = None
    ) -> KeyCreated:
        """A new key with the same name and scopes; the old one expires after the
        grace period."""
        body = body or KeyRotate()
        old = await _found(store.get(key_id))
        if isinstance(old, ApiKey):
            # Rotating hands the caller a key with the target's scopes.
            _require_held(actor, old.scopes)
        made = await _found(
            store.rotate(
                key_id,
                grace=timedelta(seconds=body.grace_seconds),
                expires_at=body.expires_at,
            )
        )
        _audit("rotate", actor, key_id)
        return KeyCreated.made(made)

    @router.get("/{key_id}/usage")
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
            days=[DayUsage(day=day, count=count) for day, count in usage.days],
        )

    return router


async def _found(pending: Awaitable[T]) -> T:
    try:
        return await pending
    except KeyNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except InvalidRow as exc:
        raise HTTPException(409, f"{exc} Fix the row first.") from None
    except StoreUnavailable:
        raise unavailable(get_store().settings.retry_after) from None
