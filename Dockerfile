# keystore demo service for Cloud Run. Credentials come from the service account
# the service runs as (Application Default Credentials); nothing secret is baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app
# Dependencies first, so that code changes reuse this layer. setuptools reads the
# version from keystore/__init__.py: a stand-in gives it one, and is uninstalled.
COPY pyproject.toml README.md /tmp/deps/
RUN mkdir /tmp/deps/keystore \
    && echo '__version__ = "0"' >/tmp/deps/keystore/__init__.py \
    && pip install "/tmp/deps[demo]" && pip uninstall -y firestore-keystore \
    && rm -r /tmp/deps
# The library, built from a copy of its own (no stale build/ from the layer above)
# and installed: /app holds only the demo app, which the package does not ship.
COPY pyproject.toml README.md /tmp/src/
COPY keystore /tmp/src/keystore
RUN pip install --no-deps /tmp/src && rm -r /tmp/src \
    && useradd --system --uid 10001 --home-dir /app keystore
COPY api ./api
# `uvicorn api.main:app` imports api from the working directory, /app.
ENV PYTHONPATH=/app

USER 10001
EXPOSE 8080
# exec: uvicorn is PID 1 and gets Cloud Run's SIGTERM; requests in flight finish,
# usage counts flush and the Firestore client closes within Cloud Run's 10 s.
# No access log: Cloud Run logs every request itself, and a line per request
# costs the event loop.
# No --http or --loop: uvicorn picks httptools and uvloop, which the server extra
# installs, 1.6x the req/s of h11 and asyncio (benchmarks/README.md, servers).
CMD ["sh", "-c", "exec uvicorn api.main:app --host 0.0.0.0 --port \"${PORT}\" --proxy-headers --forwarded-allow-ips='*' --no-server-header --no-access-log --timeout-graceful-shutdown 8"]
