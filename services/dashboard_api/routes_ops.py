"""Liveness, readiness, the live event stream, operator backfill and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from services.dashboard_api import readiness
from services.dashboard_api.edge import ApiMetrics, bearer_ok
from services.dashboard_api.models import (
    AdmittedEntry,
    AdmittedSeries,
    BackfillRequest,
    BackfillResponse,
    Problem,
    Readiness,
)
from services.dashboard_api.read_model import ReadModel
from shared.domain import control
from shared.domain.config import StrategyConfig
from shared.domain.contracts import ContractError, decode_json, encode_json
from shared.domain.subjects import SeriesKey
from shared.infra import admission
from shared.infra.settings import Settings
from shared.infra.telemetry import Metrics

SSE_KEEPALIVE_SEC = 15.0
SSE_POLL_SEC = 1.0
SSE_SUBSCRIBE_WAIT_SEC = 3.0  # a first client waits this long for the API's subscription to be confirmed
SSE_RETRY_AFTER_SEC = 10
SERIES_PAGE_DEFAULT = 100
SERIES_PAGE_MAX = 1000  # a page of /api/series: 10,000 admitted series are ten requests, not one huge body
SERIES_OFFSET_MAX = 1_000_000  # MAX_SERIES' own upper bound: no offset past it can find anything


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(SSE_RETRY_AFTER_SEC)})


class _LiveResponse(StreamingResponse):
    """The event stream, giving its client's place back however it ends: a client gone before the first
    byte never starts the generator, whose own ``finally`` would then never run."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@dataclass
class _ReadinessCache:
    """The data-freshness part of /readyz, cached for HMM_READINESS_CACHE_SEC (seed 003 §7)."""

    ttl: float
    at: float = -1e18
    stale: Any = None

    async def get(self, compute: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        if now - self.at >= self.ttl:
            self.stale = await compute()
            self.at = now
        return self.stale


class OpsRoutes:
    def __init__(
        self,
        settings: Settings,
        config: StrategyConfig,
        reads: ReadModel,
        nc: NATS,
        metrics: Metrics,
        shutdown: asyncio.Event | None,
        api_metrics: ApiMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.reads = reads
        self.nc = nc
        self.metrics = metrics
        self.api_metrics = api_metrics if api_metrics is not None else ApiMetrics(metrics.registry)
        self.shutdown = shutdown
        self.readiness_cache = _ReadinessCache(config.hmm.readiness_cache_sec)
        self.universe_order = [s.key.id for s in config.universe]
        self.universe = frozenset(self.universe_order)

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/healthz", self.healthz, tags=["status"])
        router.add_api_route(
            "/readyz", self.readyz, response_model=Readiness, tags=["status"], responses={503: {"model": Readiness}}
        )
        router.add_api_route("/api/stream", self.stream, tags=["live"], responses={503: {"model": Problem}})
        router.add_api_route(
            "/api/backfill",
            self.backfill,
            methods=["POST"],
            response_model=BackfillResponse,
            tags=["operator"],
            responses={code: {"model": Problem} for code in (401, 403, 413, 503, 504)},
        )
        router.add_api_route(
            "/api/series",
            self.series,
            response_model=AdmittedSeries,
            tags=["status"],
            responses={503: {"model": Problem}},
        )
        router.add_api_route("/metrics", self.prometheus, include_in_schema=False)
        return router

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def staleness(self) -> readiness.Staleness:
        state = await self.reads.state()
        known = [f for e in state.entries.values() if (f := e.freshness) is not None]
        return readiness.stale(known, self.universe_order, int(time.time() * 1000))

    async def readyz(self) -> Response:
        detail: dict[str, str] = {}
        nats_ok = False
        if self.nc.is_connected:
            try:
                await self.nc.flush(timeout=2)
                nats_ok = True
            except (nats.errors.Error, TimeoutError) as exc:
                detail["nats"] = f"flush failed: {exc}"
        else:
            detail["nats"] = "not connected"
        redis_ok = False
        stale = readiness.Staleness([], [])
        try:
            redis_ok = bool(await self.reads.redis.ping())
            stale = await self.readiness_cache.get(self.staleness)
        except (RedisError, OSError) as exc:
            self.api_metrics.redis_errors.labels("readiness").inc()
            detail["redis"] = f"{type(exc).__name__}: {exc}"
        if stale.universe:
            detail["data"] = f"{len(stale.universe)} series stale"
        if stale.other:
            detail["other_data"] = f"{len(stale.other)} series outside the universe stale"
        # Stale data does not make the API unready: every replica would drop out together, taking the
        # status page away exactly when an operator needs it to see what is stale.
        body = Readiness(
            ready=nats_ok and redis_ok,
            nats=nats_ok,
            redis=redis_ok,
            data_ok=redis_ok and not stale.universe,
            stale_series=stale.universe,
            other_stale_series=stale.other,
            detail=detail,
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    async def stream(self, request: Request) -> Response:
        """Server-Sent Events: one ``change`` event per batch the state publisher writes.

        503 with ``Retry-After`` past ``API_SSE_MAX_CLIENTS`` clients, or while the API cannot hear the
        notices (Redis away): a stream then would look live and stay silent.
        """
        fanout = self.reads.feed.fanout
        if len(fanout) >= fanout.cap:
            self.api_metrics.sse_refused.labels("full").inc()
            return _unavailable(f"{fanout.cap} live clients connected already (API_SSE_MAX_CLIENTS)")
        if not await self.reads.feed.wait_live(SSE_SUBSCRIBE_WAIT_SEC):
            self.api_metrics.sse_refused.labels("no_notices").inc()
            return _unavailable("change notices unavailable (Redis)")
        client = fanout.join()
        if client is None:  # filled up while this one waited
            self.api_metrics.sse_refused.labels("full").inc()
            return _unavailable(f"{fanout.cap} live clients connected already (API_SSE_MAX_CLIENTS)")
        shutdown = self.shutdown

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\nevent: hello\ndata: {}\n\n"
                quiet = 0.0
                # Short waits, so a stopping server or a gone client ends the stream within a second.
                while not (shutdown is not None and shutdown.is_set()) and not await request.is_disconnected():
                    item = await client.next(SSE_POLL_SEC)
                    if item is None:
                        quiet += SSE_POLL_SEC
                        if quiet >= SSE_KEEPALIVE_SEC:
                            quiet = 0.0
                            yield ": keepalive\n\n"
                        continue
                    event, data = item
                    if not event:  # the subscription is gone: the browser reconnects and starts over
                        return
                    quiet = 0.0
                    yield f"event: {event}\ndata: {data}\n\n"
            except asyncio.CancelledError:
                return  # the server is stopping
            finally:
                fanout.leave(client)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return _LiveResponse(events(), lambda: fanout.leave(client), media_type="text/event-stream", headers=headers)

    async def backfill(
        self,
        body: BackfillRequest,
        authorization: str | None = Header(None, description="Bearer <API_TOKEN>"),
        timeout: float = Query(300.0, gt=0, le=3600, description="seconds to wait for ingest"),
    ) -> dict[str, Any]:
        """Ask ingest for deeper history (seed 003 ``/backfill_ohlcv``); answers when the run is done."""
        token = self.settings.api_token
        if token is None:
            raise HTTPException(403, "operator endpoints are disabled: start dashboard_api with API_TOKEN set")
        if not bearer_ok(authorization, token):  # checked before the body too, by edge.BodyGuard
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        if body.series is not None and body.series not in self.universe:
            raise HTTPException(400, f"{body.series} is not in the universe")
        names = self.settings.names
        request = encode_json(control.BackfillRequest(body.series, body.target_candles, body.max_pages))
        try:
            reply = await self.nc.request(names.control("backfill"), request, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise HTTPException(503, "no ohlcv_ingest is running to serve the backfill") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise HTTPException(504, f"ingest did not answer within {timeout:.0f}s") from None
        try:
            return msgspec.to_builtins(decode_json(reply.data, control.BackfillReply))
        except ContractError as exc:
            raise HTTPException(502, f"ingest's reply breaks its contract: {exc.reason}") from None

    async def series(
        self,
        limit: int = Query(SERIES_PAGE_DEFAULT, ge=1, le=SERIES_PAGE_MAX, description="series per page"),
        offset: int = Query(0, ge=0, le=SERIES_OFFSET_MAX, description="admitted series to skip"),
    ) -> AdmittedSeries:
        """The admitted series (NATS KV bucket ``series``), first to appear first, a page at a time."""
        first = await self.reads.registry()
        if first is None:
            raise HTTPException(503, "NATS unreachable: the admission registry cannot be read",
                                headers={"Retry-After": "1"})
        inside = admission.admitted(first, self.settings.max_series)
        page = inside[offset : offset + limit]
        end = offset + len(page)
        return AdmittedSeries(
            admitted=len(inside),
            max_series=self.settings.max_series,
            registered=len(first),
            offset=offset,
            limit=limit,
            next_offset=end if end < len(inside) else None,
            series=[_entry(token, seq) for token, seq in page],
        )

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _entry(token: str, first_seq: int) -> AdmittedEntry:
    key = SeriesKey.from_token(token)  # written by the candle consumers from a SeriesKey: always parses
    return AdmittedEntry(exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe, first_seq=first_seq)
