"""The FastAPI application factory."""

from __future__ import annotations

import gc
from typing import Any

from fastapi import APIRouter, FastAPI
from sqlalchemy import Engine, text

from leadpilot import __version__
from leadpilot.api.deps import ActorCache
from leadpilot.api.errors import BodySizeLimit, install_error_handlers
from leadpilot.api.routes import (
    accounts,
    auth,
    contacts,
    contracts,
    dashboard,
    distribution,
    events,
    experiments,
    leads,
    scoring,
    search,
    tasks,
    teams,
    users,
)
from leadpilot.config import Settings, get_settings
from leadpilot.crm.events import bus
from leadpilot.db.engine import get_engine, read_only_engine
from leadpilot.web.routes import router as web_router

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the app for the given settings (defaults: the environment) and database engine."""
    settings = settings or get_settings()
    app = FastAPI(
        title="leadpilot",
        version=__version__,
        description="Self-hosted, AI-native sales CRM engine. Authenticate at POST /api/v1/auth/token.",
        openapi_url="/openapi.json",
        docs_url="/docs",
    )
    app.state.settings = settings
    app.state.engine = engine or get_engine(settings)
    app.state.secret_key = settings.resolved_secret_key()
    app.state.actor_cache = ActorCache(ttl_seconds=settings.auth_cache_seconds)
    if settings.redis_url:
        bus.configure_redis(settings.redis_url, settings.redis_stream)

    api = APIRouter(prefix=API_PREFIX)
    for module in (auth, users, teams, accounts, contacts, leads, tasks, events, scoring, search, experiments):
        api.include_router(module.router)
    api.include_router(dashboard.router)
    api.include_router(contracts.router)
    api.include_router(distribution.router)
    app.include_router(api)
    app.include_router(web_router)  # the HTML workspace (docs/web.md): the same service functions

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """Liveness and database reachability (no authentication)."""
        with app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__, "database": app.state.engine.dialect.name}

    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def _fill_pool(engine: Engine, connections: int = 5) -> None:
    """Open the pool's connections before the first request (a burst would otherwise open them one by one,
    each request waiting for a connect and a cold first query)."""
    reader = read_only_engine(engine)  # the same pool; on SQLite a deferred BEGIN (no write lock held)
    opened = []
    try:
        for _ in range(connections):
            conn = reader.connect()
            conn.execute(text("SELECT 1"))
            opened.append(conn)
    finally:
        for conn in opened:
            conn.close()  # back to the pool, still open


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used by ``leadpilot serve`` with several workers).

    The objects alive once the app is built (about 200,000: modules, models, schemas) are moved out of the
    garbage collector's reach with ``gc.freeze()``: otherwise every full collection scans them all, a
    100-300 ms stall of the worker every few seconds under load. They are handed back at shutdown.
    """
    app = create_app()
    _fill_pool(app.state.engine)
    gc.collect()
    gc.freeze()
    app.router.on_shutdown.append(gc.unfreeze)
    return app
