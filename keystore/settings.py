"""Settings: read once from the environment (and a .env file) into a typed object.

A pydantic-settings ``BaseSettings``: every field is ``KEYSTORE_<NAME>`` in the
environment or a ``.env`` file in the working directory (the environment
wins), so an app can also build it in code or nest it in its own settings.
"""

import os
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from dotenv import load_dotenv
from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from keystore.errors import ConfigError
from keystore.keys import check_prefix
from keystore.limits.values import parse_rate_limit
from keystore.times import parse_duration

SyncMode = Literal["ttl", "reload", "listen"]
SYNC_MODES: tuple[SyncMode, ...] = ("ttl", "reload", "listen")

_ENV_PREFIX = "KEYSTORE_"
#: Set while ``from_env`` builds settings from a mapping it was given: then
#: neither the process environment nor a .env file fills the gaps.
_ONLY_GIVEN: ContextVar[bool] = ContextVar("only_given", default=False)


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _prefix(value: str) -> str:
    try:
        return check_prefix(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _duration(value: Any) -> Any:
    # ``90d`` as people write it; a timedelta (or seconds) as code passes it.
    return parse_duration(value) if isinstance(value, str) else value


def _rate_limit(value: str) -> str:
    parse_rate_limit(value)  # ValueError: says what is allowed
    return value


Positive = Annotated[float, Field(gt=0)]
NotNegative = Annotated[float, Field(ge=0)]
Lower = BeforeValidator(_lower)


def _default_log_format() -> Literal["json", "text"]:
    # Cloud Run sets K_SERVICE; Cloud Logging reads JSON lines.
    return "json" if os.environ.get("K_SERVICE") else "text"


class Settings(BaseSettings):
    """Everything keystore can be told; each field is ``KEYSTORE_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
    )

    #: GOOGLE_CLOUD_PROJECT; None lets the client find it (ADC, metadata server).
    project: str | None = Field(
        default=None, validation_alias=AliasChoices("project", "GOOGLE_CLOUD_PROJECT")
    )
    #: The Firestore database id.
    database: str = "(default)"
    #: One document per key, document id = key id.
    collection: str = "api_keys"
    #: The first part of every key made here: 1-10 lowercase letters or digits.
    prefix: Annotated[str, AfterValidator(_prefix)] = "ks"
    #: The request header that carries the key.
    header: Annotated[str, Lower] = "x-api-key"
    #: A query parameter also accepted; None (off) by default.
    query_param: str | None = None
    #: How long a looked-up row is trusted, seconds.
    cache_ttl: Positive = 60.0
    #: Most rows (and, separately, unknown ids) kept in memory.
    cache_size: Annotated[int, Field(ge=1)] = 10_000
    #: Deadline of every Firestore call, seconds, retries included.
    timeout: Positive = 2.0
    #: How long past its TTL a valid key keeps working while Firestore cannot
    #: be reached, seconds; 0 turns this off.
    stale_if_error: NotNegative = 3600.0
    #: After a failed Firestore call, how long keystore stops asking and answers
    #: from memory or 503, seconds; also the Retry-After header.
    retry_after: Annotated[int, Field(ge=0)] = 5
    #: ttl mode: Firestore reads for keys not in memory, per second on average
    #: (bursts of half as many); 0: no limit.
    max_lookups_per_second: NotNegative = 200.0
    #: Lifetime of new keys made without one, like 90d.
    default_expiry: Annotated[timedelta | None, BeforeValidator(_duration)] = None
    #: Seconds between writes of usage counts; 0: off.
    usage_flush_interval: NotNegative = 60.0
    #: Accept keys brought in by ``keystore import``.
    imported_keys: bool = False
    #: Show the /admin routes in OpenAPI and /docs.
    admin_docs: bool = True
    #: How the keys in memory stay fresh: ttl, reload or listen.
    sync: Annotated[SyncMode, Lower] = "ttl"
    #: Seconds between full loads in the reload mode.
    reload_interval: Positive = 60.0
    #: Seconds between full loads in the listen mode, in case the listener
    #: stopped delivering without saying so.
    resync_interval: Positive = 3600.0
    #: Seconds between checks that the listener runs.
    watchdog_interval: Positive = 10.0
    #: Deadline of one full load of the collection, seconds.
    load_timeout: Positive = 60.0
    #: One document per owner, with its limits.
    owners_collection: str = "api_owners"
    #: A process takes this many seconds of its own recent use of a limit per
    #: lease (longer: fewer writes, more held).
    lease_seconds: Positive = 10.0
    #: A lease not renewed for this long is taken to be a stopped process's,
    #: and its credits recorded as stranded, seconds.
    lease_expiry: Positive = 600.0
    #: How long closing the store (at SIGTERM) may take, seconds: leases given
    #: back and usage counts written, each tried again until then. Cloud Run
    #: allows 10 s after SIGTERM.
    shutdown_seconds: Positive = 8.0
    #: Self-service (build_self_service_router): the scopes customers may give
    #: their own keys, comma-separated; none by default.
    self_service_scopes: str = ""
    #: The most live (unexpired) keys an owner may have by self-service.
    self_service_max_keys: Annotated[int, Field(ge=1, le=1000)] = 10
    #: Lifetime of a key a customer makes without one, like 90d; none: the
    #: longest lifetime below.
    self_service_default_lifetime: Annotated[
        timedelta | None, BeforeValidator(_duration)
    ] = None
    #: The longest lifetime a customer may give a key; none: no limit.
    self_service_max_lifetime: Annotated[
        timedelta | None, BeforeValidator(_duration)
    ] = None
    #: Self-service requests per owner, per instance (a guard against a
    #: runaway client, not a billing limit), like 60/1m.
    self_service_rate_limit: Annotated[str, AfterValidator(_rate_limit)] = "60/1m"
    #: json (Cloud Logging) or text; json by default on Cloud Run (K_SERVICE).
    log_format: Annotated[Literal["json", "text"], Lower] = Field(
        default_factory=_default_log_format
    )
    #: DEBUG, INFO, WARNING or ERROR.
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        BeforeValidator(_upper),
    ] = "INFO"

    @model_validator(mode="after")
    def _lifetimes(self) -> "Settings":
        default, longest = (
            self.self_service_default_lifetime,
            self.self_service_max_lifetime,
        )
        if any(t is not None and t <= timedelta(0) for t in (default, longest)):
            raise ValueError("self-service lifetimes must be longer than zero")
        if default and longest and default > longest:
            raise ValueError(
                "KEYSTORE_SELF_SERVICE_DEFAULT_LIFETIME is longer than "
                "KEYSTORE_SELF_SERVICE_MAX_LIFETIME"
            )
        return self

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_one_line(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _ONLY_GIVEN.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Settings from the environment and .env; or, given ``environ``, from
        those variables only."""
        if environ is None:
            return cls()
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            for variable in _variables(name):
                raw = environ.get(variable, "").strip()
                if raw:
                    values[name] = raw
                    break
        if "log_format" not in values:
            values["log_format"] = "json" if environ.get("K_SERVICE") else "text"
        token = _ONLY_GIVEN.set(True)
        try:
            return cls(**values)
        finally:
            _ONLY_GIVEN.reset(token)


def _variables(name: str) -> tuple[str, ...]:
    """The environment variables a field is read from."""
    if name == "project":
        return ("GOOGLE_CLOUD_PROJECT",)
    return (_ENV_PREFIX + name.upper(),)


def _one_line(exc: ValidationError) -> str:
    """The first problem, naming the variable, the value and what is allowed."""
    error = exc.errors(include_url=False)[0]
    reason = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a check across settings: the reason names them
        return f"Settings not allowed together: {reason}."
    name = str(error["loc"][0])
    variable = _variables(name)[0] if name in Settings.model_fields else name
    return (
        f"Setting '{variable}' has the value '{error.get('input')}', which is not "
        f"allowed: {reason}."
    )


def load_env_file(path: str | Path = ".env") -> None:
    """Copy a .env file's variables into the environment, never overriding one set.

    The Google client libraries read GOOGLE_CLOUD_PROJECT, FIRESTORE_EMULATOR_HOST
    and GOOGLE_APPLICATION_CREDENTIALS from the environment themselves, so a .env
    file must reach the environment, not only :class:`Settings`.
    """
    load_dotenv(Path(path), override=False)
