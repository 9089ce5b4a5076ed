"""Candles in -> vol regimes -> screener decisions -> Redis snapshots -> API, over real NATS and Redis."""

from __future__ import annotations

import math
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from regimes.servers import free_port
from shared.domain.contracts import Candle, DeadLetter, decode, encode
from shared.domain.subjects import SeriesKey
from tests.factories import candles_from_returns, regime_returns
from tests.harness import Stack, StackFactory, eventually, small_config

CRISIS = SeriesKey("test", "CRI/USD", "1m")
LOW = SeriesKey("test", "LOW/USD", "1m")
CALM = SeriesKey("test", "NRM/USD", "1m")
UNIVERSE = [("CRI/USD", "CORE"), ("LOW/USD", "SATELLITE"), ("NRM/USD", "CORE")]


def market(seed: int = 1) -> dict[SeriesKey, list[Candle]]:
    rng = np.random.default_rng(seed)
    return {
        CRISIS: candles_from_returns(CRISIS, regime_returns("crisis", rng)),
        LOW: candles_from_returns(LOW, regime_returns("low", rng)),
        CALM: candles_from_returns(CALM, regime_returns("normal", rng)),
    }


def comparable(snap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snap.items() if k != "updated_at"}


async def test_candles_become_regimes_in_redis_and_the_api(make_stack: StackFactory) -> None:
    st = await make_stack(small_config(UNIVERSE))
    for service in ("vol_regime", "screener", "state_publisher", "dashboard_api"):
        await st.start(service)
    bars = market()
    for key in bars:
        await st.publish(bars[key])
    last_ts = {key: bars[key][-1].ts for key in bars}

    async def all_decided() -> bool:
        for key, ts in last_ts.items():
            snap = await st.snapshot(key)
            if not snap or not snap["screener"] or snap["screener"]["ts"] != ts:
                return False
        return True

    await eventually(all_decided)
    crisis = await st.snapshot(CRISIS)
    assert crisis is not None
    assert crisis["vol_regime"] == "crisis"
    assert crisis["vol"]["ratio"] >= 1.8
    assert crisis["screener"]["sizing_multiplier"] == 0.5
    assert math.isclose(crisis["screener"]["effective_per_trade_nav_pct"], 0.01)
    low = await st.snapshot(LOW)
    assert low is not None
    assert low["vol_regime"] == "low"
    assert low["screener"]["sizing_multiplier"] == 1.1  # SATELLITE low
    calm = await st.snapshot(CALM)
    assert calm is not None
    assert calm["vol_regime"] == "normal"

    await assert_the_api_serves_the_regimes(st, last_ts[CRISIS])


async def assert_the_api_serves_the_regimes(st: Stack, crisis_last_ts: int) -> None:
    """The regimes the stack decided, as /api/symbols, /api/summary and one series' detail serve them;
    404 and 400 for an unknown series and label; readiness, service status and metrics."""
    base = f"http://127.0.0.1:{st.settings.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        symbols = (await http.get("/api/symbols")).json()
        by_symbol = {s["symbol"]: s for s in symbols}
        assert by_symbol["CRI/USD"]["vol_regime"] == "crisis"
        assert by_symbol["LOW/USD"]["vol"]["short"] < by_symbol["LOW/USD"]["vol"]["long"]
        summary = (await http.get("/api/summary")).json()
        assert summary["vol_regime_summary"]["crisis"] == 1
        assert summary["vol_regime_summary"]["low"] == 1
        assert sum(summary["vol_regime_summary"].values()) == 3
        detail = (await http.get("/api/symbols/test/CRI/USD")).json()
        assert detail["snapshot"]["vol_regime"] == "crisis"
        assert detail["transitions"][0]["to"] == "crisis"
        assert detail["history"][-1]["ts"] == crisis_last_ts
        same = (await http.get("/api/symbols/test/CRI-USD")).json()
        assert same["snapshot"]["series"] == "test:CRI/USD:1m"
        missing = await http.get("/api/symbols/test/NOPE-USD")
        assert missing.status_code == 404
        assert "no series" in missing.json()["detail"]
        bad = await http.get("/api/symbols", params={"vol_regime": "panic"})
        assert bad.status_code == 400
        crisis_only = (await http.get("/api/symbols", params={"vol_regime": "crisis"})).json()
        assert [s["symbol"] for s in crisis_only] == ["CRI/USD"]
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["nats"]
        assert ready.json()["redis"]
        status = (await http.get("/api/status")).json()
        assert {s["service"] for s in status["services"]} >= {"vol_regime", "screener", "state_publisher"}
        assert "regimes_messages_total" in (await http.get("/metrics")).text


@pytest.mark.parametrize("restarted_service", ["vol_regime", "screener", "state_publisher"])
async def test_a_service_restarted_mid_stream_ends_with_the_same_snapshot(
    make_stack: StackFactory, restarted_service: str
) -> None:
    bars = market(seed=5)
    config = small_config(UNIVERSE)
    uninterrupted = await make_stack(config)
    restarted = await make_stack(config)
    for st in (uninterrupted, restarted):
        for service in ("vol_regime", "screener", "state_publisher"):
            await st.start(service)
    for key in bars:
        await uninterrupted.publish(bars[key])

    half = {key: len(candles) // 2 for key, candles in bars.items()}
    for key in bars:
        await restarted.publish(bars[key][: half[key]])

    async def vol_reached(st: Any, upto: dict[SeriesKey, int]) -> bool:
        for key, n in upto.items():
            snap = await st.snapshot(key)
            if not snap or not snap["screener"] or snap["screener"]["ts"] != bars[key][n - 1].ts:
                return False
        return True

    await eventually(lambda: vol_reached(restarted, half))
    assert await restarted.stop(restarted_service) == 0
    for key in bars:  # candles arrive while the service is down
        await restarted.publish(bars[key][half[key] :])
    await restarted.start(restarted_service)

    full = {key: len(c) for key, c in bars.items()}
    await eventually(lambda: vol_reached(uninterrupted, full))
    await eventually(lambda: vol_reached(restarted, full))
    for key in bars:
        a, b = await uninterrupted.snapshot(key), await restarted.snapshot(key)
        assert a is not None
        assert b is not None
        assert comparable(a) == comparable(b)


async def test_bad_messages_are_dead_lettered_and_processing_continues(make_stack: StackFactory) -> None:
    st = await make_stack(small_config(UNIVERSE))
    dlq = await st.js.subscribe(st.names.dlq("vol_regime"))
    metrics_port = free_port()
    await st.start("vol_regime", metrics_port=metrics_port, metrics_host="127.0.0.1")
    good = market()[CALM]
    subject = st.names.ohlcv(CALM)
    nan_price = msgpack.unpackb(encode(good[1]))
    nan_price["close"] = float("nan")
    inverted = msgpack.unpackb(encode(good[2]))
    inverted["high"], inverted["low"] = inverted["low"], inverted["high"]
    await st.publish(good[:1])
    await st.js.publish(subject, b"\xc1 definitely not msgpack")
    await st.js.publish(subject, msgpack.packb(nan_price))
    await st.js.publish(subject, msgpack.packb(inverted))
    await st.publish(good[1:])

    reasons = []
    for _ in range(3):
        msg = await dlq.next_msg(timeout=10)
        letter = decode(msg.data, (DeadLetter,))
        assert letter.subject == subject
        reasons.append(letter.reason)
    assert "not msgpack" in reasons[0]
    assert "not finite" in reasons[1]
    assert "high" in reasons[2]
    assert "< low" in reasons[2]

    # Every good candle still became a vol event: the bad ones cost nothing but themselves.
    await eventually(lambda: _vol_count(st, CALM, len(good)))
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert 'regimes_messages_total{outcome="dead_lettered",service="vol_regime"} 3.0' in text
    assert f'regimes_messages_total{{outcome="handled",service="vol_regime"}} {len(good)}.0' in text


async def _vol_count(st: Any, key: SeriesKey, expected: int) -> bool:
    subject = st.names.vol(key)
    info = await st.js.stream_info(st.names.stream_regimes, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0) == expected
