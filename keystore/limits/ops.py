"""Ops on allowances: one at a time each, run in the background, their
outcomes applied (allowance.py) whatever became of the request that wanted
them: a lease a client hung up on still lands, and is used.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from keystore.errors import InvalidRow, StoreUnavailable
from keystore.limits.allowance import Allowance
from keystore.limits.ledger import Ledger, Outcome, OutcomeUnknown

logger = logging.getLogger(__name__)

#: How many times an op follows a rotated key's limits to another row.
_MOVES = 4


class Ops:
    """Runs the ops of one process's allowances over ``ledger``."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        lease_seconds: float,
        lease_expiry: float,
        retry_after: int,
        recheck_seconds: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self._lease_seconds = lease_seconds
        self._expiry = lease_expiry
        self._retry_after = retry_after
        self._recheck = recheck_seconds
        self._timer = timer
        self._invalid_warned: set[str] = set()

    def start(
        self,
        a: Allowance,
        *,
        give_back: bool = False,
        stamp: bool = False,
        insist: bool = False,
    ) -> "asyncio.Task[bool]":
        """Start an op on ``a`` (the caller checked none runs): a top-up, a
        give-back, or a stamp; ``insist``: past the pause after a failure."""
        assert not a.evicted, "an op on a dropped allowance would go unnoticed"
        task = asyncio.ensure_future(
            self._run(a, give_back=give_back, stamp=stamp, insist=insist)
        )
        a.op = task
        return task

    async def _run(
        self, a: Allowance, *, give_back: bool, stamp: bool, insist: bool
    ) -> bool:
        """One op on ``a``; False if Firestore gave no answer to go by."""
        now = self._timer()
        a.note_use(now)
        if give_back:
            a.returning = True  # closes the fast path until the op ends
            a.refresh(now, self._lease_seconds)
        try:
            outcome = await self._lease(
                a, give_back=give_back, stamp=stamp, insist=insist
            )
        except StoreUnavailable as exc:
            if isinstance(exc, OutcomeUnknown):
                a.lost(give_back=give_back)
            self._failed(a, exc)
            return False
        except InvalidRow as exc:
            self._failed(a, exc)
            if a.doc_id not in self._invalid_warned:
                self._invalid_warned.add(a.doc_id)
                logger.warning("%s", exc)
            return False
        except Exception as exc:
            # Never a 500, and never a lease forgotten: an op that failed in
            # an unforeseen way is taken as sent and unanswered.
            logger.exception("A lease on %s failed unexpectedly.", a.doc_id)
            a.lost(give_back=give_back)
            self._failed(a, exc)
            return False
        finally:
            a.op = None
            a.returning = False
        self._apply(a, outcome)
        return True

    async def _lease(
        self, a: Allowance, *, give_back: bool, stamp: bool, insist: bool
    ) -> Outcome:
        for _ in range(_MOVES):
            outcome = await self.ledger.lease(
                f"{a.collection}/{a.doc_id}",
                lambda: a.ask(
                    uuid.uuid4().hex,
                    self._lease_seconds,
                    give_back=give_back,
                    stamp=stamp,
                ),
                insist=insist,
            )
            moved = outcome.grant.moved_to
            if moved is None:
                return outcome
            # A rotated key's limits (and this allowance's entry) moved along.
            a.doc_id = moved
        raise StoreUnavailable(f"The limits of {a.doc_id} moved too often; retry.")

    def _failed(self, a: Allowance, exc: BaseException) -> None:
        now = self._timer()
        a.degraded_until = now + self._retry_after
        a.refresh(now, self._lease_seconds)
        logger.debug("lease on %s %s failed: %s", a.name, a.doc_id, exc)

    def _apply(self, a: Allowance, outcome: Outcome) -> None:
        now = self._timer()
        grant = outcome.grant
        a.recheck_at = now + self._recheck
        a.degraded_until = 0.0
        if grant.missing:
            a.drop()
            a.unknown = False
            if a.name == "key":
                a.gone = True  # the row is gone: the key was revoked
            else:
                a.configure(None, None, False)  # an owner without limits
        else:
            a.settle(
                grant,
                sent=outcome.sent,
                committed=outcome.committed,
                expiry=self._expiry,
            )
        a.refresh(now, self._lease_seconds)

    # -- background: idle leases go back ---------------------------------------
