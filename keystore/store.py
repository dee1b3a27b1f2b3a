"""ApiKeyStore: API keys in a Firestore collection, checked from memory.

Checks ask the source of the sync mode (``sources.py``), which answers from
memory when it can; management calls go straight to the collection
(``collection.py``), over the one connection to Firestore (``connection.py``);
uses are counted off the request path (``usage.py``).
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from keystore._firestore.connection import Connection, Interceptor
from keystore._firestore.documents import KeyCollection
from keystore.background import Background
from keystore.errors import (
    ConfigError,
    InvalidRow,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    KeyRejected,
    MalformedKey,
)
from keystore.keys import (
    hash_key,
    id_position,
    imported_key_id,
    is_importable,
    keys_match,
    new_key,
    new_key_id,
    parse_key_id,
)
from keystore.ledger import Ledger, LimitView, describe, limit_changes
from keystore.limiter import Limiter
from keystore.limits import RateLimit, Refill
from keystore.metrics import Histogram
from keystore.models import (
    ApiKey,
    BrokenRow,
    ImportResult,
    NewKey,
    Usage,
    is_document_id,
    parse_row,
)
from keystore.settings import Settings
from keystore.sources import make_source
from keystore.times import utcnow
from keystore.usage import UsageCounter

logger = logging.getLogger(__name__)

#: Fields that ``update`` may change.
EDITABLE = frozenset({"name", "scopes", "disabled", "expires_at", "owner"})


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
        #: Where checks find rows: the cache, or every row (see sources.py).
        self.source = make_source(settings, self._rows, timer)
        self._key_start = f"{settings.prefix}_"
        self._key_length, self._id_slice = id_position(settings.prefix)
        #: Checks by outcome ("valid", "malformed", "unknown", ...) and their time.
        self.checks: Counter[str] = Counter()
        self.check_latency = Histogram()
        self._usage = UsageCounter(self._rows)
        self._flusher = Background(self._flush_forever, name="usage flusher")
        ledger = Ledger(
            self.connection,
            reads=self._rows.reads,
            writes=self._rows.writes,
            lease_expiry=settings.lease_expiry,
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
            wall=time.time if clock is utcnow else lambda: clock().timestamp(),
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
        return self.source.is_ready

    @property
    def background_restarts(self) -> dict[str, int]:
        """Restarts of each background task after an unexpected error."""
        tasks = (self._flusher, self.limiter.sweeper, *self.source.background)
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
        """Connect to Firestore and start the usage flusher (if counting is on)."""
        await self._rows.open()
        await self.source.start()
        if self.settings.usage_flush_interval:
            self._flusher.start()
        self.limiter.sweeper.start()

    async def aclose(self) -> None:
        """Give back what the leases hold unspent, write pending usage counts,
        then close the Firestore client."""
        await self._flusher.stop()
        await self.limiter.sweeper.stop()
        if await self.limiter.give_back():
            # What was held stays stranded (see limiter.py), and is recorded
            # as such once the lease expires.
            logger.warning("Leases could not be given back: Firestore unreachable.")
        await self.source.stop()
        if len(self._usage) or self.limiter.credits_spent:
            await self.flush_usage()
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
                record = await self.source.get(key_id)
                if record is None or not keys_match(key, record.hash):
                    raise KeyNotFound()
            if record.disabled:
                raise KeyDisabled()
            # Most keys never expire: no clock read for those.
            if record.expires_at is not None and record.is_expired(self._clock()):
                raise KeyExpired()
            if self._flusher.is_running:
                self._usage.add(record.id)
            outcome = "valid"
            return record
        except KeyRejected as exc:
            outcome = exc.outcome
            raise
        finally:
            self.checks[outcome] += 1
            self.check_latency.observe(time.perf_counter() - started)

    async def spend(self, record: ApiKey, cost: int = 1) -> None:
        """Let one request of a verified key through its limits (and its
        owner's) at ``cost`` credits: RateLimited, CreditsExhausted, or
        StoreUnavailable if credits are needed and Firestore cannot lease them.
        The key's ``credits_left`` tells what is left after."""
        if record.has_limits:
            await self.limiter.spend(record, cost)

    async def get_api_key(self, key: str) -> ApiKey | None:
        """The key's record if the key is valid now, else None."""
        try:
            return await self.verify(key)
        except KeyRejected:
            return None

    async def does_api_key_exist(self, key: str) -> bool:
        """True if ``key`` is a valid key now (present, enabled, not expired)."""
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
        return self.source.peek(key[self._id_slice])

    def _key_id(self, key: str) -> str:
        try:
            return parse_key_id(key, self.settings.prefix)
        except MalformedKey:
            if self.settings.imported_keys and is_importable(key):
                return imported_key_id(key)
            raise

    # -- management: CLI and admin API ----------------------------------------

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
    ) -> NewKey:
        """Make a key, store its hash, and return it; the plaintext is not kept.

        ``credits`` is the balance now; a ``refill`` replaces it at the start of
        each period (without ``credits``, the first refill applies at once)."""
        if owner is not None:
            _check_owner(owner)
        made = self._new(name=name, scopes=scopes, expires_at=expires_at)
        record = replace(
            made.record,
            owner=owner,
            rate_limit=rate_limit,
            credits=credits,
            refill=refill,
        )
        made = NewKey(record=record, key=made.key)
        row = record.to_row()
        if refill is not None and credits is not None:
            row["refilled_for"] = refill.period(self._clock())
        at = await self._rows.commit({record.id: row}, {}, cause="admin")
        self.source.remember(made.record.id, made.record, at)
        return made

    async def get(self, key_id: str) -> ApiKey | BrokenRow:
        """One row by key id; KeyNotFound if there is none."""
        if not key_id or "/" in key_id:
            raise KeyNotFound(f"No key with id '{key_id}'.")
        row = await self._rows.get(key_id, cause="admin")
        if row is None:
            raise KeyNotFound(f"No key with id '{key_id}'.")
        return _read(key_id, row)

    async def _readable(self, key_id: str) -> ApiKey:
        """One row by key id; KeyNotFound if there is none, InvalidRow if it
        cannot be read."""
        record = await self.get(key_id)
        if isinstance(record, BrokenRow):
            raise InvalidRow(record.id, record.field, record.problem)
        return record

    async def list_keys(
        self,
        *,
        disabled: bool = False,
        expired: bool = False,
        scope: str | None = None,
        owner: str | None = None,
    ) -> list[ApiKey | BrokenRow]:
        """Rows, oldest first; with a filter, only the readable rows that match."""
        listing = await self._rows.all(cause="list")
        rows = [_read(key_id, row) for key_id, row in listing.rows]
        now = self._clock()
        if disabled or expired or scope or owner:
            rows = [
                row
                for row in rows
                if isinstance(row, ApiKey)
                and (not disabled or row.disabled)
                and (not expired or row.is_expired(now))
                and (not scope or scope in row.scopes)
                and (not owner or row.owner == owner)
            ]
        epoch = datetime.min.replace(tzinfo=now.tzinfo)
        return sorted(
            rows, key=lambda row: (getattr(row, "created_at", None) or epoch, row.id)
        )

    async def update(self, key_id: str, **changes: Any) -> ApiKey:
        """Change ``name``, ``scopes``, ``disabled`` or ``expires_at`` of a key.

        With no changes, the row is read and returned, and nothing else done."""
        unknown = set(changes) - EDITABLE
        if unknown:
            raise ValueError(f"Field '{sorted(unknown)[0]}' cannot be changed.")
        if "scopes" in changes:
            changes["scopes"] = list(dict.fromkeys(changes["scopes"]))
        if changes.get("owner") is not None:
            _check_owner(changes["owner"])
        if not changes:
            return await self._readable(key_id)
        at = await self._rows.update(key_id, changes, cause="admin")
        try:
            record = await self._readable(key_id)
        except InvalidRow:
            self.source.remember(key_id, None, at)
            raise
        self.source.remember(key_id, record, at)
        return record

    async def set_limits(self, key_id: str, **limits: Any) -> ApiKey:
        """Set or remove (None) a key's ``rate_limit``, ``credits`` (left) and
        ``refill``; limits not named stay as they are."""
        if not key_id or "/" in key_id:
            raise KeyNotFound(f"No key with id '{key_id}'.")

        def changes(doc: Mapping[str, Any] | None) -> dict[str, Any]:
            if doc is None:
                raise KeyNotFound(f"No key with id '{key_id}'.")
            return limit_changes(doc, self._clock(), **limits)

        row, at = await self.limiter.ledger.change(
            self.settings.collection, key_id, changes, cause="admin"
        )
        record = _read(key_id, row)
        if isinstance(record, BrokenRow):
            self.source.remember(key_id, None, at)
            raise InvalidRow(record.id, record.field, record.problem)
        self.source.remember(key_id, record, at)
        return record

    async def set_owner_limits(self, owner: str, **limits: Any) -> LimitView:
        """Set or remove an owner's limits (its document is made if need be)."""
        _check_owner(owner)
        doc, _ = await self.limiter.ledger.change(
            self.settings.owners_collection,
            owner,
            lambda doc: limit_changes(doc or {}, self._clock(), **limits),
            cause="admin",
        )
        return describe(owner, doc, self._clock())

    async def limits(self, key_id: str) -> LimitView:
        """Where a key's limits and credits stand now."""
        record = await self._readable(key_id)
        row = await self._rows.get(record.id, cause="admin")
        return describe(key_id, row or {}, self._clock())

    async def owner_limits(self, owner: str) -> LimitView | None:
        """Where an owner's limits and credits stand; None if it has none."""
        _check_owner(owner)
        doc = await self.limiter.ledger.read(
            self.settings.owners_collection, owner, cause="admin"
        )
        return None if doc is None else describe(owner, doc, self._clock())

    async def revoke(self, key_id: str) -> None:
        """Delete the key's row; KeyNotFound if there is none."""
        at = await self._rows.delete(key_id, cause="admin")
        self.source.remember(key_id, None, at)

    async def rotate(
        self,
        key_id: str,
        *,
        grace: timedelta,
        expires_at: datetime | None = None,
    ) -> NewKey:
        """A new key with the old one's name, scopes, owner and limits; the old
        key stays valid for ``grace``, then expires by itself. The credits not
        held by a process move to the new key. Both rows are written atomically."""
        old = await self._readable(key_id)
        raw = await self._rows.get(key_id, cause="admin") or {}
        pool = raw.get("credits") if old.has_credit_limit else None
        made = self._new(
            name=old.name, scopes=old.scopes, expires_at=expires_at, rotated_from=old.id
        )
        record = replace(
            made.record,
            owner=old.owner,
            rate_limit=old.rate_limit,
            credits=pool,
            refill=old.refill,
        )
        made = NewKey(record=record, key=made.key)
        row = record.to_row()
        if raw.get("refilled_for") is not None:
            row["refilled_for"] = raw["refilled_for"]
        old_until = self._clock() + grace
        if old.expires_at is not None:
            old_until = min(old_until, old.expires_at)
        old_changes: dict[str, Any] = {
            "expires_at": old_until,
            "rotated_to": record.id,
        }
        if pool is not None:
            old_changes["credits"] = 0
        at = await self._rows.commit(
            {record.id: row}, {old.id: old_changes}, cause="admin"
        )
        self.source.remember(made.record.id, made.record, at)
        self.source.remember(
            old.id, replace(old, expires_at=old_until, rotated_to=made.record.id), at
        )
        return made

    async def import_keys(
        self,
        keys: Iterable[tuple[str, str]],
        *,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
    ) -> ImportResult:
        """Store the hashes of existing plaintext keys, given as (name, key) pairs.

        A key's row id is derived from the key, so importing it again changes
        nothing. Keys of keystore's own format keep their id.
        """
        created: list[str] = []
        existing: list[str] = []
        rejected = 0
        scopes = tuple(scopes)
        for name, key in keys:
            try:
                key_id = parse_key_id(key, self.settings.prefix)
            except MalformedKey:
                if not is_importable(key):
                    rejected += 1
                    continue
                key_id = imported_key_id(key)
            record = self._record(
                key_id=key_id, key=key, name=name, scopes=scopes, expires_at=expires_at
            )
            at = await self._rows.create(key_id, record.to_row(), cause="admin")
            if at is None:
                existing.append(key_id)
            else:
                created.append(key_id)
                self.source.remember(key_id, record, at)
        return ImportResult(created=created, existing=existing, rejected=rejected)

    async def usage(self, key_id: str, *, days: int = 30) -> Usage:
        """A key's total uses, last use, and uses per day for the last ``days``."""
        record = await self.get(key_id)
        count = record.usage_count if isinstance(record, ApiKey) else 0
        last = record.last_used_at if isinstance(record, ApiKey) else None
        return Usage(
            key_id=key_id,
            total=count,
            last_used_at=last,
            days=await self._rows.usage_days(key_id, days),
        )

    async def flush_usage(self) -> int:
        """Write the usage counts gathered so far; return the uses written."""
        for (key_id, day), credits in self.limiter.take_spent().items():
            self._usage.add_credits(key_id, credits, day)
        return await self._usage.flush()

    def _new(
        self,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: datetime | None,
        rotated_from: str | None = None,
    ) -> NewKey:
        key_id = new_key_id()
        key = new_key(self.settings.prefix, key_id)
        record = self._record(
            key_id=key_id,
            key=key,
            name=name,
            scopes=scopes,
            expires_at=expires_at,
            rotated_from=rotated_from,
        )
        return NewKey(record=record, key=key)

    def _record(
        self,
        *,
        key_id: str,
        key: str,
        name: str,
        scopes: Iterable[str],
        expires_at: datetime | None,
        rotated_from: str | None = None,
    ) -> ApiKey:
        now = self._clock()
        if expires_at is None and self.settings.default_expiry is not None:
            expires_at = now + self.settings.default_expiry
        return ApiKey(
            id=key_id,
            name=name,
            scopes=tuple(dict.fromkeys(scopes)),
            expires_at=expires_at,
            created_at=now,
            hash=hash_key(key),
            rotated_from=rotated_from,
        )

    async def _flush_forever(self) -> None:
        while True:
            # Wake at the interval, or early when the pending counts are at their bound.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.usage_flush_interval):
                    await self._usage.full.wait()
            # An outage keeps the counts for the next flush (usage.py); any
            # other error is for the supervisor.
            await self.flush_usage()


def _check_owner(owner: str) -> None:
    if len(owner) > 200 or not is_document_id(owner):
        raise ValueError(
            "An owner is 1 to 200 characters, without '/', and not '.', '..' "
            "or '__...__' (a Firestore document id)."
        )


def _read(key_id: str, row: dict[str, Any]) -> ApiKey | BrokenRow:
    try:
        return parse_row(key_id, row)
    except InvalidRow as exc:
        return BrokenRow(id=exc.key_id, field=exc.field, problem=exc.problem)


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
    store, _store = _store, None
    if store is not None:
        await store.aclose()
