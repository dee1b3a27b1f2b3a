"""Limits under faults: an outage, lost answers, racing refills, hand edits in
the listen mode, leases gone idle. Exactness holds through all of them."""

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from keystore import ApiKeyStore, Settings, StoreUnavailable
from keystore.errors import CreditsExhausted
from keystore.limits import parse_rate_limit, parse_refill
from tests.conftest import Emulator, Timer
from tests.console import edit as console_edit
from tests.interceptors import Hold, LoseAnswers, Refuse
from tests.limits.helpers import allowance, row, spend, spend_all

pytestmark = pytest.mark.anyio


async def _try(store: ApiKeyStore, key: str) -> str:
    try:
        await spend(store, key)
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
        accepted = await spend_all(store, made.key, 10)
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
        accepted += await spend_all(store, made.key, 20)
    found = await row(settings, made.record.id)
    assert found["credits"] == 100 - accepted


async def test_a_give_back_whose_answer_is_lost_still_counts_once(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=100)
    # The leases go through; the give-back at close lands, its answer is lost.
    lose = LoseAnswers(skip=10**9)
    async with ApiKeyStore(settings, interceptors=[lose]) as store:
        assert await spend_all(store, made.key, 3) == 3
        lose.skip = 0
    assert lose.lost == 1
    assert (await row(settings, made.record.id))["credits"] == 97


async def test_a_refill_is_applied_once_by_racing_processes(settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n", credits=0, refill=parse_refill("30/day"))
    await console_edit(  # as if the balance was set yesterday: a refill is due
        settings, made.record.id, credits_set_at=None, refilled_for="2000-01-01"
    )
    stores = [ApiKeyStore(settings) for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        counts = await asyncio.gather(*(spend_all(s, made.key, 20) for s in stores))
    finally:
        for store in stores:
            await store.aclose()
    found = await row(settings, made.record.id)
    # Applied twice, 60 credits would have been there to spend or give back.
    assert sum(counts) + found["credits"] == 30
    assert found["refilled_for"] == datetime.now(UTC).strftime("%Y-%m-%d")


async def test_credits_added_by_hand_take_effect_in_about_a_second_when_listening(
    settings: Settings,
) -> None:
    listening = settings.model_copy(update={"sync": "listen"})
    async with ApiKeyStore(listening) as store:
        async with asyncio.timeout(5):
            while not store.is_ready:
                await asyncio.sleep(0.05)
        made = await store.create(name="n", credits=1)
        assert await spend_all(store, made.key, 3) == 1
        await console_edit(settings, made.record.id, credits=4)
        async with asyncio.timeout(2):
            while await _try(store, made.key) != "200":
                await asyncio.sleep(0.05)
        assert await spend_all(store, made.key, 5) == 3


async def test_an_idle_lease_goes_back_by_itself(
    settings: Settings, timer: Timer
) -> None:
    quick = settings.model_copy(update={"lease_seconds": 0.1})
    async with ApiKeyStore(quick, timer=timer) as store:
        made = await store.create(name="n", credits=1000)
        timer.tick(1)
        assert await spend_all(store, made.key, 5) == 5
        timer.tick(1)  # idle for longer than two lease periods
        async with asyncio.timeout(3):
            while (await row(settings, made.record.id))["credits"] != 995:
                await asyncio.sleep(0.05)
        writes = store.writes["limits"]
        await asyncio.sleep(0.3)
        assert store.writes["limits"] == writes  # idle: no more writes


async def test_a_give_back_whose_answer_is_lost_is_not_spent_again(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=100)
    lose = LoseAnswers(skip=10**9)
    a, b = ApiKeyStore(settings, interceptors=[lose]), ApiKeyStore(settings)
    await a.open()
    await b.open()
    try:
        accepted = await spend_all(a, made.key, 10)
        lose.skip, lose.count = 0, 1
        await a.limiter.sweeper.give_back()  # the idle sweeper's give-back; answer lost
        assert lose.lost == 1
        accepted += await spend_all(b, made.key, 200)  # takes what came back
        await asyncio.sleep(settings.retry_after + 0.1)
        accepted += await spend_all(a, made.key, 200)  # a spends it no more
    finally:
        await a.aclose()
        await b.aclose()
    assert accepted + (await row(settings, made.record.id))["credits"] == 100


async def test_a_request_during_a_give_back_waits_for_it(settings: Settings) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=100)
    hold = Hold(delay=0.3)
    a, b = ApiKeyStore(settings, interceptors=[hold]), ApiKeyStore(settings)
    await a.open()
    await b.open()
    try:
        accepted = await spend_all(a, made.key, 10)
        record = await a.verify(made.key)
        hold.armed = True
        giving = asyncio.ensure_future(a.limiter.sweeper.give_back())
        await hold.started.wait()  # its commit is on the way
        during = sum(a.try_spend(record) for _ in range(5))
        await giving
        hold.armed = False
        accepted += during + await spend_all(b, made.key, 200)
    finally:
        await a.aclose()
        await b.aclose()
    assert during == 0  # nothing spent from what is being given back
    assert accepted + (await row(settings, made.record.id))["credits"] == 100


async def test_a_lost_grant_is_not_forgotten_when_the_next_commit_fails(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=100)
    lose = LoseAnswers(count=1)  # op 1 lands, its answer is lost
    refuse = Refuse(code=grpc.StatusCode.UNAVAILABLE)
    async with ApiKeyStore(settings, interceptors=[lose, refuse]) as a:
        with pytest.raises(StoreUnavailable):
            await spend(a, made.key)
        await asyncio.sleep(settings.retry_after + 0.1)
        refuse.count = 1  # op 2 reads, finds op 1, and its commit fails
        with pytest.raises(StoreUnavailable):
            await spend(a, made.key)
        await asyncio.sleep(settings.retry_after + 0.1)
        accepted = await spend_all(a, made.key, 200)
    assert accepted == 100
    assert (await row(settings, made.record.id))["credits"] == 0


async def test_a_first_lease_whose_answer_was_lost_is_given_back_at_shutdown(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=100)
    lose = LoseAnswers(count=1)
    async with ApiKeyStore(settings, interceptors=[lose]) as a:
        with pytest.raises(StoreUnavailable):
            await spend(a, made.key)
        assert lose.lost == 1
    found = await row(settings, made.record.id)
    assert (found["credits"], found["leases"]) == (100, {})


async def test_aborted_commits_are_tried_again_never_a_500(settings: Settings) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=100)
    refuse = Refuse(code=grpc.StatusCode.ABORTED, count=1)
    async with ApiKeyStore(settings, interceptors=[refuse]) as a:
        assert await spend_all(a, made.key, 3) == 3  # tried again: no error
        assert refuse.refused == 1
        refuse.count = 2  # and at shutdown: the give-back is tried again
    assert refuse.refused == 3
    found = await row(settings, made.record.id)
    assert (found["credits"], found["leases"]) == (97, {})


async def test_a_lease_stranded_while_its_holder_had_no_cpu_is_never_spent(
    settings: Settings,
) -> None:
    short = settings.model_copy(update={"lease_expiry": 3.0, "lease_seconds": 0.5})
    async with ApiKeyStore(short) as admin:
        made = await admin.create(name="n", credits=1000)
    a, b = ApiKeyStore(short), ApiKeyStore(short)
    await a.open()
    await b.open()
    try:
        accepted = await spend_all(a, made.key, 20)
        await a.limiter.sweeper.task.stop()  # no CPU: no sweeps, no renewals
        held = allowance(a, made.record.id).credits_held
        assert held > 0
        for _ in range(8):  # b keeps writing the row past a's expiry
            accepted += await spend_all(b, made.key, 5)
            await b.limiter.ops.start(allowance(b, made.record.id), stamp=True)
            await asyncio.sleep(0.5)
        found = await row(settings, made.record.id)
        (stranded,) = found["stranded"].values()
        assert stranded["held"] >= held
        # a wakes: its lease ended here before it could be taken there, so it
        # spends none of it; its next lease gives back exactly the rest.
        accepted += await spend_all(a, made.key, held + 20)
    finally:
        await a.aclose()
        await b.aclose()
    found = await row(settings, made.record.id)
    assert found["stranded"] == {} and found["leases"] == {}
    assert accepted + found["credits"] == 1000


async def test_after_a_failed_lease_a_shared_window_is_counted_alone_up_to_a_share(
    settings: Settings, emulator: Emulator
) -> None:
    fast = settings.model_copy(update={"timeout": 0.5, "retry_after": 30})
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", rate_limit=parse_rate_limit("20/1h"))
    async with ApiKeyStore(fast) as a:
        assert await spend_all(a, made.key, 5) == 5  # leased
        emulator.pause()
        try:
            # Firestore gone: counted here alone, and with what it leased of
            # this window, this process takes no more than the limit over the
            # processes it last saw holding leases (here, itself: 20).
            alone = await spend_all(a, made.key, 40)
        finally:
            emulator.pause(False)
    assert 5 + alone == 20
