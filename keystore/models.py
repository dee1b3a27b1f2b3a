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
        }


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
    #: (YYYY-MM-DD, count), newest first.
    days: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What ``import_keys`` did with each line."""

    created: list[str]
    existing: list[str]
    rejected: int
