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
from typing import Any

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from nats.aio.client import Client as NATS
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import Receive, Scope, Send

from services.dashboard_api import core, query
from services.dashboard_api.edge import ApiMetrics, BodyGuard, Edge
from services.dashboard_api.live import Fanout
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
DOCS_URL = "/docs"
DOCS_REDIRECT_URL = "/docs/oauth2-redirect"
HEALTH_CACHE_MAX_SEC = 1.0


class _App(FastAPI):
    """FastAPI with :class:`Edge` around all of it, Starlette's own error answers included."""

    edge: Edge | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.edge is None:
            await super().__call__(scope, receive, send)
        else:
            await self.edge(scope, receive, send, super().__call__)


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
    api_metrics = ApiMetrics(metrics.registry)
    fanout = Fanout(settings.api_sse_max_clients, api_metrics.sse_clients.set)
    on_redis_error = api_metrics.redis_errors.labels("changes").inc
    reads = ReadModel(redis, nc, settings.names, health_ttl, shutdown, fanout, on_redis_error)
    app = _App(
        title="regime-stack",
        version="0.1.0",
        summary="Volatility and HMM market regimes, sizing multipliers and score weights, per series.",
        responses={404: {"model": Problem}, 400: {"model": Problem}},
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(_known_parameters_only)],
    )
    app.state.reads = reads
    # Bodies the routes compressed already (Content-Encoding set) and the event stream pass through as they are.
    app.add_middleware(GZipMiddleware, minimum_size=core.GZIP_MIN_BYTES, compresslevel=core.GZIP_LEVEL)
    # Outside gzip: a refused body is never read, let alone decompressed or routed.
    app.add_middleware(BodyGuard, token=settings.api_token, max_body=settings.api_max_body_bytes)
    regime_routes = RegimeRoutes(reads, config, settings.namespace).router()
    ops_routes = OpsRoutes(settings, config, reads, nc, metrics, shutdown, api_metrics).router()
    app.include_router(regime_routes)
    app.include_router(ops_routes)
    app.edge = Edge(
        api_metrics,
        # The routes themselves (what FastAPI wraps them in when included varies by version), then the app's.
        routes=lambda: [*regime_routes.routes, *ops_routes.routes, *app.routes],
        docs_paths=lambda: {DOCS_URL, app.swagger_ui_oauth2_redirect_url or DOCS_REDIRECT_URL},
        untimed=("/api/stream",),
    )

    _error_handlers(app, api_metrics)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _offline_docs(app)
    return app


def _error_handlers(app: FastAPI, api_metrics: ApiMetrics) -> None:
    """Bad filters and bad parameters are a 400 with one sentence; Redis down is a 503 with Retry-After."""

    @app.exception_handler(query.BadRequest)
    async def bad_request(_request: Request, exc: query.BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        # A query or path value out of its bounds is a 400 with one sentence, like every other bad filter;
        # a body FastAPI cannot use keeps its standard 422 with the list of errors.
        errors = exc.errors()
        if errors and all(e["loc"][0] in ("query", "path", "header") for e in errors):
            said = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in errors)
            return JSONResponse({"detail": said}, status_code=400)
        return await request_validation_exception_handler(request, exc)

    async def redis_down(_request: Request, exc: Exception) -> JSONResponse:
        api_metrics.redis_errors.labels("request").inc()
        return JSONResponse({"detail": f"redis unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"})

    app.add_exception_handler(RedisConnectionError, redis_down)
    app.add_exception_handler(RedisTimeoutError, redis_down)


def _offline_docs(app: FastAPI) -> None:
    """/docs with every asset served from here, none from a CDN."""
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or DOCS_REDIRECT_URL
    favicon = "/static/favicon.svg"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
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


async def _known_parameters_only(request: Request) -> None:
    """400 for a query parameter an /api/ route does not declare: a misspelt filter must not answer everything.

    Only there: the page and the probes may be linked or polled with parameters of no meaning to them.
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not getattr(route, "path", "").startswith("/api/"):
        return
    names = getattr(route, "_query_names", None)
    if names is None:  # worked out once per route, kept on it
        names = _query_names(dependant)
        route._query_names = names  # type: ignore[union-attr]
    query.unknown_parameters(request.query_params.keys(), names)


def _query_names(dependant: Any) -> frozenset[str]:
    names: set[str] = set()
    todo = [dependant]
    while todo:
        d = todo.pop()
        names.update(p.alias for p in d.query_params)
        todo.extend(d.dependencies)
    return frozenset(names)


def read_model(app: FastAPI) -> ReadModel:
    reads: ReadModel = app.state.reads
    return reads
