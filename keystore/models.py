"""The ApiKey record and the reading of Firestore rows into it.

Operators edit rows by hand in the Firestore console, so every field is checked
here: a row in a shape keystore cannot read raises InvalidRow and its key fails
closed.
"""

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keystore.errors import InvalidRow
from keystore.keys import is_document_id
from keystore.limits.document import read_doc
from keystore.limits.values import RateLimit, Refill

if TYPE_CHECKING:
    from keystore.limits.allowance import Allowance

logger = logging.getLogger(__name__)

_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key's row: everything about the key except the key itself."""

    id: str
    name: str = ""
    scopes: tuple[str, ...] = ()
    disabled: bool = False
    expires_at: datetime | None = None
    created_at: datetime | None = None
    #: SHA-256 of the key, hex. Kept out of repr so that it does not end in logs.
    hash: str = field(default="", repr=False)
    # Written by keystore for people to read; they never decide a check.
    usage_count: int = 0
    last_used_at: datetime | None = None
    rotated_from: str | None = None
    rotated_to: str | None = None
    #: Whose key this is; an owner's limits apply to all its keys (``api_owners``).
    owner: str | None = None
    rate_limit: RateLimit | None = None
    #: Credits left, None for no credit limit. As read from the row, this
    #: counts what processes held at their last leases; a route handler sees
    #: this process's estimate in ``credits_left``.
    credits: int | None = None
    refill: Refill | None = None
    #: The key was rotated: its limits live in this key's row now.
    limits_in: str | None = None
    # The row's credit state, as keystore's leases see it: its epoch, and
    # whether an operator set ``credits`` by hand since keystore wrote it.
    credits_epoch: int = field(default=0, repr=False)
    credits_edited: bool = field(default=False, repr=False)
    #: True if the key's own row holds limits.
    has_own_limits: bool = field(default=False, init=False, repr=False, compare=False)
    #: True if any limit (the key's or its owner's) can apply: read per request.
    has_limits: bool = field(default=False, init=False, repr=False, compare=False)
    #: keystore's own: this process's allowances of the key and its owner
    #: (limits/limiter.py), bound to the record on its first limited request.
    allowances: "tuple[Allowance, ...] | None" = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        own = (
            self.rate_limit is not None
            or self.credits is not None
            or self.refill is not None
            or self.limits_in is not None
        )
        object.__setattr__(self, "has_own_limits", own)
        object.__setattr__(self, "has_limits", own or self.owner is not None)

    @property
    def has_credit_limit(self) -> bool:
        return self.credits is not None or self.refill is not None

    @property
    def credits_left(self) -> int | None:
        """Credits left, as this process knows them now (None: no credit limit).

        The row's figure until the key's first limited request here; then what
        the last lease found, less what this process spent since."""
        for allowance in self.allowances or ():
            if allowance.name == "key" and allowance.credits_left is not None:
                return max(0, allowance.credits_left) if allowance.has_credits else None
        return self.credits

    def is_expired(self, now: datetime) -> bool:
        """True once ``expires_at`` has passed."""
        return self.expires_at is not None and self.expires_at <= now

    def has_scopes(self, scopes: Collection[str]) -> bool:
        """True if the key holds every one of ``scopes``."""
        return all(scope in self.scopes for scope in scopes)

    def to_row(self) -> dict[str, Any]:
        """The Firestore document for this key."""
        return {
            "hash": self.hash,
            "name": self.name,
            "scopes": list(self.scopes),
            "disabled": self.disabled,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "usage_count": self.usage_count,
            "last_used_at": self.last_used_at,
            "rotated_from": self.rotated_from,
            "rotated_to": self.rotated_to,
            **limit_fields(self),
        }


def limit_fields(record: "ApiKey") -> dict[str, Any]:
    """The limit fields of a row (key or owner) as Firestore holds them."""
    rate, refill = record.rate_limit, record.refill
    fields: dict[str, Any] = {"owner": record.owner, "credits": record.credits}
    if rate is not None:
        fields["rate_limit"] = rate.limit
        fields["rate_window_seconds"] = rate.window_seconds
    if refill is not None:
        fields["refill_amount"] = refill.amount
        fields["refill_interval"] = refill.interval
    return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True, slots=True)
class BrokenRow:
    """A row that keystore cannot read, as listed for an operator to fix."""

    id: str
    field: str
    problem: str


def _typed(
    key_id: str, row: Mapping[str, Any], name: str, kind: type, default: Any
) -> Any:
    value = row.get(name, default)
    if value is default or isinstance(value, kind):
        return value
    raise InvalidRow(
        key_id, name, f"expected {kind.__name__}, got {type(value).__name__}"
    )


def parse_row(key_id: str, row: Mapping[str, Any]) -> ApiKey:
    """Read a Firestore document into an ApiKey, or raise InvalidRow."""
    stored_hash = row.get("hash")
    if not isinstance(stored_hash, str) or not _HASH.fullmatch(stored_hash.lower()):
        raise InvalidRow(key_id, "hash", "expected 64 hex characters (SHA-256)")
    scopes = _typed(key_id, row, "scopes", list, None) or []
    if not all(isinstance(scope, str) for scope in scopes):
        raise InvalidRow(key_id, "scopes", "expected an array of strings")
    # bool is checked exactly: the console's "true" string must not pass as True.
    disabled = row.get("disabled")
    if disabled is not None and type(disabled) is not bool:
        raise InvalidRow(
            key_id, "disabled", f"expected boolean, got {type(disabled).__name__}"
        )
    return ApiKey(
        id=key_id,
        name=_typed(key_id, row, "name", str, None) or "",
        scopes=tuple(scopes),
        disabled=bool(disabled),
        expires_at=_typed(key_id, row, "expires_at", datetime, None),
        created_at=_typed(key_id, row, "created_at", datetime, None),
        hash=stored_hash.lower(),
        owner=_owner(key_id, row),
        **_informational(row),
        **_limits(key_id, row),
    )


def _owner(key_id: str, row: Mapping[str, Any]) -> str | None:
    owner = row.get("owner")
    if owner is not None and (not isinstance(owner, str) or not is_document_id(owner)):
        raise InvalidRow(
            key_id, "owner", "expected a string usable as a Firestore document id"
        )
    return owner


def _limits(key_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The limits of a key row, and the state of its credits; InvalidRow if
    the limits cannot be read."""
    doc = read_doc(key_id, row)
    return {
        "rate_limit": doc.rate_limit,
        "refill": doc.refill,
        "credits": doc.credits_held_left if doc.has_credits else None,
        "limits_in": doc.limits_in,
        "credits_epoch": doc.epoch,
        "credits_edited": doc.is_edited,
    }


def _informational(row: Mapping[str, Any]) -> dict[str, Any]:
    # A hand-edited usage field must not lock a key out: wrong types read as unset.
    count = row.get("usage_count")
    last_used = row.get("last_used_at")
    return {
        "usage_count": count if type(count) is int else 0,
        "last_used_at": last_used if isinstance(last_used, datetime) else None,
        "rotated_from": _text_or_none(row.get("rotated_from")),
        "rotated_to": _text_or_none(row.get("rotated_to")),
    }


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: its record, and the plaintext key, shown this once."""

    record: ApiKey
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Usage:
    """A key's use as recorded in Firestore."""

    key_id: str
    total: int
    last_used_at: datetime | None
    #: (YYYY-MM-DD, uses, credits spent), newest first.
    days: list[tuple[str, int, int]]


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What ``import_keys`` did with each line."""

    created: list[str]
    existing: list[str]
    rejected: int


def read_row(key_id: str, row: Mapping[str, Any]) -> "ApiKey | BrokenRow":
    """A row as a record, or as a broken row for an operator to fix."""
    try:
        return parse_row(key_id, row)
    except InvalidRow as exc:
        return BrokenRow(id=exc.key_id, field=exc.field, problem=exc.problem)


def check_row(key_id: str, row: Mapping[str, Any] | None) -> ApiKey | None:
    """A row as checks use it: None if there is none, or if it cannot be read
    (refused, with one warning naming the key and the field)."""
    if row is None:
        return None
    try:
        return parse_row(key_id, row)
    except InvalidRow as exc:
        logger.warning("%s The key is refused until the row is fixed.", exc)
        return None


def oldest_first(rows: Iterable[ApiKey | BrokenRow]) -> list[ApiKey | BrokenRow]:
    """``rows`` by creation time, then id (rows without a time first)."""
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(
        rows, key=lambda row: (getattr(row, "created_at", None) or epoch, row.id)
    )
