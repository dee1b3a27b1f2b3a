"""Reads of rows not in memory, gathered into one BatchGetDocuments call.

Each read costs about half a millisecond of CPU in the gRPC client, most of it
per call, not per document, and it runs on the event loop's core, beside the
checks answered from memory. So a lookup that comes while another is under way
waits up to 20 ms for more to come, and they go out together; a lone lookup
goes at once.
"""

import asyncio

from keystore.collection import KeyCollection, Row

#: How long lookups gather while others are under way, seconds.
WINDOW = 0.02
#: Firestore's limit on documents per BatchGetDocuments is far above this; a
#: batch this size costs about a tenth of the calls it replaces.
MAX_BATCH = 100


class Lookups:
    """Rows by key id, read in batches (single flight per id is the cache's)."""

    def __init__(self, rows: KeyCollection) -> None:
        self._rows = rows
        self._waiting: dict[str, asyncio.Future[Row | None]] = {}
        self._scheduled = False
        self._in_flight = 0
        #: Calls sent, for tests and benchmarks.
        self.calls = 0

    async def get(self, key_id: str) -> Row | None:
        """The row of ``key_id``, or None; StoreUnavailable as the read raises it."""
        future = self._waiting.get(key_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[key_id] = future
        if not self._scheduled:
            self._scheduled = True
            # Others under way: more are coming, gather them. Alone, or with
            # Firestore known to be down, go at once.
            busy = self._in_flight and not self._rows.connection.is_unavailable
            asyncio.get_running_loop().call_later(WINDOW if busy else 0, self._send)
        # Shielded: one caller giving up must not cancel the others' read.
        return await asyncio.shield(future)

    def _send(self) -> None:
        self._scheduled = False
        batch = dict(list(self._waiting.items())[:MAX_BATCH])
        for key_id in batch:
            del self._waiting[key_id]
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)
        self.calls += 1
        self._in_flight += 1
        asyncio.ensure_future(self._read(batch))

    async def _read(self, batch: dict[str, asyncio.Future[Row | None]]) -> None:
        try:
            rows = await self._rows.get_many(list(batch), cause="check")
        except Exception as exc:  # each waiter raises it: StoreUnavailable, say
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        finally:
            self._in_flight -= 1
        for key_id, future in batch.items():
            if not future.done():
                future.set_result(rows.get(key_id))
