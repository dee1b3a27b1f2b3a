"""The background of limits: idle leases given back and their allowances
dropped, old entries stamped anew, and everything given back at shutdown.

On an instance with no CPU between requests none of this runs while idle:
a lease then stays with its holder until it expires there, and is taken for a
stopped process's elsewhere (docs/limits.md).
"""

import asyncio
import time
from collections.abc import Callable

from keystore.background import Background
from keystore.limits.allowance import Allowance
from keystore.limits.ops import Ops
from keystore.models import ApiKey


class Sweeper:
    """Sweeps one process's allowances (``allowances``, shared with the
    limiter, by the document they were asked for)."""

    def __init__(
        self,
        ops: Ops,
        allowances: dict[tuple[str, str], Allowance],
        *,
        keys: str,
        lease_seconds: float,
        lease_expiry: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ops = ops
        self._allowances = allowances
        self._keys = keys
        self._lease_seconds = lease_seconds
        self._expiry = lease_expiry
        self._timer = timer
        self.task = Background(self._sweep_forever, name="lease sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self._lease_seconds, self._expiry / 4))
            await self.sweep(idle_for=2 * self._lease_seconds)

    async def sweep(self, *, idle_for: float) -> None:
        """Give back what allowances idle for ``idle_for`` seconds hold, and
        drop them; renew entries stamped long ago."""
        now = self._timer()
        ops = []
        for key, a in list(self._allowances.items()):
            if a.op is not None or a.waiting:
                continue
            if now - a.last_used >= idle_for:
                if a.holds_anything:
                    ops.append(self._ops.start(a, give_back=True))
                else:
                    self._evict(key, a)
            elif a.entry is not None and now - a.stamped >= self._expiry / 3:
                ops.append(self._ops.start(a, stamp=True))
        await asyncio.gather(*(asyncio.shield(op) for op in ops))
        for key, a in list(self._allowances.items()):
            if self._timer() - a.last_used >= idle_for:
                self._evict(key, a)

    def _evict(self, key: tuple[str, str], a: Allowance) -> None:
        """Drop ``a`` if nothing is held, under way or waiting on it: a record
        bound to it binds anew."""
        if a.op is not None or a.waiting or a.holds_anything:
            return
        del self._allowances[key]
        a.evicted = True
        a.fast_until = 0.0

    async def release(self, record: ApiKey) -> None:
        """Give back what this process holds of ``record``'s own limits (its
        credits are about to be handed on)."""
        a = self._allowances.get((self._keys, record.limits_in or record.id))
        if a is None:
            return
        if a.op is not None:
            await asyncio.shield(a.op)
        if a.holds_anything and a.op is None:
            await asyncio.shield(self._ops.start(a, give_back=True))

    async def give_back(self, *, insist: bool = False, seconds: float = 0.0) -> int:
        """Give back everything held; at shutdown (``insist``), trying again
        for up to ``seconds``. The number of documents still holding a lease
        of ours."""
        # Real time, not the injectable timer: a shutdown's own budget.
        deadline = time.monotonic() + seconds
        # An op under way may bring a lease (a first one, say): wait for it.
        pending = [
            a for a in self._allowances.values() if a.holds_anything or a.op is not None
        ]
        while True:
            for a in pending:
                if a.op is not None:
                    await asyncio.shield(a.op)  # a top-up under way: then back
            ops = [
                self._ops.start(a, give_back=True, insist=insist)
                for a in pending
                if a.op is None and a.holds_anything
            ]
            await asyncio.gather(*(asyncio.shield(op) for op in ops))
            pending = [a for a in pending if a.holds_anything]
            if not pending or time.monotonic() >= deadline:
                return len(pending)
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
