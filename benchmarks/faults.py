"""A TCP proxy between a server and the Firestore emulator that delays and
cuts real answers: Firestore's own bytes, late or never, as a flaky network
gives them. It makes nothing up.

While ``rate`` > 0, each chunk the emulator sends back is, with that
probability, held up to 3 s first (past the 2 s deadline: the call fails, its
write may have landed) or the connection is cut before it (every call under
way on it loses its answer, landed or not); gRPC reconnects within a second.
"""

import asyncio
import random
import threading
from dataclasses import dataclass, field

CHUNK = 65_536


@dataclass
class FaultyLink:
    """Listens on ``port`` and forwards to ``target`` (host, port), on an event
    loop of its own thread: the harness's may block (waiting for a server to
    stop, say) while the servers still need Firestore."""

    target: tuple[str, int]
    rate: float = 0.0
    seed: int = 0
    port: int = 0
    #: Chunks held up, and connections cut.
    delayed: int = 0
    cut: int = 0
    _rng: random.Random = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._link, "127.0.0.1", 0), self._loop
        )
        self.port = future.result(10).sockets[0].getsockname()[1]

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _link(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            emu_in, emu_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.close()
            return
        up = asyncio.ensure_future(self._pipe(client_in, emu_out, faulty=False))
        down = asyncio.ensure_future(self._pipe(emu_in, client_out, faulty=True))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for writer in (client_out, emu_out):
            writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        faulty: bool,
    ) -> None:
        while chunk := await reader.read(CHUNK):
            if faulty and self.rate and self._rng.random() < self.rate:
                if self._rng.random() < 0.5:
                    self.cut += 1
                    return  # the answer never comes
                self.delayed += 1
                await asyncio.sleep(self._rng.uniform(0.2, 3.0))
            writer.write(chunk)
            await writer.drain()
