"""The keystore command against the emulator."""

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
    monkeypatch.setenv("KEYSTORE_TIMEOUT", "5")
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
        "usage_count",
        "last_used_at",
        "rotated_from",
        "rotated_to",
        "owner",
        "rate_limit",
        "credits",
        "refill",
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
    monkeypatch.setenv("KEYSTORE_TIMEOUT", "1")
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


def create(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "create", "--json", *argv)
    assert code == 0, err
    made: dict[str, Any] = json.loads(out)
    return made


def test_show_disable_enable_set_scopes(capsys: pytest.CaptureFixture[str]) -> None:
    made = create(capsys, "--name", "svc", "--scope", "a")
    key_id = made["id"]
    code, out, _ = run(capsys, "show", key_id)
    assert code == 0 and "svc" in out and "active" in out and made["key"] not in out

    code, out, _ = run(capsys, "disable", key_id)
    assert (code, out) == (0, f"Key {key_id} is disabled.\n")
    code, out, _ = run(capsys, "list", "--disabled", "--json")
    assert [row["id"] for row in json.loads(out)] == [key_id]
    code, out, _ = run(capsys, "enable", key_id)
    assert (code, out) == (0, f"Key {key_id} is active.\n")

    code, out, _ = run(capsys, "set-scopes", key_id, "b", "c", "b")
    assert (code, out) == (0, f"Key {key_id} now has scopes: b, c.\n")
    code, out, _ = run(capsys, "show", key_id, "--json")
    assert json.loads(out)["scopes"] == ["b", "c"]
    code, out, _ = run(capsys, "list", "--scope", "c", "--json")
    assert [row["id"] for row in json.loads(out)] == [key_id]
    code, out, _ = run(capsys, "list", "--scope", "a", "--json")
    assert json.loads(out) == []


def test_list_filters_expired(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    made = create(capsys, "--name", "old")
    create(capsys, "--name", "new")
    client = firestore.Client(project=settings.project)
    past = datetime.now(UTC) - timedelta(days=1)
    client.collection(settings.collection).document(made["id"]).update(
        {"expires_at": past}
    )
    code, out, _ = run(capsys, "list", "--expired", "--json")
    assert [row["id"] for row in json.loads(out)] == [made["id"]]
    code, out, _ = run(capsys, "list")
    assert "1 day ago" in out and "expired" in out and "never" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "nope"],
        ["revoke", "nope"],
        ["disable", "nope"],
        ["enable", "nope"],
        ["rotate", "nope"],
        ["set-scopes", "nope", "a"],
        ["usage", "nope"],
    ],
)
def test_unknown_id_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (1, "", "keystore: error: No key with id 'nope'.\n")


def test_rotate_with_grace(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    old = create(capsys, "--name", "svc", "--scope", "x")
    code, out, err = run(capsys, "rotate", old["id"], "--grace", "2h")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Rotated to key ") and lines[2].startswith("ks_")
    assert lines[3] == f"The old key {old['id']} stops working in 2 hours."
    code, out, _ = run(capsys, "show", old["id"], "--json")
    shown = json.loads(out)
    new_id = shown["rotated_to"]
    expires = datetime.fromisoformat(shown["expires_at"])
    assert timedelta(minutes=119) < expires - datetime.now(UTC) <= timedelta(hours=2)
    code, out, _ = run(capsys, "show", new_id, "--json")
    assert json.loads(out)["scopes"] == ["x"]
    assert json.loads(out)["rotated_from"] == old["id"]


def test_import_is_idempotent(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = tmp_path / "keys.env"
    keys.write_text(
        "# old keys\nexport SERVICE_A=legacy-secret-0123456789\n"
        "SERVICE_B='another-legacy-key-abcdef'\nSHORT=tooshort\n\n"
    )
    code, out, err = run(
        capsys, "import", str(keys), "--dotenv", "--scope", "r", "--json"
    )
    assert code == 0, err
    first = json.loads(out)
    assert (len(first["created"]), first["existing"], first["rejected"]) == (2, [], 1)
    code, out, _ = run(capsys, "import", str(keys), "--dotenv", "--json")
    again = json.loads(out)
    assert (again["created"], sorted(again["existing"])) == (
        [],
        sorted(first["created"]),
    )
    code, out, _ = run(capsys, "list", "--json")
    rows = json.loads(out)
    assert sorted(row["name"] for row in rows) == [
        "imported-SERVICE_A",
        "imported-SERVICE_B",
    ]
    assert all(row["scopes"] == ["r"] for row in rows)
    assert "legacy-secret" not in out

    monkeypatch.setattr("sys.stdin", io.StringIO("plain-line-key-0123456789\n"))
    code, out, _ = run(capsys, "import", "--name-prefix", "stdin")
    assert out.startswith("Imported 1 keys; 0 were there already")
    assert "KEYSTORE_IMPORTED_KEYS=true" in out


def test_hash_prints_what_to_paste(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "hash", "--json")
    made = json.loads(out)
    assert (
        made["hash"] == hash_key(made["key"])
        and made["key"].split("_")[1] == made["id"]
    )
    code, out, _ = run(capsys, "hash", made["key"])
    assert made["hash"] in out and made["id"] in out and made["key"] not in out
    code, _, err = run(capsys, "hash", "no good")
    assert (code, err) == (1, "keystore: error: Malformed API key.\n")


def test_usage_shows_totals_and_days(capsys: pytest.CaptureFixture[str]) -> None:
    made = create(capsys, "--name", "svc")
    code, out, _ = run(capsys, "usage", made["id"], "--json")
    assert json.loads(out) == {
        "id": made["id"],
        "total": 0,
        "last_used_at": None,
        "days": [],
    }
    code, out, _ = run(capsys, "usage", made["id"])
    assert out == f"{made['id']}: 0 uses, last never\n"


def test_limits_from_create_to_show_set_limits_and_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(
        capsys,
        "create",
        "--name",
        "acme",
        "--rate-limit",
        "100/1m",
        "--credits",
        "10000",
        "--refill",
        "10000/month",
        "--owner",
        "acme-inc",
        "--json",
    )
    assert code == 0, err
    made = json.loads(out)
    assert (made["rate_limit"], made["credits"], made["refill"], made["owner"]) == (
        "100/1m",
        10000,
        "10000/month",
        "acme-inc",
    )
    code, out, err = run(capsys, "show", made["id"], "--json")
    shown = json.loads(out)
    assert shown["credits"] == 10000 and shown["next_refill"].endswith("+00:00")
    code, out, err = run(capsys, "show", made["id"])
    assert "100/1m" in out and "10000 left" in out and "next in" in out
    code, out, err = run(
        capsys, "set-limits", made["id"], "--no-rate-limit", "--credits", "7", "--json"
    )
    assert code == 0, err
    assert (json.loads(out)["rate_limit"], json.loads(out)["credits"]) == (None, 7)
    code, out, err = run(capsys, "set-limits", "--owner", "acme-inc", "--credits", "50")
    assert code == 0 and "50 left" in out, err
    code, out, err = run(capsys, "list", "--owner", "acme-inc", "--json")
    assert [row["id"] for row in json.loads(out)] == [made["id"]]
    code, out, err = run(capsys, "list", "--owner", "nobody", "--json")
    assert json.loads(out) == []
    code, out, err = run(capsys, "usage", made["id"])
    assert code == 0, err
    with pytest.raises(SystemExit) as exited:
        run(capsys, "create", "--name", "x", "--rate-limit", "lots")
    assert exited.value.code == 2 and "not a rate limit" in capsys.readouterr().err
    code, out, err = run(capsys, "set-limits", made["id"])
    assert code == 1 and "Nothing to change" in err


def test_an_owners_month_for_billing_in_json_and_csv(
    capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    made = create(capsys, "--name", "svc", "--owner", "acme")
    client = firestore.Client(project=settings.project)
    rows = client.collection(settings.collection)
    days = {
        (made["id"], "2026-11-01"): (5, 2),
        (made["id"], "2026-11-30"): (7, 0),
        ("gonekey0001", "2026-11-15"): (4, 4),  # a key deleted since
        (made["id"], "2026-12-01"): (100, 0),  # the next month
    }
    for (key_id, day), (count, credits) in days.items():
        rows.document(key_id).collection("usage").document(day).set(
            {
                "day": day,
                "count": count,
                "credits": credits,
                "owner": "acme",
                "key_id": key_id,
            }
        )

    code, out, err = run(
        capsys, "usage", "--owner", "acme", "--month", "2026-11", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["uses"], report["credits"]) == (16, 6)
    assert (report["first_day"], report["last_day"]) == ("2026-11-01", "2026-11-30")
    assert {key["id"]: (key["name"], key["uses"]) for key in report["keys"]} == {
        made["id"]: ("svc", 12),
        "gonekey0001": (None, 4),
    }

    code, out, err = run(
        capsys, "usage", "--owner", "acme", "--month", "2026-11", "--csv"
    )
    lines = list(csv.DictReader(io.StringIO(out)))
    *per_day, total = lines
    assert [(line["day"], line["key_id"], line["uses"]) for line in per_day] == [
        ("2026-11-01", made["id"], "5"),
        ("2026-11-15", "gonekey0001", "4"),
        ("2026-11-30", made["id"], "7"),
    ]
    assert sum(int(line["uses"]) for line in per_day) == int(total["uses"]) == 16
    assert sum(int(line["credits"]) for line in per_day) == int(total["credits"]) == 6
    assert (total["day"], total["owner"], total["first_day"]) == (
        "total",
        "acme",
        "2026-11-01",
    )

    code, out, err = run(capsys, "usage", "--owner", "acme", "--month", "2026-11")
    assert "16 uses, 6 credits" in out and "(revoked)" in out
    with pytest.raises(SystemExit):
        run(capsys, "usage", "--owner", "acme", "--month", "2026-13")
    assert "not a month" in capsys.readouterr().err
    code, out, err = run(capsys, "usage")
    assert code == 1 and "Name a key id or an --owner" in err


def test_usage_flags_that_do_not_go_together_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    made = create(capsys, "--name", "svc", "--owner", "acme")
    code, _, err = run(capsys, "usage", made["id"], "--csv")
    assert code == 1 and "--month and --csv go with --owner" in err
    code, _, err = run(capsys, "usage", "--owner", "acme", "--csv", "--json")
    assert code == 1 and "Choose --csv or --json" in err
    code, out, err = run(capsys, "usage", "--owner", "acme", "--month", "9999-12")
    assert code == 0 and "9999-12-01 to 9999-12-31: 0 uses" in out, err


def test_names_cannot_move_the_operators_cursor(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A customer's or the console's text: escaped, never sent to the terminal.
    made = create(capsys, "--name", "a\x1b[2Jb\rc")
    for argv in (["list"], ["show", made["id"]]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and "\x1b" not in out and "\r" not in out
        assert "a\\x1b[2Jb\\x0dc" in out
