"""Processes whose clocks disagree: limits take their time from Firestore (the
read's time, the commit's), so a refill is applied once and a rate window is
the same for all, whatever each machine's clock says; a lease is spent only
while its own process's monotonic clock says it is valid."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from keystore import ApiKeyStore, Settings
from keystore.errors import RateLimited
from keystore.limits import parse_rate_limit, parse_refill
from tests.conftest import Timer
from tests.console import edit as console_edit
from tests.limits.helpers import Clock, allowance, row, spend, spend_all

pytestmark = pytest.mark.anyio


async def test_a_refill_is_applied_once_whatever_the_processes_clocks_say(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=0, refill=parse_refill("100/day"))
    await console_edit(  # yesterday's balance: today's refill is due
        settings, made.record.id, credits_set_at=None, refilled_for="2000-01-01"
    )
    now = datetime.now(UTC)
    ahead = Clock(now + timedelta(hours=1))  # already tomorrow, maybe
    behind = Clock(now - timedelta(days=1, seconds=2))  # still yesterday
    a, b = ApiKeyStore(settings, clock=ahead), ApiKeyStore(settings, clock=behind)
    await a.open()
    await b.open()
    accepted = 0
    try:
        for _ in range(100):  # alternate requests, as a load balancer would
            for store, clock in ((a, ahead), (b, behind)):
                clock.now += timedelta(milliseconds=50)
                accepted += await spend_all(store, made.key, 1)
    finally:
        await a.aclose()
        await b.aclose()
    found = await row(settings, made.record.id)
    assert accepted == 100 and found["credits"] == 0
    assert found["refilled_for"] == now.strftime("%Y-%m-%d")


async def test_a_lease_of_a_period_is_not_spent_past_the_periods_end(
    settings: Settings, timer: Timer
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=1000, refill=parse_refill("10/day"))
    async with ApiKeyStore(settings, timer=timer) as a:
        assert await spend_all(a, made.key, 5) == 5
        held = allowance(a, made.record.id)
        assert held.credits_held > 0
        # The lease ends where Firestore's day ends, counted from the read on
        # this process's own clock: the end of the day, or the lease's expiry.
        tomorrow = datetime.now(UTC).date() + timedelta(days=1)
        midnight = datetime.combine(tomorrow, datetime.min.time(), UTC).timestamp()
        until = held.credits_until
        assert until <= held.server_seen + (midnight - held.server_now) + 1e-6
        reads = a.reads["limits"]
        timer.tick(until - timer() + 0.001)  # past it: nothing spent of it
        assert not a.try_spend(await a.verify(made.key))
        await spend(a, made.key)
        assert a.reads["limits"] == reads + 1  # a lease first


async def test_a_process_whose_clock_runs_ahead_starves_no_other(
    settings: Settings,
) -> None:
    now = datetime.now(UTC)
    ahead, right = Clock(now + timedelta(seconds=15)), Clock(now)
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", rate_limit=parse_rate_limit("100/10s"))
    a, b = ApiKeyStore(settings, clock=ahead), ApiKeyStore(settings, clock=right)
    await a.open()
    await b.open()
    refused = 0
    try:
        for _ in range(30):  # 20 a second in all: under the limit in any window
            await spend_all(a, made.key, 1)
            try:
                await spend(b, made.key)
            except RateLimited:
                refused += 1
            await asyncio.sleep(0.1)
    finally:
        await a.aclose()
        await b.aclose()
    assert refused == 0
