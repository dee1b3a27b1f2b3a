"""Background work is supervised: an unexpected error is logged, restarted, shown."""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from api.main import create_app
from keystore import ApiKeyStore, Settings, get_store, reset_store
from keystore._firestore.listen_result import ListenedResult
from keystore.background import Background
from keystore.sync.snapshot import SnapshotView
from keystore.usage import UsageCounter
from tests.conftest import serve

pytestmark = pytest.mark.anyio


class Bug(Exception):
    """What no part of keystore expects."""


def fail(times: int, step: Callable[..., Any]) -> Callable[..., Any]:
    """``step``, raising Bug on its first ``times`` calls."""
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise Bug("a step that raises")
        return step(*args, **kwargs)

    return failing


async def until(check: Callable[[], bool], limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while not check():
            await asyncio.sleep(0.02)


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_failed_reload_is_logged_restarted_and_counted(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(SnapshotView, "replace", fail(1, SnapshotView.replace))
    async with ApiKeyStore(settings.model_copy(update={"sync": "reload"})) as store:
        await until(lambda: store.is_ready)
        assert store.background_restarts["key reload"] == 1
    (error,) = errors(caplog)
    assert "key reload failed; restarting" in error.getMessage()
    assert error.exc_info is not None and error.exc_info[0] is Bug


async def test_a_failed_listener_is_logged_and_restarted_afresh(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ApiKeyStore(settings) as writer:
        made = await writer.create(name="n")
    # The first snapshot cannot be read, in a way the stream did not foresee.
    monkeypatch.setattr(ListenedResult, "snapshot", fail(1, ListenedResult.snapshot))
    async with ApiKeyStore(settings.model_copy(update={"sync": "listen"})) as store:
        await until(lambda: store.is_ready)
        assert await store.does_api_key_exist(made.key)
        assert store.background_restarts["key listener"] == 1
    (error,) = errors(caplog)
    assert error.exc_info is not None and error.exc_info[0] is Bug


async def test_a_failed_flush_keeps_its_counts_and_restarts(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(UsageCounter, "flush", fail(1, UsageCounter.flush))
    async with ApiKeyStore(
        settings.model_copy(update={"usage_flush_interval": 0.05})
    ) as store:
        made = await store.create(name="n")
        assert await store.does_api_key_exist(made.key)
        await until(lambda: store.writes["usage"] > 0)  # written, at last
        assert store.background_restarts["usage flusher"] == 1
        assert (await store.usage(made.record.id)).total == 1
    assert len(errors(caplog)) == 1


async def test_readyz_fails_once_the_rows_are_too_old_to_trust(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every load after the first fails: the rows age until they are not trusted
    # (reload_interval + stale_if_error: 0.3 s here).
    settings = settings.model_copy(
        update={"sync": "reload", "reload_interval": 0.1, "stale_if_error": 0.2}
    )
    try:
        async with serve(create_app(settings)) as client:
            store = get_store()
            await until(lambda: store.is_ready)
            monkeypatch.setattr(
                SnapshotView, "replace", fail(10**6, SnapshotView.replace)
            )
            await until(lambda: store.background_restarts["key reload"] >= 1)
            async with asyncio.timeout(5):
                while (r := await client.get("/readyz")).status_code == 200:
                    await asyncio.sleep(0.05)
            assert r.status_code == 503, r.text
            assert r.json()["ready"] is False
            assert r.json()["background_restarts"]["key reload"] >= 1
            metrics = (await client.get("/metrics")).text
            assert 'keystore_background_restarts_total{task="key reload"}' in metrics
            assert "keystore_ready 0.0" in metrics.splitlines()
    finally:
        await reset_store()


async def test_stop_passes_on_the_callers_own_cancel() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # takes a while to stop
            raise

    task = Background(stubborn, name="task")
    task.start()
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # the caller gives up first
            await task.stop()
    quick = Background(forever, name="quick")
    quick.start()
    await asyncio.sleep(0)
    await quick.stop()  # its own cancel ends there
    assert not quick.is_running
