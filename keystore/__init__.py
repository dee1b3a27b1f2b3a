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
    TooManyKeys,
)
from keystore.keys import hash_key, key_pattern
from keystore.limits import RateLimit, Refill, parse_rate_limit, parse_refill
from keystore.limits.edits import LimitView
from keystore.logs import TraceMiddleware, configure_logging
from keystore.metrics import KeystoreCollector
from keystore.models import ApiKey, BrokenRow, ImportResult, NewKey, Usage
from keystore.policy import SelfServicePolicy
from keystore.reports import DayLine, KeyLine, OwnerUsage
from keystore.self_service import build_self_service_router
from keystore.settings import Settings, load_env_file
from keystore.store import ApiKeyStore, get_store, reset_store

__version__ = "0.3.0"

__all__ = [
    "ApiKey",
    "ApiKeyAuth",
    "ApiKeyStore",
    "BrokenRow",
    "ConfigError",
    "CreditsExhausted",
    "DayLine",
    "ImportResult",
    "InsufficientCredits",
    "InvalidRow",
    "KeyDisabled",
    "KeyExpired",
    "KeyLine",
    "KeyNotFound",
    "KeyRejected",
    "KeyStoreError",
    "KeystoreCollector",
    "LimitExceeded",
    "LimitView",
    "MalformedKey",
    "NewKey",
    "OwnerUsage",
    "RateLimit",
    "RateLimited",
    "Refill",
    "SelfServicePolicy",
    "Settings",
    "StoreBusy",
    "StoreUnavailable",
    "TooManyKeys",
    "TraceMiddleware",
    "Usage",
    "build_admin_router",
    "build_self_service_router",
    "configure_logging",
    "get_store",
    "hash_key",
    "key_pattern",
    "load_env_file",
    "parse_rate_limit",
    "parse_refill",
    "reset_store",
]
