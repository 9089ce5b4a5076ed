"""Confirmed transitions through the stack: events carry the raw and the confirmed label, the confirmed one
lags by the configured bars, and what the screener and the snapshot act on is the confirmed one."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.ohlcv_ingest.demo import DemoMarket
from shared.domain.confirm import Confirmation
from shared.domain.contracts import (
    HmmRegimeBatch,
    HmmRegimeEvent,
    ScreenerDecision,
    ScreenerDecisionBatch,
    VolRegimeBatch,
    VolRegimeEvent,
)
from shared.domain.subjects import SeriesKey
from tests.factories import candles_from_returns
from tests.harness import SMALL_VOL, Collected, StackFactory, eventually, small_config

CONFIRM = 3  # bars, for both regimes
VOL_KEY = SeriesKey("test", "CRI/USD", "1m")
HMM_KEY = SeriesKey("test", "HMM/USD", "1m")
HMM = {
    "HMM_ENABLED": True,
    "HMM_TRAINING_CANDLES": 400,
    "HMM_MIN_TRAIN_SAMPLES": 200,
    "HMM_N_ITER": 20,
    "HMM_CONFIRM_BARS": CONFIRM,
}
# No hysteresis band here, so the vol label in force is exactly the plain label confirmed over CONFIRM bars.
VOL = {**SMALL_VOL, "defaults": {**SMALL_VOL["defaults"], "confirm_bars": CONFIRM, "hysteresis": 0.0}}


def vol_candles() -> list[Any]:
    """Calm, a burst, calm, a burst: the 32/8-bar test windows go to crisis and back, with raw flickers."""
    rng = np.random.default_rng(4)
    sigmas = [0.001] * 40 + [0.03] * 6 + [0.001] * 40 + [0.0004] * 20 + [0.02] * 5 + [0.001] * 20
    return candles_from_returns(VOL_KEY, rng.normal(0.0, np.array(sigmas)).tolist())


def hmm_candles(n: int) -> list[Any]:
    market = DemoMarket([HMM_KEY], seed=11, start_ts=60_000 * 10_000_000)
    return [bars[0] for bars in market.bars(n)]


def confirmed(raw: list[str]) -> list[str]:
    c = Confirmation(CONFIRM)
    return [c.update(label) for label in raw]


def lags(raw: list[str], label: list[str]) -> int:
    """Raw changes away from the label in force that then held: each must be confirmed on its CONFIRM-th bar."""
    n = 0
    for i in range(1, len(raw) - CONFIRM + 1):
        if raw[i] != raw[i - 1] and raw[i] != label[i - 1] and len(set(raw[i : i + CONFIRM])) == 1:
            assert label[i + CONFIRM - 2] != raw[i]
            assert label[i + CONFIRM - 1] == raw[i]
            n += 1
    return n


def assert_vol_label_is_the_plain_label_confirmed(events: list[Any], candles: list[Any]) -> None:
    """Vol: label is the plain label confirmed over CONFIRM bars, once the long window is full."""
    live = [e for e in events if e.sufficient]
    assert [e.ts for e in events] == [c.ts for c in candles]
    raw, label = [e.raw_label for e in live], [e.label for e in live]
    assert None not in raw
    assert label == confirmed(raw)
    assert "crisis" in label
    assert lags(raw, label) >= 2
    assert all(e.changed == (e.prev_label is not None and e.label != e.prev_label) for e in live)


def assert_hmm_regime_is_the_raw_regime_confirmed(events: list[Any]) -> None:
    """HMM: once trained, regime is the filter's raw_regime confirmed over CONFIRM bars."""
    trained = [e for e in events if e.trained]
    assert trained
    raw_h, label_h = [e.raw_regime for e in trained], [e.regime for e in trained]
    assert None not in raw_h
    assert label_h == confirmed(raw_h)
    assert lags(raw_h, label_h) >= 1
    # The first model saw HMM_MIN_TRAIN_SAMPLES rows: a shallow one, its confidence scaled down.
    first = trained[0]
    assert (first.depth_tier, first.training_candles, first.label_agreement) == ("shallow", 247, None)
    for e in trained:
        assert e.raw_confidence is not None
        assert abs(e.confidence - e.raw_confidence * (247 / 400) ** 0.5) < 1e-12


async def test_events_carry_raw_and_confirmed_labels_and_the_confirmed_lags_by_the_configured_bars(
    make_stack: StackFactory,
) -> None:
    st = await make_stack(small_config([("CRI/USD", "CORE"), ("HMM/USD", "CORE")], hmm=HMM, vol_regimes=VOL))
    vols = Collected(VolRegimeEvent, VolRegimeBatch)
    hmms = Collected(HmmRegimeEvent, HmmRegimeBatch)
    decisions = Collected(ScreenerDecision, ScreenerDecisionBatch)
    await st.nc.subscribe(st.names.vol_all, cb=vols.on_msg)
    await st.nc.subscribe(st.names.hmm_all, cb=hmms.on_msg)
    await st.nc.subscribe(st.names.screener_all, cb=decisions.on_msg)
    for service in ("vol_regime", "hmm_regime", "screener", "state_publisher"):
        await st.start(service)
    vol_in, hmm_in = vol_candles(), hmm_candles(600)
    await st.publish(vol_in)
    await st.publish(hmm_in)

    async def decided() -> bool:
        return all(
            (d := decisions.of(key)) and d[-1].ts == candles[-1].ts
            for key, candles in ((VOL_KEY, vol_in), (HMM_KEY, hmm_in))
        )

    await eventually(decided, timeout=60)
    assert (vols.differing, hmms.differing, decisions.differing) == ([], [], [])

    assert_vol_label_is_the_plain_label_confirmed(vols.of(VOL_KEY), vol_in)
    assert_hmm_regime_is_the_raw_regime_confirmed(hmms.of(HMM_KEY))

    # What the screener decided on and the snapshot shows is the confirmed label.
    by_ts = {e.ts: e for e in vols.of(VOL_KEY)}
    assert all(d.vol_regime == by_ts[d.ts].label for d in decisions.of(VOL_KEY))
    hmm_by_ts = {e.ts: e for e in hmms.of(HMM_KEY)}
    assert all(d.hmm_regime == hmm_by_ts[d.ts].regime for d in decisions.of(HMM_KEY))

    async def snapshot_current() -> Any:
        snap = await st.snapshot(HMM_KEY)
        return snap if snap and snap["hmm_regime"] and snap["hmm_regime"]["ts"] == hmm_in[-1].ts else None

    snap = await eventually(snapshot_current)
    last = hmms.of(HMM_KEY)[-1]
    block = snap["hmm_regime"]
    assert (block["regime"], block["raw_regime"]) == (last.regime, last.raw_regime)
    assert (block["depth_tier"], block["training_candles"]) == ("shallow", 247)
    assert snap["vol"]["raw_label"] == vols.of(HMM_KEY)[-1].raw_label
    assert snap["vol_regime"] == vols.of(HMM_KEY)[-1].label
