"""HMM_EVIDENCE_WEIGHT through the stack: hmm_regime's events are the backtest's with the same weight."""

from __future__ import annotations

from dataclasses import replace

from regimes.backtest import backtest
from services.ohlcv_ingest.demo import DemoMarket
from shared.domain.contracts import HmmRegimeBatch, HmmRegimeEvent, encode
from shared.domain.subjects import SeriesKey
from shared.infra.bus import now_ms
from tests.harness import Collected, StackFactory, eventually, small_config

KEY = SeriesKey("test", "HMM/USD", "1m")
HMM = {
    "HMM_ENABLED": True,
    "HMM_TRAINING_CANDLES": 400,
    "HMM_MIN_TRAIN_SAMPLES": 200,
    "HMM_N_ITER": 20,
    "HMM_EVIDENCE_WEIGHT": 0.3,
}


async def test_the_weighted_filter_runs_in_the_stack_as_in_the_backtest(make_stack: StackFactory) -> None:
    config = small_config([("HMM/USD", "CORE")], hmm=HMM)
    assert config.hmm.evidence_weight == 0.3
    candles = [bars[0] for bars in DemoMarket([KEY], seed=11, start_ts=60_000 * 10_000_000).bars(700)]
    st = await make_stack(config)
    hmms = Collected(HmmRegimeEvent, HmmRegimeBatch)
    await st.nc.subscribe(st.names.hmm_all, cb=hmms.on_msg)
    await st.start("hmm_regime")
    await st.publish(candles)
    async def done() -> bool:
        return bool(hmms.of(KEY)) and hmms.of(KEY)[-1].ts == candles[-1].ts

    await eventually(done, timeout=60)
    assert hmms.differing == []

    def hmm_events(weight: float) -> list[bytes]:
        cfg = replace(config, hmm=replace(config.hmm, evidence_weight=weight))
        return [encode(e) for e in backtest(candles, cfg, now_ms()) if isinstance(e, HmmRegimeEvent)]

    got = [encode(e) for e in hmms.of(KEY)]
    assert got == hmm_events(0.3)
    assert got != hmm_events(1.0)  # the weight is in force, not ignored
    trained = [e for e in hmms.of(KEY) if e.trained]
    assert len(trained) > 100
