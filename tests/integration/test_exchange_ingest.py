"""Ingest against a recorded exchange over real NATS: startup backfill, gaps, POST /api/backfill, readiness."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx

from services.ohlcv_ingest.__main__ import build_with
from shared.domain.subjects import SeriesKey
from tests.factories import TF_MS
from tests.fakes import RecordedSeries, recorded_factory
from tests.harness import Stack, StackFactory, eventually, small_config

KEY = SeriesKey("binance", "BTC/USDT", "1m")
TOKEN = "t0ken-for-the-operator-endpoint"
HMM = {
    "HMM_ENABLED": False,
    "HMM_TRAINING_CANDLES": 120,
    "HMM_MIN_TRAIN_SAMPLES": 60,
    "HMM_OHLCV_BACKFILL_MAX_PAGES": 3,
    "HMM_OHLCV_SYNC_INTERVAL_SEC": 0.5,
    "HMM_READINESS_CACHE_SEC": 0.0,
}


def exchange_config() -> Any:
    cfg = small_config([], hmm=HMM, universe=[{"exchange": "binance", "symbol": "BTC/USDT", "timeframe": "1m"}])
    return cfg


async def pipeline(st: Stack) -> dict[str, Any] | None:
    snap = await st.snapshot(KEY)
    return snap["hmm_data_pipeline"] if snap else None


async def test_backfill_through_the_api_fills_a_gap_the_exchange_repaired(make_stack: StackFactory) -> None:
    exchange = RecordedSeries(bars=400)
    missing = exchange.first_ts + 330 * TF_MS  # inside the startup backfill's window
    exchange.hidden.add(missing)
    st = await make_stack(exchange_config())
    await st.start("state_publisher")
    await st.start("ohlcv_ingest", build=partial(build_with, recorded_factory(exchange)))
    await st.start("dashboard_api", api_token=TOKEN)

    async def gap_reported() -> dict[str, Any] | None:
        p = await pipeline(st)
        return p if p and p["backfill_last_at"] and p["gaps"] == 1 else None

    before = await eventually(gap_reported)
    assert before["samples"] >= HMM["HMM_TRAINING_CANDLES"] - 1
    assert before["freshness_ok"] is True
    assert before["freshness_limit_sec"] == 180.0
    assert before["source"] == "exchange"
    assert all(since is None or since >= exchange.first_ts for since, _ in exchange.calls)

    exchange.hidden.clear()  # the exchange repaired its hole; an operator asks for a deeper backfill
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=30) as http:
        body = {"series": KEY.id, "target_candles": 200, "max_pages": 3}
        assert (await http.post("/api/backfill", json=body)).status_code == 401
        wrong = await http.post("/api/backfill", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        unknown = await http.post(
            "/api/backfill", json={"series": "kraken:ETH/USD:1m"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert unknown.status_code == 400
        invalid = await http.post("/api/backfill", json={"max_pages": 0}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert invalid.status_code == 422
        reply = await http.post("/api/backfill", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 200, reply.text
        (result,) = reply.json()["results"]
        assert result["ok"] is True
        assert result["rows"] >= 1 + (200 - before["samples"]) // 2  # the gap plus older history

        async def repaired() -> dict[str, Any] | None:
            p = await pipeline(st)
            return p if p and p["gaps"] == 0 and p["backfill_last_rows"] == result["rows"] else None

        after = await eventually(repaired)
        assert after["samples"] > before["samples"]
        assert "candles in" in after["backfill_last_message"]
        ready = (await http.get("/readyz")).json()
        assert ready["ready"] is True
        assert ready["stale_series"] == []


async def test_backfill_is_refused_when_no_token_is_configured(make_stack: StackFactory) -> None:
    st = await make_stack(exchange_config())
    await st.start("dashboard_api")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=10) as http:
        reply = await http.post("/api/backfill", json={}, headers={"Authorization": "Bearer anything"})
        assert reply.status_code == 403
        assert "API_TOKEN" in reply.json()["detail"]


async def test_backfill_without_ingest_says_so(make_stack: StackFactory) -> None:
    st = await make_stack(exchange_config())
    await st.start("dashboard_api", api_token=TOKEN)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=10) as http:
        reply = await http.post("/api/backfill", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 503
        assert "ohlcv_ingest" in reply.json()["detail"]


async def test_stale_series_make_readyz_say_which(make_stack: StackFactory) -> None:
    exchange = RecordedSeries(bars=200, lag_bars=10)  # its newest bar closed 9-10 minutes ago
    st = await make_stack(exchange_config())
    await st.start("state_publisher")
    await st.start("ohlcv_ingest", build=partial(build_with, recorded_factory(exchange)))
    await st.start("dashboard_api")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=10) as http:

        async def says_stale() -> httpx.Response | None:
            block = await pipeline(st)
            if not block or not block["samples"]:
                return None  # no data yet is stale too, but this test is about old data
            reply = await http.get("/readyz")
            return reply if reply.json()["stale_series"] else None

        reply = await eventually(says_stale)
        ready = reply.json()
        assert ready["stale_series"] == [KEY.id]
        assert "1 series stale" in ready["detail"]["data"]
        assert ready["nats"] is True
        assert ready["redis"] is True
        block = await pipeline(st)
        assert block is not None
        assert block["freshness_ok"] is False
        assert block["freshness_sec"] > block["freshness_limit_sec"] == 180.0
