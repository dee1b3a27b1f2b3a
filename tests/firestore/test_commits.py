"""Writes take effect once: a commit whose answer is lost is not applied twice.

The interceptor lets the commit reach the emulator and take effect, then loses
its answer; keystore sends it again (at once, or at the next flush).
"""

import pytest

from keystore import ApiKeyStore, KeyNotFound, Settings, StoreUnavailable
from tests.conftest import Timer
from tests.interceptors import LoseAnswers, Recorder

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "lose",
    [
        LoseAnswers(),  # dropped: the connection failed after the commit
        LoseAnswers(delay=0.2),  # late: the deadline passed after the commit
    ],
    ids=["dropped", "late"],
)
async def test_a_create_whose_answer_is_lost_returns_the_stored_key(
    settings: Settings, lose: LoseAnswers
) -> None:
    recorder = Recorder()
    async with ApiKeyStore(
        settings, interceptors=[*recorder.interceptors, lose]
    ) as store:
        made = await store.create(name="n")
        assert lose.lost == 1
        assert recorder.count("Commit") == 2  # sent again, and found landed
    async with ApiKeyStore(settings) as fresh:
        assert await fresh.does_api_key_exist(made.key)
        (row,) = await fresh.list_keys()
        assert row.id == made.record.id


async def test_a_revoke_whose_answer_is_lost_succeeds(settings: Settings) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n")
    async with ApiKeyStore(settings, interceptors=[LoseAnswers()]) as store:
        await store.revoke(made.record.id)  # not KeyNotFound: the first one landed
        with pytest.raises(KeyNotFound):
            await store.get(made.record.id)


async def test_usage_whose_answer_is_lost_is_counted_once(settings: Settings) -> None:
    lose = LoseAnswers(count=2)
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n")
    async with ApiKeyStore(settings, interceptors=[lose]) as store:
        for _ in range(7):
            assert await store.does_api_key_exist(made.key)
        assert await store.flush_usage() == 7
        assert lose.lost == 1
        usage = await store.usage(made.record.id)
    assert usage.total == 7 and [n for _, n, _ in usage.days] == [7]


async def test_usage_sent_again_at_the_next_flush_is_counted_once(
    settings: Settings, timer: Timer
) -> None:
    # The answer comes after the whole call's deadline: the flush fails and
    # keeps the write as it was; the next flush sends it again, under the same
    # marker, beside a write of its own for the uses counted since.
    settings = settings.model_copy(update={"timeout": 1.0, "retry_after": 1})
    lose = LoseAnswers(delay=1.5)
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n")
    async with ApiKeyStore(settings, timer=timer, interceptors=[lose]) as store:
        for _ in range(5):
            assert await store.does_api_key_exist(made.key)
        assert await store.flush_usage() == 0  # not known to have landed
        assert store.usage_pending == 1
        assert await store.does_api_key_exist(made.key)
        timer.tick(settings.retry_after)  # the pause after a failure is over
        assert await store.flush_usage() == 6
        assert store.usage_pending == 0
        usage = await store.usage(made.record.id)
    assert lose.lost == 1
    assert usage.total == 6 and [n for _, n, _ in usage.days] == [6]


async def test_a_real_conflict_is_still_one(store: ApiKeyStore) -> None:
    # The marker is what tells a repeat from a row that was there before.
    first = await store.import_keys([("a", "legacy-key-0123456789abcdef")])
    again = await store.import_keys([("a", "legacy-key-0123456789abcdef")])
    assert len(first.created) == 1 and again.existing == first.created


async def test_an_outage_before_the_commit_changes_nothing(
    settings: Settings,
) -> None:
    # Nothing listens here: the write never reached Firestore, and says so.
    store = ApiKeyStore(settings.model_copy(update={"timeout": 0.5}))
    async with store:
        made = await store.create(name="n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
        async with ApiKeyStore(settings.model_copy(update={"timeout": 0.5})) as down:
            with pytest.raises(StoreUnavailable):
                await down.revoke(made.record.id)
    async with ApiKeyStore(settings) as store:
        assert await store.does_api_key_exist(made.key)
