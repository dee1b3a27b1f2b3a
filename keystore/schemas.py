"""The HTTP API's request and response bodies (admin and self-service), and
the types of their fields.

Bodies take what their schema says and nothing else (strict): an RFC 3339
timestamp with an offset, JSON numbers, ``true``/``false``; limits written as
on the command line, each with its grammar as a JSON Schema pattern.
"""

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from keystore.limits import MAX_AMOUNT, parse_rate_limit, parse_refill
from keystore.models import ApiKey, NewKey


def _whole(value: object) -> object:
    # JSON has one kind of number: 6260.0 is an integer to JSON Schema. The
    # bodies are strict otherwise, so "6260" and true stay refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Printable: a name reaches operators' terminals and customers' pages.
Name = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Scope = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")]
Scopes = Annotated[list[Scope], Field(max_length=50)]
#: A Firestore document id: no '/', not '.' or '..', not '__...__' (written
#: without look-ahead, which JSON Schema's patterns may not have).
OWNER_PATTERN = (
    r"^(?:[^/.]|[^/.][^/]|\.[^/.]|[^/]{3}|[^/_][^/]{3,}|_[^/_][^/]{2,}"
    r"|[^/]{3,}[^/_]|[^/]{2,}[^/_]_)$"
)
Owner = Annotated[str, Field(min_length=1, max_length=200, pattern=OWNER_PATTERN)]
Credits = Annotated[int, Field(ge=0, le=MAX_AMOUNT), BeforeValidator(_whole)]
#: Seconds the old key keeps working after a rotation: up to 90 days.
GraceSeconds = Annotated[int, Field(ge=0, le=90 * 86_400), BeforeValidator(_whole)]

# 1 to MAX_AMOUNT (10**12), and 0 to it.
_COUNT = r"(?:[1-9][0-9]{0,11}|1000000000000)"
_AMOUNT = r"(?:0|[1-9][0-9]{0,11}|1000000000000)"
# A window of 1 second to 7 days, in one unit; no number means one of it.
_WINDOW = (
    r"(?:(?:[1-9][0-9]{0,4}|[1-5][0-9]{5}|60[0-3][0-9]{3}|604[0-7][0-9]{2}|604800)?s"
    r"|(?:[1-9][0-9]{0,3}|100[0-7][0-9]|10080)?m"
    r"|(?:[1-9][0-9]?|1[0-5][0-9]|16[0-8])?h"
    r"|[1-7]?d)"
)
RATE_LIMIT_PATTERN = rf"^{_COUNT}/{_WINDOW}$"
REFILL_PATTERN = rf"^{_AMOUNT}/(?:day|month)$"


def _rate(text: str) -> str:
    parse_rate_limit(text)  # the pattern admits nothing it refuses; a guard
    return text


def _refill(text: str) -> str:
    parse_refill(text)
    return text


RateLimitText = Annotated[
    str,
    Field(
        pattern=RATE_LIMIT_PATTERN,
        examples=["100/1m"],
        description="N/PERIOD: N of 1 to 10^12, a period of 1s to 7d (10s, 1m, 1h, 1d)",
    ),
    AfterValidator(_rate),
]
RefillText = Annotated[
    str,
    Field(
        pattern=REFILL_PATTERN,
        examples=["10000/month"],
        description="N/day or N/month, N from 0 to 10^12",
    ),
    AfterValidator(_refill),
]

# RFC 3339 section 5.6 (T and Z in either case), with an offset: a naive time
# would be read in the server's zone. Years 2000 to 2999 keep every offset's
# instant within what Python and Firestore hold; an expiry needs no others.
_RFC3339 = re.compile(
    r"2[0-9]{3}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _timestamp(value: object) -> datetime:
    # Before pydantic's own parsing, which also takes numbers as Unix times,
    # "1700000000" likewise, dates alone and naive times.
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError(
            "must be an RFC 3339 timestamp with an offset, in the years 2000 to "
            "2999, like 2027-01-31T12:00:00Z"
        )
    return datetime.fromisoformat(value.upper())  # ValueError: no such day, hour


Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": "^2[0-9]{3}-",
            "description": "RFC 3339 with an offset, years 2000 to 2999",
            "examples": ["2027-01-31T12:00:00Z"],
        }
    ),
]


class StrictBody(BaseModel):
    # Strict: no "5" for a number, no 1 for true; what the schema says, only.
    model_config = ConfigDict(extra="forbid", strict=True)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _kept() -> Any:
    """Optional, but never null: a field left out stays as it is."""
    return Field(default=None, json_schema_extra=_no_default)


class KeyCreate(StrictBody):
    name: Name
    scopes: Scopes = []
    expires_at: Timestamp | None = None
    owner: Owner | None = None
    rate_limit: RateLimitText | None = None
    #: Credits left now; with a refill, the balance until the next one.
    credits: Credits | None = None
    refill: RefillText | None = None


class KeyUpdate(StrictBody):
    name: Name | SkipJsonSchema[None] = _kept()
    scopes: Scopes | SkipJsonSchema[None] = _kept()
    disabled: bool | SkipJsonSchema[None] = _kept()
    #: null removes the expiry (or the owner, or a limit); left out, it stays.
    expires_at: Timestamp | None = None
    owner: Owner | None = None
    rate_limit: RateLimitText | None = None
    credits: Credits | None = None
    refill: RefillText | None = None

    @field_validator("name", "scopes", "disabled", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave it out to keep it")
        return value


class KeyRotate(StrictBody):
    #: How long the old key keeps working, seconds (default one day).
    grace_seconds: GraceSeconds = 86_400
    expires_at: Timestamp | None = None


class SelfKeyCreate(StrictBody):
    name: Name
    #: Of the scopes the service lets customers grant; none by default.
    scopes: Scopes = []
    #: Default: the service's default lifetime from now, if it sets one.
    expires_at: Timestamp | None = None


class SelfKeyRotate(StrictBody):
    #: How long the old key keeps working, seconds (default one day); it
    #: counts toward the cap on live keys until then.
    grace_seconds: GraceSeconds = 86_400


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
    owner: str | None
    rate_limit: str | None
    #: Credits left (as the row holds them: processes' leases included).
    credits: int | None
    refill: str | None

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
            owner=record.owner,
            rate_limit=str(record.rate_limit) if record.rate_limit else None,
            credits=record.credits,
            refill=str(record.refill) if record.refill else None,
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
    credits: int


class UsageOut(BaseModel):
    id: str
    total: int
    last_used_at: datetime | None
    days: list[DayUsage]
