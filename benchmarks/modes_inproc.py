"""In-process figures per sync mode: warm check cost and memory per key.

Each store talks to the real emulator. Memory is what tracemalloc sees Python
allocate between two points, after a garbage collection at each; it includes
whatever the mode keeps per key (the listener's own document tree too), not
memory allocated in C outside Python's allocator (gRPC's buffers).
"""

import asyncio
import gc
import time
import tracemalloc
from dataclasses import replace
from typing import Any

from benchmarks.inproc import per_check_us
from benchmarks.sketch_app import Sketch, sync_client
from keystore import ApiKeyStore, Settings
from keystore.settings import SyncMode


async def _ready(store: ApiKeyStore, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not store.is_ready:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{store.settings.sync} store not ready in {timeout}s")
        await asyncio.sleep(0.02)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def warm_check_us(settings: Settings, key: str, checks: int) -> float:
    """µs per ``await store.verify(key)`` once the store is ready and the key warm."""
    async with ApiKeyStore(settings) as store:
        await _ready(store)
        await store.verify(key)
        return await per_check_us(store.verify, key, checks, repeats=3)


async def index_bytes_per_key(settings: Settings) -> dict[str, Any]:
    """reload, listen: memory from before ``open()`` to ready, per row held."""
    store = ApiKeyStore(settings)
    tracemalloc.start()
    try:
        before = _traced()
        await store.open()
        await _ready(store)
        # The listener hands its first snapshot to the loop; let it land.
        await asyncio.sleep(0.2)
        after = _traced()
        rows = len(store.source)
    finally:
        tracemalloc.stop()
        await store.aclose()
    return {"bytes_per_key": (after - before) / max(1, rows), "rows": rows}


async def ttl_bytes_per_key(settings: Settings, keys: list[str]) -> dict[str, Any]:
    """ttl: memory of the cache per row cached, over ``keys`` (distinct, valid)."""
    # No lookup budget here: it limits a server's reads per second, and this loop
    # reads as fast as the emulator answers.
    settings = replace(settings, max_lookups_per_second=0)
    async with ApiKeyStore(settings) as store:
        for key in keys[:20]:  # the client connected and its code paths warm
            await store.verify(key)
        tracemalloc.start()
        try:
            before = _traced()
            for key in keys[20:]:
                await store.verify(key)
            after = _traced()
        finally:
            tracemalloc.stop()
        cached = len(store.source) - 20
    return {"bytes_per_key": (after - before) / max(1, cached), "rows": cached}


def sketch_figures(
    project: str, collection: str, keys: list[str], checks: int
) -> dict[str, Any]:
    """The sketch's warm lookup cost and its cache's memory per cached key."""
    with sync_client(project) as client:
        sketch = Sketch(client, collection)
        for key in keys[:20]:
            sketch.lookup(key)
        tracemalloc.start()
        try:
            before = _traced()
            for key in keys[20:]:
                sketch.lookup(key)
            after = _traced()
        finally:
            tracemalloc.stop()
        cached = len(sketch.cache) - 20

        async def check(key: str) -> object:
            # Awaited like keystore's verify, so both pay one coroutine.
            return sketch.lookup(key)

        us = asyncio.run(per_check_us(check, keys[0], checks, repeats=3))
    return {"bytes_per_key": (after - before) / max(1, cached), "us_check": us}


async def keystore_figures(
    base: Settings, key: str, keys: list[str], checks: int
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    modes: tuple[SyncMode, ...] = ("ttl", "reload", "listen")
    for mode in modes:
        settings = replace(base, sync=mode, usage_flush_interval=0)
        out[mode] = {"us_verify": await warm_check_us(settings, key, checks)}
        if mode == "ttl":
            out[mode] |= await ttl_bytes_per_key(settings, keys)
        else:
            out[mode] |= await index_bytes_per_key(settings)
    return out
