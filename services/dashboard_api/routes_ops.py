"""Liveness, readiness, the live event stream, operator backfill and Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from services.dashboard_api import core
from services.dashboard_api.models import BackfillRequest, BackfillResponse, Problem, Readiness
from services.dashboard_api.read_model import ReadModel
from shared.domain import contracts
from shared.domain.config import StrategyConfig
from shared.domain.contracts import ContractError, decode_json, encode_json
from shared.infra.settings import Settings
from shared.infra.telemetry import Metrics

SSE_KEEPALIVE_SEC = 15.0
SSE_POLL_SEC = 1.0


@dataclass
class _ReadinessCache:
    """The data-freshness part of /readyz, cached for HMM_READINESS_CACHE_SEC (seed 003 §7)."""

    ttl: float
    at: float = -1e18
    stale: list[str] = field(default_factory=list)

    async def get(self, compute: Callable[[], Awaitable[list[str]]]) -> list[str]:
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
    ) -> None:
        self.settings = settings
        self.config = config
        self.reads = reads
        self.nc = nc
        self.metrics = metrics
        self.shutdown = shutdown
        self.readiness_cache = _ReadinessCache(config.hmm.readiness_cache_sec)
        self.universe = frozenset(s.key.id for s in config.universe)

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/healthz", self.healthz, tags=["status"])
        router.add_api_route(
            "/readyz", self.readyz, response_model=Readiness, tags=["status"], responses={503: {"model": Readiness}}
        )
        router.add_api_route("/api/stream", self.stream, tags=["live"])
        router.add_api_route(
            "/api/backfill",
            self.backfill,
            methods=["POST"],
            response_model=BackfillResponse,
            tags=["operator"],
            responses={code: {"model": Problem} for code in (401, 403, 503, 504)},
        )
        router.add_api_route("/metrics", self.prometheus, include_in_schema=False)
        return router

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def stale_series(self) -> list[str]:
        stale = []
        for s in core.parsed((await self.reads.state()).raws()):
            pipe = s.get("hmm_data_pipeline")
            if pipe is not None and not pipe.get("freshness_ok", True):
                stale.append(s["series"])
        return stale

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
        stale: list[str] = []
        try:
            redis_ok = bool(await self.reads.redis.ping())
            stale = await self.readiness_cache.get(self.stale_series)
        except (RedisError, OSError) as exc:
            detail["redis"] = f"{type(exc).__name__}: {exc}"
        if stale:
            detail["data"] = f"{len(stale)} series stale"
        body = Readiness(ready=nats_ok and redis_ok, nats=nats_ok, redis=redis_ok, stale_series=stale, detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    async def stream(self, request: Request) -> StreamingResponse:
        """Server-Sent Events: one ``change`` event per batch the state publisher writes."""
        pubsub = self.reads.redis.pubsub()
        await pubsub.subscribe(self.reads.keys.changes)
        feed, shutdown = self.reads.feed, self.shutdown

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\nevent: hello\ndata: {}\n\n"
                quiet = 0.0
                # Short waits, so a stopping server or a gone client ends the stream within a second.
                while not (shutdown is not None and shutdown.is_set()) and not await request.is_disconnected():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=SSE_POLL_SEC)
                    if msg is not None:
                        quiet = 0.0
                        feed.changed()  # before the browser hears of it and asks: never answer it from before
                        yield f"event: change\ndata: {msg['data']}\n\n"
                        continue
                    quiet += SSE_POLL_SEC
                    if quiet >= SSE_KEEPALIVE_SEC:
                        quiet = 0.0
                        yield ": keepalive\n\n"
            except (RedisError, asyncio.CancelledError):
                # Redis went away or the server is stopping: end the stream, the browser reconnects.
                return
            finally:
                await pubsub.aclose()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

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
        presented = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token")
        if body.series is not None and body.series not in self.universe:
            raise HTTPException(400, f"{body.series} is not in the universe")
        names = self.settings.names
        request = encode_json(contracts.BackfillRequest(body.series, body.target_candles, body.max_pages))
        try:
            reply = await self.nc.request(names.control("backfill"), request, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise HTTPException(503, "no ohlcv_ingest is running to serve the backfill") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise HTTPException(504, f"ingest did not answer within {timeout:.0f}s") from None
        try:
            return msgspec.to_builtins(decode_json(reply.data, contracts.BackfillReply))
        except ContractError as exc:
            raise HTTPException(502, f"ingest's reply breaks its contract: {exc.reason}") from None

    async def prometheus(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
