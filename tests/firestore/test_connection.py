"""The one connection to Firestore: what each call sends, and what closes."""

import asyncio
import threading
from collections.abc import AsyncIterator
from urllib.parse import unquote

import grpc
import pytest
from google.api_core.exceptions import GoogleAPIError
from google.cloud.firestore_v1.services.firestore import FirestoreAsyncClient
from google.cloud.firestore_v1.services.firestore.transports import (
    FirestoreGrpcAsyncIOTransport,
)
from google.cloud.firestore_v1.types import ListenRequest

from keystore import ApiKeyStore, Settings
from keystore.settings import SyncMode
from tests.conftest import PROJECT, Emulator
from tests.interceptors import Call, Recorder

pytestmark = pytest.mark.anyio


async def wait_for_ready(store: ApiKeyStore) -> None:
    async with asyncio.timeout(10):
        while not store.is_ready:
            await asyncio.sleep(0.02)


async def keystore_calls(settings: Settings) -> list[Call]:
    """Every kind of RPC keystore makes: checks, loads, listening, management."""
    recorder = Recorder()
    for sync in ("ttl", "reload", "listen"):
        async with ApiKeyStore(
            settings.model_copy(update={"sync": sync}),
            interceptors=recorder.interceptors,
        ) as store:
            await wait_for_ready(store)
            made = await store.create(name="n")
            await store.does_api_key_exist(made.key)
            await store.update(made.record.id, name="m")
            await store.usage(made.record.id)
            await store.list_keys()
            await store.revoke(made.record.id)
    return recorder.calls


async def sdk_metadata(emulator: Emulator, call: Call) -> dict[str, str]:
    """The metadata the SDK's generated client sends for ``call``'s request."""
    recorder = Recorder()
    channel = grpc.aio.insecure_channel(
        emulator.host, interceptors=recorder.interceptors
    )
    client = FirestoreAsyncClient(
        transport=FirestoreGrpcAsyncIOTransport(channel=channel)
    )
    try:
        if call.method == "GetDocument":
            await client.get_document(request=call.request, retry=None)
        elif call.method == "RunQuery":
            async for _ in await client.run_query(request=call.request, retry=None):
                pass
        elif call.method == "BatchGetDocuments":
            stream = await client.batch_get_documents(request=call.request, retry=None)
            async for _ in stream:
                pass
        elif call.method == "Commit":
            # Sent again: its marker's precondition fails, and nothing changes.
            await client.commit(request=call.request, retry=None)
        else:
            assert call.method == "Listen"

            async def requests() -> AsyncIterator[ListenRequest]:
                yield ListenRequest(database="projects/p/databases/d")
                await asyncio.Event().wait()

            stream = await client.listen(requests=requests(), retry=None)
            stream.cancel()  # type: ignore[attr-defined]
    except GoogleAPIError:
        pass  # only what was sent matters here
    finally:
        await channel.close()
    (sent,) = recorder.calls
    return sent.metadata


@pytest.mark.parametrize(
    "database",
    [
        "(default)",
        "keystore-named",  # a named database: routing headers matter there
    ],
)
async def test_every_call_is_routed_as_the_sdk_routes_it(
    settings: Settings, emulator: Emulator, database: str
) -> None:
    ours = await keystore_calls(settings.model_copy(update={"database": database}))
    assert {call.method for call in ours} == {
        "BatchGetDocuments",
        "GetDocument",
        "RunQuery",
        "Commit",
        "Listen",
    }
    path = f"projects/{PROJECT}/databases/{database}"
    for call in ours:
        theirs = await sdk_metadata(emulator, call)
        header = "x-goog-request-params"
        assert call.metadata[header] == theirs[header], call.method
        # Set by the SDK's own layer above the generated client, to the same.
        assert call.metadata["google-cloud-resource-prefix"] == path, call.method
        if call.method != "Listen":
            assert path in unquote(call.metadata[header]), call.method


@pytest.mark.parametrize("sync", ["ttl", "reload", "listen"])
async def test_aclose_closes_every_channel_opened(
    settings: Settings, sync: SyncMode
) -> None:
    before = set(threading.enumerate())
    store = ApiKeyStore(settings.model_copy(update={"sync": sync}))
    await store.open()
    await wait_for_ready(store)
    made = await store.create(name="n")
    assert await store.does_api_key_exist(made.key)
    await store.aclose()
    assert store.connection.channels_opened == 1
    assert store.connection.channels_closed == 1
    assert not store.connection.is_open
    # No listener thread left behind. (gRPC's own poller thread, which it
    # starts with its first channel in a process and keeps, may be new.)
    new = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert len(new) <= 1, new
