"""The keystore command against the emulator."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.cloud import firestore

from keystore import Settings, hash_key
from keystore.cli import main


@pytest.fixture(autouse=True)
def cli_env(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    """The CLI reads the environment, as in production; a clean cwd has no .env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEYSTORE_COLLECTION", settings.collection)
    monkeypatch.setenv("KEYSTORE_TIMEOUT", "1")
    return settings


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_key_once_and_stores_its_hash(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    code, out, err = run(capsys, "create", "--name", "ci", "--scope", "a", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert set(made) == {
        "id",
        "key",
        "name",
        "scopes",
        "expires_at",
        "disabled",
        "created_at",
    }
    assert (made["name"], made["scopes"], made["expires_at"]) == ("ci", ["a"], None)
    client = firestore.Client(project=settings.project)
    row = client.collection(settings.collection).document(made["id"]).get().to_dict()
    assert row is not None and row["hash"] == hash_key(made["key"])

    code, out, err = run(capsys, "list", "--json")
    assert code == 0, err
    assert [row["id"] for row in json.loads(out)] == [made["id"]]
    assert made["key"] not in out and hash_key(made["key"]) not in out


def test_create_human_output_and_expiry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "create", "--name", "web", "--expires-in", "30d")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Created key ") and "shown this once" in lines[1]
    key = lines[2]
    code, out, _ = run(capsys, "list", "--json")
    (row,) = json.loads(out)
    expires = datetime.fromisoformat(row["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(
        minutes=1
    )
    code, out, _ = run(capsys, "list")
    assert "web" in out and "active" in out and key not in out


def test_list_flags_a_hand_broken_row(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    run(capsys, "create", "--name", "good")
    client = firestore.Client(project=settings.project)
    client.collection(settings.collection).document("broken1").set(
        {"hash": "x", "disabled": "yes"}
    )
    code, out, err = run(capsys, "list")
    assert code == 0, err
    assert "broken1" in out and "BROKEN (field 'hash'" in out and "good" in out
    code, out, _ = run(capsys, "list", "--json")
    broken = [row for row in json.loads(out) if row["id"] == "broken1"]
    assert broken == [{"id": "broken1", "broken": broken[0]["broken"]}]


def test_revoke(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "create", "--name", "gone", "--json")
    key_id = json.loads(out)["id"]
    code, out, _ = run(capsys, "revoke", key_id)
    assert (code, out) == (0, f"Revoked key {key_id}.\n")
    code, out, err = run(capsys, "revoke", key_id)
    assert (code, out) == (1, "")
    assert err == f"keystore: error: No key with id '{key_id}'.\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "--name", "x", "--expires-in", "soon"],  # not a duration
        ["create", "--name", "x", "--expires-in", "0d"],  # zero lifetime
        ["create"],  # no name
        ["frobnicate"],  # no such command
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("keystore") and len(err.strip().splitlines()) == 1


def test_unreachable_firestore_is_one_line_not_a_hang(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:9")
    code, out, err = run(capsys, "list")
    assert code == 1 and out == ""
    assert err == "keystore: error: Firestore did not answer the list of keys.\n"


def test_bad_setting_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYSTORE_CACHE_TTL", "soon")
    code, _, err = run(capsys, "list")
    assert code == 1
    assert err.startswith("keystore: error: Setting 'KEYSTORE_CACHE_TTL'")


def test_console_script_and_module_run(tmp_path: Path) -> None:
    assert (Path(sys.executable).parent / "keystore").exists()
    done = subprocess.run(
        [sys.executable, "-m", "keystore", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
