"""Seed 000 §5.1: EWMA vol and the low / normal / high / crisis classification (batch reference)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from shared.domain.errors import ConfigError
from shared.domain.vol import (
    VolInputs,
    VolRegime,
    VolRegimeConfig,
    classify_vol_regime,
    compute_ewma_vol,
    label_for_ratio,
)

CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "strategy_config.json"
CFG = VolRegimeConfig()
NORMAL_WITH_ZEROS = VolRegime("normal", 0.0, 0.0, 1.0)


def gaussian_returns(seed: int, *segments: tuple[int, float]) -> np.ndarray:
    """Concatenated segments of (bars, bar-level std) zero-mean Gaussian log returns."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, std, n) for n, std in segments])


def classify(returns: np.ndarray, cfg: VolRegimeConfig = CFG) -> VolRegime:
    return classify_vol_regime(VolInputs(returns=returns), cfg)


# --- §5.1 scenarios ---------------------------------------------------------------------------


def test_normal_when_vol_is_stable() -> None:
    returns = gaussian_returns(1, (2000, 0.002))

    regime = classify(returns)

    assert regime.label == "normal"
    assert_allclose(regime.vol_short, 0.002, rtol=0.15)
    assert_allclose(regime.vol_long, 0.002, rtol=0.1)
    assert_allclose(regime.ratio, 1.0, atol=0.15)
    assert_allclose(regime.ratio, regime.vol_short / regime.vol_long, rtol=1e-15)


def test_crisis_when_short_vol_spikes() -> None:
    # The spike is in both windows, so only a sharp one lifts the ratio past 1.8: its weight
    # share is larger in the short window, and sqrt(S0_long / S0_short) ~ 2.07 bounds the ratio.
    returns = gaussian_returns(2, (1000, 0.002), (12, 0.1))

    regime = classify(returns)

    assert regime.label == "crisis"
    assert regime.ratio > CFG.ratio_high
    assert regime.vol_short > regime.vol_long > 0.002


def test_high_when_short_vol_rises_moderately() -> None:
    returns = gaussian_returns(3, (1000, 0.01), (168, 0.02))

    regime = classify(returns)

    assert regime.label == "high"
    assert CFG.ratio_normal <= regime.ratio < CFG.ratio_high


def test_low_when_vol_compresses() -> None:
    returns = gaussian_returns(4, (600, 0.02), (168, 0.004))

    regime = classify(returns)

    assert regime.label == "low"
    assert regime.ratio < CFG.ratio_low
    assert regime.vol_short < regime.vol_long


@pytest.mark.parametrize("bars", [0, 1, 2, 167, 168, 719])
def test_normal_with_zeros_when_history_is_short(bars: int) -> None:
    returns = gaussian_returns(5, (bars, 0.05))

    assert classify(returns) == NORMAL_WITH_ZEROS


def test_one_full_long_window_is_enough_history() -> None:
    returns = gaussian_returns(6, (720, 0.01))

    regime = classify(returns)

    assert regime.vol_long > 0
    assert regime != NORMAL_WITH_ZEROS


@pytest.mark.parametrize("value", [0.0, 0.0123])
def test_normal_with_zeros_when_long_vol_is_zero(value: float) -> None:
    # A stale market: every return in the long window is the same, so there is no vol at all.
    returns = np.concatenate([gaussian_returns(7, (500, 0.05)), np.full(720, value)])

    assert classify(returns) == NORMAL_WITH_ZEROS


def test_only_the_last_long_window_of_returns_counts() -> None:
    recent = gaussian_returns(8, (720, 0.01))
    ancient = gaussian_returns(9, (3000, 0.5))

    assert classify(np.concatenate([ancient, recent])) == classify(recent)


def test_short_vol_reads_only_the_last_short_window() -> None:
    returns = gaussian_returns(10, (1500, 0.01))

    regime = classify(returns)

    assert regime.vol_short == compute_ewma_vol(returns[-168:], 84)
    assert regime.vol_long == compute_ewma_vol(returns[-720:], 360)


def test_non_finite_return_in_window_is_refused() -> None:
    returns = gaussian_returns(11, (800, 0.01))
    returns[-3] = np.nan

    with pytest.raises(ValueError, match="NaN or infinity"):
        classify(returns)


# --- thresholds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "label"),
    [
        (0.0, "low"),
        (math.nextafter(0.6, 0.0), "low"),
        (0.6, "normal"),
        (1.0, "normal"),
        (math.nextafter(1.2, 0.0), "normal"),
        (1.2, "high"),
        (math.nextafter(1.8, 0.0), "high"),
        (1.8, "crisis"),
        (50.0, "crisis"),
    ],
)
def test_each_threshold_belongs_to_the_regime_above_it(ratio: float, label: str) -> None:
    assert label_for_ratio(ratio, CFG) == label


def test_classification_uses_the_configured_thresholds_at_the_boundary() -> None:
    returns = gaussian_returns(12, (1000, 0.01), (100, 0.02))
    ratio = classify(returns).ratio

    at_high = VolRegimeConfig(ratio_low=ratio / 4, ratio_normal=ratio / 2, ratio_high=ratio)
    above_high = VolRegimeConfig(ratio_low=ratio / 4, ratio_normal=ratio / 2, ratio_high=math.nextafter(ratio, 9.0))
    at_low = VolRegimeConfig(ratio_low=ratio, ratio_normal=ratio * 2, ratio_high=ratio * 3)
    above_low = VolRegimeConfig(ratio_low=math.nextafter(ratio, 9.0), ratio_normal=ratio * 2, ratio_high=ratio * 3)

    assert classify(returns, at_high).label == "crisis"
    assert classify(returns, above_high).label == "high"
    assert classify(returns, at_low).label == "normal"
    assert classify(returns, above_low).label == "low"


# --- compute_ewma_vol -------------------------------------------------------------------------


def test_ewma_vol_by_hand() -> None:
    # halflife 1 -> lambda 0.5; weights (0.5, 1) / 1.5; mean -1/3; variance 8/9.
    assert_allclose(compute_ewma_vol(np.array([1.0, -1.0]), 1), math.sqrt(8.0) / 3.0, rtol=1e-15)


def test_ewma_vol_weights_the_newest_returns_most() -> None:
    calm_then_wild = gaussian_returns(13, (100, 0.001), (100, 0.02))
    wild_then_calm = np.concatenate([calm_then_wild[100:], calm_then_wild[:100]])

    assert compute_ewma_vol(calm_then_wild, 20) > 5 * compute_ewma_vol(wild_then_calm, 20)


@pytest.mark.parametrize("returns", [[], [0.03]])
def test_ewma_vol_of_fewer_than_two_returns_is_zero(returns: list[float]) -> None:
    assert compute_ewma_vol(np.array(returns, dtype=float), 10) == 0.0


def test_ewma_vol_of_a_constant_series_is_exactly_zero() -> None:
    assert compute_ewma_vol(np.full(500, 0.1), 37) == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_ewma_vol_refuses_non_finite_returns(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        compute_ewma_vol(np.array([0.01, bad, 0.02]), 5)


@pytest.mark.parametrize("halflife", [0, -3])
def test_ewma_vol_refuses_a_non_positive_halflife(halflife: int) -> None:
    with pytest.raises(ValueError, match="halflife_bars"):
        compute_ewma_vol(np.array([0.01, 0.02]), halflife)


@pytest.mark.parametrize(("bars", "halflife"), [(2, 1), (10, 3), (168, 84), (720, 360), (1500, 7)])
def test_ewma_vol_equals_pandas_ewm_var_bias_true(bars: int, halflife: int) -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(bars)
    returns = rng.standard_t(3, bars) * 0.01 + 0.0005  # fat tails and a drift

    expected = pd.Series(returns).ewm(halflife=halflife).var(bias=True).iloc[-1] ** 0.5

    assert_allclose(compute_ewma_vol(returns, halflife), expected, rtol=1e-12)


def test_classification_equals_the_pandas_reference() -> None:
    pd = pytest.importorskip("pandas")
    returns = gaussian_returns(14, (900, 0.01), (60, 0.03))

    def reference(window: int, halflife: int) -> float:
        return pd.Series(returns[-window:]).ewm(halflife=halflife).var(bias=True).iloc[-1] ** 0.5

    regime = classify(returns)

    assert_allclose(regime.vol_short, reference(168, 84), rtol=1e-12)
    assert_allclose(regime.vol_long, reference(720, 360), rtol=1e-12)
    assert_allclose(regime.ratio, reference(168, 84) / reference(720, 360), rtol=1e-12)


# --- config -----------------------------------------------------------------------------------


def test_config_defaults_are_the_seeds() -> None:
    assert (
        CFG.short_window_bars,
        CFG.long_window_bars,
        CFG.short_halflife_bars,
        CFG.long_halflife_bars,
        CFG.ratio_low,
        CFG.ratio_normal,
        CFG.ratio_high,
    ) == (168, 720, 84, 360, 0.6, 1.2, 1.8)


def test_config_is_read_from_the_repository_strategy_config() -> None:
    strategy_config = json.loads(CONFIG_PATH.read_text())

    assert VolRegimeConfig.from_strategy_config(strategy_config) == CFG


def test_config_reads_every_key() -> None:
    strategy_config = {
        "vol_regimes": {
            "defaults": {
                "short_window_bars": 24,
                "long_window_bars": 96,
                "short_halflife_bars": 12,
                "long_halflife_bars": 48,
                "ratio_low_high": {"low": 0.5, "normal": 1, "high": 2.5},
            }
        }
    }

    assert VolRegimeConfig.from_strategy_config(strategy_config) == VolRegimeConfig(24, 96, 12, 48, 0.5, 1.0, 2.5)


@pytest.mark.parametrize(
    "strategy_config",
    [{}, {"vol_regimes": {}}, {"vol_regimes": {"defaults": {}}}, {"vol_regimes": {"defaults": {"ratio_low_high": {}}}}],
)
def test_config_falls_back_to_the_seed_defaults_when_missing(strategy_config: dict) -> None:
    assert VolRegimeConfig.from_strategy_config(strategy_config) == CFG


def test_config_takes_defaults_only_for_the_missing_keys() -> None:
    strategy_config = {"vol_regimes": {"defaults": {"short_window_bars": 100, "ratio_low_high": {"high": 2.0}}}}

    cfg = VolRegimeConfig.from_strategy_config(strategy_config)

    assert cfg == VolRegimeConfig(short_window_bars=100, ratio_high=2.0)


@pytest.mark.parametrize(
    ("defaults", "key"),
    [
        ({"short_window_bars": "168"}, "vol_regimes.defaults.short_window_bars"),
        ({"short_window_bars": 168.0}, "vol_regimes.defaults.short_window_bars"),
        ({"long_window_bars": 0}, "vol_regimes.defaults.long_window_bars"),
        ({"long_window_bars": True}, "vol_regimes.defaults.long_window_bars"),
        ({"short_halflife_bars": -1}, "vol_regimes.defaults.short_halflife_bars"),
        ({"long_halflife_bars": None}, "vol_regimes.defaults.long_halflife_bars"),
        ({"short_window_bars": 800}, "vol_regimes.defaults.short_window_bars"),
        ({"ratio_low_high": [0.6, 1.2, 1.8]}, "vol_regimes.defaults.ratio_low_high"),
        ({"ratio_low_high": {"low": "0.6"}}, "vol_regimes.defaults.ratio_low_high.low"),
        ({"ratio_low_high": {"low": 0.0}}, "vol_regimes.defaults.ratio_low_high.low"),
        ({"ratio_low_high": {"normal": 0.5}}, "vol_regimes.defaults.ratio_low_high.normal"),
        ({"ratio_low_high": {"high": 1.2}}, "vol_regimes.defaults.ratio_low_high.high"),
        ({"ratio_low_high": {"high": float("nan")}}, "vol_regimes.defaults.ratio_low_high.high"),
    ],
)
def test_a_bad_config_value_raises_config_error_naming_its_key(defaults: dict, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        VolRegimeConfig.from_strategy_config({"vol_regimes": {"defaults": defaults}})

    assert raised.value.key == key
    assert key in str(raised.value)
    assert raised.value.reason


@pytest.mark.parametrize(
    ("strategy_config", "key"),
    [({"vol_regimes": []}, "vol_regimes"), ({"vol_regimes": {"defaults": 3}}, "vol_regimes.defaults")],
)
def test_a_config_block_of_the_wrong_shape_raises_config_error(strategy_config: dict, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        VolRegimeConfig.from_strategy_config(strategy_config)

    assert raised.value.key == key


def test_a_directly_built_config_is_validated_too() -> None:
    with pytest.raises(ConfigError) as raised:
        VolRegimeConfig(ratio_low=1.5)

    assert raised.value.key == "vol_regimes.defaults.ratio_low_high.normal"
