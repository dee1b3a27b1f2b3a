import os
from datetime import timedelta
from pathlib import Path

import pytest

from keystore import ConfigError, Settings, load_env_file


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.cache_ttl == 60 and settings.collection == "api_keys"
    assert settings.query_param is None and settings.header == "x-api-key"


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "GOOGLE_CLOUD_PROJECT": "p",
            "KEYSTORE_DATABASE": "db",
            "KEYSTORE_COLLECTION": "c",
            "KEYSTORE_PREFIX": "acme",
            "KEYSTORE_HEADER": "X-Key",
            "KEYSTORE_QUERY_PARAM": "api_key",
            "KEYSTORE_CACHE_TTL": "5",
            "KEYSTORE_CACHE_SIZE": "7",
            "KEYSTORE_TIMEOUT": "0.5",
            "KEYSTORE_STALE_IF_ERROR": "0",
            "KEYSTORE_RETRY_AFTER": "3",
        }
    )
    assert settings == Settings(
        project="p",
        database="db",
        collection="c",
        prefix="acme",
        header="x-key",
        query_param="api_key",
        cache_ttl=5,
        cache_size=7,
        timeout=0.5,
        stale_if_error=0,
        retry_after=3,
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KEYSTORE_CACHE_TTL", "soon", "KEYSTORE_CACHE_TTL"),  # not a number
        ("KEYSTORE_CACHE_SIZE", "1.5", "KEYSTORE_CACHE_SIZE"),  # not an integer
        ("KEYSTORE_TIMEOUT", "0", "timeout"),  # a deadline of zero
        ("KEYSTORE_CACHE_SIZE", "0", "cache_size"),  # no room at all
        ("KEYSTORE_PREFIX", "Bad_", "prefix"),  # not usable in a key
    ],
)
def test_bad_values_are_one_clear_error(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})


def test_log_format_is_json_on_cloud_run() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"K_SERVICE": "svc"}).log_format == "json"
    assert (
        Settings.from_env({"K_SERVICE": "s", "KEYSTORE_LOG_FORMAT": "text"}).log_format
        == "text"
    )
    with pytest.raises(ConfigError, match="KEYSTORE_LOG_LEVEL"):
        Settings.from_env({"KEYSTORE_LOG_LEVEL": "loud"})


@pytest.mark.parametrize("mode", ["ttl", "reload", "listen", "LISTEN"])
def test_sync_modes(mode: str) -> None:
    assert Settings.from_env({"KEYSTORE_SYNC": mode}).sync == mode.lower()


def test_unknown_sync_mode() -> None:
    with pytest.raises(ConfigError, match="KEYSTORE_SYNC"):
        Settings.from_env({"KEYSTORE_SYNC": "push"})
    with pytest.raises(ConfigError, match="sync"):
        Settings(sync="push")  # type: ignore[arg-type]


def test_env_file_fills_but_never_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nKEYSTORE_COLLECTION=from_file\nexport KEYSTORE_PREFIX='acme'\n"
        "KEYSTORE_HEADER=x-from-file\n"
    )
    monkeypatch.setenv("KEYSTORE_HEADER", "x-from-env")
    load_env_file(env_file)
    settings = Settings.from_env()
    assert settings.collection == "from_file"
    assert settings.prefix == "acme"
    assert settings.header == "x-from-env"
    assert os.environ["KEYSTORE_COLLECTION"] == "from_file"
    monkeypatch.delenv("KEYSTORE_COLLECTION")
    monkeypatch.delenv("KEYSTORE_PREFIX")


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"KEYSTORE_LOG_FORMAT": "JSON"}, "log_format", "json"),  # any case
        ({"KEYSTORE_LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
        ({"KEYSTORE_IMPORTED_KEYS": "yes"}, "imported_keys", True),  # spelled yes
        ({"KEYSTORE_ADMIN_DOCS": "off"}, "admin_docs", False),  # spelled off
        ({"KEYSTORE_DEFAULT_EXPIRY": "90d"}, "default_expiry", timedelta(days=90)),
        ({"KEYSTORE_MAX_LOOKUPS_PER_SECOND": "0"}, "max_lookups_per_second", 0),
    ],
)
def test_more_values(env: dict[str, str], field: str, value: object) -> None:
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize(
    "env",
    [
        {"KEYSTORE_LOG_FORMAT": "xml"},  # not a format
        {"KEYSTORE_IMPORTED_KEYS": "maybe"},  # not a boolean
        {"KEYSTORE_DEFAULT_EXPIRY": "forever"},  # not a duration
        {"KEYSTORE_RETRY_AFTER": "-1"},  # negative
        {"KEYSTORE_RELOAD_INTERVAL": "0"},  # zero interval
    ],
)
def test_more_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)
