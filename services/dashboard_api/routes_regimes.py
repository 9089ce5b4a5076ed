"""The routes that read the snapshots: /api/symbols, one series, /api/summary, /api/config, /api/tuning, /api/status.

Each answers with the bytes :mod:`render` makes (cached per stored text, gzip made
once), so nothing is parsed into Python objects or validated again per request. The
``response_model`` stays on every route, for the OpenAPI schema and for the
reference path: data the models reject goes through the original dict code and
FastAPI's validation, failing exactly as before.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.dashboard_api import core, query
from services.dashboard_api.models import (
    ConfigView,
    Problem,
    Status,
    Summary,
    SymbolConsensus,
    SymbolDetail,
    SymbolDetailCompact,
    SymbolSnapshot,
    TuningRow,
)
from services.dashboard_api.query import MAX_HISTORY, SymbolFilter
from services.dashboard_api.read_model import ReadModel, ReadState
from shared.domain.config import StrategyConfig

JSON = "application/json"
DEFAULT_HISTORY = 600
_GZIPPED = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}


def accepts_gzip(request: Request) -> bool:
    """The GZip middleware's test, so both compress for the same clients."""
    return "gzip" in request.headers.get("accept-encoding", "")


def respond(request: Request, body: core.Body) -> Response:
    if len(body.data) >= core.GZIP_MIN_BYTES and accepts_gzip(request):
        return Response(body.gzip(), media_type=JSON, headers=_GZIPPED)
    return Response(body.data, media_type=JSON)


class RegimeRoutes:
    """The snapshot routes over one :class:`ReadModel`."""

    def __init__(self, reads: ReadModel, config: StrategyConfig, namespace: str) -> None:
        self.reads = reads
        self.config = config
        self.namespace = namespace
        self.tiers = query.known_tiers(config)
        self.thresholds = core.thresholds(config)
        self._thresholds_json = json.dumps(self.thresholds)
        self._config: core.Body | None = None

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/api/symbols", self.list_symbols, response_model=list[SymbolSnapshot], tags=["regimes"])
        router.add_api_route(
            "/api/symbols/{exchange}/{symbol:path}",
            self.symbol_detail,
            response_model=SymbolDetail | SymbolDetailCompact,
            tags=["regimes"],
        )
        router.add_api_route(
            "/api/consensus/{exchange}/{symbol:path}",
            self.consensus,
            response_model=SymbolConsensus,
            responses={404: {"model": Problem, "description": "consensus off, or no verdict for the symbol yet"}},
            tags=["regimes"],
        )
        router.add_api_route("/api/summary", self.summary, response_model=Summary, tags=["regimes"])
        router.add_api_route("/api/config", self.strategy_config, response_model=ConfigView, tags=["status"])
        router.add_api_route("/api/tuning", self.tuning, response_model=list[TuningRow], tags=["regimes"])
        router.add_api_route("/api/status", self.status, response_model=Status, tags=["status"])
        return router

    async def list_symbols(
        self,
        request: Request,
        vol_regime: str | None = Query(None, description="low / normal / high / crisis (any case)"),
        hmm_regime: str | None = Query(None, description="bearish / ranging / bullish (any case)"),
        tier: str | None = Query(None, description="a tier the config names (any case)"),
        exchange: str | None = Query(None, description="exact exchange id; one no series has gives []"),
    ) -> Any:
        chosen = query.symbol_filter(vol_regime, hmm_regime, tier, exchange, self.tiers)
        state = await self.reads.state()
        body = state.body(("symbols", chosen), lambda s: _symbols(s, chosen))
        if body is None:
            return core.filtered(core.parsed(state.raws()), chosen)
        return respond(request, body)

    async def symbol_detail(
        self,
        request: Request,
        exchange: str,
        symbol: str,
        timeframe: str | None = Query(None, description="needed when the symbol has several timeframes"),
        bars: int | None = Query(
            None, ge=0, le=MAX_HISTORY, description=f"history points, newest last (default {DEFAULT_HISTORY})"
        ),
        history: int | None = Query(None, ge=0, le=MAX_HISTORY, description="the older name of bars"),
        fmt: str | None = Query(
            None,
            alias="format",
            description="rows (default): history as a list of points; compact: history as one array per field",
        ),
    ) -> Any:
        timeframe = query.timeframe(timeframe)
        n = query.history_points(bars, history, DEFAULT_HISTORY)
        compact = query.output_format(fmt) == "compact"
        cache_key, ticket = (exchange, symbol, timeframe, n, compact), self.reads.ticket()
        async with self.reads.detail_lock(cache_key):
            body = self.reads.cached_detail(cache_key, ticket)
            if body is None:
                read = self.reads.begin()
                key = await self.reads.find(exchange, symbol, timeframe)
                parts = await self.reads.detail_parts(key, n)
                raw, points, transitions, agreed = parts.snapshot, parts.history, parts.transitions, parts.consensus
                if raw is None:
                    raise HTTPException(404, f"no snapshot for {key.id} yet")
                body = core.detail(raw, points, transitions, self._thresholds_json, compact, agreed)
                if body is None:
                    return core.detail_dict(raw, points, transitions, self.thresholds, compact, agreed)
                self.reads.keep_detail(cache_key, read, body)
        return respond(request, body)

    async def consensus(self, request: Request, exchange: str, symbol: str) -> Any:
        """One symbol's HMM verdicts across its timeframes reduced to one (written when ``consensus.enabled``)."""
        raw = await self.reads.consensus(exchange, symbol)
        data = core.consensus(raw)
        if data is None:  # not what the model accepts: FastAPI's validation says why
            return json.loads(raw)
        return Response(data, media_type=JSON)

    async def summary(self, request: Request) -> Any:
        raw, body = await self.reads.summary()
        if body is None:
            return json.loads(raw) if raw else core.empty_summary()
        return respond(request, body)

    async def strategy_config(self, request: Request) -> Any:
        """The strategy config in force (read-only): what the decisions were computed with."""
        if self._config is None:
            view = core.config_view(self.config)
            try:
                self._config = core.Body(core.dump(core.CONFIG, core.CONFIG.validate_python(view)))
            except ValidationError:
                return view
        return respond(request, self._config)

    async def tuning(self, request: Request) -> Any:
        """Per series: flips per day, dwell per regime, mean forward return per regime."""
        state = await self.reads.state()
        body = state.body(("tuning",), lambda s: _joined([e.tuning for e in s.entries.values()]))
        if body is None:
            return core.tuning_rows(core.parsed(state.raws()))
        return respond(request, body)

    async def status(self, request: Request) -> Any:
        state = await self.reads.state()
        services = await self.reads.services()
        summary = state.body(("summary",), lambda s: core.summary(s.summary))
        series = state.body(("status",), _status_tail)
        now = int(time.time() * 1000)
        if summary is None or series is None:
            return {
                "namespace": self.namespace,
                "now": now,
                "summary": json.loads(state.summary) if state.summary else core.empty_summary(),
                "services": list(services),
                "series": core.series_statuses(core.parsed(state.raws())),
            }
        head = core.status_head(self.namespace, now, summary.data, core.dump(core.SERVICES, services))
        if len(head) + len(series.data) >= core.GZIP_MIN_BYTES and accepts_gzip(request):
            return Response(core.gzip_spliced(head, series), media_type=JSON, headers=_GZIPPED)
        return Response(head + series.data, media_type=JSON)


def _joined(parts: list[bytes | None]) -> bytes | None:
    if any(p is None for p in parts):
        return None
    return core.json_list(p for p in parts if p is not None)


def _symbols(state: ReadState, chosen: SymbolFilter) -> bytes | None:
    parts = []
    for entry in state.entries.values():
        snap = entry.snapshot
        if snap is None:
            return None
        if core.matches(snap, chosen):
            parts.append(snap.data)
    return core.json_list(parts)


def _status_tail(state: ReadState) -> bytes | None:
    """/api/status ``series`` and the closing brace: what follows :func:`core.status_head`."""
    series = _joined([e.status for e in state.entries.values()])
    return None if series is None else series + b"}"
