"""Leases committed to Firestore: read, plan (lease.py), conditional commit.

One op of one allowance is: read the document with Firestore's time, plan
the change from what was read, and commit it with the precondition that the
document has not changed since. Refused (another writer got there first, or
contention aborted it): it changed nothing, so it is planned again from a
fresh read. Its answer lost: the outcome is unknown (``OutcomeUnknown``);
the next op of the allowance finds it out from the document, and commits
whatever it finds, so that nothing sent earlier can land after it.
"""

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from keystore._firestore import conditional
from keystore._firestore.connection import Connection
from keystore._firestore.errors import Refused
from keystore.errors import StoreUnavailable
from keystore.limits.lease import Ask, Grant, plan

#: Tries of one op while other writers change the document in between; each
#: waits a random moment longer than the one before, so that they spread out.
TRIES = 20
_BACKOFF_SECONDS = 0.005


class OutcomeUnknown(StoreUnavailable):
    """A commit was sent and no answer came: it may have landed."""


class Contended(StoreUnavailable):
    """Other writers changed the document at every try."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """An op whose outcome is known: its grant, whether it committed (else it
    had nothing to write), and when its read was sent (monotonic seconds)."""

    grant: Grant
    committed: bool
    sent: float


class Ledger:
    """Commits leases over ``connection``. One op at a time per allowance is
    the caller's to ensure (limiter.py runs one per allowance)."""

    def __init__(
        self,
        connection: Connection,
        *,
        reads: Counter[str],
        writes: Counter[str],
        expiry: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._reads = reads
        self._writes = writes
        self._expiry = expiry
        self._timer = timer

    async def lease(
        self,
        path: str,
        make_ask: Callable[[], Ask],
        *,
        insist: bool = False,
    ) -> Outcome:
        """One op on the document at ``path``, asking ``make_ask()`` (called
        after each read: it reads the allowance's counts as they are then).

        StoreUnavailable if Firestore cannot be reached (OutcomeUnknown once a
        commit was sent), InvalidRow if the document's limits cannot be read.
        ``insist``: send even during the pause after a failure (at shutdown).
        """
        what = f"lease on {path}"
        for attempt in range(TRIES):
            sent = self._timer()
            read = await conditional.read(self._connection, path, what, insist=insist)
            self._reads["limits"] += 1
            ask = make_ask()
            change, grant = plan(
                path, read.fields, ask, now=read.read_time, expiry=self._expiry
            )
            if not change.needed:
                return Outcome(grant, committed=False, sent=sent)
            stamp = ("leases", ask.holder, "at") if change.stamp else None
            try:
                await conditional.commit(
                    self._connection,
                    path,
                    change.sets,
                    stamp=stamp,
                    after=read,
                    what=what,
                    insist=insist,
                )
            except Refused:
                # It changed nothing; a deleted document is found at the read.
                await asyncio.sleep(random.uniform(0, _BACKOFF_SECONDS * (attempt + 1)))
                continue
            except StoreUnavailable as exc:
                raise OutcomeUnknown(str(exc)) from exc
            self._writes["limits"] += 1
            return Outcome(grant, committed=True, sent=sent)
        raise Contended(f"Too many writers on {path}; retry.")
