"""RegimeDetector against hmmlearn: features, training, exact filtering, labels, retrain stability, snapshots."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from concurrent.futures import ProcessPoolExecutor

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from shared.domain.hmm import (
    N_FEATURES,
    SNAPSHOT_KEY,
    WARMUP_BARS,
    FeatureExtractor,
    HmmConfig,
    Regime,
    RegimeDetector,
    RegimeState,
    TrainedModel,
    as_hmmlearn,
    fit_model,
    restore_from_snapshot,
    serialize_for_snapshot,
    usable_rows,
)

# Market with known regimes: (Regime value, bars) per segment; log-return drift −/0/+ with noise.
SEGMENTS: list[tuple[int, int]] = [(1, 300), (2, 300), (0, 300), (1, 300), (2, 300), (0, 300)]
CFG: dict[str, object] = {"HMM_N_ITER": 30, "HMM_MIN_TRAIN_SAMPLES": 200}


def market(
    seed: int, segments: list[tuple[int, int]] = SEGMENTS, drift: float = 0.0015, noise: float = 0.004
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded closes, volumes and the true regime per bar."""
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    labels: list[int] = []
    for regime, n in segments:
        parts.append(rng.normal((regime - 1) * drift, noise, n))
        labels += [regime] * n
    closes = 100.0 * np.exp(np.cumsum(np.concatenate(parts)))
    volumes = rng.lognormal(0.0, 0.5, len(closes))
    return closes, volumes, np.array(labels)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return market(0)


@pytest.fixture(scope="module")
def model(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> TrainedModel:
    closes, volumes, _ = data
    return fit_model(closes[:1200], volumes[:1200], CFG, now_ms=1_000)


def by_label(model: TrainedModel, posteriors: np.ndarray) -> np.ndarray:
    """hmmlearn state posteriors → (bearish, ranging, bullish)."""
    out = np.zeros((*posteriors.shape[:-1], 3))
    for state, label in enumerate(model.label_order):
        out[..., label] += posteriors[..., state]
    return out


# --------------------------------------------------------------------------- features


def test_batch_equals_incremental_steps(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    closes, volumes, _ = data
    batch = FeatureExtractor().batch(closes, volumes)
    inc = FeatureExtractor()
    rows = [r for r in (inc.step(c, v) for c, v in zip(closes, volumes, strict=True)) if r is not None]
    assert batch.shape == (usable_rows(len(closes)), N_FEATURES)
    assert_array_equal(batch, np.array(rows))


def test_warmup_then_one_row_per_candle() -> None:
    ext = FeatureExtractor()
    outs = [ext.step(100.0 + i, 1.0) for i in range(WARMUP_BARS + 5)]
    assert all(o is None for o in outs[: WARMUP_BARS - 1])
    assert all(o is not None for o in outs[WARMUP_BARS - 1 :])
    assert usable_rows(WARMUP_BARS - 1) == 0
    assert usable_rows(WARMUP_BARS) == 1


def test_flat_prices_and_zero_volume_give_finite_neutral_features() -> None:
    x = FeatureExtractor().batch(np.full(200, 50.0), np.zeros(200))
    assert np.all(np.isfinite(x))
    assert_array_equal(x, np.zeros_like(x))  # spread 0, slope 0, RSI zone 0, volume ratio 1 → log 0
    ext = FeatureExtractor()
    ext.batch(np.full(100, 50.0), np.ones(100))
    row = ext.step(50.0, 0.0)
    assert row is not None
    assert row[3] == pytest.approx(math.log(0.05))  # zero volume hits the floor, not -inf


def test_feature_directions() -> None:
    up = FeatureExtractor().batch(100.0 * 1.002 ** np.arange(200), np.ones(200))
    down = FeatureExtractor().batch(100.0 * 0.998 ** np.arange(200), np.ones(200))
    assert up[-1, 0] > 0 > down[-1, 0]  # EMA spread
    assert up[-1, 2] == pytest.approx(1.0)  # RSI zone: only gains
    assert down[-1, 2] == pytest.approx(-1.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=1e-6, max_value=1e9, allow_nan=False),
            st.floats(min_value=0.0, max_value=1e12, allow_nan=False),
        ),
        min_size=WARMUP_BARS,
        max_size=120,
    )
)
def test_features_finite_for_any_valid_candles(candles: list[tuple[float, float]]) -> None:
    closes = [c for c, _ in candles]
    volumes = [v for _, v in candles]
    x = FeatureExtractor().batch(closes, volumes)
    assert x.shape == (usable_rows(len(candles)), N_FEATURES)
    assert np.all(np.isfinite(x))
    assert np.all(np.abs(x[:, 2]) <= 1.0)


def test_extractor_state_is_plain_and_round_trips(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    closes, volumes, _ = data
    ext = FeatureExtractor()
    ext.batch(closes[:400], volumes[:400])
    state = ext.state_dict()
    assert all(type(v) in (int, float) for v in state.values())
    twin = FeatureExtractor.from_state(json.loads(json.dumps(state)))
    assert_array_equal(twin.batch(closes[400:], volumes[400:]), ext.batch(closes[400:], volumes[400:]))


# --------------------------------------------------------------------------- training


def test_training_is_deterministic_with_finite_likelihood(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel
) -> None:
    closes, volumes, _ = data
    again = fit_model(closes[:1200], volumes[:1200], CFG, now_ms=1_000)
    for name in ("startprob", "transmat", "means", "covars", "scaler_mean", "scaler_std"):
        assert_array_equal(getattr(again, name), getattr(model, name))
    assert again.label_order == model.label_order
    assert math.isfinite(model.log_likelihood)
    assert model.log_likelihood == again.log_likelihood
    z = model.standardise(FeatureExtractor().batch(closes[:1200], volumes[:1200]))
    assert model.n_samples == len(z) == usable_rows(1200)
    assert_allclose(as_hmmlearn(model).score(z), model.log_likelihood, rtol=1e-12)
    assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)


def test_states_sorted_by_spread_and_labelled_from_it(model: TrainedModel) -> None:
    assert np.all(np.diff(model.means[:, 0]) > 0)
    assert model.label_order == (Regime.BEARISH, Regime.RANGING, Regime.BULLISH)


def test_training_uses_last_training_candles(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    closes, volumes, _ = data
    cfg = {**CFG, "HMM_TRAINING_CANDLES": 600}
    a = fit_model(closes[:1200], volumes[:1200], cfg, now_ms=0)
    b = fit_model(closes[600:1200], volumes[600:1200], cfg, now_ms=0)
    assert_array_equal(a.means, b.means)
    assert a.n_samples == usable_rows(600)


def test_trained_model_pickles_and_fits_in_a_process_pool(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel
) -> None:
    copy = pickle.loads(pickle.dumps(model))
    assert_array_equal(copy.transmat, model.transmat)
    closes, volumes, _ = data
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(fit_model, closes[:1200], volumes[:1200], CFG, None, 1_000).result(timeout=60)
    assert_allclose(remote.means, model.means, rtol=1e-9, atol=1e-12)
    assert remote.label_order == model.label_order


# --------------------------------------------------------------------------- exact filtering


@pytest.mark.parametrize("fast_path", [True, False])
def test_forward_filter_equals_predict_proba(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel, fast_path: bool
) -> None:
    closes, volumes, _ = data
    start, stop = 1000, 1400
    det = RegimeDetector(CFG, fast_path=fast_path)
    assert det.kernel is None
    assert det.install(model, closes[:start], volumes[:start])
    assert det.kernel is not None
    assert det.kernel.fast is fast_path
    hmm = as_hmmlearn(model)
    z = model.standardise(FeatureExtractor().batch(closes[:stop], volumes[:stop]))
    n0 = usable_rows(start)
    assert_allclose(det.filter_state.alpha, hmm.predict_proba(z[:n0])[-1], rtol=0, atol=1e-9)
    for t in range(start, stop):
        state = det.update(closes[t], volumes[t])
        expected = hmm.predict_proba(z[: usable_rows(t + 1)])[-1]
        assert_allclose(det.filter_state.alpha, expected, rtol=0, atol=1e-9)
        assert_allclose(state.probabilities, by_label(model, expected), rtol=0, atol=1e-9)


@pytest.mark.parametrize("fast_path", [True, False])
def test_window_mode_equals_predict_proba_over_last_n(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel, fast_path: bool
) -> None:
    closes, volumes, _ = data
    n = 50
    start, stop = 1000, 1300
    det = RegimeDetector({**CFG, "HMM_INFERENCE_WINDOW": n}, fast_path=fast_path)
    assert det.install(model, closes[:start], volumes[:start])
    hmm = as_hmmlearn(model)
    z = model.standardise(FeatureExtractor().batch(closes[:stop], volumes[:stop]))
    for t in range(start, stop):
        state = det.update(closes[t], volumes[t])
        rows = usable_rows(t + 1)
        expected = hmm.predict_proba(z[rows - n : rows])[-1]
        assert_allclose(state.probabilities, by_label(model, expected), rtol=0, atol=1e-9)
        assert len(det.filter_state.window) == n


def test_window_shorter_than_n_right_after_install(model: TrainedModel) -> None:
    closes, volumes, _ = market(3, [(1, WARMUP_BARS + 9)])
    det = RegimeDetector({**CFG, "HMM_INFERENCE_WINDOW": 50})
    assert det.install(model, closes, volumes)
    z = model.standardise(FeatureExtractor().batch(closes, volumes))
    assert len(z) == 10
    assert_allclose(det.state.probabilities, by_label(model, as_hmmlearn(model).predict_proba(z)[-1]), atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["spherical", "full", "tied"])
def test_other_covariance_types_filter_exactly(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], covariance_type: str
) -> None:
    closes, volumes, _ = data
    cfg = {**CFG, "HMM_COVARIANCE_TYPE": covariance_type, "HMM_N_ITER": 10}
    m = fit_model(closes[:800], volumes[:800], cfg)
    det = RegimeDetector(cfg)
    assert det.install(m, closes[:800], volumes[:800])
    hmm = as_hmmlearn(m)
    z = m.standardise(FeatureExtractor().batch(closes[:1000], volumes[:1000]))
    for t in range(800, 1000):
        det.update(closes[t], volumes[t])
        alpha = det.filter_state.alpha
        assert alpha is not None
        assert_allclose(alpha, hmm.predict_proba(z[: usable_rows(t + 1)])[-1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("n_states", [2, 4, 5])
def test_other_state_counts_label_extremes_and_aggregate(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], n_states: int
) -> None:
    closes, volumes, _ = data
    cfg = {**CFG, "HMM_N_STATES": n_states, "HMM_N_ITER": 10}
    m = fit_model(closes[:1000], volumes[:1000], cfg)
    assert m.label_order == (0, *([1] * (n_states - 2)), 2)  # states are sorted by spread
    det = RegimeDetector(cfg)
    assert det.install(m, closes[:1000], volumes[:1000])
    assert det.kernel is not None
    assert det.kernel.fast is (n_states <= 4)
    hmm = as_hmmlearn(m)
    z = m.standardise(FeatureExtractor().batch(closes[:1100], volumes[:1100]))
    for t in range(1000, 1100):
        state = det.update(closes[t], volumes[t])
        expected = by_label(m, hmm.predict_proba(z[: usable_rows(t + 1)])[-1])
        assert_allclose(state.probabilities, expected, rtol=0, atol=1e-9)


def test_forward_step_survives_emission_underflow() -> None:
    # State 0 is certain and absorbing; the next observation is ~e^-6000 less likely under it than under
    # state 2, so every probability-space product underflows to 0 and the step must fall back to log space.
    m = TrainedModel(
        covariance_type="diag",
        startprob=np.array([1.0, 0.0, 0.0]),
        transmat=np.eye(3),
        means=np.array([[-1.0] * 4, [0.0] * 4, [1.0] * 4]),
        covars=np.full((3, 4), 0.01),
        scaler_mean=np.zeros(4),
        scaler_std=np.ones(4),
        label_order=(0, 1, 2),
        trained_at=0,
        n_samples=0,
        log_likelihood=0.0,
    )
    z = np.array([[-1.0] * 4, [30.0] * 4])
    expected = as_hmmlearn(m).predict_proba(z)[-1]
    for fast_path in (True, False):
        det = RegimeDetector(fast_path=fast_path)
        assert det.install(m, [100.0], [1.0])
        kernel = det.kernel
        assert kernel is not None
        alpha = kernel.forward(None, kernel.log_emission(z[0]))
        assert_allclose(kernel.forward(alpha, kernel.log_emission(z[1])), expected, atol=1e-12)


# --------------------------------------------------------------------------- verdicts


def test_labels_follow_known_segments(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    closes, volumes, truth = data
    det = RegimeDetector(CFG)
    assert det.train(closes, volumes, now_ms=0)
    # Re-filter from the start so every candle after warm-up gets a live verdict.
    assert det.model is not None
    assert det.install(det.model, closes[:WARMUP_BARS], volumes[:WARMUP_BARS])
    regimes = np.array(
        [det.update(c, v).regime for c, v in zip(closes[WARMUP_BARS:], volumes[WARMUP_BARS:], strict=True)]
    )
    truth = truth[WARMUP_BARS:]
    accuracy = float(np.mean(regimes == truth))
    # Measured 0.796 for this seed (0.75-0.90 over seeds 0-9); misses are mostly EMA lag at segment starts.
    assert accuracy >= 0.70, accuracy
    for regime in Regime:
        assert np.mean(regimes[truth == regime] == regime) >= 0.5, regime


def test_state_invariants_over_updates(data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel) -> None:
    closes, volumes, _ = data
    # The filter's own verdict: no confirmation lag, no training-depth factor (both have tests of their own).
    plain = {"HMM_CONFIRM_BARS": 1, "HMM_DEPTH_SCALING": False}
    det = RegimeDetector({**CFG, **plain, "HMM_BIAS_GAIN": 1.5, "HMM_CONFIDENCE_THRESHOLD": 0.3})
    assert det.install(model, closes[:1200], volumes[:1200])
    assert det.state.observation_count == 0
    seen_zero = seen_bias = 0
    for i, t in enumerate(range(1200, 1800), start=1):
        s = det.update(closes[t], volumes[t])
        p = np.array(s.probabilities)
        assert s.observation_count == i
        assert np.all(p >= 0)
        assert abs(p.sum() - 1) < 1e-12
        top, second = np.sort(p)[::-1][:2]
        assert s.confidence == pytest.approx(top - second, abs=1e-15)
        assert p[s.regime] == top
        if s.confidence < 0.3:
            assert s.bias_signal == 0.0
            seen_zero += 1
        else:
            assert s.bias_signal == pytest.approx(float(np.clip((p[2] - p[0]) * 1.5, -1, 1)))
            seen_bias += s.bias_signal != 0.0
        assert -1.0 <= s.bias_signal <= 1.0
    assert seen_zero
    assert seen_bias


def test_untrained_detector_is_neutral_but_counts() -> None:
    det = RegimeDetector()
    assert det.cfg == HmmConfig()
    closes, volumes, _ = market(1, [(2, 80)])
    for i, (c, v) in enumerate(zip(closes, volumes, strict=True), start=1):
        s = det.update(c, v)
        assert (s.regime, s.probabilities, s.bias_signal, s.confidence) == (Regime.RANGING, (0.0, 1.0, 0.0), 0.0, 0.0)
        assert s.observation_count == i
    assert det.features.count == 80
    assert not det.trained
    assert det.model is None


def test_needs_retrain_after_interval(data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel) -> None:
    closes, volumes, _ = data
    det = RegimeDetector({**CFG, "HMM_RETRAIN_INTERVAL_SEC": 60.0})
    assert det.needs_retrain(0)
    assert det.install(model, closes[:1200], volumes[:1200])
    assert not det.needs_retrain(model.trained_at + 59_999)
    assert det.needs_retrain(model.trained_at + 60_000)


# --------------------------------------------------------------------------- label stability


def _raw_means(m: TrainedModel) -> np.ndarray:
    return m.means * m.scaler_std + m.scaler_mean


def test_retrain_on_overlapping_window_keeps_every_label(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    closes, volumes, _ = data
    det = RegimeDetector(CFG)
    assert det.train(closes[:1200], volumes[:1200], now_ms=0)
    first = det.model
    assert first is not None
    assert det.train(closes[300:1500], volumes[300:1500], now_ms=1)
    second = det.model
    assert second is not None
    assert second is not first
    assert second.label_order == first.label_order
    # State i still means the same thing: its mean is nearest to the old state i.
    dist = np.linalg.norm(_raw_means(second)[:, None, :] - _raw_means(first)[None, :, :], axis=2)
    assert_array_equal(dist.argmin(axis=1), np.arange(3))


def test_matching_keeps_labels_where_a_naive_relabel_would_swap(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel
) -> None:
    closes, volumes, _ = data
    # The running model holds its states in reverse order: state 0 is BULLISH, state 2 BEARISH.
    rev = [2, 1, 0]
    previous = dataclasses.replace(
        model,
        startprob=model.startprob[rev],
        transmat=model.transmat[np.ix_(rev, rev)],
        means=model.means[rev],
        covars=model.covars[rev],
        label_order=tuple(model.label_order[i] for i in rev),
    )
    assert previous.label_order == (Regime.BULLISH, Regime.RANGING, Regime.BEARISH)
    naive = fit_model(closes[200:1400], volumes[200:1400], CFG)
    assert naive.label_order[0] == Regime.BEARISH  # index-for-index, a naive relabel flips state 0
    # A fresh fit matched to the old states (what a retrain does when the warm start falls back).
    matched = fit_model(closes[200:1400], volumes[200:1400], CFG, previous=previous, warm_start=False)
    assert matched.label_order == previous.label_order
    assert_allclose(matched.means, naive.means[rev])
    # Labels still agree with the market: the BULLISH state has the highest spread.
    assert int(np.argmax(matched.means[:, 0])) == matched.label_order.index(Regime.BULLISH)


def test_matched_labels_that_contradict_spreads_fall_back_to_spread(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel, caplog: pytest.LogCaptureFixture
) -> None:
    closes, volumes, _ = data
    inverted = dataclasses.replace(model, label_order=(Regime.BULLISH, Regime.RANGING, Regime.BEARISH))
    with caplog.at_level("WARNING", logger="shared.domain.hmm"):
        m = fit_model(closes[200:1400], volumes[200:1400], CFG, previous=inverted)
    assert m.label_order == (Regime.BEARISH, Regime.RANGING, Regime.BULLISH)
    assert "contradict" in caplog.text


def test_incompatible_previous_is_ignored(data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel) -> None:
    closes, volumes, _ = data
    m = fit_model(closes[:1000], volumes[:1000], {**CFG, "HMM_N_STATES": 2, "HMM_N_ITER": 10}, previous=model)
    assert m.label_order == (Regime.BEARISH, Regime.BULLISH)


# --------------------------------------------------------------------------- snapshots


def _plain_only(obj: object) -> bool:
    if obj is None or type(obj) in (bool, int, float, str):
        return True
    if type(obj) is list:
        return all(_plain_only(x) for x in obj)
    if type(obj) is dict:
        return all(type(k) is str and _plain_only(v) for k, v in obj.items())
    return False


@pytest.mark.parametrize("window", [0, 50])
def test_snapshot_round_trip_continues_bit_for_bit(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel, window: int
) -> None:
    closes, volumes, _ = data
    cfg = {**CFG, "HMM_INFERENCE_WINDOW": window}
    running = RegimeDetector(cfg)
    assert running.install(model, closes[:1200], volumes[:1200])
    for t in range(1200, 1300):
        running.update(closes[t], volumes[t])
    snap = serialize_for_snapshot(running)
    assert set(snap) == {SNAPSHOT_KEY}
    assert _plain_only(snap)
    json.dumps(snap)
    wire = msgpack.packb(snap)
    restored = RegimeDetector(cfg)
    assert restore_from_snapshot(restored, msgpack.unpackb(wire))
    assert restored.trained
    assert restored.state == running.state
    assert not restored.needs_retrain(model.trained_at)
    for t in range(1300, 1500):
        assert restored.update(closes[t], volumes[t]) == running.update(closes[t], volumes[t])
    assert restored.filter_state.alpha == running.filter_state.alpha


def test_untrained_snapshot_restores_warmup_only() -> None:
    closes, volumes, _ = market(2, [(1, 30)])
    det = RegimeDetector()
    for c, v in zip(closes, volumes, strict=True):
        det.update(c, v)
    snap = msgpack.unpackb(msgpack.packb(serialize_for_snapshot(det)))
    twin = RegimeDetector()
    trained_before = RegimeDetector(CFG)
    assert trained_before.train(*market(4, [(1, 400)])[:2])
    for target in (twin, trained_before):
        assert restore_from_snapshot(target, snap)
    assert not trained_before.trained
    assert trained_before.model is None
    assert not twin.trained
    assert twin.needs_retrain(0)
    assert twin.features.state_dict() == det.features.state_dict()
    assert twin.state == det.state


@pytest.mark.parametrize(
    "other",
    [{"HMM_N_STATES": 4}, {"HMM_COVARIANCE_TYPE": "full"}, {"HMM_INFERENCE_WINDOW": 50}],
)
def test_snapshot_from_other_config_is_refused_and_detector_retrains(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel, other: dict[str, object]
) -> None:
    closes, volumes, _ = data
    src = RegimeDetector(CFG)
    assert src.install(model, closes[:1200], volumes[:1200])
    snap = msgpack.unpackb(msgpack.packb(serialize_for_snapshot(src)))
    det = RegimeDetector({**CFG, **other, "HMM_N_ITER": 5})
    assert not restore_from_snapshot(det, snap)
    assert not det.trained
    assert det.state == RegimeState()
    assert det.needs_retrain(0)
    assert det.train(closes[:1200], volumes[:1200])


def _corrupt(snap: dict, path: tuple[str | int, ...], value: object) -> dict:
    body = json.loads(json.dumps(snap))
    node = body
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((SNAPSHOT_KEY,), KeyError),
        ((SNAPSHOT_KEY, "format"), 99),
        ((SNAPSHOT_KEY, "model", "means", 0, 0), float("nan")),
        ((SNAPSHOT_KEY, "model", "means", 0, 0), "0.5"),
        ((SNAPSHOT_KEY, "model", "transmat", 0), [0.5, 0.5]),
        ((SNAPSHOT_KEY, "model", "transmat", 0, 0), 5.0),
        ((SNAPSHOT_KEY, "model", "covars", 1, 2), -1.0),
        ((SNAPSHOT_KEY, "model", "label_order"), [0, 1]),
        ((SNAPSHOT_KEY, "model", "trained_at"), None),
        ((SNAPSHOT_KEY, "filter", "alpha"), [0.5, 0.5, 0.5]),
        ((SNAPSHOT_KEY, "filter", "window"), [[0.0, 0.0, 0.0, 0.0]]),
        ((SNAPSHOT_KEY, "features", "spec"), [0]),
        ((SNAPSHOT_KEY, "features", "state", "ema_slow"), float("inf")),
        ((SNAPSHOT_KEY, "state", "regime"), "SIDEWAYS"),
        ((SNAPSHOT_KEY, "state", "bias_signal"), 3.0),
        ((SNAPSHOT_KEY, "state", "probabilities"), [0.5, 0.5, 0.5]),
        ((SNAPSHOT_KEY, "trained"), "yes"),
        ((SNAPSHOT_KEY, "model"), None),
    ],
)
def test_malformed_snapshot_is_refused(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], model: TrainedModel, path: tuple, value: object
) -> None:
    closes, volumes, _ = data
    src = RegimeDetector(CFG)
    assert src.install(model, closes[:1200], volumes[:1200])
    bad = _corrupt(serialize_for_snapshot(src), path, value)
    det = RegimeDetector(CFG)
    assert not restore_from_snapshot(det, bad)
    assert not det.trained
    assert det.model is None
    assert det.state == RegimeState()
