"""Rate limits and credits in one process, against the emulator: what a request
gets, what Firestore holds after, and that a lost answer changes nothing."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from keystore import ApiKeyStore, BrokenRow, KeyNotFound, Settings
from keystore.dependency import rate_limit_headers
from keystore.errors import CreditsExhausted, RateLimited, StoreUnavailable
from keystore.limits import parse_rate_limit, parse_refill
from tests.conftest import Timer
from tests.console import edit as console_edit
from tests.interceptors import LoseAnswers, Recorder
from tests.limits.helpers import row, spend, spend_all

pytestmark = pytest.mark.anyio


async def test_credits_are_spent_exactly_and_the_rest_given_back(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=50)
        assert await spend_all(store, made.key, 20) == 20
    found = await row(settings, made.record.id)
    assert found["credits"] == 30  # what was held and not spent came back
    assert found["leases"] == {}
    async with ApiKeyStore(settings) as store:
        assert (await store.limits(made.record.id)).credits == 30
        assert await spend_all(store, made.key, 40) == 30
        with pytest.raises(CreditsExhausted) as refused:
            await spend(store, made.key)
        assert refused.value.retry_after is None  # no refill: no time will tell
        assert store.limiter.refused["credits"] == 11


async def test_a_route_decides_what_a_request_costs(settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=10)
        assert await spend_all(store, made.key, 3, cost=3) == 3
        assert await spend_all(store, made.key, 5, cost=0) == 5  # verify only
        assert await spend_all(store, made.key, 2, cost=3) == 0
        assert await spend_all(store, made.key, 1, cost=1) == 1
        record = await store.verify(made.key)
        await store.spend(record, 0)
        assert record.credits_left == 0  # the route sees what is left
    assert (await row(settings, made.record.id))["credits"] == 0


async def test_a_shared_rate_limit_lets_through_its_limit_per_window(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", rate_limit=parse_rate_limit("30/1m"))
        assert await spend_all(store, made.key, 45) == 30
        with pytest.raises(RateLimited) as refused:
            await spend(store, made.key)
        assert 1 <= (refused.value.retry_after or 0) <= 60
        headers = rate_limit_headers(store.rate_limits(await store.verify(made.key)))
        assert headers["RateLimit-Policy"] == '"key";q=30;w=60'
        assert headers["RateLimit"].startswith('"key";r=0;t=')
        # Leases held: a few Firestore writes, not one per request.
        assert store.writes["limits"] < 15


async def test_a_short_window_is_counted_in_the_process(settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", rate_limit=parse_rate_limit("5/2s"))
        writes = store.writes["limits"]
        accepted = await spend_all(store, made.key, 8)
        assert accepted in (5, 10)  # 10 only if a window ended meanwhile
        assert store.writes["limits"] == writes  # never leased


async def test_refused_by_the_rate_limit_spends_no_credit(settings: Settings) -> None:
    rate = parse_rate_limit("3/1h")
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", rate_limit=rate, credits=10)
        assert await spend_all(store, made.key, 6) == 3
    found = await row(settings, made.record.id)
    assert found["credits"] == 7


async def test_a_refill_replaces_the_balance_once_per_period(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=2, refill=parse_refill("4/day"))
        # The credits set today hold until tomorrow's refill.
        assert await spend_all(store, made.key, 5) == 2
        with pytest.raises(CreditsExhausted) as refused:
            await spend(store, made.key)
        assert 1 <= (refused.value.retry_after or 0) <= 86_400  # till midnight
    # As if the balance was from yesterday: a new day's first lease refills.
    await console_edit(
        settings, made.record.id, credits_set_at=None, refilled_for="2000-01-01"
    )
    async with ApiKeyStore(settings) as store:
        assert await spend_all(store, made.key, 6) == 4
    async with ApiKeyStore(settings) as other:
        # Another process in the same period finds it applied: not again.
        assert await spend_all(other, made.key, 3) == 0
        view = await other.limits(made.record.id)
        assert view.credits == 0
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        assert view.next_refill == today + timedelta(days=1)


async def test_a_lease_whose_answer_is_lost_is_not_applied_twice(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=100)
    # The first lease lands but its answer is lost; the next finds it by its op.
    lose = LoseAnswers(count=1)
    async with ApiKeyStore(settings, interceptors=[lose]) as store:
        with pytest.raises(StoreUnavailable):
            await spend(store, made.key)
        assert lose.lost == 1
        await asyncio.sleep(settings.retry_after + 0.1)
        accepted = await spend_all(store, made.key, 10)
        assert accepted == 10
    found = await row(settings, made.record.id)
    assert found["credits"] == 90


async def test_processes_never_share_out_more_credits_than_there_are(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=60)
    stores = [ApiKeyStore(settings) for _ in range(3)]
    for store in stores:
        await store.open()
    try:

        async def hammer(store: ApiKeyStore) -> int:
            return await spend_all(store, made.key, 40)

        accepted = sum(await asyncio.gather(*(hammer(s) for s in stores)))
        assert accepted <= 60
    finally:
        for store in stores:
            await store.aclose()
    # What a store held when its requests ended went back: nothing lost.
    assert (await row(settings, made.record.id))["credits"] == 60 - accepted


async def test_an_operator_adding_credits_by_hand_takes_effect(
    settings: Settings, timer: Timer
) -> None:
    async with ApiKeyStore(settings, timer=timer) as store:
        made = await store.create(name="n", credits=2)
        assert await spend_all(store, made.key, 4) == 2
        await console_edit(settings, made.record.id, credits=5)
        timer.tick(settings.cache_ttl + 1)  # the row is read again
        assert await spend_all(store, made.key, 8) == 5


async def test_a_limit_of_the_wrong_type_makes_the_row_invalid(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n")
        await console_edit(settings, made.record.id, credits="lots")
        broken = await store.get(made.record.id)
        assert isinstance(broken, BrokenRow) and broken.field == "credits"
        with pytest.raises(KeyNotFound):  # fails closed
            await store.verify(made.key)


async def test_owner_limits_apply_to_all_its_keys(settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        await store.set_owner_limits("acme", credits=5)
        first = await store.create(name="a", owner="acme")
        second = await store.create(name="b", owner="acme", credits=100)
        assert await spend_all(store, first.key, 3) == 3
        assert await spend_all(store, second.key, 5) == 2
        assert [k.id for k in await store.list_keys(owner="acme")] == [
            first.record.id,
            second.record.id,
        ]
    async with ApiKeyStore(settings) as store:
        view = await store.owner_limits("acme")
        assert view is not None and view.credits == 0
        # The key's own credits were spent only by what the owner let through.
        assert (await store.limits(second.record.id)).credits == 98


async def test_recorder_sees_no_firestore_call_while_leases_last(
    settings: Settings,
) -> None:
    recorder = Recorder()
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=1000)
    async with ApiKeyStore(settings, interceptors=recorder.interceptors) as store:
        await spend_all(store, made.key, 5)
        before = len(recorder.calls)
        waits = store.limiter.waits
        await spend_all(store, made.key, 1)
        assert store.limiter.waits == waits
        assert len(recorder.calls) - before <= 2  # at most a top-up, not waited for
