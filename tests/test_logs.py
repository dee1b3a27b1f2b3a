"""Logs: Cloud Logging's JSON shape on Cloud Run, masked keys everywhere."""

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest

from keystore import ApiKeyStore, Settings
from keystore.keys import new_key
from keystore.logs import (
    CloudJsonFormatter,
    MaskKeys,
    configure_logging,
    mask_keys,
    trace_id,
)
from tests.conftest import running_server

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def test_mask_keys_keeps_only_the_id() -> None:
    key = new_key("ks", "AbCdEf012345")
    assert (
        mask_keys(f"GET /x?api_key={key} 200")
        == "GET /x?api_key=ks_AbCdEf012345_*** 200"
    )
    assert mask_keys("nothing here") == "nothing here"


def test_json_formatter_shape() -> None:
    record = logging.LogRecord(
        "keystore.admin", logging.WARNING, "", 0, "hi %s", ("x",), None
    )
    record.actor_key_id = "abc"
    token = trace_id.set("0123abcd")
    try:
        line = CloudJsonFormatter(project="p1").format(record)
    finally:
        trace_id.reset(token)
    entry = json.loads(line)
    assert entry["severity"] == "WARNING" and entry["message"] == "hi x"
    assert entry["logging.googleapis.com/trace"] == "projects/p1/traces/0123abcd"
    assert entry["actor_key_id"] == "abc" and entry["logger"] == "keystore.admin"


def test_mask_filter_rewrites_the_record() -> None:
    key = new_key("ks")
    record = logging.LogRecord("x", logging.INFO, "", 0, "key %s", (key,), None)
    assert MaskKeys().filter(record)
    assert key not in record.getMessage() and "***" in record.getMessage()


@pytest.mark.anyio
async def test_cloud_run_server_logs_json_with_trace_and_no_key(
    settings: Settings, tmp_path: Path
) -> None:
    async with ApiKeyStore(settings) as store:
        made = await store.create(name="n")
    env = {
        "K_SERVICE": "keystore-demo",  # what Cloud Run sets
        "KEYSTORE_COLLECTION": settings.collection,
        "KEYSTORE_QUERY_PARAM": "api_key",
    }
    with running_server(tmp_path, env) as server:
        async with httpx.AsyncClient(base_url=server.base) as http:
            r = await http.get(
                "/v1/whoami",
                params={"api_key": made.key},
                headers={
                    "X-Cloud-Trace-Context": "105445aa7843bc8bf206b120001000/1;o=1"
                },
            )
            assert r.status_code == 200, r.text
    output = server.output
    lines = [line for line in output.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all("severity" in e and "message" in e for e in entries)
    access = [e for e in entries if "/v1/whoami" in e["message"]]
    assert len(access) == 1
    assert access[0]["logging.googleapis.com/trace"].endswith(
        "105445aa7843bc8bf206b120001000"
    )
    assert made.key not in output
    assert f"ks_{made.record.id}_***" in access[0]["message"]
    assert any(e["message"].startswith("Application startup complete") for e in entries)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("", *UVICORN_LOGGERS)]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.level, lg.propagate = handlers, level, propagate


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_configure_logging_routes_everything_through_one_masked_handler(
    log_format: Literal["json", "text"], capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(Settings(log_format=log_format, log_level="INFO", project="p"))
    key = new_key("ks")
    logging.getLogger("uvicorn.error").info("started with %s", key)
    err = capsys.readouterr().err
    assert key not in err and "***" in err
    if log_format == "json":
        assert json.loads(err)["severity"] == "INFO"
    else:
        assert err.startswith("INFO:uvicorn.error: started with ks_")


def test_no_access_log_stays_off(settings: Settings, tmp_path: Path) -> None:
    """uvicorn --no-access-log (as in the Dockerfile): no line per request,
    though the app routes uvicorn's other loggers through its own handler."""
    env = {"KEYSTORE_COLLECTION": settings.collection}
    with running_server(tmp_path, env, args=["--no-access-log"]) as server:
        for _ in range(3):
            assert httpx.get(f"{server.base}/healthz").status_code == 200
    assert "Application startup complete" in server.output
    assert "/healthz" not in server.output


@pytest.mark.usefixtures("restore_logging")
def test_the_log_level_applies_to_uvicorn_loggers_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """uvicorn sets its own loggers to INFO; KEYSTORE_LOG_LEVEL=WARNING must
    still silence them, or every request would print a line."""
    access = logging.getLogger("uvicorn.access")
    access.setLevel(logging.INFO)
    access.addHandler(logging.NullHandler())  # as uvicorn's own config does
    configure_logging(Settings(log_format="text", log_level="WARNING"))
    access.info('"GET /healthz HTTP/1.1" 200')
    logging.getLogger("uvicorn.error").warning("shutting down")
    err = capsys.readouterr().err
    assert "/healthz" not in err and "shutting down" in err
