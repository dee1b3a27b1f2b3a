"""A stream of well-formed but unknown keys at a fixed rate, in its own process.

Each key is new (``keystore.keys.new_key``), so no cache can answer it and each
costs the server one Firestore read. Open loop: a request is started every
1/rate seconds whether or not earlier ones have been answered, up to a cap on
requests in flight (past the cap a slot is counted as skipped, not queued).

Raw keep-alive sockets rather than an HTTP client library: this process shares
its CPU with wrk and the emulator, and httpx costs about 1.5 ms of CPU a request,
which would slow wrk down and show up as server latency.

Creates the file ``--ready`` once set up, and writes its figures as JSON to
``--out`` at the end.

    python -m benchmarks.misses http://127.0.0.1:PORT/v1/whoami --rate 250 \
        --seconds 11 --ready R --out O
"""

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.models import HEADER
from benchmarks.rawload import read_response
from benchmarks.stats import percentile
from keystore.keys import new_key

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def run(
    url: str, rate: float, seconds: float, cap: int, prefix: str, ready: Path
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{HEADER}: "
    keys = [new_key(prefix) for _ in range(int(rate * seconds))]
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    skipped = 0
    idle: list[Connection] = []
    inflight: set[asyncio.Task[None]] = set()

    async def connect() -> Connection:
        return await asyncio.open_connection(host, port)

    async def ask(conn: Connection, key: str) -> int:
        conn[1].write(f"{head}{key}\r\n\r\n".encode())
        return await read_response(conn[0])

    async def one(key: str) -> None:
        sent = time.perf_counter()
        try:
            reused = bool(idle)
            conn = idle.pop() if reused else await connect()
            try:
                status = await ask(conn, key)
            except (OSError, IndexError, asyncio.IncompleteReadError):
                if not reused:
                    raise
                # uvicorn closes keep-alive connections idle for 5 s; use a new one.
                conn[1].close()
                conn = await connect()
                status = await ask(conn, key)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            statuses[type(exc).__name__] += 1
            return
        statuses[str(status)] += 1
        latencies.append(time.perf_counter() - sent)
        idle.append(conn)

    ready.touch()
    start = time.perf_counter()
    for i, key in enumerate(keys):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(inflight) >= cap:
            skipped += 1
            continue
        task = asyncio.create_task(one(key))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    sending = time.perf_counter() - start
    if inflight:
        # Bounded: what is still unanswered then is reported as such, not awaited.
        await asyncio.wait(set(inflight), timeout=3)
        late = list(inflight)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    for _, writer in idle:
        writer.close()
    answered = sum(n for status, n in statuses.items() if status.isdigit())
    ordered = sorted(latencies)
    report: dict[str, object] = {
        "offered_rps": rate,
        "sent": len(keys) - skipped,
        "skipped": skipped,
        "answered": answered,
        "unanswered": len(keys) - skipped - sum(statuses.values()),
        "answered_rps": answered / sending if sending else 0.0,
        "statuses": dict(statuses),
        "p50_ms": percentile(ordered, 50) * 1e3,
        "p99_ms": percentile(ordered, 99) * 1e3,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--seconds", type=float, default=11.0)
    parser.add_argument("--cap", type=int, default=64)
    parser.add_argument("--prefix", default="ks")
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = asyncio.run(
        run(args.url, args.rate, args.seconds, args.cap, args.prefix, args.ready)
    )
    args.out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
