"""Reads of rows not in memory, gathered into BatchGetDocuments calls.

A read costs the gRPC client most of a millisecond of CPU per call and little
per document. So reads batch themselves, with no timer: a read goes at once
when none is under way, and the reads asked for while one is go out together
when it ends (up to ``MAX_BATCH`` a call). A lone first check waits for
nothing; under a stream of unknown keys, each call carries what arrived during
the last one. The refresh of a row memory holds goes at once, and takes along
whatever waits.
"""

import asyncio

from keystore._firestore.documents import KeyCollection, Row

#: Firestore's limit on documents per BatchGetDocuments is far above this; a
#: batch this size costs about a tenth of the calls it replaces.
MAX_BATCH = 100

#: A row as read (None: there is none), and Firestore's read time (ns).
Read = tuple[Row | None, int]


class Lookups:
    """Rows by key id, read in batches (single flight per id is the cache's)."""

    def __init__(self, rows: KeyCollection) -> None:
        self._rows = rows
        self._waiting: dict[str, asyncio.Future[Read]] = {}
        self._under_way = 0
        #: Calls sent, for tests and benchmarks.
        self.calls = 0

    async def get(self, key_id: str, *, known: bool = False) -> Read:
        """The row of ``key_id`` and its read time; StoreUnavailable as the
        read raises it. ``known``: memory holds a row for it (a refresh)."""
        future = self._waiting.get(key_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[key_id] = future
        if known or not self._under_way:
            self._send()
        # Shielded: one caller giving up must not cancel the others' read.
        return await asyncio.shield(future)

    def _send(self) -> None:
        batch = dict(list(self._waiting.items())[:MAX_BATCH])
        for key_id in batch:
            del self._waiting[key_id]
        self._under_way += 1
        self.calls += 1
        asyncio.ensure_future(self._read(batch))

    async def _read(self, batch: dict[str, asyncio.Future[Read]]) -> None:
        try:
            rows, read_time = await self._rows.get_many(list(batch), cause="check")
        except Exception as exc:  # each waiter raises it: StoreUnavailable, say
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
        else:
            for key_id, future in batch.items():
                if not future.done():
                    future.set_result((rows.get(key_id), read_time))
        finally:
            self._under_way -= 1
            if self._waiting and not self._under_way:
                self._send()  # what arrived meanwhile, together
