"""The status API and dashboard: reads the Redis snapshots state_publisher writes; never writes them.

``create_app`` takes its clients ready-made (built in ``main``), so a test can
hand it its own Redis and NATS.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import redis.asyncio as aioredis
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from services.dashboard_api.models import (
    BackfillRequest,
    BackfillResponse,
    ConfigView,
    Problem,
    Readiness,
    SeriesStatus,
    ServiceHealth,
    Status,
    Summary,
    SymbolDetail,
    SymbolSnapshot,
)
from shared.bus import read_health
from shared.config import Settings, StrategyConfig
from shared.contracts import HMM_LABELS, VOL_LABELS
from shared.errors import ContractError
from shared.store import RedisKeys
from shared.subjects import SeriesKey, decode_symbol
from shared.telemetry import Metrics

STATIC = Path(__file__).resolve().parent / "static"
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


def _empty_summary() -> dict[str, Any]:
    return {
        "symbols": 0,
        "vol_regime_summary": dict.fromkeys(VOL_LABELS, 0),
        "vol_regime_avg_vol_short": dict.fromkeys(VOL_LABELS),
        "hmm_regime_summary": dict.fromkeys(HMM_LABELS, 0),
        "hmm_untrained": 0,
        "updated_at": None,
    }


def create_app(
    settings: Settings,
    config: StrategyConfig,
    redis: aioredis.Redis,
    nc: NATS,
    metrics: Metrics,
    shutdown: asyncio.Event | None = None,
) -> FastAPI:
    """The app over ready-made clients; ``shutdown`` set ends open event streams so the server can stop."""
    keys = RedisKeys(settings.names)
    names = settings.names
    readiness_cache = _ReadinessCache(float(config.hmm["HMM_READINESS_CACHE_SEC"]))
    app = FastAPI(
        title="regime-stack",
        version="0.1.0",
        summary="Volatility and HMM market regimes, sizing multipliers and score weights, per series.",
        responses={404: {"model": Problem}, 400: {"model": Problem}},
    )

    async def snapshots() -> list[dict[str, Any]]:
        tokens = sorted(await redis.smembers(keys.symbols))
        if not tokens:
            return []
        raws = await redis.mget([keys.symbol(t) for t in tokens])
        return [json.loads(r) for r in raws if r]

    async def find(exchange: str, symbol: str, timeframe: str | None) -> SeriesKey:
        display = symbol if "/" in symbol else _decode(symbol)
        candidates = []
        for token in await redis.smembers(keys.symbols):
            key = SeriesKey.from_token(token)
            if key.exchange == exchange and key.symbol == display:
                candidates.append(key)
        if timeframe is not None:
            candidates = [k for k in candidates if k.timeframe == timeframe]
        if not candidates:
            raise HTTPException(404, f"no series {exchange}:{display}" + (f":{timeframe}" if timeframe else ""))
        if len(candidates) > 1:
            tfs = ", ".join(sorted(k.timeframe for k in candidates))
            raise HTTPException(400, f"{exchange}:{display} has several timeframes ({tfs}); add ?timeframe=")
        return candidates[0]

    @app.get("/api/symbols", response_model=list[SymbolSnapshot], tags=["regimes"])
    async def list_symbols(
        vol_regime: str | None = Query(None, description="low / normal / high / crisis"),
        hmm_regime: str | None = Query(None, description="BEARISH / RANGING / BULLISH"),
        tier: str | None = None,
        exchange: str | None = None,
    ) -> list[dict[str, Any]]:
        if vol_regime is not None and vol_regime not in VOL_LABELS:
            raise HTTPException(400, f"vol_regime must be one of {', '.join(VOL_LABELS)}")
        if hmm_regime is not None and hmm_regime.upper() not in HMM_LABELS:
            raise HTTPException(400, f"hmm_regime must be one of {', '.join(HMM_LABELS)}")
        out = []
        for snap in await snapshots():
            if vol_regime is not None and snap.get("vol_regime") != vol_regime:
                continue
            if hmm_regime is not None and (snap.get("hmm_regime") or {}).get("regime") != hmm_regime.upper():
                continue
            if tier is not None and snap.get("tier") != tier:
                continue
            if exchange is not None and snap.get("exchange") != exchange:
                continue
            out.append(snap)
        return out

    @app.get("/api/symbols/{exchange}/{symbol:path}", response_model=SymbolDetail, tags=["regimes"])
    async def symbol_detail(
        exchange: str,
        symbol: str,
        timeframe: str | None = None,
        history: int = Query(600, ge=0, le=1440, description="history points, newest last"),
    ) -> dict[str, Any]:
        key = await find(exchange, symbol, timeframe)
        raw = await redis.get(keys.symbol(key.token))
        if raw is None:
            raise HTTPException(404, f"no snapshot for {key.id} yet")
        points = await redis.lrange(keys.history(key.token), -history, -1) if history else []
        trans = await redis.lrange(keys.transitions(key.token), 0, -1)
        vol = config.vol
        return {
            "snapshot": json.loads(raw),
            "history": [json.loads(p) for p in points],
            "transitions": [json.loads(t) for t in trans],
            "thresholds": {"low": vol.ratio_low, "normal": vol.ratio_normal, "high": vol.ratio_high},
        }

    @app.get("/api/summary", response_model=Summary, tags=["regimes"])
    async def summary() -> dict[str, Any]:
        raw = await redis.get(keys.summary)
        return json.loads(raw) if raw else _empty_summary()

    @app.get("/api/config", response_model=ConfigView, tags=["status"])
    async def strategy_config() -> dict[str, Any]:
        """The strategy config in force (read-only): what the decisions were computed with."""
        return {
            "universe": [{"series": s.key.id, "tier": s.tier} for s in config.universe],
            "per_trade_nav_pct": config.per_trade_nav_pct,
            "max_per_trade_nav_pct": config.max_per_trade_nav_pct,
            "base_weights": dict(config.base_weights),
            "sizing_multipliers": {t: dict(r) for t, r in config.sizing_multipliers.items()},
            "hybrid_weight_modifiers": {
                scope: {label: dict(m) for label, m in per.items()} for scope, per in config.hybrid_modifiers.items()
            },
            "vol_thresholds": {
                "low": config.vol.ratio_low,
                "normal": config.vol.ratio_normal,
                "high": config.vol.ratio_high,
            },
            "idle_target": {
                "base_target": config.idle.base_target,
                "sensitivity": config.idle.sensitivity,
                "floor": config.idle.floor,
                "ceiling": config.idle.ceiling,
            },
            "hmm": dict(config.hmm),
        }

    @app.get("/api/tuning", tags=["regimes"])
    async def tuning() -> list[dict[str, Any]]:
        """Seed 003 §4: per series, flips per day, dwell per regime, mean forward return per regime."""
        return [
            {"series": s["series"], "hmm": s.get("hmm_tuning"), "vol": s.get("vol_tuning")} for s in await snapshots()
        ]

    @app.get("/api/status", response_model=Status, tags=["status"])
    async def status() -> dict[str, Any]:
        snaps = await snapshots()
        raw = await redis.get(keys.summary)
        try:
            services = [_health(h) for h in await read_health(nc.jetstream(), names)]
        except (nats.errors.Error, OSError, TimeoutError):
            services = []
        return {
            "namespace": settings.namespace,
            "now": int(time.time() * 1000),
            "summary": json.loads(raw) if raw else _empty_summary(),
            "services": services,
            "series": [
                SeriesStatus(
                    series=s["series"],
                    vol_regime=s.get("vol_regime"),
                    hmm_regime=s.get("hmm_regime"),
                    hmm_data_pipeline=s.get("hmm_data_pipeline"),
                )
                for s in snaps
            ],
        }

    @app.get("/healthz", tags=["status"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def stale_series() -> list[str]:
        stale = []
        for s in await snapshots():
            pipe = s.get("hmm_data_pipeline")
            if pipe is not None and not pipe.get("freshness_ok", True):
                stale.append(s["series"])
        return stale

    @app.get("/readyz", response_model=Readiness, tags=["status"], responses={503: {"model": Readiness}})
    async def readyz() -> Response:
        detail: dict[str, str] = {}
        nats_ok = False
        if nc.is_connected:
            try:
                await nc.flush(timeout=2)
                nats_ok = True
            except (nats.errors.Error, TimeoutError) as exc:
                detail["nats"] = f"flush failed: {exc}"
        else:
            detail["nats"] = "not connected"
        redis_ok = False
        stale: list[str] = []
        try:
            redis_ok = bool(await redis.ping())
            stale = await readiness_cache.get(stale_series)
        except (RedisError, OSError) as exc:
            detail["redis"] = f"{type(exc).__name__}: {exc}"
        if stale:
            detail["data"] = f"{len(stale)} series stale"
        body = Readiness(ready=nats_ok and redis_ok, nats=nats_ok, redis=redis_ok, stale_series=stale, detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/api/stream", tags=["live"])
    async def stream(request: Request) -> StreamingResponse:
        """Server-Sent Events: one ``change`` event per batch the state publisher writes."""
        pubsub = redis.pubsub()
        await pubsub.subscribe(keys.changes)

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\nevent: hello\ndata: {}\n\n"
                quiet = 0.0
                # Short waits, so a stopping server or a gone client ends the stream within a second.
                while not (shutdown is not None and shutdown.is_set()) and not await request.is_disconnected():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=SSE_POLL_SEC)
                    if msg is not None:
                        quiet = 0.0
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

    @app.post(
        "/api/backfill",
        response_model=BackfillResponse,
        tags=["operator"],
        responses={401: {"model": Problem}, 403: {"model": Problem}, 503: {"model": Problem}, 504: {"model": Problem}},
    )
    async def backfill(
        body: BackfillRequest,
        authorization: str | None = Header(None, description="Bearer <API_TOKEN>"),
        timeout: float = Query(300.0, gt=0, le=3600, description="seconds to wait for ingest"),
    ) -> dict[str, Any]:
        """Ask ingest for deeper history (seed 003 ``/backfill_ohlcv``); answers when the run is done."""
        token = settings.api_token
        if token is None:
            raise HTTPException(403, "operator endpoints are disabled: start dashboard_api with API_TOKEN set")
        presented = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token")
        if body.series is not None and body.series not in {s.key.id for s in config.universe}:
            raise HTTPException(400, f"{body.series} is not in the universe")
        try:
            reply = await nc.request(names.control("backfill"), body.model_dump_json().encode(), timeout=timeout)
        except nats.errors.NoRespondersError:
            raise HTTPException(503, "no ohlcv_ingest is running to serve the backfill") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise HTTPException(504, f"ingest did not answer within {timeout:.0f}s") from None
        return json.loads(reply.data)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RedisConnectionError)
    async def redis_down(_request: Request, exc: RedisConnectionError) -> JSONResponse:
        return JSONResponse({"detail": f"redis unavailable: {exc}"}, status_code=503)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _decode(token: str) -> str:
    try:
        return decode_symbol(token)
    except ContractError as exc:
        raise HTTPException(400, exc.reason) from None


def _health(raw: dict[str, Any]) -> ServiceHealth:
    known = set(ServiceHealth.model_fields) - {"extra"}
    extra = {k: v for k, v in raw.items() if k not in known}
    return ServiceHealth(**{k: raw[k] for k in known if k in raw}, extra=extra)
