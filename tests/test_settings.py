import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from keystore import ConfigError, SelfServicePolicy, Settings, load_env_file


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
        ("KEYSTORE_TIMEOUT", "0", "'KEYSTORE_TIMEOUT' has the value '0'"),
        ("KEYSTORE_CACHE_SIZE", "0", "KEYSTORE_CACHE_SIZE.*at least|equal to 1"),
        ("KEYSTORE_PREFIX", "Bad_", "KEYSTORE_PREFIX.*lowercase letters"),
    ],
)
def test_bad_values_are_one_clear_error(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value})


def test_a_default_lifetime_beyond_the_longest_is_refused() -> None:
    env = {
        "KEYSTORE_SELF_SERVICE_DEFAULT_LIFETIME": "365d",
        "KEYSTORE_SELF_SERVICE_MAX_LIFETIME": "90d",
    }
    with pytest.raises(ConfigError, match="Settings not allowed together: .*LIFE"):
        Settings.from_env(env)
    with pytest.raises(ValueError, match="longer than the longest"):
        SelfServicePolicy(
            default_lifetime=timedelta(days=365), max_lifetime=timedelta(days=90)
        )


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
    with pytest.raises(ConfigError, match="'KEYSTORE_SYNC' has the value 'push'"):
        Settings(sync="push")  # built in code: the same one line


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


def test_settings_nest_in_an_apps_own_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class AppSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="APP_", env_nested_delimiter="__")
        debug: bool = False
        keys: Settings = Settings(collection="app_keys")

    monkeypatch.setenv("APP_DEBUG", "true")
    monkeypatch.setenv("APP_KEYS__SYNC", "listen")
    app = AppSettings()
    assert app.debug and app.keys.sync == "listen"
    assert AppSettings(keys=Settings(sync="reload")).keys.sync == "reload"


def test_a_dotenv_file_is_read_by_the_settings_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KEYSTORE_CACHE_TTL=7\nKEYSTORE_SYNC=reload\n")
    monkeypatch.setenv("KEYSTORE_SYNC", "listen")  # the environment wins
    settings = Settings()
    assert (settings.cache_ttl, settings.sync) == (7, "listen")
    assert "KEYSTORE_CACHE_TTL" not in os.environ


def test_settings_are_frozen_and_copied_with_changes() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.cache_ttl = 1
    assert settings.model_copy(update={"cache_ttl": 1}).cache_ttl == 1
    assert hash(settings) == hash(Settings())


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "uvicorn", "api.main:app", "--port", "0"],
        [sys.executable, "-m", "keystore", "list"],
    ],
    ids=["app", "cli"],
)
def test_a_bad_setting_is_one_line_without_a_traceback(
    argv: list[str], tmp_path: Path
) -> None:
    env = {**os.environ, "KEYSTORE_CACHE_TTL": "soon"}
    done = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "keystore" in line]
    assert lines == [
        "keystore: error: Setting 'KEYSTORE_CACHE_TTL' has the value 'soon', which "
        "is not allowed: Input should be a valid number, unable to parse string as "
        "a number."
    ]
    assert "Traceback" not in done.stderr
