"""keystore: API keys for FastAPI services, kept as hashed rows in Firestore."""

from keystore.admin import build_admin_router
from keystore.dependency import ApiKeyAuth
from keystore.errors import (
    ConfigError,
    InvalidRow,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    KeyRejected,
    KeyStoreError,
    MalformedKey,
    StoreUnavailable,
)
from keystore.keys import hash_key, key_pattern
from keystore.metrics import KeystoreCollector
from keystore.models import ApiKey, BrokenRow, NewKey
from keystore.settings import Settings, load_env_file
from keystore.store import ApiKeyStore, get_store, reset_store

__version__ = "0.1.0"

__all__ = [
    "ApiKey",
    "ApiKeyAuth",
    "ApiKeyStore",
    "BrokenRow",
    "ConfigError",
    "InvalidRow",
    "KeyDisabled",
    "KeyExpired",
    "KeyNotFound",
    "KeyRejected",
    "KeyStoreError",
    "KeystoreCollector",
    "MalformedKey",
    "NewKey",
    "Settings",
    "StoreUnavailable",
    "build_admin_router",
    "get_store",
    "hash_key",
    "key_pattern",
    "load_env_file",
    "reset_store",
]
