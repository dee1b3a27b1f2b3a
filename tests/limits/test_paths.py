"""The less travelled paths of limits: per-process windows, owners without a
document or with a broken one, a key revoked under a lease, credits per day in
the usage counts, stale leases renewed, a give-back that cannot reach Firestore."""

import asyncio
import logging

import pytest

from keystore import ApiKeyStore, BrokenRow, KeyNotFound, Settings, StoreUnavailable
from keystore.dependency import rate_limit_headers
from keystore.errors import RateLimited
from keystore.limits import parse_rate_limit
from tests import console
from tests.conftest import Emulator
from tests.console import edit as console_edit
from tests.limits.helpers import row, spend, spend_all

pytestmark = pytest.mark.anyio


async def test_a_short_window_refuses_past_its_limit_in_each_process(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", rate_limit=parse_rate_limit("3/1d"))
        # 1d is shared; a short one is counted here alone:
        short = await store.create(name="s", rate_limit=parse_rate_limit("2/5s"))
        record = await store.verify(short.key)
        await store.spend(record)
        await store.spend(record)
        with pytest.raises(RateLimited) as refused:
            await store.spend(record)
        assert 1 <= (refused.value.retry_after or 0) <= 5
        headers = rate_limit_headers(store.rate_limits(record))
        assert headers["RateLimit"].startswith('"key";r=0;')
        assert await spend_all(store, made.key, 4) == 3


async def test_a_key_and_its_owner_each_have_their_rate_limit_item(
    settings: Settings,
) -> None:
    owners = settings.model_copy(
        update={"owners_collection": f"o_{settings.collection}"}
    )
    async with ApiKeyStore(owners) as store:
        await store.set_owner_limits("acme", rate_limit=parse_rate_limit("50/1m"))
        made = await store.create(
            name="n", owner="acme", rate_limit=parse_rate_limit("10/1m")
        )
        record = await store.verify(made.key)
        await store.spend(record)
        headers = rate_limit_headers(store.rate_limits(record))
        assert headers["RateLimit-Policy"] == '"key";q=10;w=60, "owner";q=50;w=60'
        key_item, owner_item = headers["RateLimit"].split(", ")
        assert key_item.startswith('"key";r=9;t=')
        assert owner_item.startswith('"owner";r=49;t=')


async def test_an_owner_without_a_document_has_no_limits(settings: Settings) -> None:
    owners = settings.model_copy(
        update={"owners_collection": f"o_{settings.collection}"}
    )
    async with ApiKeyStore(owners) as store:
        made = await store.create(name="n", owner="nobody")
        assert await spend_all(store, made.key, 5) == 5
        assert await store.owner_limits("nobody") is None
        assert rate_limit_headers(store.rate_limits(await store.verify(made.key))) == {}


async def test_a_broken_owner_document_fails_closed_with_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    owners = settings.model_copy(
        update={"owners_collection": f"o_{settings.collection}"}
    )
    async with ApiKeyStore(owners) as store:
        await store.set_owner_limits("acme", credits=5)
        await console.edit(  # an operator, by hand
            settings, "acme", collection=owners.owners_collection, credits="many"
        )
        made = await store.create(name="n", owner="acme")
        record = await store.verify(made.key)
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                with pytest.raises(StoreUnavailable):
                    await store.spend(record)
        warnings = [r for r in caplog.records if "credits" in r.getMessage()]
        assert len(warnings) == 1


async def test_a_key_revoked_while_its_lease_runs_out_is_refused(
    settings: Settings,
) -> None:
    # Refused "out of credits" from memory for at most the recheck time
    # (min(cache TTL, 5 s)); then the next lease finds the row gone.
    quick = settings.model_copy(update={"cache_ttl": 0.2})
    async with ApiKeyStore(quick) as store:
        made = await store.create(name="n", credits=1)
        record = await store.verify(made.key)
        await store.spend(record)
        async with ApiKeyStore(settings) as other:
            await other.revoke(made.record.id)
        await asyncio.sleep(0.3)
        reads = store.reads["limits"]
        for _ in range(3):
            with pytest.raises(KeyNotFound):
                await store.spend(record)
        assert store.reads["limits"] == reads + 1  # gone: not read again


async def test_credits_spent_are_counted_per_day(settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=100)
        for cost in (1, 5, 0):
            await store.spend(await store.verify(made.key), cost)
        assert await store.flush_usage() == 3
        usage = await store.usage(made.record.id)
        assert [(count, credits) for _, count, credits in usage.days] == [(3, 6)]


async def test_a_lease_held_long_is_renewed_before_it_expires(
    settings: Settings,
) -> None:
    quick = settings.model_copy(update={"lease_expiry": 0.6, "lease_seconds": 30})
    async with ApiKeyStore(quick) as store:
        made = await store.create(name="n", credits=1000)
        assert await spend_all(store, made.key, 2) == 2
        writes = store.writes["limits"]
        async with asyncio.timeout(3):
            while store.writes["limits"] == writes:  # the sweeper renews it
                await asyncio.sleep(0.05)
        found = await row(settings, made.record.id)
        assert list(found["leases"].values())[0]["credits"] > 0


async def test_a_give_back_in_an_outage_is_logged_and_strands_the_lease(
    settings: Settings, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=100)
    fast = settings.model_copy(update={"timeout": 0.5, "shutdown_seconds": 1})
    store = ApiKeyStore(fast)
    await store.open()
    assert await spend_all(store, made.key, 2) == 2
    emulator.pause()
    try:
        with caplog.at_level(logging.WARNING):
            await store.aclose()
    finally:
        emulator.pause(False)
    assert any("could not be given back" in r.getMessage() for r in caplog.records)


async def test_an_owner_that_is_not_a_document_id_is_refused(
    settings: Settings,
) -> None:
    # Firestore answers such ids InvalidArgument: taken for an outage, every
    # request would get 503. They never reach it.
    async with ApiKeyStore(settings) as store:
        for owner in ("..", "__x__", "a/b"):
            with pytest.raises(ValueError):
                await store.create(name="n", owner=owner)
            with pytest.raises(ValueError):
                await store.set_owner_limits(owner, credits=1)
        made = await store.create(name="n")
        await console_edit(settings, made.record.id, owner="__x__")
        broken = await store.get(made.record.id)
        assert isinstance(broken, BrokenRow) and broken.field == "owner"


async def test_a_broken_owner_document_is_read_once_per_pause(
    settings: Settings,
) -> None:
    owners = settings.model_copy(
        update={"owners_collection": f"o_{settings.collection}", "retry_after": 30}
    )
    await console.add(
        settings,
        "acme",
        {"rate_limit": "100", "rate_window_seconds": 60},
        collection=owners.owners_collection,
    )
    async with ApiKeyStore(owners) as a:
        made = await a.create(name="n", owner="acme")
        reads = a.reads["limits"]
        for _ in range(50):
            with pytest.raises(StoreUnavailable):
                await spend(a, made.key)
        assert a.reads["limits"] - reads == 1


async def test_idle_allowances_are_given_back_and_dropped(settings: Settings) -> None:
    quick = settings.model_copy(update={"lease_seconds": 0.1})
    async with ApiKeyStore(quick) as a:
        made = [await a.create(name=f"k{i}", credits=100) for i in range(5)]
        for key in made:
            assert await spend_all(a, key.key, 2) == 2
        assert len(a.limiter) == 5
        async with asyncio.timeout(3):
            while len(a.limiter):  # the sweeper: given back, then dropped
                await asyncio.sleep(0.05)
        reads, writes = a.reads["limits"], a.writes["limits"]
        await asyncio.sleep(0.5)  # several sweeps: nothing left to read or write
        assert (a.reads["limits"], a.writes["limits"]) == (reads, writes)
    for key in made:
        found = await row(settings, key.record.id)
        assert (found["credits"], found["leases"]) == (98, {})
