"""hmm_regime over real NATS: trains from stream history, emits verdicts, resumes after a restart without retraining."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.ohlcv_ingest.demo import DemoMarket
from shared.contracts import HMM_LABELS, Candle, HmmRegimeEvent, decode
from shared.subjects import SeriesKey
from tests.harness import StackFactory, eventually, small_config

KEY = SeriesKey("test", "HMM/USD", "1m")
HMM_FAST = {
    "HMM_ENABLED": True,
    "HMM_TRAINING_CANDLES": 400,
    "HMM_MIN_TRAIN_SAMPLES": 200,
    "HMM_N_ITER": 20,
    "HMM_BLEND_WITH_TREND": 0.5,
}


def demo_candles(n: int) -> list[Candle]:
    market = DemoMarket([KEY], seed=11, start_ts=60_000 * 10_000_000)
    return [bars[0] for bars in market.bars(n)]


class Verdicts:
    """Every HMM event published in the test's namespace, in arrival order."""

    def __init__(self) -> None:
        self.events: list[HmmRegimeEvent] = []

    async def on_msg(self, msg: Any) -> None:
        self.events.append(decode(msg.data, (HmmRegimeEvent,)))

    def after(self, ts: int) -> list[HmmRegimeEvent]:
        return [e for e in self.events if e.ts > ts]


async def test_service_trains_from_history_and_resumes_without_retraining(make_stack: StackFactory) -> None:
    st = await make_stack(small_config([("HMM/USD", "CORE")], hmm=HMM_FAST))
    verdicts = Verdicts()
    await st.nc.subscribe(st.names.hmm_all, cb=verdicts.on_msg)
    candles = demo_candles(520)
    history, live, after_restart = candles[:440], candles[440:480], candles[480:]
    await st.publish(history)  # already in the stream when the service first starts
    for service in ("hmm_regime", "vol_regime", "screener", "state_publisher", "dashboard_api"):
        await st.start(service)

    await eventually(lambda: _seen(verdicts, history[-1].ts), timeout=30)
    early = verdicts.events[0]
    assert early.trained is False
    assert early.regime == "RANGING"
    assert early.bias_signal == 0.0

    # The model trained on the history is adopted at the next candle.
    for candle in live:
        await st.publish([candle])
        if await _trained(verdicts, candle.ts):
            break
    trained = [e for e in verdicts.events if e.trained]
    assert trained, "no trained verdict after the history was consumed"
    first = trained[0]
    assert first.regime in HMM_LABELS
    assert abs(sum(first.probabilities) - 1.0) < 1e-9
    assert 0.0 <= first.confidence <= 1.0
    trained_at = first.trained_at
    assert trained_at is not None
    await st.publish([c for c in live if c.ts > first.ts])
    await eventually(lambda: _seen(verdicts, live[-1].ts))

    assert await st.stop("hmm_regime") == 0
    await st.publish(after_restart)
    await st.start("hmm_regime")
    await eventually(lambda: _seen(verdicts, after_restart[-1].ts))
    resumed = verdicts.after(live[-1].ts)
    assert [e.ts for e in resumed] == [c.ts for c in after_restart]
    assert all(e.trained and e.trained_at == trained_at for e in resumed)  # the same model, no retrain
    assert resumed[0].observation_count == verdicts.after(live[-2].ts)[0].observation_count + 1

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=5) as http:

        async def hmm_block() -> dict[str, Any] | None:
            detail = (await http.get("/api/symbols/test/HMM/USD")).json()
            block = detail["snapshot"]["hmm_regime"]
            return block if block and block["ts"] == after_restart[-1].ts else None

        block = await eventually(hmm_block)
        assert block["trained"] is True
        assert block["blend_factor"] == 0.5
        assert set(block["probabilities"]) == {"bearish", "ranging", "bullish"}
        status = (await http.get("/api/status")).json()
        (series,) = [s for s in status["series"] if s["series"] == KEY.id]
        assert series["hmm_regime"]["regime"] == resumed[-1].regime
        tuning = (await http.get("/api/tuning")).json()
        assert tuning[0]["hmm"]["bars"][resumed[-1].regime] >= 1


async def _seen(verdicts: Verdicts, ts: int) -> bool:
    return any(e.ts == ts for e in verdicts.events)


async def _trained(verdicts: Verdicts, ts: int) -> bool:
    for _ in range(50):
        if _seen_now := [e for e in verdicts.events if e.ts == ts]:
            return _seen_now[0].trained
        await asyncio.sleep(0.1)
    return False
