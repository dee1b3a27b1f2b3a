"""The ASGI app: ``uvicorn api.main:app``; settings from the environment and .env."""

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

from fastapi import FastAPI

from api.customers import build_customer_router
from api.methods import method_not_allowed
from api.routes import build_router
from keystore import (
    ApiKeyAuth,
    ConfigError,
    Settings,
    __version__,
    build_admin_router,
    get_store,
    load_env_file,
    reset_store,
)
from keystore.logs import TraceMiddleware, configure_logging


def create_app(settings: Settings) -> FastAPI:
    """The app for ``settings``; its lifespan opens and closes the key store."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await get_store(settings).open()
        # Everything made so far (modules, the Firestore client) lives as long
        # as the process: keep it out of the collector's full passes, which
        # otherwise scan ~90,000 objects and stall the event loop ~60 ms each.
        # The young generations' garbage is freed first, not frozen; a full
        # pass would find about ten objects more and add ~50 ms to every start.
        # (Python 3.14's incremental collector has no such pauses to avoid.)
        gc.collect(1)
        gc.freeze()
        try:
            yield
        finally:
            await reset_store()

    app = FastAPI(title="keystore demo", version=__version__, lifespan=lifespan)
    auth = ApiKeyAuth.from_settings(settings)
    app.add_middleware(TraceMiddleware)
    app.include_router(build_router(auth))
    app.include_router(build_admin_router(auth, include_in_schema=settings.admin_docs))
    app.include_router(build_customer_router(settings))
    # The OpenAPI document lists every answer; a 405 lists every method.
    auth.document(app)
    app.add_exception_handler(405, method_not_allowed)
    return app


@cache
def _app_from_env() -> FastAPI:
    load_env_file()
    try:
        settings = Settings.from_env()
        configure_logging(settings)
        return create_app(settings)
    except ConfigError as exc:
        # One line, no traceback: the setting, its value and what is allowed.
        print(f"keystore: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def __getattr__(name: str) -> FastAPI:
    # `api.main:app` is built on first access, not at import, so that importing
    # this module (in tests, say) reads no environment and no .env file.
    if name == "app":
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
