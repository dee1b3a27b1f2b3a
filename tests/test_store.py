"""ApiKeyStore against the real Firestore emulator."""

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import firestore

from keystore import (
    ApiKeyStore,
    BrokenRow,
    ConfigError,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    MalformedKey,
    Settings,
    StoreUnavailable,
    get_store,
    hash_key,
    reset_store,
)
from keystore.keys import new_key
from tests.conftest import Timer
from tests.console import add as console_add
from tests.console import edit as console_edit
from tests.interceptors import Recorder

pytestmark = pytest.mark.anyio


async def test_create_then_verify(store: ApiKeyStore) -> None:
    made = await store.create(name="billing", scopes=["reports:read", "reports:read"])
    record = await store.verify(made.key)
    assert record.id == made.record.id and record.name == "billing"
    assert record.scopes == ("reports:read",)
    assert await store.does_api_key_exist(made.key)
    assert await store.get_api_key(made.key) == record


async def test_only_the_hash_is_stored(store: ApiKeyStore, settings: Settings) -> None:
    made = await store.create(name="n")
    client = firestore.AsyncClient(project=settings.project)
    # A query read to its end: the SDK's document get leaves a stream open.
    (row,) = [
        snapshot.to_dict()
        async for snapshot in client.collection(settings.collection).stream()
    ]
    assert row is not None
    assert row["hash"] == hash_key(made.key)
    assert made.key not in repr(row)
    assert set(row) == {
        "hash",
        "name",
        "scopes",
        "disabled",
        "expires_at",
        "created_at",
        "usage_count",
        "last_used_at",
        "rotated_from",
        "rotated_to",
    }


async def test_unknown_and_wrong_keys(store: ApiKeyStore) -> None:
    made = await store.create(name="n")
    wrong_secret = new_key("ks", made.record.id)
    with pytest.raises(KeyNotFound):
        await store.verify(wrong_secret)
    with pytest.raises(KeyNotFound):
        await store.verify(new_key("ks"))
    assert not await store.does_api_key_exist(new_key("ks"))


async def test_held_key_checks_count_one_hit_each(store: ApiKeyStore) -> None:
    made = await store.create(name="n")
    await store.verify(made.key)  # now held in memory
    hits = store.view.hits
    await store.verify(made.key)
    with pytest.raises(KeyNotFound):
        await store.verify(new_key("ks", made.record.id))  # held id, wrong secret
    assert store.view.hits == hits + 2


async def test_typo_in_a_held_key_is_malformed(
    store: ApiKeyStore, document_reads: Callable[[], int]
) -> None:
    made = await store.create(name="n")
    await store.verify(made.key)
    reads = document_reads()
    last = made.key[-1]
    typo = made.key[:-1] + ("A" if last != "A" else "B")
    unencodable = made.key[:-1] + "\udc80"  # a lone surrogate, from JSON say
    for key in (typo, unencodable):
        with pytest.raises(MalformedKey):
            await store.verify(key)
    assert document_reads() == reads


async def test_key_of_another_prefix_is_malformed_even_when_its_row_is_held(
    settings: Settings,
) -> None:
    # Same length, same id position, the row's hash is of this very key: only
    # the prefix tells it apart, on the fast path as on the slow one.
    async with ApiKeyStore(settings.model_copy(update={"prefix": "zz"})) as other:
        made = await other.create(name="n")
    async with ApiKeyStore(settings) as store:
        await store.view.get(made.record.id)  # the row held in memory
        with pytest.raises(MalformedKey):
            await store.verify(made.key)


@pytest.mark.parametrize(
    "value",
    [
        "",  # empty
        "hello",  # garbage
        "ks_AAAAAAAAAAAA_AAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # right shape, bad checksum
        "x" * 5000,  # huge
    ],
)
async def test_malformed_keys_cost_no_read(
    store: ApiKeyStore, document_reads: Callable[[], int], value: str
) -> None:
    with pytest.raises(MalformedKey):
        await store.verify(value)
    assert not await store.does_api_key_exist(value)
    assert document_reads() == 0


async def test_many_distinct_malformed_keys_cost_no_read(
    store: ApiKeyStore, document_reads: Callable[[], int]
) -> None:
    for i in range(10_000):
        assert not await store.does_api_key_exist(f"ks_{i:012d}_{i:028d}")
    assert document_reads() == 0


async def test_unknown_key_is_read_once_per_ttl(
    store: ApiKeyStore, document_reads: Callable[[], int], timer: Timer
) -> None:
    unknown = new_key("ks")
    for _ in range(50):
        assert not await store.does_api_key_exist(unknown)
    assert document_reads() == 1
    timer.tick(61)
    assert not await store.does_api_key_exist(unknown)
    assert document_reads() == 2


async def test_herd_of_checks_makes_one_read(
    store: ApiKeyStore,
    settings: Settings,
    rpc_calls: Recorder,
    document_reads: Callable[[], int],
) -> None:
    made = await store.create(name="n")
    # A fresh process: nothing cached.
    cold = ApiKeyStore(settings, interceptors=rpc_calls.interceptors)
    async with cold:
        results = await asyncio.gather(
            *(cold.does_api_key_exist(made.key) for _ in range(200))
        )
    assert results == [True] * 200
    assert document_reads() == 1
    assert cold.reads["check"] == 1


async def test_deleted_row_is_refused_once_the_ttl_passes(
    store: ApiKeyStore, timer: Timer
) -> None:
    made = await store.create(name="n")
    assert await store.does_api_key_exist(made.key)
    other = ApiKeyStore(store.settings)  # revoked from elsewhere: a CLI, say
    async with other:
        await other.revoke(made.record.id)
    assert await store.does_api_key_exist(made.key)  # cached, within the TTL
    timer.tick(store.settings.cache_ttl + 1)
    with pytest.raises(KeyNotFound):
        await store.verify(made.key)


async def test_revoke_in_the_same_process_is_immediate(store: ApiKeyStore) -> None:
    made = await store.create(name="n")
    assert await store.does_api_key_exist(made.key)
    await store.revoke(made.record.id)
    assert not await store.does_api_key_exist(made.key)
    with pytest.raises(KeyNotFound, match="No key with id"):
        await store.revoke(made.record.id)
    with pytest.raises(KeyNotFound):
        await store.revoke("a/b")


async def test_console_disable_and_enable(
    store: ApiKeyStore, settings: Settings, timer: Timer
) -> None:
    made = await store.create(name="n")
    await console_edit(settings, made.record.id, disabled=True)
    timer.tick(61)
    with pytest.raises(KeyDisabled):
        await store.verify(made.key)
    await console_edit(settings, made.record.id, disabled=False)
    timer.tick(61)
    assert await store.does_api_key_exist(made.key)


async def test_console_expiry(
    store: ApiKeyStore, settings: Settings, timer: Timer
) -> None:
    made = await store.create(name="n")
    past = datetime.now(UTC) - timedelta(minutes=1)
    await console_edit(settings, made.record.id, expires_at=past)
    timer.tick(61)
    with pytest.raises(KeyExpired):
        await store.verify(made.key)
    await console_edit(settings, made.record.id, expires_at=None)
    timer.tick(61)
    assert await store.does_api_key_exist(made.key)


async def test_key_expires_while_cached(settings: Settings) -> None:
    now = [datetime.now(UTC)]
    async with ApiKeyStore(settings, clock=lambda: now[0]) as store:
        made = await store.create(name="n", expires_at=now[0] + timedelta(hours=1))
        assert await store.does_api_key_exist(made.key)
        now[0] += timedelta(hours=1)
        with pytest.raises(KeyExpired):
            await store.verify(made.key)


async def test_console_scopes_edit(
    store: ApiKeyStore, settings: Settings, timer: Timer
) -> None:
    made = await store.create(name="n", scopes=["a"])
    await console_edit(settings, made.record.id, scopes=["a", "b"])
    timer.tick(61)
    assert (await store.verify(made.key)).scopes == ("a", "b")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("disabled", "false"),  # a string where a boolean belongs
        ("scopes", "admin"),  # a string where an array belongs
        ("expires_at", "2099-01-01"),  # a string where a timestamp belongs
        ("hash", 42),  # a number where the hash belongs
        ("hash", firestore.DELETE_FIELD),  # the hash deleted
    ],
)
async def test_hand_broken_row_fails_closed_with_one_warning(
    store: ApiKeyStore,
    settings: Settings,
    timer: Timer,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: Any,
) -> None:
    made = await store.create(name="n")
    await console_edit(settings, made.record.id, **{field: value})
    timer.tick(61)
    with caplog.at_level(logging.WARNING, logger="keystore"):
        for _ in range(5):
            with pytest.raises(KeyNotFound):
                await store.verify(made.key)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert made.record.id in message and f"'{field}'" in message
    assert made.key not in caplog.text
    (row,) = await store.list_keys()
    assert isinstance(row, BrokenRow)
    assert (row.id, row.field) == (made.record.id, field)


async def test_hand_added_row_works(store: ApiKeyStore, settings: Settings) -> None:
    key = new_key("ks")
    key_id = key.split("_")[1]
    await console_add(settings, key_id, {"hash": hash_key(key), "name": "by hand"})
    record = await store.verify(key)
    assert record.name == "by hand" and record.scopes == () and not record.disabled


async def test_list_keys_oldest_first(store: ApiKeyStore) -> None:
    first = await store.create(name="first")
    second = await store.create(name="second", scopes=["x"])
    rows = await store.list_keys()
    assert [row.id for row in rows] == [first.record.id, second.record.id]


async def test_singleton(settings: Settings) -> None:
    try:
        assert get_store(settings) is get_store() is get_store(settings)
        with pytest.raises(ConfigError, match="reset_store"):
            get_store(Settings(project="other"))
    finally:
        await reset_store()
    assert get_store(settings) is not None
    await reset_store()


async def test_missing_credentials_are_a_config_error_at_start_and_503_later(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    store = ApiKeyStore(settings)
    with pytest.raises(ConfigError, match="credentials"):
        await store.open()
    # On the request path, a store that cannot connect is unavailable: a 503,
    # never a 500 (tests/test_api.py shows the answer).
    with pytest.raises(StoreUnavailable):
        await store.does_api_key_exist(new_key("ks"))
