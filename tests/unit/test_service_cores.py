"""The per-series cores of vol_regime, hmm_regime and ohlcv_ingest: pure state in, plain values out."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import numpy as np
import pytest
from numpy.testing import assert_allclose

from services.hmm_regime.core import SeriesHmm, TrainingResult, adopt, applied_history, training_due
from services.hmm_regime.core import apply_candle as hmm_apply
from services.ohlcv_ingest.core import FRESHNESS_FLOOR_SEC, SeriesBook, freshness_limit_sec
from services.vol_regime.core import SeriesVol
from services.vol_regime.core import apply_candle as vol_apply
from shared.domain.config import HmmConfig
from shared.domain.contracts import Candle, decode, encode
from shared.domain.hmm import WARMUP_BARS, RegimeDetector, TrainedModel, fit_model, usable_rows
from shared.domain.subjects import SeriesKey
from shared.domain.vol import VolInputs, VolRegimeConfig, classify_vol_regime
from tests.factories import KEY, T0, TF_MS, candle, three_regime_market

DAY_MS = 86_400_000


def closes_with_spike(seed: int, calm: int = 80, wild: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    returns = np.concatenate([rng.normal(0.0, 0.001, calm), rng.normal(0.0, 0.02, wild), rng.normal(0.0, 0.0005, calm)])
    return 100.0 * np.exp(np.cumsum(np.concatenate([[0.0], returns])))


# --- vol_regime ------------------------------------------------------------------------------------------------

VOL_CFG = VolRegimeConfig(short_window_bars=6, long_window_bars=60, short_halflife_bars=2, long_halflife_bars=30)


def test_first_candle_primes_the_series_with_the_no_data_verdict() -> None:
    state = SeriesVol.new(VOL_CFG)
    ev = vol_apply(state, candle(0, 100.0, key=KEY), VOL_CFG)
    assert ev is not None
    assert (ev.label, ev.vol_short, ev.vol_long, ev.ratio) == ("normal", 0.0, 0.0, 1.0)
    assert (ev.prev_label, ev.changed, ev.samples, ev.sufficient) == (None, False, 0, False)
    assert (ev.ts, ev.close, ev.key) == (T0, 100.0, KEY)


def test_vol_events_carry_prev_label_and_changed() -> None:
    state = SeriesVol.new(VOL_CFG)
    closes = closes_with_spike(1)
    events = [vol_apply(state, candle(i, c), VOL_CFG) for i, c in enumerate(closes)]
    assert all(ev is not None for ev in events)
    labels = [ev.label for ev in events if ev is not None]
    assert {"crisis", "low"} <= set(labels)  # the spike and the calm after it
    prev: str | None = None
    for ev in events:
        assert ev is not None
        assert ev.prev_label == prev
        assert ev.changed == (prev is not None and ev.label != prev)
        prev = ev.label
    assert sum(ev.changed for ev in events if ev is not None) >= 2


def test_vol_event_values_equal_the_batch_classifier() -> None:
    state = SeriesVol.new(VOL_CFG)
    closes = closes_with_spike(2)
    returns = np.diff(np.log(closes))
    for i, c in enumerate(closes):
        ev = vol_apply(state, candle(i, c), VOL_CFG)
        assert ev is not None
        assert ev.samples == i
        assert ev.sufficient == (i >= VOL_CFG.long_window_bars)
        if i >= VOL_CFG.long_window_bars:
            ref = classify_vol_regime(VolInputs(returns=returns[:i]), VOL_CFG)
            assert ev.raw_label == ref.label  # the label before the hysteresis band and confirmation
            assert_allclose([ev.vol_short, ev.vol_long, ev.ratio], [ref.vol_short, ref.vol_long, ref.ratio], rtol=1e-9)
        else:
            assert (ev.label, ev.vol_short, ev.vol_long, ev.ratio) == ("normal", 0.0, 0.0, 1.0)


@pytest.mark.parametrize("offset", [0, -1, -5], ids=["same", "one-older", "much-older"])
def test_stale_candle_is_skipped_and_leaves_state_untouched(offset: int) -> None:
    state = SeriesVol.new(VOL_CFG)
    for i, c in enumerate(closes_with_spike(3)[:70]):
        vol_apply(state, candle(i, c), VOL_CFG)
    before = state.dump()
    assert vol_apply(state, candle(69 + offset, 500.0), VOL_CFG) is None
    assert state.dump() == before


def test_vol_state_survives_dump_and_load() -> None:
    closes = closes_with_spike(4)
    a = SeriesVol.new(VOL_CFG)
    for i, c in enumerate(closes[:82]):
        vol_apply(a, candle(i, c), VOL_CFG)
    b = SeriesVol.load(VOL_CFG, msgpack.unpackb(msgpack.packb(a.dump()), raw=False))
    for i, c in enumerate(closes[82:], start=82):
        ea, eb = vol_apply(a, candle(i, c), VOL_CFG), vol_apply(b, candle(i, c), VOL_CFG)
        assert ea is not None
        assert eb is not None
        assert ea.label == eb.label
        assert ea.prev_label == eb.prev_label
        assert_allclose([ea.vol_short, ea.vol_long, ea.ratio], [eb.vol_short, eb.vol_long, eb.ratio], rtol=1e-12)


def test_vol_events_pass_their_own_contract() -> None:
    state = SeriesVol.new(VOL_CFG)
    for i, c in enumerate(closes_with_spike(5)):
        ev = vol_apply(state, candle(i, c), VOL_CFG)
        assert decode(encode(ev)) == ev


# --- hmm_regime -------------------------------------------------------------------------------------------------

HMM_CFG = HmmConfig.from_keys(
    {"HMM_ENABLED": True, "HMM_N_ITER": 20, "HMM_MIN_TRAIN_SAMPLES": 200, "HMM_TRAINING_CANDLES": 400}, {}
)


@pytest.fixture(scope="module")
def history() -> tuple[np.ndarray, np.ndarray]:
    return three_regime_market(11, 450)


@pytest.fixture(scope="module")
def model(history: tuple[np.ndarray, np.ndarray]) -> TrainedModel:
    closes, volumes = history
    return fit_model(closes[:400], volumes[:400], HMM_CFG, now_ms=T0)


def test_untrained_verdict_is_ranging_with_zero_bias() -> None:
    state = SeriesHmm.new(HMM_CFG)
    closes, volumes = three_regime_market(1, 80)
    for i, (c, v) in enumerate(zip(closes, volumes, strict=True)):
        ev = hmm_apply(state, candle(i, float(c), volume=float(v)))
        assert ev is not None
        assert ev.regime == "RANGING"
        assert ev.bias_signal == 0.0
        assert ev.confidence == 0.0
        assert ev.probabilities == (0.0, 1.0, 0.0)
        assert (ev.trained, ev.trained_at) == (False, None)
        assert ev.observation_count == i + 1
        assert decode(encode(ev)) == ev


def test_stale_candle_gives_no_hmm_event() -> None:
    state = SeriesHmm.new(HMM_CFG)
    hmm_apply(state, candle(5, 100.0, volume=10.0))
    assert hmm_apply(state, candle(5, 101.0)) is None
    assert hmm_apply(state, candle(4, 101.0)) is None
    assert state.last_ts == T0 + 5 * TF_MS
    assert list(state.history) == [(T0 + 5 * TF_MS, 100.0, 10.0)]


def test_history_is_bounded_by_training_candles() -> None:
    state = SeriesHmm.new(dataclasses.replace(HMM_CFG, training_candles=10, min_train_samples=10))
    for i in range(25):
        hmm_apply(state, candle(i, 100.0 + i))
    assert [ts for ts, _, _ in state.history] == [T0 + i * TF_MS for i in range(15, 25)]


def test_first_training_is_due_at_min_train_samples_usable_rows_by_the_candle_count() -> None:
    state = SeriesHmm.new(HMM_CFG)
    needed = HMM_CFG.min_train_samples + WARMUP_BARS - 1
    for i in range(needed - 1):
        assert not training_due(state, HMM_CFG)
        hmm_apply(state, candle(i, 100.0 + (i % 7)))
    assert usable_rows(len(state.history)) == HMM_CFG.min_train_samples - 1
    assert not training_due(state, HMM_CFG)
    hmm_apply(state, candle(needed, 100.0))
    assert training_due(state, HMM_CFG)
    # The schedule survives a restart (it reads persisted counts, not the in-memory history).
    restored = SeriesHmm.load(HMM_CFG, msgpack.unpackb(msgpack.packb(state.dump()), raw=False))
    assert restored.history_complete is False
    assert training_due(restored, HMM_CFG)


def test_retraining_is_due_by_candle_time_after_the_last_training(model: TrainedModel) -> None:
    cfg = dataclasses.replace(HMM_CFG, retrain_interval_sec=3600.0)
    state = SeriesHmm.new(cfg)
    for i in range(400):
        hmm_apply(state, candle(i, 100.0 + (i % 7)))
    rows = tuple(state.history)
    last_training = rows[-1][0]  # a model's trained_at is the candle time of its window's end
    assert adopt(state, TrainingResult(dataclasses.replace(model, trained_at=last_training), rows, last_training))
    assert not training_due(state, cfg)
    i = len(rows)
    while state.last_ts is not None and state.last_ts - last_training < 3_600_000:
        assert not training_due(state, cfg)
        hmm_apply(state, candle(i, 100.0))
        i += 1
    assert training_due(state, cfg)


def test_a_failed_training_is_not_retried_before_the_retrain_interval_of_candle_time() -> None:
    cfg = dataclasses.replace(HMM_CFG, retrain_interval_sec=600.0)
    state = SeriesHmm.new(cfg)
    for i in range(400):
        hmm_apply(state, candle(i, 100.0))
    assert training_due(state, cfg)
    assert not adopt(state, TrainingResult(None, tuple(state.history), state.last_ts or 0))
    assert state.failed_at == state.last_ts
    for i in range(400, 409):
        hmm_apply(state, candle(i, 100.0))
        assert not training_due(state, cfg)
    hmm_apply(state, candle(410, 100.0))
    assert training_due(state, cfg)


def old(i: int, close: float = 50.0) -> Candle:
    return candle(i, close, key=KEY, volume=1.0)


def test_applied_history_rebuilds_exactly_what_the_consumer_applied() -> None:
    # Stream order is publish order: a late backfill, a duplicate, a candle not applied yet, another series.
    other = candle(5, 1.0, key=SeriesKey("kraken", "ETH/USD", "1m"), volume=1.0)
    stored = [old(3), old(4), old(7), old(5), old(7, 51.0), other, old(8), old(9), old(30)]
    state = SeriesHmm.new(HMM_CFG)
    for c in stored:
        if c.key == KEY and c.ts <= T0 + 9 * TF_MS:
            hmm_apply(state, c)
    rows = applied_history(KEY, stored, upto=T0 + 9 * TF_MS, keep=400)
    assert rows == tuple(state.history)
    assert [ts for ts, _, _ in rows] == [T0 + i * TF_MS for i in (3, 4, 7, 8, 9)]
    assert applied_history(KEY, stored, upto=T0 + 9 * TF_MS, keep=2) == rows[-2:]


def test_apply_candle_with_a_model_installs_it_first(
    history: tuple[np.ndarray, np.ndarray], model: TrainedModel
) -> None:
    closes, volumes = history
    state = SeriesHmm.new(HMM_CFG)
    for i in range(400):
        ev = hmm_apply(state, candle(i, float(closes[i]), volume=float(volumes[i])))
        assert ev is not None
        assert ev.trained is False
    rows = tuple(state.history)
    assert adopt(state, TrainingResult(model, rows, rows[-1][0]))
    ev = hmm_apply(state, candle(400, float(closes[400]), volume=float(volumes[400])))
    assert ev is not None
    assert ev.trained is True
    assert ev.trained_at == model.trained_at == T0
    assert state.detector.model is model
    # Same as a detector that installs the model over those 400 candles, then sees the next one.
    ref = RegimeDetector(HMM_CFG)
    assert ref.install(model, closes[:400], volumes[:400])
    expected = ref.update(float(closes[400]), float(volumes[400]))
    assert ev.regime == expected.regime.name
    assert_allclose(ev.probabilities, expected.probabilities, rtol=1e-9, atol=1e-12)
    assert ev.confidence == pytest.approx(expected.confidence, abs=1e-12)
    assert ev.bias_signal == pytest.approx(expected.bias_signal, abs=1e-12)
    assert math.fsum(ev.probabilities) == pytest.approx(1.0)
    # And the model stays: the following candles are filtered by it without being passed again.
    for i in range(401, 450):
        ev = hmm_apply(state, candle(i, float(closes[i]), volume=float(volumes[i])))
        expected = ref.update(float(closes[i]), float(volumes[i]))
        assert ev is not None
        assert ev.trained is True
        assert_allclose(ev.probabilities, expected.probabilities, rtol=1e-9, atol=1e-12)
        assert decode(encode(ev)) == ev


def test_hmm_state_survives_dump_and_load(history: tuple[np.ndarray, np.ndarray], model: TrainedModel) -> None:
    closes, volumes = history
    a = SeriesHmm.new(HMM_CFG)
    for i in range(400):
        hmm_apply(a, candle(i, float(closes[i]), volume=float(volumes[i])))
    assert adopt(a, TrainingResult(model, tuple(a.history), a.history[-1][0]))
    hmm_apply(a, candle(400, float(closes[400]), volume=float(volumes[400])))
    b = SeriesHmm.load(HMM_CFG, msgpack.unpackb(msgpack.packb(a.dump()), raw=False))
    assert b.last_ts == a.last_ts
    for i in range(401, 430):
        c = candle(i, float(closes[i]), volume=float(volumes[i]))
        ea, eb = hmm_apply(a, c), hmm_apply(b, c)
        assert ea is not None
        assert eb is not None
        assert (ea.regime, ea.trained) == (eb.regime, eb.trained)
        assert_allclose(ea.probabilities, eb.probabilities, rtol=1e-9, atol=1e-12)


# --- ohlcv_ingest SeriesBook --------------------------------------------------------------------------------------


def book(tf: str = "1m", lag: int = 0) -> SeriesBook:
    return SeriesBook(SeriesKey("kraken", "BTC/USD", tf), "exchange", 60.0, clock_lag_ms=lag)


def bars(*indices: int, tf_ms: int = TF_MS) -> list[int]:
    return [T0 + i * tf_ms for i in indices]


def test_add_keeps_timestamps_sorted_and_unique() -> None:
    b = book()
    assert [b.add(t) for t in bars(5, 1, 3, 1, 5, 2)] == [True, True, True, False, False, True]
    assert b.timestamps == bars(1, 2, 3, 5)
    assert (b.oldest_ts, b.last_ts) == (T0 + TF_MS, T0 + 5 * TF_MS)


def test_gaps_are_inclusive_ranges_of_missing_bars() -> None:
    b = book()
    for t in bars(0, 1, 2, 5, 6, 9, 10):
        b.add(t)
    assert b.gaps() == [(T0 + 3 * TF_MS, T0 + 4 * TF_MS), (T0 + 7 * TF_MS, T0 + 8 * TF_MS)]
    assert b.status(T0 + 11 * TF_MS, 2000).gaps == 4


def test_no_gaps_outside_the_held_range() -> None:
    b = book()
    for t in bars(3, 4, 5):
        b.add(t)
    assert b.gaps() == []


def test_expire_forgets_what_retention_dropped() -> None:
    b = book("1h")
    for t in bars(*range(0, 24 * 20), tf_ms=3_600_000):  # 20 days of hourly bars
        b.add(t)
    now = T0 + 20 * DAY_MS
    b.expire(now, retention_days=14)
    assert b.oldest_ts == now - 14 * DAY_MS
    assert len(b.timestamps) == 14 * 24
    b.expire(now, retention_days=14)
    assert len(b.timestamps) == 14 * 24


@pytest.mark.parametrize(
    ("tf", "tf_ms", "limit"),
    [("1m", 60_000, 180.0), ("3m", 180_000, 540.0), ("5m", 300_000, 900.0), ("1h", 3_600_000, 10_800.0)],
)
def test_freshness_limit_is_max_of_180s_and_three_bars(tf: str, tf_ms: int, limit: float) -> None:
    assert freshness_limit_sec(tf_ms) == limit
    assert book(tf).status(T0, 2000).freshness_limit_sec == limit


def test_freshness_floor_applies_to_short_bars() -> None:
    assert FRESHNESS_FLOOR_SEC == 180.0
    assert freshness_limit_sec(1_000) == 180.0


def test_freshness_is_measured_from_the_close_of_the_newest_bar() -> None:
    b = book()
    b.add(T0)
    close_time = T0 + TF_MS
    on_the_limit = b.status(close_time + 180_000, 2000)
    assert on_the_limit.freshness_sec == 180.0
    assert on_the_limit.freshness_ok is True
    late = b.status(close_time + 180_001, 2000)
    assert late.freshness_sec == pytest.approx(180.001)
    assert late.freshness_ok is False
    early = b.status(close_time - 5_000, 2000)  # clocks a little apart: never negative
    assert early.freshness_sec == 0.0
    assert early.freshness_ok is True


def test_series_without_candles_is_not_fresh() -> None:
    status = book().status(T0, 2000)
    assert (status.samples, status.last_ts, status.freshness_sec, status.freshness_ok) == (0, None, None, False)
    assert status.coverage_pct == 0.0


@pytest.mark.parametrize(
    ("samples", "training", "coverage"), [(500, 2000, 25.0), (2000, 2000, 100.0), (3000, 2000, 100.0), (7, 0, 100.0)]
)
def test_coverage_is_samples_against_the_training_window_capped_at_100(
    samples: int, training: int, coverage: float
) -> None:
    b = book()
    for t in bars(*range(samples)):
        b.add(t)
    status = b.status(T0 + samples * TF_MS, training)
    assert status.samples == samples
    assert status.coverage_pct == coverage


def test_clock_lag_shifts_freshness_but_not_the_report_time() -> None:
    lag = 3_600_000
    lagging, plain = book(lag=lag), book()
    for b in (lagging, plain):
        b.add(T0)
    now = T0 + TF_MS + lag + 60_000
    shifted = lagging.status(now, 2000)
    assert shifted.freshness_sec == 60.0
    assert shifted.freshness_ok is True
    assert shifted.reported_at == now
    unshifted = plain.status(now, 2000)
    assert unshifted.freshness_sec == 3660.0
    assert unshifted.freshness_ok is False
    assert unshifted.reported_at == now


def test_status_reports_the_pipeline_fields() -> None:
    b = book("1h")
    b.add(T0)
    b.backfill_last_at, b.backfill_last_rows, b.backfill_last_message = T0 + 5, 720, "backfilled 720 candles"
    b.last_error = "rate limited"
    status = b.status(T0 + 3_600_000, 2000)
    assert (status.interval_min, status.sync_interval_sec, status.source) == (60, 60.0, "exchange")
    assert (status.backfill_last_at, status.backfill_last_rows) == (T0 + 5, 720)
    assert status.backfill_last_message == "backfilled 720 candles"
    assert status.last_error == "rate limited"
    assert decode(encode(status)) == status


def test_book_knows_which_candles_the_stream_holds() -> None:
    from services.ohlcv_ingest.core import SeriesBook

    book = SeriesBook(SeriesKey("kraken", "BTC/USD", "1m"), "exchange", 60.0)
    assert book.add(120_000)
    assert book.holds(120_000)
    assert not book.holds(60_000)
    assert not book.add(120_000)
