"""Settings: read once from the environment (and a .env file) into a typed object."""

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, TypeVar

from dotenv import load_dotenv

from keystore.errors import ConfigError
from keystore.keys import check_prefix
from keystore.times import parse_duration

T = TypeVar("T")

SyncMode = Literal["ttl", "reload", "listen"]
SYNC_MODES: tuple[SyncMode, ...] = ("ttl", "reload", "listen")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything keystore can be told; each field names its environment variable."""

    #: GOOGLE_CLOUD_PROJECT; None lets the client find it (ADC, metadata server).
    project: str | None = None
    #: KEYSTORE_DATABASE: the Firestore database id.
    database: str = "(default)"
    #: KEYSTORE_COLLECTION: one document per key, document id = key id.
    collection: str = "api_keys"
    #: KEYSTORE_PREFIX: the first part of every key made here.
    prefix: str = "ks"
    #: KEYSTORE_HEADER: the request header that carries the key.
    header: str = "x-api-key"
    #: KEYSTORE_QUERY_PARAM: a query parameter also accepted; None (off) by default.
    query_param: str | None = None
    #: KEYSTORE_CACHE_TTL: how long a looked-up row is trusted, seconds.
    cache_ttl: float = 60.0
    #: KEYSTORE_CACHE_SIZE: most rows (and, separately, unknown ids) kept in memory.
    cache_size: int = 10_000
    #: KEYSTORE_TIMEOUT: deadline of every Firestore call, seconds, retries included.
    timeout: float = 2.0
    #: KEYSTORE_STALE_IF_ERROR: how long past its TTL a valid key keeps working
    #: while Firestore cannot be reached, seconds; 0 turns this off.
    stale_if_error: float = 3600.0
    #: KEYSTORE_RETRY_AFTER: after a failed Firestore call, how long keystore stops
    #: asking and answers from memory or 503, seconds; also the Retry-After header.
    retry_after: int = 5
    #: KEYSTORE_MAX_LOOKUPS_PER_SECOND: ttl mode: Firestore reads for keys not in
    #: memory, per second on average (bursts of half as many); 0: no limit.
    max_lookups_per_second: float = 200.0
    #: KEYSTORE_DEFAULT_EXPIRY: lifetime of new keys made without one, like 90d.
    default_expiry: timedelta | None = None
    #: KEYSTORE_USAGE_FLUSH_INTERVAL: seconds between writes of usage counts; 0: off.
    usage_flush_interval: float = 60.0
    #: KEYSTORE_IMPORTED_KEYS: accept keys brought in by ``keystore import``.
    imported_keys: bool = False
    #: KEYSTORE_ADMIN_DOCS: show the /admin routes in OpenAPI and /docs.
    admin_docs: bool = True
    #: KEYSTORE_SYNC: how the keys in memory stay fresh: ttl, reload or listen.
    sync: SyncMode = "ttl"
    #: KEYSTORE_RELOAD_INTERVAL: seconds between full loads in the reload mode.
    reload_interval: float = 60.0
    #: KEYSTORE_RESYNC_INTERVAL: seconds between full loads in the listen mode,
    #: in case the listener stopped delivering without saying so.
    resync_interval: float = 3600.0
    #: KEYSTORE_WATCHDOG_INTERVAL: seconds between checks that the listener runs.
    watchdog_interval: float = 10.0
    #: KEYSTORE_LOAD_TIMEOUT: deadline of one full load of the collection, seconds.
    load_timeout: float = 60.0
    #: KEYSTORE_OWNERS_COLLECTION: one document per owner, with its limits.
    owners_collection: str = "api_owners"
    #: KEYSTORE_LEASE_SECONDS: a process takes this many seconds of its own
    #: recent use of a limit per lease (longer: fewer writes, more held).
    lease_seconds: float = 10.0
    #: KEYSTORE_LEASE_EXPIRY: a lease not renewed for this long is taken to be
    #: a stopped process's, and its credits recorded as stranded, seconds.
    lease_expiry: float = 600.0
    #: KEYSTORE_LOG_FORMAT: json (Cloud Logging) or text; json by default on
    #: Cloud Run, where K_SERVICE is set.
    log_format: Literal["json", "text"] = "text"
    #: KEYSTORE_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR.
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if self.sync not in SYNC_MODES:
            raise ConfigError(
                f"Setting 'sync' is '{self.sync}'; use one of {', '.join(SYNC_MODES)}."
            )
        for name in (
            "cache_ttl",
            "timeout",
            "reload_interval",
            "resync_interval",
            "watchdog_interval",
            "load_timeout",
            "lease_seconds",
            "lease_expiry",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Setting '{name}' must be greater than 0.")
        if self.cache_size < 1:
            raise ConfigError("Setting 'cache_size' must be at least 1.")
        for name in (
            "retry_after",
            "stale_if_error",
            "usage_flush_interval",
            "max_lookups_per_second",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"Setting '{name}' must not be negative.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Settings from ``environ`` (default: ``os.environ``); unset means default."""
        env = os.environ if environ is None else environ

        def get(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return parse(raw)
            except ValueError:
                raise ConfigError(
                    f"Setting '{name}' has the value '{raw}', which is not a "
                    f"valid {parse.__name__}."
                ) from None

        d = cls()
        return cls(
            project=get("GOOGLE_CLOUD_PROJECT", str, d.project),
            database=get("KEYSTORE_DATABASE", str, d.database),
            collection=get("KEYSTORE_COLLECTION", str, d.collection),
            prefix=get("KEYSTORE_PREFIX", str, d.prefix),
            header=get("KEYSTORE_HEADER", str, d.header).lower(),
            query_param=get("KEYSTORE_QUERY_PARAM", str, d.query_param),
            cache_ttl=get("KEYSTORE_CACHE_TTL", float, d.cache_ttl),
            cache_size=get("KEYSTORE_CACHE_SIZE", int, d.cache_size),
            timeout=get("KEYSTORE_TIMEOUT", float, d.timeout),
            stale_if_error=get("KEYSTORE_STALE_IF_ERROR", float, d.stale_if_error),
            retry_after=get("KEYSTORE_RETRY_AFTER", int, d.retry_after),
            max_lookups_per_second=get(
                "KEYSTORE_MAX_LOOKUPS_PER_SECOND", float, d.max_lookups_per_second
            ),
            default_expiry=get("KEYSTORE_DEFAULT_EXPIRY", duration, d.default_expiry),
            usage_flush_interval=get(
                "KEYSTORE_USAGE_FLUSH_INTERVAL", float, d.usage_flush_interval
            ),
            imported_keys=get("KEYSTORE_IMPORTED_KEYS", boolean, d.imported_keys),
            admin_docs=get("KEYSTORE_ADMIN_DOCS", boolean, d.admin_docs),
            sync=get("KEYSTORE_SYNC", sync_mode, d.sync),
            reload_interval=get("KEYSTORE_RELOAD_INTERVAL", float, d.reload_interval),
            resync_interval=get("KEYSTORE_RESYNC_INTERVAL", float, d.resync_interval),
            watchdog_interval=get(
                "KEYSTORE_WATCHDOG_INTERVAL", float, d.watchdog_interval
            ),
            load_timeout=get("KEYSTORE_LOAD_TIMEOUT", float, d.load_timeout),
            owners_collection=get(
                "KEYSTORE_OWNERS_COLLECTION", str, d.owners_collection
            ),
            lease_seconds=get("KEYSTORE_LEASE_SECONDS", float, d.lease_seconds),
            lease_expiry=get("KEYSTORE_LEASE_EXPIRY", float, d.lease_expiry),
            log_format=get(
                "KEYSTORE_LOG_FORMAT",
                log_format,
                "json" if env.get("K_SERVICE") else d.log_format,
            ),
            log_level=get("KEYSTORE_LOG_LEVEL", log_level, d.log_level),
        )


def log_format(text: str) -> Literal["json", "text"]:
    """``json`` or ``text``."""
    value = text.lower()
    if value == "json":
        return "json"
    if value == "text":
        return "text"
    raise ValueError(text)


def log_level(text: str) -> str:
    """A logging level name."""
    value = text.upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(text)
    return value


def sync_mode(text: str) -> SyncMode:
    """One of ``ttl``, ``reload``, ``listen``."""
    value = text.lower()
    if value not in SYNC_MODES:
        raise ValueError(text)
    return value


def duration(text: str) -> timedelta:
    """A duration like ``90d`` (see :func:`keystore.times.parse_duration`)."""
    return parse_duration(text)


def boolean(text: str) -> bool:
    """``true``/``false`` and the usual spellings of both."""
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def load_env_file(path: str | Path = ".env") -> None:
    """Copy a .env file's variables into the environment, never overriding one set.

    The Google client libraries read GOOGLE_CLOUD_PROJECT, FIRESTORE_EMULATOR_HOST
    and GOOGLE_APPLICATION_CREDENTIALS from the environment themselves, so a .env
    file must reach the environment, not only :class:`Settings`.
    """
    load_dotenv(Path(path), override=False)
