"""Operators change limits while processes hold leases: ``set-limits``, hand
edits in the console, a row deleted and restored, rotation. What a key can
still accept afterwards is what docs/limits.md states, on the emulator."""

from datetime import timedelta
from typing import Any

import pytest

from keystore import ApiKeyStore, Settings
from keystore._firestore.conditional import Read
from keystore.errors import CreditsExhausted, KeyNotFound
from keystore.limits import parse_rate_limit, parse_refill
from tests.conftest import Timer
from tests.console import add as console_add
from tests.console import edit as console_edit
from tests.limits.helpers import allowance, row, spend, spend_all

pytestmark = pytest.mark.anyio


async def test_set_limits_credits_n_leaves_n_plus_what_processes_held(
    settings: Settings, timer: Timer
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=10_000)
    async with ApiKeyStore(settings, timer=timer) as a:
        for _ in range(20):  # a steady user: a lease of a few seconds of use
            await spend_all(a, made.key, 5)
            timer.tick(0.05)
        held = allowance(a, made.record.id).credits_held
        assert held > 3
        async with ApiKeyStore(settings) as admin:
            await admin.set_limits(made.record.id, credits=3)
        # Until its next lease, a spends what it held (the stated bound); its
        # next lease finds the old one void, and leases of the 3.
        after = await spend_all(a, made.key, 500)
        # Once its sync mode reads the row, a request waits for a lease first.
        timer.tick(settings.cache_ttl + 1)
        after += await spend_all(a, made.key, 500)
    left = (await row(settings, made.record.id))["credits"]
    assert 3 <= left + after <= 3 + held


async def test_set_limits_credits_0_cuts_a_key_off_at_its_next_lease(
    settings: Settings, timer: Timer
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=1000)
    async with ApiKeyStore(settings, timer=timer) as a:
        assert await spend_all(a, made.key, 20) == 20
        async with ApiKeyStore(settings) as admin:
            await admin.set_limits(made.record.id, credits=0)
        timer.tick(settings.cache_ttl + 1)  # the row is read again
        with pytest.raises(CreditsExhausted):
            await spend(a, made.key)
    found = await row(settings, made.record.id)
    assert (found["credits"], found["leases"]) == (0, {})


async def test_credits_edited_by_hand_voids_the_leases_at_their_next_op(
    settings: Settings, timer: Timer
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=1000)
    async with ApiKeyStore(settings, timer=timer) as a:
        assert await spend_all(a, made.key, 20) == 20
        await console_edit(settings, made.record.id, credits=2)
        timer.tick(settings.cache_ttl + 1)
        assert await spend_all(a, made.key, 10) == 2
    found = await row(settings, made.record.id)
    assert (found["credits"], found["credits_epoch"]) == (0, 1)


async def test_a_row_deleted_and_restored_is_accepted_again(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as a:
        made = await a.create(name="n", credits=100)
        assert await spend_all(a, made.key, 1) == 1
        kept = await row(settings, made.record.id)
        record = await a.verify(made.key)
        await a.revoke(made.record.id)
        await a.limiter.ops.start(allowance(a, made.record.id))  # finds it gone
        with pytest.raises(KeyNotFound):
            await a.spend(record)
        await console_add(  # an operator puts it back by hand
            settings, made.record.id, {k: kept[k] for k in ("hash", "name", "credits")}
        )
        a.view.clear()  # type: ignore[attr-defined]  # ttl: as after its TTL
        assert await spend_all(a, made.key, 1) == 1


async def test_rotation_moves_the_limits_so_a_refill_is_not_doubled(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=0, refill=parse_refill("10/day"))
        new = await admin.rotate(made.record.id, grace=timedelta(hours=24))
    old_row = await row(settings, made.record.id)
    assert old_row["limits_in"] == new.record.id and "refill_amount" not in old_row
    # As if the balance was set yesterday: a refill is due, on one row only.
    await console_edit(
        settings, new.record.id, credits_set_at=None, refilled_for="2000-01-01"
    )
    async with ApiKeyStore(settings) as store:  # both keys, within the grace
        accepted = await spend_all(store, made.key, 50)
        accepted += await spend_all(store, new.key, 50)
    assert accepted == 10


async def test_rotation_moves_credits_exactly_while_leases_run(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as admin:
        made = await admin.create(name="n", credits=1000)
    a = ApiKeyStore(settings)
    await a.open()
    accepted = await spend_all(a, made.key, 20)
    rotator = ApiKeyStore(settings)
    await rotator.open()
    original = rotator._rows.read
    interleaved = False

    async def read_then_lease(path: str, *, cause: str) -> Read:
        nonlocal interleaved
        found = await original(path, cause=cause)
        if not interleaved:  # a's lease lands between the rotation's read and commit
            interleaved = True
            await a.limiter.ops.start(allowance(a, made.record.id))
        return found

    rotator._rows.read = read_then_lease  # type: ignore[method-assign]
    new = await rotator.rotate(made.record.id, grace=timedelta(hours=1))
    await rotator.aclose()
    assert interleaved
    # a goes on with the old key, b with the new one: one balance.
    accepted += await spend_all(a, made.key, 2000)
    await a.aclose()
    async with ApiKeyStore(settings) as b:
        accepted += await spend_all(b, new.key, 2000)
    found = await row(settings, new.record.id)
    assert accepted + found["credits"] == 1000 and found["leases"] == {}


async def test_credits_null_removes_the_credit_limit_refill_and_all(
    settings: Settings,
) -> None:
    async with ApiKeyStore(settings) as a:
        made = await a.create(name="n", credits=500, refill=parse_refill("1000/day"))
        record = await a.set_limits(made.record.id, credits=None)
        assert (record.credits, record.refill) == (None, None)
        assert await spend_all(a, made.key, 3) == 3
    found: dict[str, Any] = await row(settings, made.record.id)
    assert "refill_amount" not in found and "credits" not in found


async def test_an_owners_limits_set_by_hand_apply_at_its_next_lease(
    settings: Settings,
) -> None:
    owners = settings.model_copy(update={"cache_ttl": 0.2})  # owners: recheck 0.2 s
    async with ApiKeyStore(owners) as a:
        await a.set_owner_limits("acme", rate_limit=parse_rate_limit("1000/1h"))
        made = await a.create(name="n", owner="acme")
        assert await spend_all(a, made.key, 3) == 3
        await console_edit(
            settings, "acme", collection=settings.owners_collection, rate_limit=4
        )
        # The owner's next lease (at least every recheck, 0.2 s here) learns
        # the new limit, and gives back what the window holds beyond it.
        owner = a.limiter._allowances[owners.owners_collection, "acme"]
        await a.limiter.ops.start(owner)
        assert owner.rate is not None and owner.rate.limit == 4
        assert await spend_all(a, made.key, 10) <= 4 - 3
