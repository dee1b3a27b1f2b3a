"""keystore: API keys for FastAPI services, kept as hashed rows in Firestore."""

from keystore.admin import build_admin_router
from keystore.dependency import ApiKeyAuth
from keystore.errors import (
    ConfigError,
    CreditsExhausted,
    InsufficientCredits,
    InvalidRow,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    KeyRejected,
    KeyStoreError,
    LimitExceeded,
    MalformedKey,
    RateLimited,
    StoreBusy,
    StoreUnavailable,
)
from keystore.keys import hash_key, key_pattern
from keystore.limits import RateLimit, Refill, parse_rate_limit, parse_refill
from keystore.limits.edits import LimitView
from keystore.logs import TraceMiddleware, configure_logging
from keystore.metrics import KeystoreCollector
from keystore.models import ApiKey, BrokenRow, ImportResult, NewKey, Usage
from keystore.settings import Settings, load_env_file
from keystore.store import ApiKeyStore, get_store, reset_store

__version__ = "0.2.0"

__all__ = [
    "ApiKey",
    "ApiKeyAuth",
    "ApiKeyStore",
    "BrokenRow",
    "ConfigError",
    "CreditsExhausted",
    "ImportResult",
    "InsufficientCredits",
    "InvalidRow",
    "KeyDisabled",
    "KeyExpired",
    "KeyNotFound",
    "KeyRejected",
    "KeyStoreError",
    "KeystoreCollector",
    "LimitExceeded",
    "LimitView",
    "MalformedKey",
    "NewKey",
    "RateLimit",
    "RateLimited",
    "Refill",
    "Settings",
    "StoreBusy",
    "StoreUnavailable",
    "TraceMiddleware",
    "Usage",
    "build_admin_router",
    "configure_logging",
    "get_store",
    "hash_key",
    "key_pattern",
    "load_env_file",
    "parse_rate_limit",
    "parse_refill",
    "reset_store",
]
