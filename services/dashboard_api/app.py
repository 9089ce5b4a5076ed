"""The status API and dashboard: reads the Redis snapshots state_publisher writes; never writes them.

``create_app`` takes its clients ready-made (built in ``main``), so a test can
hand it its own Redis and NATS. The routes live in ``routes_regimes`` (the
snapshot reads, served from :class:`~services.dashboard_api.read_model.ReadModel`)
and ``routes_ops`` (health, readiness, the live stream, backfill, metrics).
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from nats.aio.client import Client as NATS
from redis.exceptions import ConnectionError as RedisConnectionError

from services.dashboard_api import core
from services.dashboard_api.models import Problem
from services.dashboard_api.read_model import ReadModel
from services.dashboard_api.routes_ops import OpsRoutes, _ReadinessCache
from services.dashboard_api.routes_regimes import RegimeRoutes
from shared.domain.config import StrategyConfig
from shared.infra.settings import Settings
from shared.infra.telemetry import Metrics

__all__ = ["STATIC", "_ReadinessCache", "create_app", "read_model"]

STATIC = Path(__file__).resolve().parent / "static"
# Swagger UI as fastapi-offline ships it: the API docs must work where no CDN can be reached. No ReDoc:
# its page loads a logo from its vendor's CDN whatever it is configured with.
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
DOCS_ASSETS_URL = "/docs-assets"
HEALTH_CACHE_MAX_SEC = 1.0


def create_app(
    settings: Settings,
    config: StrategyConfig,
    redis: aioredis.Redis,
    nc: NATS,
    metrics: Metrics,
    shutdown: asyncio.Event | None = None,
) -> FastAPI:
    """The app over ready-made clients; ``shutdown`` set ends open event streams so the server can stop.

    Close ``read_model(app)`` before ``redis``: it holds a subscription to the change notices.
    """
    # Heartbeats come every health interval: reading them at most twice per interval shows each one.
    health_ttl = min(HEALTH_CACHE_MAX_SEC, settings.health_interval_sec / 2)
    reads = ReadModel(redis, nc, settings.names, health_ttl, shutdown)
    app = FastAPI(
        title="regime-stack",
        version="0.1.0",
        summary="Volatility and HMM market regimes, sizing multipliers and score weights, per series.",
        responses={404: {"model": Problem}, 400: {"model": Problem}},
        docs_url=None,
        redoc_url=None,
    )
    app.state.reads = reads
    # Bodies the routes compressed already (Content-Encoding set) and the event stream pass through as they are.
    app.add_middleware(GZipMiddleware, minimum_size=core.GZIP_MIN_BYTES, compresslevel=core.GZIP_LEVEL)
    app.include_router(RegimeRoutes(reads, config, settings.namespace).router())
    app.include_router(OpsRoutes(settings, config, reads, nc, metrics, shutdown).router())

    @app.exception_handler(RedisConnectionError)
    async def redis_down(_request: Request, exc: RedisConnectionError) -> JSONResponse:
        return JSONResponse({"detail": f"redis unavailable: {exc}"}, status_code=503)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _offline_docs(app)
    return app


def _offline_docs(app: FastAPI) -> None:
    """/docs with every asset served from here, none from a CDN."""
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    favicon = "/static/favicon.svg"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=favicon,
            oauth2_redirect_url=redirect_url,
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def read_model(app: FastAPI) -> ReadModel:
    reads: ReadModel = app.state.reads
    return reads
