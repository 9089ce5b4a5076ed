"""hmm_regime over real NATS: trains from stream history, emits verdicts, resumes after a restart without retraining."""

from __future__ import annotations

import functools
from typing import Any

import httpx

from shared.domain.contracts import HMM_LABELS, Candle, HmmRegimeEvent, decode
from shared.domain.subjects import SeriesKey
from tests.factories import demo_candles
from tests.harness import StackFactory, eventually, small_config

KEY = SeriesKey("test", "HMM/USD", "1m")
START = 60_000 * 10_000_000  # ms: when the demo candles begin
HMM_FAST = {
    "HMM_ENABLED": True,
    "HMM_TRAINING_CANDLES": 400,
    "HMM_MIN_TRAIN_SAMPLES": 200,
    "HMM_N_ITER": 20,
    "HMM_BLEND_WITH_TREND": 0.5,
}


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
    candles = demo_candles(1000, key=KEY, seed=11, start_ts=START)
    history = candles[:440]
    await st.publish(history)  # already in the stream when the service first starts
    for service in ("hmm_regime", "vol_regime", "screener", "state_publisher", "dashboard_api"):
        await st.start(service)

    await eventually(lambda: _seen(verdicts, history[-1].ts), timeout=30)
    early = verdicts.events[0]
    assert early.trained is False
    assert early.regime == "RANGING"
    assert early.bias_signal == 0.0

    # The model trained on the history is adopted at the next candle: feed candles until one is trained.
    fed = await feed_until(st, verdicts, candles[440:], lambda: any(e.trained for e in verdicts.events))
    live, after_restart = candles[440 : 440 + fed + 10], candles[440 + fed + 10 : 440 + fed + 30]
    await st.publish(live[fed:])
    trained = [e for e in verdicts.events if e.trained]
    assert trained, "no trained verdict after the history was consumed"
    first = trained[0]
    assert first.regime in HMM_LABELS
    assert abs(sum(first.probabilities) - 1.0) < 1e-9
    assert 0.0 <= first.confidence <= 1.0
    trained_at = first.trained_at
    assert trained_at is not None
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
        label = resumed[-1].regime.lower()  # the JSON API spells every label in lower case
        assert series["hmm_regime"]["regime"] == label
        tuning = (await http.get("/api/tuning")).json()
        assert tuning[0]["hmm"]["bars"][label] >= 1


async def _seen(verdicts: Verdicts, ts: int) -> bool:
    return any(e.ts == ts for e in verdicts.events)


async def feed_until(st: Any, verdicts: Verdicts, candles: list[Candle], done: Any) -> int:
    """Publish candles one verdict at a time until ``done()``; returns how many were fed."""
    for n, candle in enumerate(candles, start=1):
        await st.publish([candle])
        await eventually(functools.partial(_seen, verdicts, candle.ts), interval=0.02)
        if done():
            return n
    raise AssertionError(f"condition not met after {len(candles)} candles")


async def test_retraining_leaves_no_gap_in_the_verdicts(make_stack: StackFactory) -> None:
    hmm = {**HMM_FAST, "HMM_RETRAIN_INTERVAL_SEC": 3600.0}  # every 60 bars of candle time
    st = await make_stack(small_config([("HMM/USD", "CORE")], hmm=hmm))
    verdicts = Verdicts()
    await st.nc.subscribe(st.names.hmm_all, cb=verdicts.on_msg)
    candles = demo_candles(1400, key=KEY, seed=11, start_ts=START)
    await st.publish(candles[:440])
    await st.start("hmm_regime")
    await eventually(lambda: _seen(verdicts, candles[439].ts), timeout=30)
    # Candles keep coming, one verdict at a time, while the model retrains every hour of candle time;
    # the series waits for each retrain, and no verdict is skipped or out of order.
    await feed_until(
        st, verdicts, candles[440:], lambda: len({e.trained_at for e in verdicts.events if e.trained}) >= 2
    )
    sent = [c.ts for c in candles if c.ts <= max(e.ts for e in verdicts.events)]
    await eventually(lambda: _seen(verdicts, sent[-1]))
    assert [e.ts for e in verdicts.events] == sent  # one verdict per candle, none skipped, in order
    trained = [e for e in verdicts.events if e.trained]
    assert trained
    assert all(e.trained for e in verdicts.events[verdicts.events.index(trained[0]) :])
