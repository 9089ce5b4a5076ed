"""Seed 003 §5, one test (or more) per row of the failure table: the bot degrades to trend-only behaviour."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import shared.domain.hmm.fit as hmm_fit
from shared.domain.contracts import GridBias
from shared.domain.hmm import (
    STALE_GAP_BARS,
    WARMUP_BARS,
    FeatureExtractor,
    Regime,
    RegimeDetector,
    RegimeState,
    TrainedModel,
    compute_blended_idle_target,
    compute_grid_bias,
    fit_model,
    usable_rows,
    validate_model,
)
from tests.factories import three_regime_market

CFG: dict[str, object] = {"HMM_N_ITER": 20, "HMM_MIN_TRAIN_SAMPLES": 200}
NEUTRAL = RegimeState()
SYMMETRIC = GridBias("symmetric", 1.0, 1.0, None)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return three_regime_market(11, 900)


@pytest.fixture(scope="module")
def model(data: tuple[np.ndarray, np.ndarray]) -> TrainedModel:
    closes, volumes = data
    return fit_model(closes[:800], volumes[:800], CFG, now_ms=0)


@pytest.fixture
def trained(data: tuple[np.ndarray, np.ndarray], model: TrainedModel) -> RegimeDetector:
    closes, volumes = data
    det = RegimeDetector(CFG)
    assert det.install(model, closes[:800], volumes[:800])
    return det


def assert_neutral(det: RegimeDetector) -> None:
    s = det.state
    assert (s.regime, s.probabilities, s.confidence, s.bias_signal) == (Regime.RANGING, (0.0, 1.0, 0.0), 0.0, 0.0)
    assert compute_grid_bias(s) == SYMMETRIC


# --------------------------------------------------------------------------- hmmlearn not installed


def test_without_hmmlearn_training_refuses_and_detector_stays_neutral(
    data: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hmm_fit, "HMM_AVAILABLE", False)
    closes, volumes = data
    det = RegimeDetector(CFG)
    with caplog.at_level("WARNING", logger="shared.domain.hmm"):
        assert not det.train(closes, volumes)
    assert "hmmlearn" in caplog.text
    assert not det.trained
    for c, v in zip(closes[:100], volumes[:100], strict=True):
        det.update(c, v)
    assert_neutral(det)
    assert det.state.observation_count == 100
    with pytest.raises(RuntimeError, match="hmmlearn"):
        fit_model(closes, volumes, CFG)
    # Pure trend: the idle target is exactly the trend-only one.
    assert compute_blended_idle_target(0.3, det.state.bias_signal, 0.5, 0.4, 0.2, 0.15, 0.65) == pytest.approx(
        0.4 - 0.2 * 0.5 * 0.3
    )


# --------------------------------------------------------------------------- training data insufficient


def test_too_little_data_stays_ranging(data: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture) -> None:
    closes, volumes = data
    det = RegimeDetector(CFG)
    n = 200 + WARMUP_BARS - 2  # one feature row short of HMM_MIN_TRAIN_SAMPLES
    assert usable_rows(n) == 199
    with caplog.at_level("WARNING", logger="shared.domain.hmm"):
        assert not det.train(closes[:n], volumes[:n])
    assert "need 200" in caplog.text
    assert_neutral(det)
    assert not det.trained
    with pytest.raises(ValueError, match="need 200"):
        fit_model(closes[:n], volumes[:n], CFG)
    assert det.train(closes[: n + 1], volumes[: n + 1])  # exactly enough


@pytest.mark.parametrize(
    ("closes", "volumes"),
    [
        ([100.0, float("nan")] * 300, [1.0] * 600),
        ([100.0, -1.0] * 300, [1.0] * 600),
        ([100.0] * 600, [1.0, -1.0] * 300),
        ([100.0] * 600, [1.0] * 599),
    ],
)
def test_bad_training_input_is_refused(closes: list[float], volumes: list[float]) -> None:
    det = RegimeDetector(CFG)
    assert not det.train(closes, volumes)
    assert_neutral(det)


# --------------------------------------------------------------------------- inference exception


def test_inference_exception_returns_last_valid_state(
    trained: RegimeDetector,
    data: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    closes, volumes = data
    last = trained.update(closes[800], volumes[800])
    alpha = list(trained.filter_state.alpha or [])
    kernel = trained.kernel
    assert kernel is not None

    def boom(*_: object) -> list[float]:
        raise RuntimeError("boom")

    monkeypatch.setattr(kernel, "forward", boom)
    with caplog.at_level("ERROR", logger="shared.domain.hmm"):
        assert trained.update(closes[801], volumes[801]) is last
    assert "inference failed" in caplog.text
    assert trained.filter_state.alpha == alpha  # the failed step left the filter untouched
    monkeypatch.undo()
    assert trained.update(closes[802], volumes[802]).observation_count == last.observation_count + 1


def test_nan_inside_inference_returns_last_valid_state(
    trained: RegimeDetector, data: tuple[np.ndarray, np.ndarray]
) -> None:
    closes, volumes = data
    last = trained.update(closes[800], volumes[800])
    kernel = trained.kernel
    assert kernel is not None
    # A model corrupted after it was installed: every emission becomes NaN.
    kernel.fast_states = tuple((*s[:-1], math.nan) for s in kernel.fast_states)
    for t in range(801, 810):
        assert trained.update(closes[t], volumes[t]) is last


def test_window_mode_failure_leaves_window_untouched(data: tuple[np.ndarray, np.ndarray], model: TrainedModel) -> None:
    closes, volumes = data
    det = RegimeDetector({**CFG, "HMM_INFERENCE_WINDOW": 20})
    assert det.install(model, closes[:800], volumes[:800])
    last = det.update(closes[800], volumes[800])
    window = list(det.filter_state.window)
    kernel = det.kernel
    assert kernel is not None
    kernel.fast_states = tuple((*s[:-1], math.nan) for s in kernel.fast_states)
    assert det.update(closes[801], volumes[801]) is last
    assert list(det.filter_state.window) == window


@pytest.mark.parametrize(
    ("close", "volume"), [(math.nan, 1.0), (0.0, 1.0), (-5.0, 1.0), (100.0, -1.0), (100.0, math.inf)]
)
def test_bad_candle_is_skipped(trained: RegimeDetector, close: float, volume: float) -> None:
    before = trained.state
    features = trained.features.state_dict()
    assert trained.update(close, volume) is before
    assert trained.features.state_dict() == features


# --------------------------------------------------------------------------- near-equal probabilities


def test_indistinguishable_states_give_neutral_bias(data: tuple[np.ndarray, np.ndarray], model: TrainedModel) -> None:
    closes, volumes = data
    flat = dataclasses.replace(
        model,
        startprob=np.full(3, 1 / 3),
        transmat=np.full((3, 3), 1 / 3),
        means=np.zeros((3, 4)),
        covars=np.ones((3, 4)),
    )
    det = RegimeDetector(CFG)
    assert det.install(flat, closes[:800], volumes[:800])
    for t in range(800, 850):
        s = det.update(closes[t], volumes[t])
        assert s.confidence < 1e-12
        assert s.bias_signal == 0.0
        assert s.regime == Regime.RANGING  # ties go to RANGING
        assert compute_grid_bias(s) == SYMMETRIC


def test_confidence_below_threshold_zeroes_bias(trained: RegimeDetector, data: tuple[np.ndarray, np.ndarray]) -> None:
    closes, volumes = data
    # Nothing is ever that sure: every bias is zero.
    trained.cfg = dataclasses.replace(trained.cfg, confidence_threshold=1.01)
    for t in range(800, 900):
        s = trained.update(closes[t], volumes[t])
        assert s.bias_signal == 0.0
        assert compute_grid_bias(s, confidence_threshold=1.01) == SYMMETRIC


@pytest.mark.parametrize(
    ("probs", "regime", "confidence"),
    [
        ((0.34, 0.33, 0.33), Regime.BEARISH, 0.01),
        ((0.4, 0.2, 0.4), Regime.RANGING, 0.0),
        ((0.3, 0.4, 0.3), Regime.RANGING, 0.1),
        ((0.1, 0.2, 0.7), Regime.BULLISH, 0.5),
    ],
)
def test_verdict_from_probabilities(
    trained: RegimeDetector, probs: tuple[float, float, float], regime: Regime, confidence: float
) -> None:
    kernel = trained.kernel
    assert kernel is not None
    alpha = [probs[lab] for lab in kernel.labels]
    s = kernel.verdict(alpha, 1.0, 0.15, 7)
    assert s.regime == regime
    assert s.confidence == pytest.approx(confidence)
    assert s.bias_signal == (pytest.approx(probs[2] - probs[0]) if confidence >= 0.15 else 0.0)


# --------------------------------------------------------------------------- garbage model


def _garbage(model: TrainedModel) -> list[tuple[str, TrainedModel]]:
    r = dataclasses.replace
    nan_means = model.means.copy()
    nan_means[1, 2] = math.nan
    return [
        ("nan means", r(model, means=nan_means)),
        ("inf startprob", r(model, startprob=np.array([math.inf, 0.0, 0.0]))),
        ("transmat rows not summing to 1", r(model, transmat=model.transmat * 1.5)),
        ("negative transmat", r(model, transmat=np.array([[1.5, -0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))),
        ("startprob not summing to 1", r(model, startprob=np.array([0.5, 0.2, 0.2]))),
        ("zero variance", r(model, covars=np.zeros((3, 4)))),
        ("negative variance", r(model, covars=-model.covars)),
        ("wrong covars shape", r(model, covars=np.ones((3, 4, 4)))),
        ("wrong state count", r(model, startprob=np.array([0.5, 0.5]))),
        ("zero scaler std", r(model, scaler_std=np.zeros(4))),
        ("bad labels", r(model, label_order=(0, 1, 7))),
        ("nan log-likelihood", r(model, log_likelihood=math.nan)),
        ("unknown covariance type", r(model, covariance_type="banana")),
    ]


@pytest.mark.parametrize("case", range(13))
def test_garbage_model_is_refused_and_detector_stays_neutral(
    data: tuple[np.ndarray, np.ndarray], model: TrainedModel, case: int, caplog: pytest.LogCaptureFixture
) -> None:
    closes, volumes = data
    name, bad = _garbage(model)[case]
    assert validate_model(bad) is not None, name
    det = RegimeDetector(CFG)
    with caplog.at_level("ERROR", logger="shared.domain.hmm"):
        assert not det.install(bad, closes[:800], volumes[:800]), name
    assert "refused" in caplog.text
    assert not det.trained
    assert det.model is None
    for t in range(800, 820):
        det.update(closes[t], volumes[t])
    assert_neutral(det)


def test_non_positive_definite_full_covariance_is_refused(model: TrainedModel) -> None:
    covars = np.stack([np.eye(4)] * 3)
    covars[0] = -np.eye(4)
    bad = dataclasses.replace(model, covariance_type="full", covars=covars)
    assert "positive definite" in (validate_model(bad) or "")
    asym = np.stack([np.eye(4)] * 3)
    asym[1, 0, 1] = 0.5
    assert "symmetric" in (validate_model(dataclasses.replace(model, covariance_type="full", covars=asym)) or "")


def test_model_not_fitting_the_config_is_refused(data: tuple[np.ndarray, np.ndarray], model: TrainedModel) -> None:
    closes, volumes = data
    assert not RegimeDetector({**CFG, "HMM_N_STATES": 4}).install(model, closes[:800], volumes[:800])
    assert not RegimeDetector({**CFG, "HMM_COVARIANCE_TYPE": "full"}).install(model, closes[:800], volumes[:800])


def test_garbage_model_does_not_replace_a_working_one(
    trained: RegimeDetector, data: tuple[np.ndarray, np.ndarray], model: TrainedModel
) -> None:
    closes, volumes = data
    before = trained.state
    assert not trained.install(_garbage(model)[0][1], closes[:850], volumes[:850])
    assert trained.model is model
    assert trained.state is before
    assert trained.trained


# --------------------------------------------------------------------------- price gap > 2x slow halflife


def test_long_gap_cold_starts_the_emas(trained: RegimeDetector, data: tuple[np.ndarray, np.ndarray]) -> None:
    closes, volumes = data
    assert pytest.approx(33.2, abs=0.1) == STALE_GAP_BARS
    assert not trained.note_gap(STALE_GAP_BARS - 1)
    assert trained.features.count > WARMUP_BARS
    alpha = list(trained.filter_state.alpha or [])
    assert trained.note_gap(STALE_GAP_BARS + 1)
    assert trained.features.count == 0
    # The restarted features equal a fresh extractor's on the candles after the gap; the filter waits for them.
    after_c, after_v = closes[820:900] * 1.1, volumes[820:900]
    for i in range(WARMUP_BARS - 1):
        s = trained.update(after_c[i], after_v[i])
        assert trained.filter_state.alpha == alpha
        assert s.observation_count == i + 1
    trained.update(after_c[WARMUP_BARS - 1], after_v[WARMUP_BARS - 1])
    assert trained.filter_state.alpha != alpha
    fresh = FeatureExtractor()
    fresh.batch(after_c[:WARMUP_BARS], after_v[:WARMUP_BARS])
    assert trained.features.state_dict() == fresh.state_dict()


def test_extractor_reset_equals_a_fresh_extractor(data: tuple[np.ndarray, np.ndarray]) -> None:
    closes, volumes = data
    ext = FeatureExtractor()
    ext.batch(closes[:300], volumes[:300])
    ext.reset()
    assert_array_equal(
        ext.batch(closes[300:500], volumes[300:500]), FeatureExtractor().batch(closes[300:500], volumes[300:500])
    )
    assert FeatureExtractor.gap_is_stale(STALE_GAP_BARS + 0.5)
    assert not FeatureExtractor.gap_is_stale(STALE_GAP_BARS)


# --------------------------------------------------------------------------- overfitted model: daily retrain


def test_stale_model_asks_for_retrain(trained: RegimeDetector, model: TrainedModel) -> None:
    day_ms = 86_400_000
    assert trained.cfg.retrain_interval_sec == 86400.0
    assert not trained.needs_retrain(model.trained_at + day_ms - 1)
    assert trained.needs_retrain(model.trained_at + day_ms)


# --------------------------------------------------------------------------- model disagrees with trend


@pytest.mark.parametrize("blend", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_blend_factor_moderates_disagreement(blend: float) -> None:
    trend, bias = 0.8, -0.8  # trend says bullish, HMM says bearish
    args = (0.40, 0.20, 0.15, 0.65)
    target = compute_blended_idle_target(trend, bias, blend, *args)
    trend_only = compute_blended_idle_target(trend, bias, 1.0, *args)
    hmm_only = compute_blended_idle_target(trend, bias, 0.0, *args)
    assert trend_only == max(0.15, min(0.65, 0.40 - 0.20 * trend))
    assert hmm_only == pytest.approx(0.40 - 0.20 * bias)
    assert min(trend_only, hmm_only) <= target <= max(trend_only, hmm_only)
    assert target == pytest.approx(0.40 - 0.20 * (blend * trend + (1 - blend) * bias))
