"""compute_blended_idle_target (shadow mode bit-identical) and compute_grid_bias (modes, neutrality)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.contracts import GridBias
from shared.domain.hmm import (
    GRID_BIAS_MAX_ADJUST,
    GRID_SIZE_SKEW_SCALE,
    Regime,
    RegimeState,
    compute_blended_idle_target,
    compute_grid_bias,
)

SYMMETRIC = GridBias("symmetric", 1.0, 1.0, None)
finite = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False)
unit = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)


def trend_only(trend: float, base: float, sens: float, floor: float, ceiling: float) -> float:
    """The §15 idle target with no HMM at all."""
    return max(floor, min(ceiling, base - sens * trend))


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


# --------------------------------------------------------------------------- idle target


@settings(max_examples=300, deadline=None)
@given(
    trend=finite,
    bias=st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-0.0)),
    base=st.floats(0.0, 1.0),
    sens=st.floats(0.0, 2.0),
    floor=st.floats(0.0, 0.5),
    span=st.floats(0.0, 0.5),
)
def test_shadow_mode_is_bit_identical_to_trend_only(
    trend: float, bias: float, base: float, sens: float, floor: float, span: float
) -> None:
    ceiling = floor + span
    got = compute_blended_idle_target(trend, bias, 1.0, base, sens, floor, ceiling)
    assert bits(got) == bits(trend_only(trend, base, sens, floor, ceiling))


def test_shadow_mode_survives_signed_zeros() -> None:
    # 1.0 × (−0.0) + 0.0 × 0.5 is +0.0, not −0.0: a naive blend changes the sign bit of the target here.
    naive = -0.0 - 1.0 * (1.0 * -0.0 + 0.0 * 0.5)
    expected = trend_only(-0.0, -0.0, 1.0, -1.0, 1.0)
    assert bits(naive) != bits(expected)
    assert bits(compute_blended_idle_target(-0.0, 0.5, 1.0, -0.0, 1.0, -1.0, 1.0)) == bits(expected)


@settings(max_examples=200, deadline=None)
@given(trend=finite, bias=unit, base=st.floats(0.2, 0.6), sens=st.floats(0.0, 0.3))
def test_blend_zero_is_pure_hmm(trend: float, bias: float, base: float, sens: float) -> None:
    got = compute_blended_idle_target(trend, bias, 0.0, base, sens, 0.0, 1.0)
    assert bits(got) == bits(max(0.0, min(1.0, base - sens * bias)))


@settings(max_examples=200, deadline=None)
@given(trend=unit, bias=unit, blend=st.floats(0.0, 1.0))
def test_blend_is_linear_between_the_two_signals(trend: float, bias: float, blend: float) -> None:
    got = compute_blended_idle_target(trend, bias, blend, 0.4, 0.2, -10.0, 10.0)
    assert got == pytest.approx(0.4 - 0.2 * (blend * trend + (1 - blend) * bias), abs=1e-15)
    lo, hi = sorted((0.4 - 0.2 * trend, 0.4 - 0.2 * bias))
    assert lo - 1e-15 <= got <= hi + 1e-15


def test_bullish_holds_less_idle_quote() -> None:
    neutral = compute_blended_idle_target(0.0, 0.0, 0.5, 0.4, 0.2, 0.15, 0.65)
    assert neutral == 0.4
    assert compute_blended_idle_target(0.5, 0.5, 0.5, 0.4, 0.2, 0.15, 0.65) < neutral
    assert compute_blended_idle_target(-0.5, -0.5, 0.5, 0.4, 0.2, 0.15, 0.65) > neutral


@pytest.mark.parametrize(("trend", "bias", "expected"), [(5.0, 5.0, 0.15), (-5.0, -5.0, 0.65), (1.0, 1.0, 0.2)])
def test_target_is_clamped(trend: float, bias: float, expected: float) -> None:
    assert compute_blended_idle_target(trend, bias, 0.5, 0.4, 0.2, 0.15, 0.65) == pytest.approx(expected)


def test_out_of_range_blend_and_broken_hmm_degrade_to_trend() -> None:
    args = (0.4, 0.2, 0.15, 0.65)
    assert compute_blended_idle_target(0.3, -1.0, 1.7, *args) == compute_blended_idle_target(0.3, -1.0, 1.0, *args)
    assert compute_blended_idle_target(0.3, -1.0, -0.5, *args) == compute_blended_idle_target(0.3, -1.0, 0.0, *args)
    assert compute_blended_idle_target(0.3, math.nan, 0.5, *args) == compute_blended_idle_target(0.3, 0.0, 0.5, *args)
    assert compute_blended_idle_target(0.3, 0.9, math.nan, *args) == trend_only(0.3, *args)


# --------------------------------------------------------------------------- grid bias


def state(regime: Regime, bias: float, confidence: float = 0.6) -> RegimeState:
    return RegimeState(regime, (0.2, 0.2, 0.6), confidence, bias, 10)


def test_neutral_cases_are_symmetric() -> None:
    assert compute_grid_bias(RegimeState()) == SYMMETRIC
    assert compute_grid_bias(state(Regime.RANGING, 0.4)) == SYMMETRIC
    assert compute_grid_bias(state(Regime.BULLISH, 0.4, confidence=0.1)) == SYMMETRIC
    assert compute_grid_bias(state(Regime.BULLISH, 0.0)) == SYMMETRIC
    assert compute_grid_bias(state(Regime.BULLISH, math.nan)) == SYMMETRIC
    assert compute_grid_bias(state(Regime.BULLISH, 0.4, confidence=0.3), confidence_threshold=0.5) == SYMMETRIC
    assert compute_grid_bias(state(Regime.BULLISH, 0.4, confidence=0.15)) != SYMMETRIC  # default threshold 0.15


def test_bullish_tightens_buys_and_widens_sells() -> None:
    gb = compute_grid_bias(state(Regime.BULLISH, 0.5))
    assert gb.mode == "long_bias"
    assert gb.entry_spacing_mult_b == pytest.approx(1.0 - 0.5 * GRID_BIAS_MAX_ADJUST)
    assert gb.entry_spacing_mult_a == pytest.approx(1.0 + 0.5 * GRID_BIAS_MAX_ADJUST)
    assert gb.size_skew_override == pytest.approx(0.5 * GRID_SIZE_SKEW_SCALE)


def test_bearish_is_the_mirror() -> None:
    bull = compute_grid_bias(state(Regime.BULLISH, 0.5))
    bear = compute_grid_bias(state(Regime.BEARISH, -0.5))
    assert bear.mode == "short_bias"
    assert bear.entry_spacing_mult_a == bull.entry_spacing_mult_b
    assert bear.entry_spacing_mult_b == bull.entry_spacing_mult_a
    assert bear.size_skew_override == -(bull.size_skew_override or 0.0)


def test_adjustment_is_proportional_and_capped() -> None:
    weak = compute_grid_bias(state(Regime.BULLISH, 0.2))
    strong = compute_grid_bias(state(Regime.BULLISH, 0.8))
    full = compute_grid_bias(state(Regime.BULLISH, 1.0))
    assert 1.0 > weak.entry_spacing_mult_b > strong.entry_spacing_mult_b > full.entry_spacing_mult_b
    assert full.entry_spacing_mult_b == pytest.approx(0.7)
    assert full.entry_spacing_mult_a == pytest.approx(1.3)
    assert compute_grid_bias(state(Regime.BULLISH, 7.0)) == full  # never beyond the documented maximum


@settings(max_examples=300, deadline=None)
@given(
    regime=st.sampled_from(list(Regime)),
    bias=st.floats(allow_nan=True, allow_infinity=True),
    confidence=st.floats(0.0, 1.0),
)
def test_multipliers_always_positive_and_bounded(regime: Regime, bias: float, confidence: float) -> None:
    gb = compute_grid_bias(RegimeState(regime, (0.3, 0.4, 0.3), confidence, bias, 1))
    for mult in (gb.entry_spacing_mult_a, gb.entry_spacing_mult_b):
        assert 1.0 - GRID_BIAS_MAX_ADJUST - 1e-12 <= mult <= 1.0 + GRID_BIAS_MAX_ADJUST + 1e-12
        assert mult > 0
    if gb.mode == "symmetric":
        assert gb == SYMMETRIC
    else:
        assert gb.size_skew_override is not None
        assert abs(gb.size_skew_override) <= GRID_SIZE_SKEW_SCALE
        assert (gb.mode == "long_bias") == (bias > 0)
