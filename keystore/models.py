"""The ApiKey record and the reading of Firestore rows into it.

Operators edit rows by hand in the Firestore console, so every field is checked
here: a row in a shape keystore cannot read raises InvalidRow and its key fails
closed.
"""

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keystore.errors import InvalidRow
from keystore.limits import (
    MAX_AMOUNT,
    REFILL_INTERVALS,
    RateLimit,
    Refill,
)

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
    #: counts what processes hold; a route handler sees this process's estimate.
    credits: int | None = None
    refill: Refill | None = None
    #: True if any limit (the key's or its owner's) can apply: read per request.
    has_limits: bool = field(default=False, init=False, repr=False, compare=False)
    #: keystore's own: this process's allowances of the key and its owner
    #: (limiter.py), bound to the record on its first limited request.
    allowances: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limited = (
            self.owner is not None
            or self.rate_limit is not None
            or self.credits is not None
            or self.refill is not None
        )
        object.__setattr__(self, "has_limits", limited)

    @property
    def has_credit_limit(self) -> bool:
        return self.credits is not None or self.refill is not None

    @property
    def credits_left(self) -> int | None:
        """Credits left, as this process knows them now (None: no credit limit).

        The row's figure until the key's first limited request here; then what
        the last lease found, less what this process spent since."""
        for allowance in self.allowances or ():
            if allowance.name == "key" and allowance.has_credits:
                return max(0, int(allowance.credits_left))
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
        **_informational(row),
        **parse_limits(key_id, row),
    )


def is_document_id(key_id: str) -> bool:
    """True if Firestore takes ``key_id`` as a document id. It answers the others
    (``__x__``, ``..``) InvalidArgument, which would be taken for an outage."""
    try:
        size = len(key_id.encode())
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return (
        0 < size <= 1500
        and "/" not in key_id
        and key_id not in (".", "..")
        and not re.fullmatch(r"__.*__", key_id, re.DOTALL)
    )


def _int(key_id: str, row: Mapping[str, Any], name: str, low: int) -> int | None:
    value = row.get(name)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= MAX_AMOUNT:
        raise InvalidRow(
            key_id, name, f"expected an integer from {low} to {MAX_AMOUNT}"
        )
    return value


def parse_limits(key_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The limits of a key row or an owner document; InvalidRow if unreadable."""
    limit = _int(key_id, row, "rate_limit", 1)
    window = _int(key_id, row, "rate_window_seconds", 1)
    if (limit is None) != (window is None):
        raise InvalidRow(
            key_id, "rate_limit", "set both rate_limit and rate_window_seconds"
        )
    amount = _int(key_id, row, "refill_amount", 0)
    interval = row.get("refill_interval")
    if (amount is None) != (interval is None):
        raise InvalidRow(
            key_id, "refill_amount", "set both refill_amount and refill_interval"
        )
    if interval is not None and interval not in REFILL_INTERVALS:
        raise InvalidRow(key_id, "refill_interval", "expected 'day' or 'month'")
    owner = row.get("owner")
    if owner is not None and (not isinstance(owner, str) or not is_document_id(owner)):
        raise InvalidRow(
            key_id, "owner", "expected a string usable as a Firestore document id"
        )
    try:
        rate = RateLimit(limit, window) if limit and window else None
    except ValueError as exc:
        raise InvalidRow(key_id, "rate_window_seconds", str(exc)) from None
    credits = _int(key_id, row, "credits", 0)
    if credits is not None:
        credits += held_credits(row.get("leases"))
    return {
        "owner": owner,
        "rate_limit": rate,
        "credits": credits,
        "refill": Refill(amount, interval) if amount is not None else None,  # type: ignore[arg-type]
    }


def held_credits(leases: Any) -> int:
    """Credits the processes hold under their leases (a hand-broken map: 0)."""
    if not isinstance(leases, Mapping):
        return 0
    return sum(
        entry["credits"]
        for entry in leases.values()
        if isinstance(entry, Mapping) and type(entry.get("credits")) is int
    )


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
