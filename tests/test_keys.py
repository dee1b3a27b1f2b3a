import re

import pytest

from keystore.errors import ConfigError, MalformedKey
from keystore.keys import (
    MAX_KEY_LENGTH,
    check_prefix,
    checksum,
    hash_key,
    key_pattern,
    keys_match,
    new_key,
    new_key_id,
    parse_key_id,
)


def test_new_key_has_the_documented_shape() -> None:
    key = new_key("ks", "AbCdEf012345")
    prefix, key_id, rest = key.split("_")
    assert (prefix, key_id) == ("ks", "AbCdEf012345")
    assert len(rest) == 22 + 6
    assert rest[-6:] == checksum(key[:-6])
    assert re.fullmatch(key_pattern("ks"), key)
    assert len(key) <= MAX_KEY_LENGTH


def test_keys_and_ids_are_random() -> None:
    assert len({new_key("ks") for _ in range(1000)}) == 1000
    assert len({new_key_id() for _ in range(1000)}) == 1000


def test_parse_returns_the_id() -> None:
    key = new_key("acme")
    assert parse_key_id(key, "acme") == key.split("_")[1]


def _flip(key: str, index: int) -> str:
    swapped = "B" if key[index] == "A" else "A"
    return key[:index] + swapped + key[index + 1 :]


GOOD = new_key("ks")


@pytest.mark.parametrize(
    "value",
    [
        "",  # empty
        "ks",  # prefix only
        GOOD[:-1],  # one character short
        GOOD + "A",  # one character long
        _flip(GOOD, 20),  # a typo in the secret: checksum fails
        _flip(GOOD, 5),  # a typo in the id: checksum fails
        _flip(GOOD, len(GOOD) - 1),  # a typo in the checksum itself
        "xx" + GOOD[2:],  # another prefix
        GOOD.replace("_", "-"),  # wrong separators
        GOOD[:10] + "é" + GOOD[11:],  # non-ASCII
        GOOD[:10] + "\x00" + GOOD[11:],  # NUL byte
        "x" * 10_000,  # huge
        f" {GOOD}",  # surrounding space is not part of a key
    ],
)
def test_parse_rejects_what_is_not_a_key(value: str) -> None:
    with pytest.raises(MalformedKey):
        parse_key_id(value, "ks")


def test_random_strings_almost_never_pass_the_checksum() -> None:
    body = "ks_AbCdEf012345_"
    passed = sum(
        checksum(body + f"{i:022d}") == checksum(body + f"{i + 1:022d}")
        for i in range(2000)
    )
    assert passed == 0


def test_hash_is_sha256_hex_and_compare_is_exact() -> None:
    key = new_key("ks")
    digest = hash_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert keys_match(key, digest)
    assert not keys_match(_flip(key, 20), digest)


@pytest.mark.parametrize("prefix", ["", "KS", "1ab", "a_b", "abcdefghijk"])
def test_bad_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        check_prefix(prefix)
