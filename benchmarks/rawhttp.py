"""HTTP/1.1 on raw asyncio streams: fixed-rate streams (open loops) and what they
ask, polls, one-off requests. Not httpx: it costs about 1.5 ms of CPU a request,
which on the loaders' CPU would slow wrk down and show up as server latency."""

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from keystore.keys import new_key

ERRORS = (OSError, ValueError, IndexError, asyncio.IncompleteReadError)
HEADER = "x-api-key"
T = TypeVar("T")


@dataclass(frozen=True)
class Request:
    """One request as bytes, for one server; ``tag`` says what kind it is."""

    address: tuple[str, int]
    raw: bytes
    tag: str = ""


def get(url: str, key: str | None = None, tag: str = "") -> Request:
    """GET ``url``, with ``key`` in the API-key header if given."""
    parts = urlsplit(url)  # every URL here has a path and no query
    lines = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{HEADER}: {key}"] if key else []
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return Request((parts.hostname or "127.0.0.1", parts.port or 80), raw, tag)


@dataclass(frozen=True)
class Answer:
    tag: str
    #: Wall-clock time (time.time) the request was sent.
    sent: float
    seconds: float
    #: 0: no answer (the connection failed).
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """A keep-alive connection to the server of its first request."""

    def __init__(self) -> None:
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, req: Request) -> Answer:
        sent, start = time.time(), time.perf_counter()
        status, headers, body = 0, dict[str, str](), b""
        for _ in range(2):
            try:
                if self._streams is None:
                    self._streams = await asyncio.open_connection(*req.address)
                self._streams[1].write(req.raw)
                status, headers, body = await _response(self._streams[0])
                break
            except ERRORS:
                self.close()  # uvicorn closes keep-alive connections idle for 5 s
        return Answer(req.tag, sent, time.perf_counter() - start, status, headers, body)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, headers, body


async def fetch(req: Request) -> tuple[int, str]:
    """One request from the harness (readiness, /metrics): (status, text)."""
    with closing(Connection()) as conn:
        answer = await asyncio.wait_for(conn.send(req), 60)
    return answer.status, answer.body.decode(errors="replace")


async def metrics(base_url: str) -> dict[str, float]:
    """A server's /metrics as {'name{labels}': value}."""
    status, text = await fetch(get(f"{base_url}/metrics"))
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    return {name: float(value) for name, value in pairs} if status == 200 else {}


@dataclass
class Stream:
    """What an open-loop stream got back."""

    answers: list[Answer] = field(default_factory=list)
    lost: int = 0
    seconds: float = 0.0

    @property
    def statuses(self) -> dict[str, int]:
        """How many answers had each status ("0": none)."""
        return dict(Counter(str(a.status) for a in self.answers))


async def open_loop(
    make: Callable[[int], Request], rate: float, seconds: float, cap: int = 64
) -> Stream:
    """Request ``make(i)`` at start + i/rate whether or not earlier ones were
    answered, so a slow server gets no respite. Past ``cap`` in flight a request
    is lost, not queued; so is one unanswered 5 s after the last was sent."""
    stream, inflight = Stream(), set[asyncio.Task[None]]()
    idle: dict[tuple[str, int], list[Connection]] = {}  # by server

    async def one(req: Request) -> None:
        pool = idle.setdefault(req.address, [])
        conn = pool.pop() if pool else Connection()
        stream.answers.append(await conn.send(req))
        pool.append(conn)

    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        if (delay := start + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        if len(inflight) >= cap:
            stream.lost += 1
            continue
        inflight.add(task := asyncio.create_task(one(make(i))))
        task.add_done_callback(inflight.discard)
    stream.seconds = time.perf_counter() - start
    if inflight:
        await asyncio.wait(set(inflight), timeout=5)
        stream.lost += len(inflight)
        for task in list(inflight):
            task.cancel()
    for conn in (conn for pool in idle.values() for conn in pool):
        conn.close()
    return stream


def in_turn(url: str, keys: Sequence[str]) -> Callable[[int], Request]:
    """An open loop's requests: GET ``url`` with each of ``keys`` in turn."""
    return lambda i: get(url, keys[i % len(keys)])


async def beside_unknown(
    url: str, rate: float, seconds: float, measured: Awaitable[T]
) -> tuple[T, Stream]:
    """``measured``, begun 0.5 s into ``seconds`` of GET ``url`` at ``rate``, each
    with a new well-formed key that no cache can answer (in ttl mode, a Firestore
    read each), so that the stream runs before and after it; and the stream."""
    unknown = open_loop(lambda i: get(url, new_key("ks")), rate, seconds)
    misses = asyncio.ensure_future(unknown)
    await asyncio.sleep(0.5)
    return await measured, await misses


async def until_refused(
    req: Request, since: float, pause: float, deadline: float
) -> float:
    """Seconds from ``since`` (time.monotonic) to the first 401, asking every
    ``pause`` s; infinite if ``deadline`` passes first."""
    with closing(Connection()) as conn:
        while time.monotonic() < deadline:
            if (await conn.send(req)).status == 401:
                return time.monotonic() - since
            await asyncio.sleep(pause)
    return float("inf")
