from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keystore.errors import InvalidRow
from keystore.models import ApiKey, NewKey, parse_row

HASH = "a" * 64
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_minimal_row_gets_defaults() -> None:
    assert parse_row("id1", {"hash": HASH}) == ApiKey(id="id1", hash=HASH)


def test_full_row_round_trips() -> None:
    record = ApiKey(
        id="id1",
        name="n",
        scopes=("a", "b"),
        disabled=True,
        expires_at=NOW,
        created_at=NOW,
        hash=HASH,
    )
    assert parse_row("id1", record.to_row()) == record


def test_upper_case_hash_is_accepted() -> None:
    assert parse_row("id1", {"hash": HASH.upper()}).hash == HASH


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({}, "hash"),  # hash missing
        ({"hash": 123}, "hash"),  # hash a number
        ({"hash": "abc"}, "hash"),  # hash too short
        ({"hash": HASH, "name": 5}, "name"),  # name a number
        ({"hash": HASH, "scopes": "admin"}, "scopes"),  # scopes a string
        ({"hash": HASH, "scopes": ["a", 1]}, "scopes"),  # a scope a number
        ({"hash": HASH, "disabled": "true"}, "disabled"),  # console string "true"
        ({"hash": HASH, "disabled": 1}, "disabled"),  # number instead of boolean
        ({"hash": HASH, "expires_at": "2030-01-01"}, "expires_at"),  # string date
        ({"hash": HASH, "created_at": 5}, "created_at"),  # number date
    ],
)
def test_wrong_shapes_raise_naming_the_field(row: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRow) as caught:
        parse_row("id1", row)
    assert caught.value.field == field
    assert caught.value.key_id == "id1"
    assert "id1" in str(caught.value) and field in str(caught.value)


def test_expiry_and_scopes() -> None:
    record = ApiKey(id="x", scopes=("a", "b"), expires_at=NOW)
    assert record.is_expired(NOW)
    assert not record.is_expired(NOW - timedelta(seconds=1))
    assert not ApiKey(id="x").is_expired(NOW)
    assert record.has_scopes(["a"]) and record.has_scopes(["a", "b"])
    assert not record.has_scopes(["c"])


def test_reprs_hold_no_secret_or_hash() -> None:
    made = NewKey(record=ApiKey(id="x", hash=HASH), key="ks_secret")
    assert HASH not in repr(made) and "ks_secret" not in repr(made)
