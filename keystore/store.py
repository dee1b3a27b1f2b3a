"""ApiKeyStore: API keys in a Firestore collection, checked from memory.

Checks ask the sync view (``sync/``), which answers from memory when it
can; limits are answered from leases held in memory (``limits/``); uses are
counted off the request path (``usage.py``); management writes go through
``manage.py``. All of it over one connection to Firestore (``_firestore/``).
"""

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from typing import Any

from keystore._firestore.connection import Connection, Interceptor
from keystore._firestore.documents import KeyCollection
from keystore._firestore.usage import DayDocuments
from keystore.background import Background
from keystore.errors import (
    ConfigError,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    KeyRejected,
    MalformedKey,
)
from keystore.histogram import Histogram
from keystore.keys import (
    id_position,
    imported_key_id,
    is_importable,
    keys_match,
    parse_key_id,
)
from keystore.limits.edits import LimitView
from keystore.limits.ledger import Ledger
from keystore.limits.limiter import Limiter, RateItem
from keystore.limits.values import RateLimit, Refill
from keystore.manage import KeyManager, check_owner
from keystore.models import ApiKey, BrokenRow, ImportResult, NewKey, Usage
from keystore.reports import OwnerUsage, span
from keystore.settings import Settings
from keystore.sync import ADVICE, make_view
from keystore.times import utcnow
from keystore.usage import UsageCounter

logger = logging.getLogger(__name__)


class ApiKeyStore:
    """API keys kept as hashed rows in Firestore, with a cache in front.

    A revoked, disabled or edited key takes effect within ``settings.cache_ttl``
    (at once in the process that made the change). Use as
    ``async with ApiKeyStore(settings) as store:`` or call :meth:`aclose`.
    ``interceptors`` (grpc.aio client interceptors) see every Firestore call.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = utcnow,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.connection = Connection(settings, timer=timer, interceptors=interceptors)
        self._rows = KeyCollection(self.connection)
        #: Where checks find rows: the cache, or every row (sync/).
        self.view = make_view(settings, self._rows, timer)
        self._manage = KeyManager(settings, self._rows, self.view, clock=clock)
        self._key_start = f"{settings.prefix}_"
        self._key_length, self._id_slice = id_position(settings.prefix)
        #: Checks by outcome ("valid", "malformed", "unknown", ...) and their time.
        self.checks: Counter[str] = Counter()
        self.check_latency = Histogram()
        self._usage = UsageCounter(DayDocuments(self._rows))
        self._counting = settings.usage_flush_interval > 0
        self._flusher = Background(self._flush_forever, name="usage flusher")
        ledger = Ledger(
            self.connection,
            reads=self._rows.reads,
            writes=self._rows.writes,
            expiry=settings.lease_expiry,
            timer=timer,
        )
        #: Rate limits and credits, answered from leases held in memory.
        self.limiter = Limiter(
            ledger,
            keys=settings.collection,
            owners=settings.owners_collection,
            lease_seconds=settings.lease_seconds,
            lease_expiry=settings.lease_expiry,
            retry_after=settings.retry_after,
            recheck_seconds=min(settings.cache_ttl, 5.0),
            wait_seconds=2 * settings.timeout,
            timer=timer,
        )

    @property
    def reads(self) -> Counter[str]:
        """Firestore documents read, by cause ("check", "list", "admin", ...)."""
        return self._rows.reads

    @property
    def writes(self) -> Counter[str]:
        """Firestore documents written, by cause."""
        return self._rows.writes

    @property
    def is_ready(self) -> bool:
        """True once checks can be answered (reload, listen: after the first load)."""
        return self.view.is_ready

    @property
    def background_restarts(self) -> dict[str, int]:
        """Restarts of each background task after an unexpected error."""
        tasks = (self._flusher, self.limiter.sweeper.task, *self.view.background)
        return {task.name: task.restarts for task in tasks}

    @property
    def usage_pending(self) -> int:
        """Key-days of uses counted but not yet written."""
        return len(self._usage)

    async def __aenter__(self) -> "ApiKeyStore":
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect to Firestore and start the background work."""
        await self._rows.open()
        await self.view.start()
        logger.info(
            "keystore: sync mode %s; CPU between requests %s. %s",
            self.settings.sync,
            "not known yet (on Cloud Run: it depends on the billing)"
            if os.environ.get("K_SERVICE")
            else "not known yet",
            ADVICE[self.settings.sync],
        )
        if self._counting:
            self._flusher.start()
        self.limiter.sweeper.task.start()

    async def aclose(self) -> None:
        """Give back what the leases hold unspent, write pending usage counts,
        then close the Firestore client, within ``settings.shutdown_seconds``.
        Never raises: what could not be given back or written is logged."""
        timer = time.monotonic  # real time: the shutdown's own budget
        deadline = timer() + self.settings.shutdown_seconds
        await self.limiter.sweeper.task.stop()
        try:
            # Half the time for the leases; what is left, for the counts.
            seconds = self.settings.shutdown_seconds / 2
            held = await self.limiter.sweeper.give_back(insist=True, seconds=seconds)
        except Exception:
            logger.exception("The leases could not be given back.")
            held = -1
        if held:
            # What they hold is recorded as stranded once their leases expire.
            logger.warning(
                "Leases on %s documents could not be given back: Firestore "
                "unreachable.",
                held if held > 0 else "some",
            )
        await self.view.stop()
        # A flush under way finishes; then the last ones, past any pause.
        await self._flusher.stop(drain=max(0.0, deadline - timer()))
        while len(self._usage) and timer() < deadline:
            with contextlib.suppress(Exception):
                await self._usage.flush(insist=True)
            if len(self._usage):
                await asyncio.sleep(min(0.2, max(0.0, deadline - timer())))
        if len(self._usage):
            logger.warning(
                "Usage counts of %d key-days could not be written: Firestore "
                "unreachable.",
                len(self._usage),
            )
        await self._rows.aclose()

    # -- checks: the request path ---------------------------------------------

    async def verify(self, key: str) -> ApiKey:
        """The key's record, or KeyRejected saying why not; StoreUnavailable if
        Firestore cannot answer for a key not held in memory."""
        # One flat function: this is the hot path, measured in microseconds.
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            record = self._held(key)
            # The hash is compared before the row's state is told, so that
            # knowing a key id alone reveals nothing about the key.
            if record is None or not keys_match(key, record.hash):
                # Not a key held in memory as it stands: check its format (a
                # typo fails here, before any read), then ask the source.
                key_id = self._key_id(key)
                if record is not None and record.id == key_id:
                    raise KeyNotFound()  # the row for its id is held: not its key
                record = await self.view.get(key_id)
                if record is None or not keys_match(key, record.hash):
                    raise KeyNotFound()
            if record.disabled:
                raise KeyDisabled()
            # Most keys never expire: no clock read for those.
            if record.expires_at is not None and record.is_expired(self._clock()):
                raise KeyExpired()
            outcome = "valid"
            return record
        except KeyRejected as exc:
            outcome = exc.outcome
            raise
        finally:
            self.checks[outcome] += 1
            self.check_latency.observe(time.perf_counter() - started)

    def try_spend(self, record: ApiKey, cost: int = 1) -> bool:
        """Let one request of a verified key through its limits from memory,
        and count it as a use: True if that answered; False if ``spend`` must
        decide (it may wait for a lease)."""
        charged = 0
        if record.has_limits:
            charged = self.limiter.try_spend(record, cost)
            if charged < 0:
                return False
        if self._counting:
            self._usage.add(record.id, charged, record.owner)
        return True

    async def spend(self, record: ApiKey, cost: int = 1) -> None:
        """Let one request of a verified key through its limits (and its
        owner's) at ``cost`` credits, and count it as a use: RateLimited,
        CreditsExhausted, KeyNotFound (its row is gone), or StoreUnavailable
        if credits are needed and no lease can be had. The key's
        ``credits_left`` tells what is left after."""
        charged = 0
        if record.has_limits:
            charged = await self.limiter.spend(record, cost)
        if self._counting:
            self._usage.add(record.id, charged, record.owner)

    def rate_limits(self, record: ApiKey) -> list[RateItem]:
        """The rate limits of ``record`` and its owner as they stand: for the
        RateLimit headers; nothing is spent."""
        return self.limiter.rate_items(record) if record.has_limits else []

    async def get_api_key(self, key: str) -> ApiKey | None:
        """The key's record if the key is valid now, else None; a valid key
        counts as used (limits apply only through ``spend``)."""
        try:
            record = await self.verify(key)
        except KeyRejected:
            return None
        if self._counting:
            self._usage.add(record.id, 0, record.owner)
        return record

    async def does_api_key_exist(self, key: str) -> bool:
        """True if ``key`` is a valid key now (present, enabled, not expired);
        a valid key counts as used."""
        return await self.get_api_key(key) is not None

    def _held(self, key: str) -> ApiKey | None:
        """The row memory holds for the id where a key of ours carries it.

        The fast path skips the format check: a key whose hash matches a row's
        is the key that row was made from (made well-formed, or imported under
        an id derived from its hash, never at this position).
        """
        if (
            len(key) != self._key_length
            or not key.startswith(self._key_start)
            or not key.isascii()  # a lone surrogate, say, cannot be encoded
        ):
            return None
        return self.view.peek(key[self._id_slice])

    def _key_id(self, key: str) -> str:
        try:
            return parse_key_id(key, self.settings.prefix)
        except MalformedKey:
            if self.settings.imported_keys and is_importable(key):
                return imported_key_id(key)
            raise

    # -- management: CLI and admin API (manage.py) ------------------------------

    async def create(
        self,
        *,
        name: str,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
        owner: str | None = None,
        rate_limit: RateLimit | None = None,
        credits: int | None = None,
        refill: Refill | None = None,
        funded_by: ApiKey | None = None,
        most_live: int | None = None,
    ) -> NewKey:
        """Make a key, store its hash, and return it; the plaintext is not kept.

        ``credits`` is the balance now; a ``refill`` replaces it at the start of
        each period (without ``credits``, the first refill applies at once).
        ``funded_by``: a key whose own credits pay for the new key's, in the
        same commit (InsufficientCredits if it has fewer). ``most_live``: a
        cap on the owner's live keys, held however many create at once
        (TooManyKeys)."""
        if funded_by is not None and credits:
            # What this process holds of the funder's credits goes back first.
            await self.limiter.sweeper.release(funded_by)
        return await self._manage.create(
            name=name,
            scopes=scopes,
            expires_at=expires_at,
            owner=owner,
            rate_limit=rate_limit,
            credits=credits,
            refill=refill,
            funded_by=funded_by,
            most_live=most_live,
        )

    async def get(self, key_id: str) -> ApiKey | BrokenRow:
        """One row by key id; KeyNotFound if there is none."""
        return await self._manage.get(key_id)

    async def list_keys(
        self,
        *,
        disabled: bool = False,
        expired: bool = False,
        scope: str | None = None,
        owner: str | None = None,
    ) -> list[ApiKey | BrokenRow]:
        """Rows, oldest first; with a filter, only the readable rows that match.
        With ``owner``, only that owner's rows are read."""
        return await self._manage.list_keys(
            disabled=disabled, expired=expired, scope=scope, owner=owner
        )

    async def update(
        self, key_id: str, *, limits: Mapping[str, Any] | None = None, **changes: Any
    ) -> ApiKey:
        """Change ``name``, ``scopes``, ``disabled``, ``expires_at`` or
        ``owner`` of a key, and ``limits`` (as ``set_limits`` takes them), in
        one commit. With no changes, the row is read and returned."""
        return await self._manage.update(key_id, changes, limits or {})

    async def set_limits(self, key_id: str, **limits: Any) -> ApiKey:
        """Set or remove (None) a key's ``rate_limit``, ``credits`` (left) and
        ``refill``; limits not named stay as they are."""
        return await self._manage.update(key_id, {}, limits)

    async def set_owner_limits(self, owner: str, **limits: Any) -> LimitView:
        """Set or remove an owner's limits (its document is made if need be)."""
        return await self._manage.set_owner_limits(owner, **limits)

    async def limits(self, key_id: str) -> LimitView:
        """Where a key's limits and credits stand now."""
        return await self._manage.limits(key_id)

    async def owner_limits(self, owner: str) -> LimitView | None:
        """Where an owner's limits and credits stand; None if it has none."""
        return await self._manage.owner_limits(owner)

    async def revoke(self, key_id: str, *, owner: str | None = None) -> None:
        """Delete the key's row; KeyNotFound if there is none (with ``owner``:
        if that owner has none of this id)."""
        await self._manage.revoke(key_id, owner=owner)

    async def rotate(
        self,
        key_id: str,
        *,
        grace: timedelta,
        expires_at: datetime | None = None,
        most_live: int | None = None,
        owner: str | None = None,
        terms: Callable[[ApiKey], datetime | None] | None = None,
    ) -> NewKey:
        """A new key with the old one's name, scopes, owner and limits; the old
        key stays valid for ``grace``, then expires by itself. ``most_live``:
        a cap on the owner's live keys, the old one counted until it expires.
        ``owner``: as that owner, who rotates only its own keys (KeyNotFound)
        while they work (KeyDisabled, KeyExpired). ``terms``: given the old
        key, the new one's expiry in place of ``expires_at``, or a refusal."""
        return await self._manage.rotate(
            key_id,
            grace=grace,
            expires_at=expires_at,
            most_live=most_live,
            owner=owner,
            terms=terms,
        )

    async def import_keys(
        self,
        keys: Iterable[tuple[str, str]],
        *,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
    ) -> ImportResult:
        """Store the hashes of existing plaintext keys, given as (name, key) pairs."""
        return await self._manage.import_keys(
            keys, scopes=scopes, expires_at=expires_at
        )

    async def usage(self, key_id: str, *, days: int = 30) -> Usage:
        """A key's total uses, last use, and uses per day for the last ``days``."""
        return await self._manage.usage(key_id, days=days)

    async def owner_usage(self, owner: str, first: date, last: date) -> OwnerUsage:
        """``owner``'s uses and credits spent per UTC day and per key, from
        ``first`` to ``last`` inclusive (at most 366 days: ValueError), those
        of keys revoked or deleted since included; and its credits left."""
        check_owner(owner)
        return await self._manage.owners.usage(owner, *span(first, last))

    async def flush_usage(self) -> int:
        """Write the usage counts gathered so far; return the uses written."""
        return await self._usage.flush()

    async def _flush_forever(self) -> None:
        stopping = self._flusher.stopping
        while not stopping.is_set():
            # Wake at the interval, early when the pending counts reach their
            # bound, or to stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.usage_flush_interval):
                    await _first(self._usage.full.wait(), stopping.wait())
            if stopping.is_set():
                return
            # An outage keeps the counts for the next flush (usage.py); any
            # other error is for the supervisor.
            await self._usage.flush()


async def _first(*waits: Any) -> None:
    """Wait until the first of ``waits`` (coroutines) ends; cancel the rest."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


_store: ApiKeyStore | None = None


def get_store(settings: Settings | None = None) -> ApiKeyStore:
    """The process-wide store, built on first use from ``settings`` or the env."""
    global _store
    if _store is None:
        _store = ApiKeyStore(settings or Settings.from_env())
    elif settings is not None and settings != _store.settings:
        raise ConfigError(
            "The key store is already set up with other settings; "
            "call reset_store() first."
        )
    return _store


async def reset_store() -> None:
    """Close and forget the process-wide store (for tests and app shutdown)."""
    global _store
    store = _store
    if store is not None:
        # Closed before it is forgotten: a request still running meanwhile
        # finds this store, not a new one built from the environment.
        await store.aclose()
    _store = None
