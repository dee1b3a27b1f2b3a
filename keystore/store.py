"""ApiKeyStore: API keys in a Firestore collection, checked from memory.

Every Firestore call has a deadline and its failures become StoreUnavailable here,
at the boundary. After a failure the store stops asking Firestore for
``retry_after`` seconds, so an outage costs callers no waiting: known keys are
served from memory (stale-if-error) and unknown ones get StoreUnavailable at once.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions as google_errors
from google.api_core.retry import AsyncRetry, if_transient_error
from google.auth.exceptions import GoogleAuthError
from google.cloud import firestore

from keystore.cache import KeyCache
from keystore.errors import (
    ConfigError,
    InvalidRow,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    KeyRejected,
    StoreUnavailable,
)
from keystore.keys import hash_key, keys_match, new_key, new_key_id, parse_key_id
from keystore.models import ApiKey, BrokenRow, NewKey, parse_row
from keystore.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "Firestore did not answer"; anything else from Google is a bug
# or a misconfiguration and is reported the same way, so callers see one error.
_OUTAGE = (google_errors.GoogleAPIError, TimeoutError, OSError)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ApiKeyStore:
    """API keys kept as hashed rows in Firestore, with a cache in front.

    A revoked, disabled or edited key takes effect within ``settings.cache_ttl``.
    Use as ``async with ApiKeyStore(settings) as store:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.settings = settings
        #: Firestore documents read and written, by cause ("check", "list", ...).
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self._timer = timer
        self._clock = clock
        self._cache = KeyCache(
            ttl=settings.cache_ttl,
            stale_ttl=settings.stale_if_error,
            maxsize=settings.cache_size,
            timer=timer,
        )
        self._retry = AsyncRetry(
            initial=0.05,
            maximum=0.5,
            multiplier=2,
            predicate=if_transient_error,
            timeout=settings.timeout,
        )
        self._client: firestore.AsyncClient | None = None
        self._opening = asyncio.Lock()
        self._unavailable_until = float("-inf")

    async def __aenter__(self) -> "ApiKeyStore":
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the Firestore client; done lazily by the first call otherwise."""
        await self._collection()

    async def aclose(self) -> None:
        """Close the Firestore client; the store can be opened again afterwards."""
        client, self._client = self._client, None
        if client is not None:
            # The async client has no public close; its transport owns the channel.
            await client._firestore_api.transport.close()

    # -- checks: the request path ---------------------------------------------

    async def verify(self, key: str) -> ApiKey:
        """The key's record, or KeyRejected saying why not; StoreUnavailable if
        Firestore cannot answer for a key not held in memory."""
        key_id = parse_key_id(key, self.settings.prefix)
        record = await self._cache.get(key_id, self._load)
        # The hash is compared before the row's state is told, so that knowing a
        # key id alone reveals nothing about the key.
        if record is None or not keys_match(key, record.hash):
            raise KeyNotFound()
        if record.disabled:
            raise KeyDisabled()
        if record.is_expired(self._clock()):
            raise KeyExpired()
        return record

    async def get_api_key(self, key: str) -> ApiKey | None:
        """The key's record if the key is valid now, else None."""
        try:
            return await self.verify(key)
        except KeyRejected:
            return None

    async def does_api_key_exist(self, key: str) -> bool:
        """True if ``key`` is a valid key now (present, enabled, not expired)."""
        return await self.get_api_key(key) is not None

    # -- management: CLI and admin --------------------------------------------

    async def create(
        self,
        *,
        name: str,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
    ) -> NewKey:
        """Make a key, store its hash, and return it; the plaintext is not kept."""
        collection = await self._collection()
        key_id = new_key_id()
        key = new_key(self.settings.prefix, key_id)
        record = ApiKey(
            id=key_id,
            name=name,
            scopes=tuple(dict.fromkeys(scopes)),
            expires_at=expires_at,
            created_at=self._clock(),
            hash=hash_key(key),
        )
        document = collection.document(key_id)
        await self._call(
            f"create of key {key_id}",
            lambda: document.create(record.to_row(), retry=self._retry),
        )
        self.writes["create"] += 1
        self._cache.invalidate(key_id)
        return NewKey(record=record, key=key)

    async def list_keys(self) -> list[ApiKey | BrokenRow]:
        """Every row of the collection, readable or not, oldest first."""
        collection = await self._collection()

        async def fetch() -> list[Any]:
            return [snap async for snap in collection.stream(retry=self._retry)]

        snapshots = await self._call("list of keys", fetch)
        self.reads["list"] += max(1, len(snapshots))
        rows: list[ApiKey | BrokenRow] = []
        for snapshot in snapshots:
            try:
                rows.append(parse_row(snapshot.id, snapshot.to_dict() or {}))
            except InvalidRow as exc:
                rows.append(
                    BrokenRow(id=exc.key_id, field=exc.field, problem=exc.problem)
                )
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(
            rows, key=lambda row: (getattr(row, "created_at", None) or epoch, row.id)
        )

    async def revoke(self, key_id: str) -> None:
        """Delete the key's row; KeyNotFound if there is none."""
        collection = await self._collection()
        if not key_id or "/" in key_id:
            raise KeyNotFound(f"No key with id '{key_id}'.")
        document = collection.document(key_id)
        try:
            await self._call(
                f"revoke of key {key_id}",
                lambda: document.delete(
                    option=collection._client.write_option(exists=True),
                    retry=self._retry,
                ),
                expected=(google_errors.NotFound,),
            )
        except google_errors.NotFound:
            raise KeyNotFound(f"No key with id '{key_id}'.") from None
        self.writes["revoke"] += 1
        self._cache.invalidate(key_id)

    # -- Firestore boundary ---------------------------------------------------

    async def _load(self, key_id: str) -> ApiKey | None:
        collection = await self._collection()
        logger.debug("Cache miss for key %s.", key_id)
        document = collection.document(key_id)
        snapshot = await self._call(
            f"read of key {key_id}", lambda: document.get(retry=self._retry)
        )
        self.reads["check"] += 1
        if not snapshot.exists:
            return None
        try:
            return parse_row(key_id, snapshot.to_dict() or {})
        except InvalidRow as exc:
            logger.warning("%s The key is refused until the row is fixed.", exc)
            return None

    async def _collection(self) -> Any:
        if self._client is None:
            async with self._opening:
                if self._client is None:
                    self._client = await self._new_client()
        return self._client.collection(self.settings.collection)

    async def _new_client(self) -> firestore.AsyncClient:
        try:
            # Finding credentials may read files or ask the metadata server.
            return await asyncio.to_thread(
                firestore.AsyncClient,
                project=self.settings.project,
                database=self.settings.database,
            )
        except GoogleAuthError as exc:
            raise ConfigError(
                "No Google credentials: set FIRESTORE_EMULATOR_HOST for the emulator, "
                "or run 'gcloud auth application-default login'."
            ) from exc

    async def _call(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        expected: tuple[type[Exception], ...] = (),
    ) -> T:
        if self._timer() < self._unavailable_until:
            raise StoreUnavailable("Firestore is unavailable; retrying shortly.")
        try:
            async with asyncio.timeout(self.settings.timeout):
                result = await call()
        except expected:
            raise
        except _OUTAGE as exc:
            self._unavailable_until = self._timer() + self.settings.retry_after
            logger.warning(
                "Firestore failed the %s (%s); answering from memory for %ss.",
                what,
                type(exc).__name__,
                self.settings.retry_after,
            )
            raise StoreUnavailable(f"Firestore did not answer the {what}.") from exc
        except google_errors.GoogleAPIError as exc:  # pragma: no cover - see _OUTAGE
            raise StoreUnavailable(f"Firestore refused the {what}.") from exc
        self._unavailable_until = float("-inf")
        return result


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
