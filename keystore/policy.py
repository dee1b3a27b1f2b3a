"""What customers may do with their own keys (self_service.py), and a guard
against a runaway client; no I/O, no HTTP."""

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from keystore.limits.values import RateLimit, parse_rate_limit, seconds_until
from keystore.models import ApiKey
from keystore.settings import Settings


class PolicyRefusal(Exception):
    """The policy does not let a customer do this; the message says why."""


class Throttled(Exception):
    """Too many requests of one owner in this window."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many requests for your keys; retry shortly.")
        self.retry_after = retry_after


@dataclass(frozen=True)
class SelfServicePolicy:
    """What customers may do with their own keys."""

    #: The scopes a customer may give a key (others: 403).
    scopes: frozenset[str] = frozenset()
    #: The most live (unexpired) keys per owner (at the cap: 409).
    max_keys: int = 10
    #: A new key's lifetime when the customer names no expiry; None: the
    #: longest lifetime, or none.
    default_lifetime: timedelta | None = None
    #: The longest lifetime a customer may give a key (longer: 403).
    max_lifetime: timedelta | None = None
    #: Requests per owner, counted by each instance on its own: a guard
    #: against a runaway client and its Firestore reads (429).
    rate_limit: RateLimit | None = RateLimit(60, 60)

    def __post_init__(self) -> None:
        for lifetime in (self.default_lifetime, self.max_lifetime):
            if lifetime is not None and lifetime <= timedelta(0):
                raise ValueError("A key's lifetime must be longer than zero.")
        if self.default_lifetime and self.max_lifetime:
            if self.default_lifetime > self.max_lifetime:
                raise ValueError(
                    "The default lifetime is longer than the longest lifetime."
                )
        if self.max_keys < 1:
            raise ValueError("max_keys must be at least 1.")

    @classmethod
    def from_settings(cls, settings: Settings) -> "SelfServicePolicy":
        """The policy the ``KEYSTORE_SELF_SERVICE_*`` settings set."""
        scopes = (s.strip() for s in settings.self_service_scopes.split(","))
        return cls(
            scopes=frozenset(scope for scope in scopes if scope),
            max_keys=settings.self_service_max_keys,
            default_lifetime=settings.self_service_default_lifetime,
            max_lifetime=settings.self_service_max_lifetime,
            rate_limit=parse_rate_limit(settings.self_service_rate_limit),
        )

    def check_scopes(self, scopes: Collection[str]) -> None:
        """PolicyRefusal unless customers may grant every one of ``scopes``."""
        refused = sorted(set(scopes) - self.scopes)
        if refused:
            raise PolicyRefusal(f"Keys cannot be given the scope '{refused[0]}'.")

    def expiry(self, asked: datetime | None, now: datetime) -> datetime | None:
        """A new key's expiry: ``asked``, or the default lifetime from ``now``;
        PolicyRefusal if ``asked`` is beyond the longest lifetime, ValueError
        if it has passed."""
        if asked is None:
            lifetime = self.default_lifetime or self.max_lifetime
            return None if lifetime is None else now + lifetime
        if asked <= now:
            raise ValueError("The expiry must be in the future.")
        if self.max_lifetime is not None and asked > now + self.max_lifetime:
            days = self.max_lifetime / timedelta(days=1)
            raise PolicyRefusal(
                f"Keys can live at most {days:g} days; choose an earlier expiry."
            )
        return asked

    def renewal(self, old: ApiKey, now: datetime) -> datetime | None:
        """The expiry of the key that replaces ``old`` by rotation, which
        renews the secret and never the terms: PolicyRefusal if ``old`` has a
        scope customers may not grant (an operator gave it); the new key
        expires no later than ``old`` would have, nor than the policy allows."""
        self.check_scopes(old.scopes)
        ends = [end for end in (self.expiry(None, now), old.expires_at) if end]
        return min(ends, default=None)


class Throttle:
    """Requests per owner in fixed windows, in this process's memory only."""

    def __init__(
        self, rate: RateLimit | None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._rate = rate
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}

    def __call__(self, owner: str) -> None:
        """Count a request of ``owner``; Throttled if it is one too many."""
        rate = self._rate
        if rate is None:
            return
        now = self._clock()
        window = rate.window_start(now)
        if window != self._window:  # every owner's window starts together
            self._window, self._counts = window, {}
        count = self._counts.get(owner, 0) + 1
        self._counts[owner] = count
        if count > rate.limit:
            raise Throttled(seconds_until(window + rate.window_seconds, now))
