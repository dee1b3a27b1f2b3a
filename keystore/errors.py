"""Exceptions raised by keystore.

    KeyStoreError
    ├── ConfigError         a setting is missing or has a wrong value
    ├── KeyRejected         the presented key cannot be accepted (HTTP 401)
    │   ├── MalformedKey    not of the key format, or its checksum is wrong
    │   ├── KeyNotFound     no row for this key (deleted, never made, or a wrong secret)
    │   ├── KeyDisabled     the row has `disabled: true`
    │   └── KeyExpired      the row's `expires_at` has passed
    ├── InvalidRow          a row edited into a shape keystore cannot read
    ├── LimitExceeded       a usage limit refuses the request (HTTP 429)
    │   ├── RateLimited     the rate limit's window is used up
    │   └── CreditsExhausted no credits left
    ├── InsufficientCredits a key cannot give that many credits to a new key
    ├── TooManyKeys         an owner has as many live keys as its cap allows
    └── StoreUnavailable    Firestore did not answer within the deadline (HTTP 503)
        └── StoreBusy       too many lookups at once; this one was not sent (503)

No message carries key material: keys are named by their id only.
"""


class KeyStoreError(Exception):
    """Base class of every keystore error."""


class ConfigError(KeyStoreError):
    """A setting is missing or has a value keystore cannot use."""


class KeyRejected(KeyStoreError):
    """The presented API key cannot be accepted."""

    #: Short reason safe to show to the caller.
    reason = "Invalid API key."
    #: The outcome label of the check, for metrics.
    outcome = "unknown"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class MalformedKey(KeyRejected):
    """The value is not an API key of this store's format."""

    reason = "Malformed API key."
    outcome = "malformed"


class KeyNotFound(KeyRejected):
    """No usable row matches the key."""


class KeyDisabled(KeyRejected):
    """The key's row is disabled."""

    reason = "API key is disabled."
    outcome = "disabled"


class KeyExpired(KeyRejected):
    """The key's row has expired."""

    reason = "API key has expired."
    outcome = "expired"


class InvalidRow(KeyStoreError):
    """A row in the key collection has a field keystore cannot read."""

    def __init__(
        self, key_id: str, field: str, problem: str, kind: str = "Key row"
    ) -> None:
        super().__init__(f"{kind} '{key_id}' has a bad field '{field}': {problem}.")
        self.key_id = key_id
        self.field = field
        self.problem = problem


class StoreUnavailable(KeyStoreError):
    """Firestore could not be reached or did not answer in time."""


class StoreBusy(StoreUnavailable):
    """Too many keys not held in memory at once: this one was not looked up."""


class LimitExceeded(KeyStoreError):
    """A usage limit refuses the request."""

    reason = "Usage limit exceeded."
    cause = "limit"

    def __init__(self, retry_after: int | None) -> None:
        super().__init__(self.reason)
        #: Seconds until a request would pass; None if no time will tell.
        self.retry_after = retry_after


class RateLimited(LimitExceeded):
    """The rate limit's current window has no requests left."""

    reason = "Rate limit exceeded."
    cause = "rate"


class CreditsExhausted(LimitExceeded):
    """No credits left (until the next refill, if there is one)."""

    reason = "Usage credits exhausted."
    cause = "credits"


class InsufficientCredits(KeyStoreError):
    """A key was to fund a new key's credits from its own, and holds fewer."""

    def __init__(self, key_id: str, wanted: int) -> None:
        super().__init__(
            f"Key '{key_id}' has fewer than {wanted} credits free to give "
            "(what running processes hold comes back within seconds)."
        )
        self.key_id = key_id
        self.wanted = wanted


class TooManyKeys(KeyStoreError):
    """An owner has as many live keys as its cap allows."""

    def __init__(self, owner: str, most: int) -> None:
        super().__init__(
            f"At most {most} live keys per owner: revoke a key first, or rotate "
            "one with grace_seconds 0."
        )
        self.owner = owner
        self.most = most
