"""What a caller with limits may hand out: never more than it holds.

A key with limits (its own, or its owner's) that manages keys is bounded by
them, in total, across any number of creates, edits and rotations:

- **Owner.** A caller with an owner makes keys of that owner only, and
  changes no key's owner but to it (its own least of all): the owner's
  limits, shared by all its keys, bound everything it makes.
- **Rate.** A caller with a rate limit of its own gives a key no rate limit
  faster than its own, and none removed.
- **Credits.** A caller with credits of its own pays for every key's credits
  with them (moved, in the commit that makes the key): no key without
  credits, no refill (a refill would hand out credits every period), no
  credits set afterwards. Where its owner's document limits credits, the
  owner's pool bounds every key it makes, and keys' own credits only bound
  them further.
- **Rotation** moves a key's limits to the new key whole, so it hands out
  nothing; a caller rotates only keys it could have made.

Each refusal is a ``Refusal``: the admin API answers it 403.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keystore.limits.values import RateLimit
from keystore.models import ApiKey


class Refusal(Exception):
    """The caller may not hand this out; the message says why."""


@dataclass(frozen=True, slots=True)
class Grantor:
    """A caller, and what bounds it."""

    key: ApiKey
    #: Its owner's document limits credits: that pool bounds its keys.
    owner_has_credits: bool = False

    @property
    def is_limited(self) -> bool:
        return self.key.has_limits

    @property
    def pays_credits(self) -> bool:
        """True if keys' credits come out of the caller's own."""
        return self.key.has_credit_limit and not self.owner_has_credits


def check_create(
    grantor: Grantor, owner: str | None, limits: Mapping[str, Any]
) -> str | None:
    """The owner a new key gets (the caller's, if it has one); Refusal if
    the caller may not give it ``owner`` or ``limits``."""
    key = grantor.key
    if not grantor.is_limited:
        return owner
    if key.owner is not None:
        if owner is not None and owner != key.owner:
            raise Refusal(
                f"Cannot give a key the owner '{owner}': the calling key's "
                f"keys are its owner's."
            )
        owner = key.owner
    _check_rate(key, limits, new=True)
    if grantor.pays_credits:
        if limits.get("credits") is None:
            raise Refusal(
                "Cannot grant a key without credits: the calling key pays "
                "for each key's credits with its own."
            )
        if limits.get("refill") is not None:
            raise Refusal(
                "Cannot grant a refill: the calling key has credits of its "
                "own; give credits instead."
            )
    return owner


def check_update(
    grantor: Grantor,
    target: ApiKey,
    changes: Mapping[str, Any],
    limits: Mapping[str, Any],
) -> None:
    """Refusal if the caller may not make these changes to ``target``."""
    key = grantor.key
    if not grantor.is_limited:
        return
    if "owner" in changes:
        if target.id == key.id:
            raise Refusal("Cannot change the calling key's own owner.")
        if key.owner is not None and changes["owner"] != key.owner:
            raise Refusal(
                f"Cannot give a key the owner '{changes['owner']}': the "
                "calling key's keys are its owner's."
            )
    _check_rate(key, limits, new=False)
    if grantor.pays_credits and ("credits" in limits or "refill" in limits):
        raise Refusal(
            "Cannot set credits or a refill: the calling key hands out "
            "credits only as it creates a key, paying with its own."
        )
    if grantor.owner_has_credits and ("credits" in limits or "refill" in limits):
        if target.owner != key.owner:
            raise Refusal("Cannot set credits of a key of another owner.")


def check_rotate(grantor: Grantor, target: ApiKey) -> None:
    """Refusal unless the caller could have made ``target`` itself."""
    key = grantor.key
    if not grantor.is_limited:
        return
    if key.owner is not None and target.owner != key.owner:
        raise Refusal("Cannot rotate a key of another owner.")
    if target.limits_in is None:
        limits = {"rate_limit": target.rate_limit}
        _check_rate(key, limits, new=True)
        if grantor.pays_credits and not target.has_credit_limit:
            raise Refusal(
                "Cannot rotate a key without credits: the calling key "
                "has credits of its own."
            )


def _check_rate(key: ApiKey, limits: Mapping[str, Any], *, new: bool) -> None:
    own = key.rate_limit
    if own is None or not (new or "rate_limit" in limits):
        return
    rate = limits.get("rate_limit")
    if not isinstance(rate, RateLimit):
        raise Refusal(
            "Cannot grant a key without a rate limit: the calling key has one."
        )
    if rate.per_second > own.per_second:
        raise Refusal(
            f"Cannot grant the rate limit {rate}: faster than the calling key's {own}."
        )
