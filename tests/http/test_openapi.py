"""The OpenAPI document tells clients every answer they can get, and only what
is true: checked route by route here, then by schemathesis against the demo app
on the emulator (``KEYSTORE_SCHEMATHESIS_EXAMPLES`` runs it longer)."""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from keystore import ApiKeyStore, Settings, get_store
from keystore.limits import (
    MAX_AMOUNT,
    MAX_WINDOW_SECONDS,
    REFILL_INTERVALS,
    RateLimit,
    Refill,
    RefillInterval,
    parse_rate_limit,
    parse_refill,
)
from keystore.schemas import RATE_LIMIT_PATTERN, REFILL_PATTERN, Timestamp
from tests.conftest import ROOT, AuthEmulator, running_server

#: Any key: 401, 429, 503; a key with a scope: 403 too; the admin routes: 403
#: (the scope admin, or more than the caller holds), 404 and 409 where a key id
#: is looked up or changed, 400 where a body is read; FastAPI's 422 for params.
KEY = {"401", "429", "503"}
ADMIN = KEY | {"403", "422"}
#: The self-service routes: the owner dependency's 401, 403 (an id that cannot
#: own keys, or the policy), the per-owner throttle's 429, the store's 503.
SELF = {"401", "403", "429", "503"}
DOCUMENTED = {
    ("get", "/healthz"): {"200"},
    ("get", "/readyz"): {"200", "503"},
    ("get", "/metrics"): {"200"},
    ("get", "/v1/whoami"): {"200"} | KEY,
    ("get", "/v1/reports"): {"200", "403"} | KEY,
    ("get", "/v1/reports/full"): {"200", "403"} | KEY,
    ("post", "/admin/keys"): {"201", "400"} | ADMIN,
    ("get", "/admin/keys"): {"200"} | ADMIN,
    ("get", "/admin/keys/{key_id}"): {"200", "404"} | ADMIN,
    ("patch", "/admin/keys/{key_id}"): {"200", "400", "404", "409"} | ADMIN,
    ("delete", "/admin/keys/{key_id}"): {"204", "404"} | ADMIN,
    ("post", "/admin/keys/{key_id}/rotate"): {"201", "400", "404", "409"} | ADMIN,
    ("get", "/admin/keys/{key_id}/usage"): {"200", "404"} | ADMIN,
    ("get", "/admin/owners/{owner}/usage"): {"200", "409"} | ADMIN,
    ("get", "/v1/me/keys"): {"200"} | SELF,
    ("post", "/v1/me/keys"): {"201", "400", "409", "422"} | SELF,
    ("post", "/v1/me/keys/{key_id}/rotate"): {"201", "400", "404", "409", "422"} | SELF,
    ("delete", "/v1/me/keys/{key_id}"): {"204", "404", "422"} | SELF,
    ("get", "/v1/me/usage"): {"200", "409", "422"} | SELF,
}
ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}


async def admin_headers() -> dict[str, str]:
    made = await get_store().create(name="admin", scopes=["admin"])
    return {"x-api-key": made.key}


@pytest.mark.anyio
async def test_every_operation_lists_what_it_can_answer(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    listed = {
        (method, path): set(operation["responses"])
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }
    assert listed == DOCUMENTED
    assert spec["components"]["schemas"]["ErrorOut"]["required"] == ["detail"]


@pytest.mark.anyio
async def test_guarded_operations_list_the_dependency_answers(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            if "security" not in operation:
                assert not {"401", "403", "429"} & set(responses), path
                continue
            unauthorized = responses["401"]
            assert unauthorized["content"] == ERROR
            assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True
            limited = responses["429"]
            assert limited["content"] == ERROR
            assert limited["headers"]["Retry-After"]
            unavailable = responses["503"]
            assert unavailable["headers"]["Retry-After"]["required"] is True
            [requirement] = operation["security"]
            if "ApiKey" not in requirement:
                continue  # a customer's route (Firebase sign-in): no key limits
            assert {"Retry-After", "RateLimit", "RateLimit-Policy"} == set(
                limited["headers"]
            )
            # 403 exactly where a scope is asked for.
            assert ("403" in responses) == bool(requirement["ApiKey"]), path
            for code, answer in responses.items():
                if code.startswith("2"):
                    assert {"RateLimit", "RateLimit-Policy"} <= set(answer["headers"])


@pytest.mark.anyio
async def test_answers_are_as_documented(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/whoami")
    assert r.status_code == 401, r.text
    assert r.json() == {"detail": "Missing API key."}
    assert r.headers["www-authenticate"] == "APIKey"
    admin = await admin_headers()
    json_type = {**admin, "content-type": "application/json"}
    # Not text at all: FastAPI's 400.
    for path in ("/admin/keys", "/admin/keys/x", "/admin/keys/x/rotate"):
        method = "PATCH" if path == "/admin/keys/x" else "POST"
        r = await client.request(method, path, content=b"\xff", headers=json_type)
        assert r.status_code == 400, r.text
        assert r.json() == {"detail": "There was an error parsing the body"}
    # Text, but not JSON: a 422 like any other invalid body.
    r = await client.post("/admin/keys", content=b"{name", headers=json_type)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/admin/keys", "GET, POST"),  # two routes share the path
        ("PUT", "/admin/keys/abc", "GET, PATCH, DELETE"),
        ("GET", "/admin/keys/abc/rotate", "POST"),
        ("DELETE", "/v1/whoami", "GET"),
        ("POST", "/openapi.json", "GET, HEAD"),  # Starlette's own routes too
    ],
)
async def test_405_lists_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await client.request(method, path)
    assert r.status_code == 405, r.text
    assert r.json() == {"detail": "Method Not Allowed"}
    assert r.headers["allow"] == allow


@pytest.mark.anyio
@pytest.mark.parametrize(
    "expires_at",
    [
        0,  # a number: pydantic alone would read 1970-01-01
        1_800_000_000,
        "1800000000",  # a Unix time as a string
        True,
        "2027-01-31",  # a date alone
        "2027-01-31T12:00:00",  # no offset: whose noon?
        "2027-01-31 12:00:00Z",  # a space for the T
        "2027-02-30T12:00:00Z",  # no such day
        "2027-01-31T24:00:00Z",
        "2027-01-31T12:00:00+24:00",
        "1999-12-31T23:59:59Z",  # outside 2000 to 2999
        "3000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    ],
)
async def test_timestamps_are_rfc_3339_strings_only(
    client: httpx.AsyncClient, expires_at: Any
) -> None:
    admin = await admin_headers()
    target = await get_store().create(name="target")
    for method, path, body in (
        ("POST", "/admin/keys", {"name": "n", "expires_at": expires_at}),
        ("PATCH", f"/admin/keys/{target.record.id}", {"expires_at": expires_at}),
        ("POST", f"/admin/keys/{target.record.id}/rotate", {"expires_at": expires_at}),
    ):
        r = await client.request(method, path, json=body, headers=admin)
        assert r.status_code == 422, r.text
        errors = r.json()["detail"]
        assert all(e["loc"][:2] == ["body", "expires_at"] for e in errors), r.text


@pytest.mark.anyio
async def test_rfc_3339_timestamps_are_taken(client: httpx.AsyncClient) -> None:
    admin = await admin_headers()
    for text in ("2027-01-31T12:00:00.5+05:30", "2027-01-31t06:30:00.5z"):
        r = await client.post(
            "/admin/keys", json={"name": "n", "expires_at": text}, headers=admin
        )
        assert r.status_code == 201, r.text
        expires = datetime.fromisoformat(r.json()["expires_at"])
        assert expires == datetime(2027, 1, 31, 6, 30, 0, 500_000, tzinfo=UTC)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/rotate", "grace_seconds", -1),
        ("/rotate", "grace_seconds", 90 * 86_400 + 1),  # over 90 days
        ("/rotate", "grace_seconds", "60"),  # a number, not text
        ("/rotate", "grace_seconds", 1.5),
        ("/rotate", "grace_seconds", True),
        ("", "credits", -1),
        ("", "credits", MAX_AMOUNT + 1),
        ("", "credits", "5"),
        ("", "rate_limit", "0/1m"),
        ("", "rate_limit", "1/8d"),  # a window over 7 days
        ("", "rate_limit", f"{MAX_AMOUNT + 1}/1m"),
        ("", "rate_limit", " 100/1m"),
        ("", "refill", f"{MAX_AMOUNT + 1}/day"),
        ("", "refill", "-5/day"),
        ("", "disabled", 1),  # 1 is not true
        ("", "name", None),  # null would erase it
        ("", "scopes", None),
        ("", "disabled", None),
    ],
)
async def test_durations_and_counts_are_bounded(
    client: httpx.AsyncClient, path: str, field: str, value: Any
) -> None:
    admin = await admin_headers()
    target = await get_store().create(name="target")
    method = "POST" if path else "PATCH"
    r = await client.request(
        method,
        f"/admin/keys/{target.record.id}{path}",
        json={field: value},
        headers=admin,
    )
    assert r.status_code == 422, r.text
    assert all(e["loc"][:2] == ["body", field] for e in r.json()["detail"]), r.text


@pytest.mark.anyio
async def test_bounds_are_inclusive(client: httpx.AsyncClient) -> None:
    admin = await admin_headers()
    body = {
        "name": "n",
        "credits": MAX_AMOUNT,
        "rate_limit": f"{MAX_AMOUNT}/604800s",
        "refill": f"{MAX_AMOUNT}/month",
    }
    r = await client.post("/admin/keys", json=body, headers=admin)
    assert r.status_code == 201, r.text
    key_id = r.json()["id"]
    # 7776000.0 is an integer to JSON Schema, so it is one here too.
    r = await client.post(
        f"/admin/keys/{key_id}/rotate",
        json={"grace_seconds": 90 * 86_400 + 0.0},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    for days, status in ((0, 422), (1, 200), (366, 200), (367, 422)):
        r = await client.get(
            f"/admin/keys/{key_id}/usage", params={"days": days}, headers=admin
        )
        assert r.status_code == status, r.text


@given(st.from_regex(RATE_LIMIT_PATTERN, fullmatch=True))
def test_the_rate_limit_pattern_admits_only_rate_limits(text: str) -> None:
    parse_rate_limit(text)


@given(
    st.integers(1, MAX_AMOUNT),
    st.integers(1, MAX_WINDOW_SECONDS),
)
def test_the_rate_limit_pattern_admits_every_rate_limit(
    limit: int, window: int
) -> None:
    # As keystore writes them (show, the admin API's answers): 100/1m, 90s.
    assert re.fullmatch(RATE_LIMIT_PATTERN, str(RateLimit(limit, window)))


@given(st.from_regex(REFILL_PATTERN, fullmatch=True))
def test_the_refill_pattern_admits_only_refills(text: str) -> None:
    parse_refill(text)


@given(st.integers(0, MAX_AMOUNT), st.sampled_from(REFILL_INTERVALS))
def test_the_refill_pattern_admits_every_refill(
    amount: int, interval: RefillInterval
) -> None:
    assert re.fullmatch(REFILL_PATTERN, str(Refill(amount, interval)))


#: RFC 3339 offsets: whole minutes, under a day either way.
offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2999, 12, 31, 23, 59, 59),
        timezones=offsets,
    )
)
def test_every_aware_time_of_2000_to_2999_is_a_timestamp(moment: datetime) -> None:
    parsed = TypeAdapter(Timestamp).validate_python(moment.isoformat())
    assert parsed == moment


def test_a_naive_time_is_not() -> None:
    with pytest.raises(ValidationError, match="RFC 3339"):
        TypeAdapter(Timestamp).validate_python(datetime(2027, 1, 1).isoformat())


#: Examples per operation and phase; KEYSTORE_SCHEMATHESIS_EXAMPLES=1000 for a
#: long run, KEYSTORE_SCHEMATHESIS_SEED to replay one (README: The OpenAPI
#: document). Read at import: the clean_environ fixture removes them.
EXAMPLES = int(os.environ.get("KEYSTORE_SCHEMATHESIS_EXAMPLES", "30"))
SEED = os.environ.get("KEYSTORE_SCHEMATHESIS_SEED")


@pytest.mark.anyio
async def test_schemathesis_finds_nothing(
    settings: Settings, auth_emulator: AuthEmulator, tmp_path: Path
) -> None:
    """``schemathesis run /openapi.json --checks all`` against the demo app,
    with an admin key and a customer signed in through the Auth emulator."""
    token = auth_emulator.sign_up(f"schemathesis-{os.urandom(4).hex()}@example.com")
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="schemathesis", scopes=["admin", "reports:read"])
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'hooks = "{ROOT / "tests" / "schemathesis_hooks.py"}"\n'
        "[warnings]\n"
        # A run that lost its key, or a schema that validation contradicts.
        'fail-on = ["missing_auth", "validation_mismatch"]\n'
        # A usage span's bounds (to not before from, at most 366 days, a day
        # of the calendar) and a new key's expiry in the future are beyond
        # what a schema says: a documented 422.
        "[[operations]]\n"
        'include-path = ["/v1/me/usage", "/v1/me/keys"]\n'
        "checks.positive_data_acceptance.expected-statuses = "
        '["2xx", "401", "403", "404", "409", "422", "429", "5xx"]\n'
    )
    env = {
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_TIMEOUT": "10",  # a slow emulator is no 503 here
        "KEYSTORE_LOG_LEVEL": "WARNING",
        "FIREBASE_AUTH_EMULATOR_HOST": auth_emulator.host,
        # Every example answered, not most of them 429 after the first minute's.
        "KEYSTORE_SELF_SERVICE_RATE_LIMIT": "1000000/1m",
    }
    # Quiet: thousands of requests, a log line each, would bury a traceback.
    with running_server(tmp_path, env, args=["--log-level", "warning"]) as server:
        command = [
            *(str(Path(sys.executable).parent / "schemathesis"), "--no-color"),
            *("--config-file", str(config), "run", f"{server.base}/openapi.json"),
            *("--checks", "all", "--max-examples", str(EXAMPLES)),
            *("--header", f"x-api-key: {made.key}"),
            # Spelt as the scheme names it, so that schemathesis can leave it
            # out to check that the routes then refuse.
            *("--header", f"Authorization: Bearer {token}"),
            *("--generation-database", "none"),
        ]
        if SEED:
            command += ["--seed", SEED]
        done = subprocess.run(
            command,
            cwd=tmp_path,
            env={**os.environ, "KEYSTORE_SCHEMATHESIS_KEY_ID": made.record.id},
            capture_output=True,
            text=True,
            timeout=120 + EXAMPLES,  # about 0.25 s an example
        )
        # The run kept its key to the end (tests/schemathesis_hooks.py).
        kept = httpx.get(f"{server.base}/v1/whoami", headers={"x-api-key": made.key})
    assert done.returncode == 0, done.stdout + done.stderr + server.output
    assert kept.status_code == 200, kept.text
    assert "Traceback" not in server.output, server.output
