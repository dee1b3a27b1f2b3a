"""Logging for Cloud Run: one JSON object per line, in Cloud Logging's shape.

``configure_logging`` sends every record (uvicorn's own included) through one
handler: JSON on Cloud Run (``K_SERVICE`` is set there) or when the settings
ask, plain text otherwise. A filter masks anything that looks like an API key, so a key
that reaches a log line by accident (a URL with ``?api_key=``, say) shows only
its id.
"""

import contextvars
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from keystore.settings import Settings

#: The trace of the request being served, from ``X-Cloud-Trace-Context``.
trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trace_id", default=None
)

_KEY = re.compile(r"\b([a-z][a-z0-9]{0,9})_([0-9A-Za-z]{12})_[0-9A-Za-z]{28}\b")
_SEVERITY = {"WARNING": "WARNING", "CRITICAL": "CRITICAL", "ERROR": "ERROR"}
# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def mask_keys(text: str) -> str:
    """``text`` with the secret part of every API key replaced by ``***``."""
    return _KEY.sub(r"\1_\2_***", text)


class MaskKeys(logging.Filter):
    """Masks API keys in a record's message before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_keys(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class CloudJsonFormatter(logging.Formatter):
    """A record as Cloud Logging's structured JSON: severity, message, trace."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelname, record.levelname),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        if record.exc_info:
            entry["message"] += "\n" + self.formatException(record.exc_info)
        trace = trace_id.get()
        if trace:
            entry["logging.googleapis.com/trace"] = (
                f"projects/{self.project}/traces/{trace}" if self.project else trace
            )
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings) -> None:
    """Route every logger, uvicorn's included, through one masked handler."""
    handler = logging.StreamHandler()
    handler.addFilter(MaskKeys())
    if settings.log_format == "json":
        handler.setFormatter(CloudJsonFormatter(settings.project))
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if name == "uvicorn.access" and not logger.handlers:
            # uvicorn --no-access-log leaves it without a handler: keep it
            # off (uvicorn logs a request only if the logger has a handler).
            continue
        logger.handlers = []
        logger.propagate = True
        # uvicorn sets its loggers' levels (--log-level, INFO by default); a
        # logger's own level decides, so KEYSTORE_LOG_LEVEL must raise them
        # too, or WARNING would still print a line per request.
        logger.setLevel(max(logger.getEffectiveLevel(), root.level))


_TRACE = re.compile(r"[0-9a-fA-F]{1,64}")


class TraceMiddleware:
    """Puts the request's Cloud trace id where log lines can find it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Most requests carry no trace header: they cost a scan of the
        # header names, no dict, no regex, no context variable.
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-cloud-trace-context":
                    await self._traced(value, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _traced(
        self, header: bytes, scope: Scope, receive: Receive, send: Send
    ) -> None:
        trace = header.decode("latin-1").split("/", 1)[0].strip()
        token = trace_id.set(trace if _TRACE.fullmatch(trace) else None)
        try:
            await self.app(scope, receive, send)
        finally:
            trace_id.reset(token)
