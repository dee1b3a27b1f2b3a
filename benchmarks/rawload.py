"""A small HTTP/1.1 keep-alive load generator, for machines without wrk.

Closed loop like wrk: each connection sends its next request when the last answer
is in (after ``--pause-ms``, like wrk_report.lua's WRK_PAUSE_MS). Prints one
``WRK_JSON {...}`` line with the same fields as wrk_report.lua.

    python -m benchmarks.rawload URL --seconds 8 --connections 32 --header 'k: v'
"""

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from benchmarks.stats import percentile


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    status_errors: int = 0
    socket_errors: int = 0


async def read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(
    host: str, port: int, request: bytes, deadline: float, pause: float, tally: Tally
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        tally.socket_errors += 1
        return
    try:
        while time.perf_counter() < deadline:
            if pause:
                await asyncio.sleep(pause)
            sent = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            tally.latencies.append(time.perf_counter() - sent)
            if not 200 <= status < 400:
                tally.status_errors += 1
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        tally.socket_errors += 1
    finally:
        writer.close()


async def run(
    url: str, seconds: float, connections: int, pause_ms: float, headers: list[str]
) -> str:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", *headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    tally = Tally()
    start = time.perf_counter()
    deadline = start + seconds
    workers = [
        _connection(host, port, request, deadline, pause_ms / 1e3, tally)
        for _ in range(connections)
    ]
    # Bounded even if the server stops answering mid-request.
    try:
        await asyncio.wait_for(asyncio.gather(*workers), seconds + 10)
    except TimeoutError:
        tally.socket_errors += 1
    elapsed = time.perf_counter() - start
    ordered = sorted(tally.latencies)
    us = 1e6
    report = {
        "requests": len(ordered),
        "duration_us": elapsed * us,
        "p50_us": percentile(ordered, 50) * us,
        "p90_us": percentile(ordered, 90) * us,
        "p99_us": percentile(ordered, 99) * us,
        "max_us": (ordered[-1] if ordered else 0.0) * us,
        "status_errors": tally.status_errors,
        "socket_errors": tally.socket_errors,
    }
    return "WRK_JSON " + json.dumps(report)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pause-ms", type=float, default=0.0)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    figures = run(args.url, args.seconds, args.connections, args.pause_ms, args.header)
    print(asyncio.run(figures))


if __name__ == "__main__":
    main()
