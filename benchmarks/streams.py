"""Light HTTP traffic from the benchmark process itself: raw keep-alive sockets.

Used where wrk does not fit: polling revoked keys until they are refused, and
open-loop streams at a fixed, low rate whose every latency is kept. Raw sockets
rather than httpx because httpx costs about 1.5 ms of CPU a request (see
misses.py), which at hundreds of requests a second would be the bottleneck.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks.rawload import read_response
from benchmarks.stats import percentile


def request(url: str, headers: dict[str, str] | None = None) -> bytes:
    """One GET request's bytes for ``url`` (path and query kept)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Connection:
    """One keep-alive connection that reconnects once if the server dropped it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def ask(self, raw: bytes) -> int:
        for attempt in range(2):
            if self._streams is None:
                self._streams = await asyncio.open_connection(self._host, self._port)
            reader, writer = self._streams
            try:
                writer.write(raw)
                return await read_response(reader)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                # uvicorn closes keep-alive connections idle for 5 s.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def until_status(
    url: str, raw: bytes, want: int, *, since: float, interval: float, deadline: float
) -> float | None:
    """Seconds from ``since`` (time.monotonic) to the first answer ``want``.

    None if ``deadline`` (time.monotonic) passes first. Polls every ``interval``.
    """
    conn = Connection(url)
    try:
        while time.monotonic() < deadline:
            try:
                status = await conn.ask(raw)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                status = 0
            if status == want:
                return time.monotonic() - since
            await asyncio.sleep(interval)
        return None
    finally:
        conn.close()


@dataclass
class StreamResult:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "requests": len(ordered),
            "seconds": self.seconds,
            "statuses": dict(self.statuses),
            "skipped": self.skipped,
            "p50_ms": percentile(ordered, 50) * 1e3,
            "p99_ms": percentile(ordered, 99) * 1e3,
            "max_ms": (ordered[-1] if ordered else 0.0) * 1e3,
        }


async def open_loop(
    url: str, requests: Sequence[bytes], *, rate: float, seconds: float, cap: int = 32
) -> StreamResult:
    """Send ``requests`` in turn, one every 1/rate s, whether or not answered.

    At most ``cap`` in flight; past that a slot is counted as skipped. Bounded:
    what is unanswered 5 s after the last send is given up on.
    """
    result = StreamResult()
    idle: list[Connection] = []
    inflight: set[asyncio.Task[None]] = set()

    async def one(raw: bytes) -> None:
        conn = idle.pop() if idle else Connection(url)
        sent = time.perf_counter()
        try:
            status = await conn.ask(raw)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            result.statuses[type(exc).__name__] += 1
            conn.close()
            return
        result.latencies.append(time.perf_counter() - sent)
        result.statuses[str(status)] += 1
        idle.append(conn)

    start = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(inflight) >= cap:
            result.skipped += 1
            continue
        task = asyncio.create_task(one(requests[i % len(requests)]))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    result.seconds = time.perf_counter() - start
    if inflight:
        await asyncio.wait(set(inflight), timeout=5)
        late = list(inflight)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    for conn in idle:
        conn.close()
    return result
