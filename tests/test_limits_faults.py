"""Limits under faults: an outage, lost answers, racing refills, hand edits in
the listen mode, leases gone idle. Exactness holds through all of them."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from keystore import ApiKeyStore, Settings, StoreUnavailable
from keystore.errors import CreditsExhausted
from keystore.limits import parse_refill
from tests.conftest import Emulator, Timer
from tests.interceptors import LoseAnswers
from tests.test_limits import Clock, _row, _spend_all
from tests.test_store import console_edit

pytestmark = pytest.mark.anyio


async def _try(store: ApiKeyStore, key: str) -> str:
    try:
        await store.spend(await store.verify(key))
    except CreditsExhausted:
        return "429"
    except StoreUnavailable:
        return "503"
    return "200"


async def test_an_outage_spends_what_is_held_then_503s_and_recovers_exactly(
    settings: Settings, emulator: Emulator
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=100)
    fast = settings.model_copy(update={"timeout": 0.5, "retry_after": 1})
    async with ApiKeyStore(fast) as store:
        accepted = await _spend_all(store, made.key, 10)
        emulator.pause()
        try:
            answers = [await _try(store, made.key) for _ in range(200)]
        finally:
            emulator.pause(False)
        # What was held was spent; then 503s, never a credit not held.
        assert "503" in answers and "429" not in answers
        held = answers.index("503")
        assert set(answers[held:]) == {"503"}
        accepted += held
        await asyncio.sleep(1.2)  # the pause after the failure ends
        accepted += await _spend_all(store, made.key, 20)
    row = await _row(settings, made.record.id)
    assert row["credits"] == 100 - accepted


async def test_a_give_back_whose_answer_is_lost_still_counts_once(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=100)
    # The leases go through; the give-back at close lands, its answer is lost.
    lose = LoseAnswers(skip=10**9)
    async with ApiKeyStore(settings, interceptors=[lose]) as store:
        assert await _spend_all(store, made.key, 3) == 3
        lose.skip = 0
    assert lose.lost == 1
    assert (await _row(settings, made.record.id))["credits"] == 97


async def test_a_refill_is_applied_once_by_racing_processes(settings: Settings) -> None:
    clock = Clock(datetime(2026, 12, 1, 12, tzinfo=UTC))
    async with ApiKeyStore(settings, clock=clock) as store:
        made = await store.create(name="n", credits=0, refill=parse_refill("30/day"))
    clock.now += timedelta(days=1)
    stores = [ApiKeyStore(settings, clock=clock) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        counts = await asyncio.gather(*(_spend_all(s, made.key, 20) for s in stores))
    finally:
        for store in stores:
            await store.aclose()
    row = await _row(settings, made.record.id)
    # Applied twice, 60 credits would have been there to spend or give back.
    assert sum(counts) + row["credits"] == 30
    assert row["refilled_for"] == "2026-12-02"


async def test_credits_added_by_hand_take_effect_in_about_a_second_when_listening(
    settings: Settings,
) -> None:
    listening = settings.model_copy(update={"sync": "listen"})
    async with ApiKeyStore(listening) as store:
        async with asyncio.timeout(5):
            while not store.is_ready:
                await asyncio.sleep(0.05)
        made = await store.create(name="n", credits=1)
        assert await _spend_all(store, made.key, 3) == 1
        await console_edit(settings, made.record.id, credits=4)
        async with asyncio.timeout(2):
            while await _try(store, made.key) != "200":
                await asyncio.sleep(0.05)
        assert await _spend_all(store, made.key, 5) == 3


async def test_an_idle_lease_goes_back_by_itself(
    settings: Settings, timer: Timer
) -> None:
    quick = settings.model_copy(update={"lease_seconds": 0.1})
    async with ApiKeyStore(quick, timer=timer) as store:
        made = await store.create(name="n", credits=1000)
        timer.tick(1)
        assert await _spend_all(store, made.key, 5) == 5
        timer.tick(1)  # idle for longer than two lease periods
        async with asyncio.timeout(3):
            while (await _row(settings, made.record.id))["credits"] != 995:
                await asyncio.sleep(0.05)
        writes = store.writes["limits"]
        await asyncio.sleep(0.3)
        assert store.writes["limits"] == writes  # idle: no more writes
