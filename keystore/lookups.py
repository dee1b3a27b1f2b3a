"""Reads of rows not in memory, gathered into one BatchGetDocuments call.

A read costs the gRPC client most of a millisecond of CPU per call and little
per document, on the event loop's core, beside the checks answered from
memory. So the lookup of an id that memory has never held (an unknown key,
most often: a stream of them is what costs) waits a moment for others
(``KEYSTORE_LOOKUP_WINDOW``, 50 ms), and they go out together. The refresh of
a row memory holds goes at once, and takes along whatever waits.
"""

import asyncio

from keystore._firestore.documents import KeyCollection, Row

#: Firestore's limit on documents per BatchGetDocuments is far above this; a
#: batch this size costs about a tenth of the calls it replaces.
MAX_BATCH = 100


class Lookups:
    """Rows by key id, read in batches (single flight per id is the cache's)."""

    def __init__(self, rows: KeyCollection, window: float) -> None:
        """``window``: how long a first read waits for others, seconds. At the
        default 50 ms and 200 unknown keys a second, batches of about ten cost
        a third of the CPU of single reads; a valid key pays the wait once per
        process, on its first check there."""
        self._rows = rows
        self._window = window
        self._waiting: dict[str, asyncio.Future[Row | None]] = {}
        self._send_at: asyncio.Handle | None = None
        #: Calls sent, for tests and benchmarks.
        self.calls = 0

    async def get(self, key_id: str, *, known: bool = False) -> Row | None:
        """The row of ``key_id``, or None; StoreUnavailable as the read raises
        it. ``known``: memory holds a row for it (a refresh, not a first read)."""
        loop = asyncio.get_running_loop()
        future = self._waiting.get(key_id)
        if future is None:
            future = self._waiting[key_id] = loop.create_future()
        if known or self._rows.connection.is_unavailable:
            # A row in use, or Firestore known to be down: go now, and take
            # along whatever waits.
            if self._send_at is not None:
                self._send_at.cancel()
            self._send_at = loop.call_soon(self._send)
        elif self._send_at is None:
            self._send_at = loop.call_later(self._window, self._send)
        # Shielded: one caller giving up must not cancel the others' read.
        return await asyncio.shield(future)

    def _send(self) -> None:
        self._send_at = None
        batch = dict(list(self._waiting.items())[:MAX_BATCH])
        for key_id in batch:
            del self._waiting[key_id]
        if self._waiting:
            self._send_at = asyncio.get_running_loop().call_soon(self._send)
        self.calls += 1
        asyncio.ensure_future(self._read(batch))

    async def _read(self, batch: dict[str, asyncio.Future[Row | None]]) -> None:
        try:
            rows = await self._rows.get_many(list(batch), cause="check")
        except Exception as exc:  # each waiter raises it: StoreUnavailable, say
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for key_id, future in batch.items():
            if not future.done():
                future.set_result(rows.get(key_id))
