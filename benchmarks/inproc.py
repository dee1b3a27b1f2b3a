"""In-process figures: cost of a warm check, Firestore reads of herds and garbage.

All of it talks to the real emulator; read counts come from ``store.reads`` and
from the sketch's own counter around its Firestore get.
"""

import asyncio
import secrets
import threading
import time
import timeit
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from benchmarks.sketch_app import Sketch, sync_client
from keystore import ApiKeyStore, MalformedKey, Settings
from keystore.keys import (
    ALPHABET,
    CHECKSUM_LENGTH,
    ID_LENGTH,
    SECRET_LENGTH,
    checksum,
    keys_match,
    new_key,
    parse_key_id,
)

Check = Callable[[str], Awaitable[object]]


@dataclass(frozen=True)
class Sizes:
    checks: int = 50_000
    rounds: int = 7
    herd: int = 200
    malformed: int = 10_000
    sketch_threads: int = 8
    unknown: int = 300


async def per_check_us(
    checks: dict[str, Check], key: str, n: int, rounds: int
) -> dict[str, float]:
    """µs per awaited check of ``key``, best of ``rounds`` loops of ``n`` each.

    The rounds take the checks in turn, so that a slow phase of the machine
    (they last seconds here) costs every check alike rather than one of them.
    """
    for check in checks.values():
        for _ in range(min(n, 20_000)):
            await check(key)
    best = dict.fromkeys(checks, float("inf"))
    for _ in range(rounds):
        for name, check in checks.items():
            start = time.perf_counter()
            for _ in range(n):
                await check(key)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / n * 1e6 for name, seconds in best.items()}


def breakdown_us(key: str, stored_hash: str, prefix: str) -> dict[str, float]:
    """µs of the pure steps of verify(), to tell where its time goes."""
    n = 100_000
    body = key[:-CHECKSUM_LENGTH]
    steps: dict[str, Callable[[], object]] = {
        "keys_match (SHA-256 + compare_digest)": lambda: keys_match(key, stored_hash),
        "parse_key_id (only keys not held)": lambda: parse_key_id(key, prefix),
        "  of which checksum (CRC32 to base62)": lambda: checksum(body),
        "datetime.now(UTC) (only keys that expire)": lambda: datetime.now(UTC),
    }
    return {
        name: min(timeit.repeat(step, number=n, repeat=3)) / n * 1e6
        for name, step in steps.items()
    }


def malformed_key(prefix: str) -> str:
    """A key of the right shape and length whose checksum is wrong."""

    def rand(length: int) -> str:
        return "".join(secrets.choice(ALPHABET) for _ in range(length))

    body = f"{prefix}_{rand(ID_LENGTH)}_{rand(SECRET_LENGTH)}"
    while (tail := rand(CHECKSUM_LENGTH)) == checksum(body):
        pass
    return body + tail


def _per_call(cpu: float, wall: float, calls: int, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_cpu_ms": (time.process_time() - cpu) / calls * 1e3,
        f"{prefix}_wall_ms": (time.perf_counter() - wall) / calls * 1e3,
    }


async def keystore_figures(
    settings: Settings, key: str, stored_hash: str, sizes: Sizes
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with ApiKeyStore(settings) as store:
        await store.verify(key)  # loads the row: what follows is warm
        floor_keys = {key}

        async def floor(k: str) -> bool:
            return k in floor_keys

        checks: dict[str, Check] = {
            "verify": store.verify,
            "does_api_key_exist": store.does_api_key_exist,
            "floor": floor,
        }
        us = await per_check_us(checks, key, sizes.checks, sizes.rounds)
        results |= {f"us_{name}": figure for name, figure in us.items()}
        results["warm_check_reads"] = store.reads["check"]
    results["breakdown_us"] = breakdown_us(key, stored_hash, settings.prefix)

    # A fresh store: its cache is empty, so the herd's key is uncached.
    async with ApiKeyStore(settings) as store:
        answers = await asyncio.gather(
            *(store.does_api_key_exist(key) for _ in range(sizes.herd))
        )
        results["herd_reads"] = store.reads["check"]
        results["herd_true"] = sum(answers)

    # CPU per unknown key counts every thread of this process (gRPC's too): it is
    # what a server pays on its own CPU for each key that no cache can answer.
    unknown = [new_key(settings.prefix) for _ in range(sizes.unknown + 30)]
    async with ApiKeyStore(settings) as store:
        for k in unknown[:30]:
            await store.does_api_key_exist(k)
        cpu, wall = time.process_time(), time.perf_counter()
        for k in unknown[30:]:
            await store.does_api_key_exist(k)
        results.update(_per_call(cpu, wall, sizes.unknown, "unknown"))

    garbage = [malformed_key(settings.prefix) for _ in range(sizes.malformed)]
    async with ApiKeyStore(settings) as store:
        rejected = 0
        start = time.perf_counter()
        for k in garbage:
            try:
                await store.verify(k)
            except MalformedKey:
                rejected += 1
        elapsed = time.perf_counter() - start
        results["malformed_reads"] = store.reads["check"]
        results["malformed_rejected"] = rejected
        results["malformed_us"] = elapsed / len(garbage) * 1e6
    return results


def sketch_unknown(
    project: str, collection: str, prefix: str, sizes: Sizes
) -> dict[str, Any]:
    """The sketch's CPU and wall time per unknown key."""
    unknown = [new_key(prefix) for _ in range(sizes.unknown + 30)]
    with sync_client(project) as client:
        sketch = Sketch(client, collection)
        for k in unknown[:30]:
            sketch.lookup(k)
        cpu, wall = time.process_time(), time.perf_counter()
        for k in unknown[30:]:
            sketch.lookup(k)
        return _per_call(cpu, wall, sizes.unknown, "unknown")


def sketch_malformed(
    project: str, collection: str, prefix: str, sizes: Sizes
) -> dict[str, Any]:
    """The sketch's Firestore gets for distinct malformed keys.

    Threads only make it finish sooner: each distinct key is one get whatever the
    order, and the lock is the one cachetools asks for under threads.
    """
    garbage = [malformed_key(prefix) for _ in range(sizes.malformed)]
    with sync_client(project) as client:
        sketch = Sketch(client, collection, lock=threading.Lock())
        start = time.perf_counter()
        with ThreadPoolExecutor(sizes.sketch_threads) as pool:
            found = sum(row is not None for row in pool.map(sketch.lookup, garbage))
        elapsed = time.perf_counter() - start
    return {
        "malformed_reads": sketch.reads,
        "malformed_accepted": found,
        "malformed_seconds": elapsed,
    }
