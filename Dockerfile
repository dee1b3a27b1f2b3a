# keystore demo service for Cloud Run. Credentials come from the service account
# the service runs as (Application Default Credentials); nothing secret is baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app
# Dependencies first, from pyproject.toml, so code changes reuse this layer.
COPY pyproject.toml README.md ./
RUN mkdir keystore api && touch keystore/__init__.py api/__init__.py \
    && pip install . && pip uninstall -y keystore
COPY keystore ./keystore
COPY api ./api
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app keystore

USER 10001
EXPOSE 8080
# exec: uvicorn is PID 1 and gets Cloud Run's SIGTERM; requests in flight finish,
# usage counts flush and the Firestore client closes within Cloud Run's 10 s.
CMD ["sh", "-c", "exec uvicorn api.main:app --host 0.0.0.0 --port \"${PORT}\" --proxy-headers --forwarded-allow-ips='*' --no-server-header --timeout-graceful-shutdown 8"]
