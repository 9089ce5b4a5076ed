"""The snapshot routes of the status API as they were before its fast paths: the reference they must match.

``reference_app`` serves ``/api/symbols`` (with its filters), one series' detail,
``/api/summary``, ``/api/config``, ``/api/tuning`` and ``/api/status`` the original way,
as dicts read straight from Redis and validated and serialized by FastAPI through their
response models; ``test_api_speed_paths.py`` compares the real app with it byte for byte.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import nats
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Query
from nats.aio.client import Client as NATS

from services.dashboard_api.models import (
    ConfigView,
    Problem,
    SeriesStatus,
    ServiceHealth,
    Status,
    Summary,
    SymbolDetail,
    SymbolSnapshot,
    TuningRow,
)
from shared.domain.config import StrategyConfig
from shared.domain.contracts import HMM_LABELS, VOL_LABELS
from shared.domain.control import Heartbeat
from shared.domain.errors import ContractError
from shared.domain.subjects import SeriesKey, decode_symbol
from shared.infra.bus import read_health
from shared.infra.redis_keys import RedisKeys
from shared.infra.settings import Settings


def reference_app(settings: Settings, config: StrategyConfig, redis: aioredis.Redis, nc: NATS) -> FastAPI:
    """The snapshot routes as they were before the fast paths (services/dashboard_api/app.py, verbatim but for
    being cut into one function per group of routes), in the order that app declared them."""
    reads = ReferenceReads(redis, RedisKeys(settings.names))
    app = FastAPI(
        title="regime-stack",
        version="0.1.0",
        summary="Volatility and HMM market regimes, sizing multipliers and score weights, per series.",
        responses={404: {"model": Problem}, 400: {"model": Problem}},
    )
    _add_symbol_routes(app, config, reads)
    _add_config_route(app, config)
    _add_status_routes(app, settings, reads, nc)
    return app


@dataclass
class ReferenceReads:
    """What the original routes read from Redis: every snapshot, and the one series a path names."""

    redis: aioredis.Redis
    keys: RedisKeys

    async def snapshots(self) -> list[dict[str, Any]]:
        tokens = sorted(cast(set[str], await self.redis.smembers(self.keys.symbols)))  # decode_responses: str
        if not tokens:
            return []
        raws = await self.redis.mget([self.keys.symbol(t) for t in tokens])
        return [json.loads(r) for r in raws if r]

    async def find(self, exchange: str, symbol: str, timeframe: str | None) -> SeriesKey:
        display = symbol if "/" in symbol else _decode(symbol)
        candidates = []
        for token in cast(set[str], await self.redis.smembers(self.keys.symbols)):  # decode_responses: str
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


def _add_symbol_routes(app: FastAPI, config: StrategyConfig, reads: ReferenceReads) -> None:
    """``/api/symbols`` (filtered), ``/api/symbols/{exchange}/{symbol}`` and ``/api/summary``."""
    redis, keys = reads.redis, reads.keys

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
        for snap in await reads.snapshots():
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
        key = await reads.find(exchange, symbol, timeframe)
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


def _add_config_route(app: FastAPI, config: StrategyConfig) -> None:
    """``/api/config``."""

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
            "vol_confirmation": {"confirm_bars": config.vol.confirm_bars, "hysteresis": config.vol.hysteresis},
            "idle_target": {
                "base_target": config.idle.base_target,
                "sensitivity": config.idle.sensitivity,
                "floor": config.idle.floor,
                "ceiling": config.idle.ceiling,
            },
            "hmm": config.hmm.as_keys(),
            "vocabulary": {
                "vol_labels": ["low", "normal", "high", "crisis"],
                "hmm_labels": ["bearish", "ranging", "bullish"],
                "tiers": ["CORE", "SATELLITE", "TACTICAL", "ALT-EXT"],
                "score_components": ["trend", "carry", "expectancy", "router"],
                "depth_tiers": ["shallow", "moderate", "deep"],
                "depth_candles": {"moderate": 1000, "deep": 2000},
            },
        }


def _add_status_routes(app: FastAPI, settings: Settings, reads: ReferenceReads, nc: NATS) -> None:
    """``/api/tuning`` and ``/api/status``."""

    @app.get("/api/tuning", response_model=list[TuningRow], tags=["regimes"])
    async def tuning() -> list[dict[str, Any]]:
        """Per series: flips per day, dwell per regime, mean forward return per regime."""
        return [
            {"series": s["series"], "hmm": s.get("hmm_tuning"), "vol": s.get("vol_tuning")}
            for s in await reads.snapshots()
        ]

    @app.get("/api/status", response_model=Status, tags=["status"])
    async def status() -> dict[str, Any]:
        snaps = await reads.snapshots()
        raw = await reads.redis.get(reads.keys.summary)
        try:
            services = [_health(h) for h in await read_health(nc.jetstream(), settings.names)]
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


def _empty_summary() -> dict[str, Any]:
    return {
        "symbols": 0,
        "vol_regime_summary": dict.fromkeys(VOL_LABELS, 0),
        "vol_regime_avg_vol_short": dict.fromkeys(VOL_LABELS),
        "hmm_regime_summary": dict.fromkeys(HMM_LABELS, 0),
        "hmm_untrained": 0,
        "updated_at": None,
    }


def _decode(token: str) -> str:
    try:
        return decode_symbol(token)
    except ContractError as exc:
        raise HTTPException(400, exc.reason) from None


def _health(beat: Heartbeat) -> ServiceHealth:
    return ServiceHealth(**msgspec.structs.asdict(beat))
