"""An owner's keys and usage (owners.py), against the emulator: a cap on live
keys that holds however many processes create at once, listings that read the
owner's rows only, and usage reports that equal the day documents exactly."""

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore

from keystore import ApiKeyStore, KeyNotFound, Settings, TooManyKeys
from keystore.errors import KeyDisabled, KeyExpired
from keystore.usage import day_name
from tests import console

pytestmark = pytest.mark.anyio

TODAY = datetime.now(UTC).date()


def day_documents(settings: Settings, owner: str) -> list[dict[str, Any]]:
    """Every day document of ``owner`` in the test's collection, as the
    console holds them: a collection-group query with the SDK's own client."""
    client = firestore.Client(project=settings.project)
    query = client.collection_group("usage").where(
        filter=firestore.FieldFilter("owner", "==", owner)
    )
    prefix = f"{settings.collection}/"
    return [
        {**(snapshot.to_dict() or {}), "path": snapshot.reference.path}
        for snapshot in query.stream()
        if snapshot.reference.path.startswith(prefix)
    ]


async def test_the_cap_holds_however_many_processes_create_at_once(
    settings: Settings,
) -> None:
    stores = [ApiKeyStore(settings) for _ in range(3)]
    try:
        attempts = [
            store.create(name=f"k{n}", owner="acme", most_live=4)
            for n in range(5)
            for store in stores
        ]
        results = await asyncio.gather(*attempts, return_exceptions=True)
    finally:
        for store in stores:
            await store.aclose()
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, TooManyKeys)]
    assert (len(made), len(refused)) == (4, 11), results
    async with ApiKeyStore(settings) as store:
        assert len(await store.list_keys(owner="acme")) == 4


async def test_expired_keys_free_their_slot_and_disabled_ones_keep_it(
    store: ApiKeyStore,
) -> None:
    first = await store.create(name="a", owner="acme", most_live=2)
    second = await store.create(name="b", owner="acme", most_live=2)
    with pytest.raises(TooManyKeys):
        await store.create(name="c", owner="acme", most_live=2)
    await store.update(first.record.id, disabled=True)
    with pytest.raises(TooManyKeys):
        await store.create(name="c", owner="acme", most_live=2)
    await store.update(second.record.id, expires_at=datetime.now(UTC))
    await store.create(name="c", owner="acme", most_live=2)
    await store.revoke(first.record.id)
    await store.create(name="d", owner="acme", most_live=2)
    # An operator's key of the owner is not bound by the cap.
    await store.create(name="ops", owner="acme")


async def test_a_rotation_counts_the_old_key_until_it_expires(
    store: ApiKeyStore,
) -> None:
    old = await store.create(name="a", owner="acme", most_live=1)
    with pytest.raises(TooManyKeys):
        await store.rotate(old.record.id, grace=timedelta(hours=1), most_live=1)
    new = await store.rotate(old.record.id, grace=timedelta(0), most_live=1)
    assert not await store.does_api_key_exist(old.key)
    assert await store.does_api_key_exist(new.key)


async def test_an_owner_rotates_and_revokes_its_own_working_keys_only(
    store: ApiKeyStore,
) -> None:
    mine = await store.create(name="a", owner="acme")
    theirs = await store.create(name="b", owner="other")
    unowned = await store.create(name="c")
    for key_id in (theirs.record.id, unowned.record.id, "nosuchkey"):
        with pytest.raises(KeyNotFound) as missing:
            await store.rotate(key_id, grace=timedelta(0), owner="acme")
        assert str(missing.value) == f"No key with id '{key_id}'."
        with pytest.raises(KeyNotFound):
            await store.revoke(key_id, owner="acme")
    assert await store.does_api_key_exist(theirs.key)
    await store.update(mine.record.id, disabled=True)
    with pytest.raises(KeyDisabled):
        await store.rotate(mine.record.id, grace=timedelta(0), owner="acme")
    await store.update(mine.record.id, disabled=False, expires_at=datetime.now(UTC))
    with pytest.raises(KeyExpired):
        await store.rotate(mine.record.id, grace=timedelta(0), owner="acme")
    await store.revoke(mine.record.id, owner="acme")
    with pytest.raises(KeyNotFound):
        await store.get(mine.record.id)


async def test_another_owners_broken_row_is_missing_not_broken(
    store: ApiKeyStore, settings: Settings
) -> None:
    theirs = await store.create(name="b", owner="other")
    await console.edit(settings, theirs.record.id, scopes="not a list")
    with pytest.raises(KeyNotFound):
        await store.rotate(theirs.record.id, grace=timedelta(0), owner="acme")


async def test_listing_an_owner_reads_that_owners_rows_only(
    store: ApiKeyStore,
) -> None:
    for n in range(5):
        await store.create(name=f"other{n}", owner="other")
    await store.create(name="unowned")
    mine = [(await store.create(name=f"a{n}", owner="acme")).record.id for n in "12"]
    before = store.reads["list"]
    rows = await store.list_keys(owner="acme")
    assert [row.id for row in rows] == mine
    assert store.reads["list"] - before == 2
    before = store.reads["list"]
    assert await store.list_keys(owner="nobody") == []
    assert store.reads["list"] - before == 1  # Firestore bills an empty query one


async def test_uses_counted_before_a_revocation_are_billed(
    store: ApiKeyStore, settings: Settings
) -> None:
    made = await store.create(name="a", owner="acme")
    for _ in range(3):
        assert await store.does_api_key_exist(made.key)
    await store.revoke(made.record.id)
    assert await store.flush_usage() == 3
    with pytest.raises(KeyNotFound):
        await store.get(made.record.id)  # no row comes back
    [document] = day_documents(settings, "acme")
    assert (document["count"], document["key_id"]) == (3, made.record.id)


async def test_the_report_equals_the_day_documents_and_keeps_gone_keys(
    store: ApiKeyStore, settings: Settings
) -> None:
    kept = await store.create(name="kept", owner="acme", credits=100)
    revoked = await store.create(name="revoked", owner="acme")
    deleted = await store.create(name="deleted", owner="acme")
    rotated = await store.create(name="rotated", owner="acme")
    theirs = await store.create(name="theirs", owner="other")
    for made, uses in (
        (kept, 4),
        (revoked, 2),
        (deleted, 3),
        (rotated, 1),
        (theirs, 7),
    ):
        for _ in range(uses):
            await store.spend(await store.verify(made.key), 2 if made is kept else 1)
    await store.flush_usage()
    await store.revoke(revoked.record.id)
    # An operator deletes a row in the console: the document, not its usage.
    client = firestore.Client(project=settings.project)
    client.collection(settings.collection).document(deleted.record.id).delete()
    new = await store.rotate(rotated.record.id, grace=timedelta(0))
    await store.spend(await store.verify(new.key))
    await store.flush_usage()
    # Days before, in and after the span, as an earlier month left them.
    for day, count in (("2020-01-31", 50), ("2020-02-01", 5), ("2020-02-29", 6)):
        usage = client.collection(settings.collection).document(kept.record.id)
        usage.collection("usage").document(day).set(
            {
                "day": day,
                "count": count,
                "credits": count,
                "owner": "acme",
                "key_id": kept.record.id,
            }
        )

    report = await store.owner_usage("acme", TODAY, TODAY)
    documents = [
        d for d in day_documents(settings, "acme") if d["day"] == day_name_today()
    ]
    assert report.uses == sum(d["count"] for d in documents) == 4 + 2 + 3 + 1 + 1
    # Only the key with credits of its own is charged (2 a use).
    assert report.credits == sum(d.get("credits", 0) for d in documents) == 8
    assert {line.id: (line.name, line.uses) for line in report.keys} == {
        kept.record.id: ("kept", 4),
        revoked.record.id: (None, 2),
        deleted.record.id: (None, 3),
        rotated.record.id: ("rotated", 1),  # in its grace: expired, still a row
        new.record.id: ("rotated", 1),
    }
    assert [(d.day, d.uses) for d in report.days] == [(day_name_today(), 11)]
    assert report.credits_left is None  # the owner has no credit limit

    february = await store.owner_usage("acme", date(2020, 2, 1), date(2020, 2, 29))
    assert (february.uses, february.credits) == (11, 11)
    assert [d.day for d in february.days] == ["2020-02-01", "2020-02-29"]


def day_name_today() -> str:
    return day_name(int(datetime.now(UTC).timestamp()) // 86_400)


async def test_the_report_shows_the_owners_credits(store: ApiKeyStore) -> None:
    await store.set_owner_limits("acme", credits=500)
    report = await store.owner_usage("acme", TODAY, TODAY)
    assert (report.uses, report.credits_left, report.keys) == (0, 500, [])
    with pytest.raises(ValueError):
        await store.owner_usage("acme", TODAY, TODAY - timedelta(days=1))
    with pytest.raises(ValueError):
        await store.owner_usage("acme", TODAY - timedelta(days=366), TODAY)
