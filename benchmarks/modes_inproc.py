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
from benchmarks.modes_report import MODES
from benchmarks.sketch_app import Sketch
from keystore import ApiKeyStore, Settings


async def _ready(store: ApiKeyStore, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not store.is_ready:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{store.settings.sync} store not ready in {timeout}s")
        await asyncio.sleep(0.02)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def warm_checks_us(
    base: Settings, sketch: Sketch, key: str, checks: int
) -> dict[str, float]:
    """µs per warm check of ``key`` in each mode, the sketch and the floor, in turns."""
    stores = {mode: ApiKeyStore(replace(base, sync=mode)) for mode in MODES}
    try:
        for store in stores.values():
            await store.open()
            await _ready(store)
            await store.verify(key)
        sketch.lookup(key)
        floor_keys = {key}

        async def sketch_check(k: str) -> object:
            # Awaited like keystore's verify, so both pay one coroutine.
            return sketch.lookup(k)

        async def floor(k: str) -> bool:
            return k in floor_keys

        return await per_check_us(
            {
                **{mode: store.verify for mode, store in stores.items()},
                "sketch": sketch_check,
                "floor": floor,
            },
            key,
            checks,
            rounds=7,
        )
    finally:
        for store in stores.values():
            await store.aclose()


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


def sketch_bytes_per_key(sketch: Sketch, keys: list[str]) -> dict[str, Any]:
    """The sketch's cache: memory per cached key."""
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
    return {"bytes_per_key": (after - before) / max(1, cached)}


async def keystore_bytes_per_key(
    base: Settings, keys: list[str]
) -> dict[str, dict[str, Any]]:
    """Memory per key held, in each mode."""
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        settings = replace(base, sync=mode, usage_flush_interval=0)
        if mode == "ttl":
            out[mode] = await ttl_bytes_per_key(settings, keys)
        else:
            out[mode] = await index_bytes_per_key(settings)
    return out
