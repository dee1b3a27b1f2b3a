"""What the limits tests share: spending through a store, reading a row as an
operator would, and a wall clock that moves only when told to."""

from datetime import datetime
from typing import Any

from keystore import ApiKeyStore, Settings
from keystore.errors import CreditsExhausted, RateLimited
from keystore.limits.allowance import Allowance
from tests import console


class Clock:
    """A wall clock that moves only when told to. Limits take no time from
    it (only Firestore's counts): tests give processes clocks that disagree."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def spend(store: ApiKeyStore, key: str, cost: int = 1) -> None:
    """One request of ``key``, as the dependency lets it through."""
    record = await store.verify(key)
    if not store.try_spend(record, cost):
        await store.spend(record, cost)


async def spend_all(store: ApiKeyStore, key: str, n: int, cost: int = 1) -> int:
    """Spend up to ``n`` requests; the number let through."""
    accepted = 0
    for _ in range(n):
        try:
            await spend(store, key, cost)
        except (CreditsExhausted, RateLimited):
            continue
        accepted += 1
    return accepted


async def row(
    settings: Settings, key_id: str, *, owner: bool = False
) -> dict[str, Any]:
    """A key row (or an owner document) as the console shows it."""
    collection = settings.owners_collection if owner else settings.collection
    fields = await console.read(settings, key_id, collection=collection)
    assert fields is not None, f"no document {collection}/{key_id}"
    return fields


def allowance(store: ApiKeyStore, key_id: str) -> Allowance:
    """What ``store``'s process holds of a key's row."""
    return store.limiter._allowances[store.settings.collection, key_id]
