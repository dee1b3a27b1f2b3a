"""The API key format: making, parsing, hashing. Pure functions, no I/O.

A key reads ``<prefix>_<id>_<secret><checksum>``, for example
``ks_3xT9aQ2mK7pL_V1b2N3m4Q5w6E7r8T9y0U1iAbC9dE``:

* ``prefix``: names the issuer, so secret scanners and people can tell the key apart;
* ``id``: 12 base62 characters, the Firestore document id; not secret, safe to log;
* ``secret``: 22 base62 characters from :mod:`secrets` (131 bits);
* ``checksum``: CRC32 of everything before it, 6 base62 characters, so that a typo
  or random garbage is rejected without asking Firestore.
"""

import hashlib
import re
import secrets
import zlib
from functools import lru_cache
from hashlib import sha256
from hmac import compare_digest

from keystore.errors import ConfigError, MalformedKey

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 12
SECRET_LENGTH = 22
CHECKSUM_LENGTH = 6
PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9]{0,9}")
# Longest prefix plus the fixed parts: anything longer is rejected before the regex.
MAX_KEY_LENGTH = 10 + 2 + ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is usable in a key, else raise ConfigError."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ConfigError(
            f"Key prefix '{prefix}' is invalid: use 1 to 10 lowercase letters or "
            "digits, starting with a letter."
        )
    return prefix


def key_pattern(prefix: str) -> str:
    """The regular expression that matches this prefix's keys (for secret scanners)."""
    body = CHECKSUM_LENGTH + SECRET_LENGTH
    return rf"\b{re.escape(prefix)}_[0-9A-Za-z]{{{ID_LENGTH}}}_[0-9A-Za-z]{{{body}}}\b"


@lru_cache(maxsize=8)
def _compiled(prefix: str) -> re.Pattern[str]:
    return re.compile(
        rf"{re.escape(prefix)}_([0-9A-Za-z]{{{ID_LENGTH}}})_"
        rf"[0-9A-Za-z]{{{SECRET_LENGTH}}}([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
    )


# Base62 digit pairs: three table look-ups instead of six divisions, since the
# checksum is computed on every check.
_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]


def checksum(body: str) -> str:
    """CRC32 of ``body`` as 6 base62 characters."""
    high, low = divmod(zlib.crc32(body.encode()), 3844)
    high, middle = divmod(high, 3844)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]


def _random(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_key_id() -> str:
    """A fresh key id: random, url-safe, usable as a Firestore document id."""
    return _random(ID_LENGTH)


def new_key(prefix: str, key_id: str | None = None) -> str:
    """A fresh plaintext key with the given prefix (and id, if given)."""
    body = f"{check_prefix(prefix)}_{key_id or new_key_id()}_{_random(SECRET_LENGTH)}"
    return body + checksum(body)


def id_position(prefix: str) -> tuple[int, slice]:
    """The length of this prefix's keys, and where in them the id sits.

    A first look that costs next to nothing; it proves nothing about the key.
    """
    start = len(prefix) + 1
    return start + ID_LENGTH + 1 + SECRET_LENGTH + CHECKSUM_LENGTH, slice(
        start, start + ID_LENGTH
    )


def parse_key_id(key: str, prefix: str) -> str:
    """Return the key's id, or raise MalformedKey if ``key`` is not of the format.

    Costs no I/O: a typo or garbage fails the checksum here.
    """
    if len(key) > MAX_KEY_LENGTH:
        raise MalformedKey()
    match = _compiled(prefix).fullmatch(key)
    if match is None or checksum(key[:-CHECKSUM_LENGTH]) != match[2]:
        raise MalformedKey()
    return match[1]


def hash_key(key: str) -> str:
    """SHA-256 of the key, hex: the only form of a key that is ever stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def keys_match(key: str, stored_hash: str) -> bool:
    """Compare a presented key with a stored hash in constant time."""
    # hash_key written out: this runs on every check.
    return compare_digest(sha256(key.encode()).hexdigest(), stored_hash)


_IMPORTABLE = re.compile(r"[\x21-\x7e]{16,256}")


def is_importable(key: str) -> bool:
    """True for a key of another format that ``keystore import`` accepts:
    16 to 256 printable ASCII characters, no spaces."""
    return _IMPORTABLE.fullmatch(key) is not None


def imported_key_id(key: str) -> str:
    """The document id of an imported key: derived from the key, so that importing
    it again finds the same row. Separate from the stored hash by a label."""
    return hashlib.sha256(b"keystore-import:" + key.encode()).hexdigest()[:ID_LENGTH]


def is_document_id(name: str) -> bool:
    """True if Firestore takes ``name`` as a document id. It answers the others
    (``__x__``, ``..``) InvalidArgument, which would be taken for an outage."""
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return (
        0 < size <= 1500
        and "/" not in name
        and name not in (".", "..")
        and not re.fullmatch(r"__.*__", name, re.DOTALL)
    )
