"""Seed 000 §5.2: the screener's tier x regime sizing, caps, and regime-aware hybrid weights.

Everything runs on the pure core (``services.screener.core``) with configs built by
``parse_strategy_config`` from the shipped ``config/strategy_config.json``, edited per test
(``tests/unit/screener_configs.py``). The join of vol and HMM events, shadow mode and the
screen's persistence are in ``test_signal_screener_join.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.screener.core import (
    SeriesScreen,
    effective_nav_pct,
    hybrid_score,
    hybrid_weights,
    on_score,
    on_vol,
    sizing_multiplier,
)
from shared.domain.config import StrategyConfig, parse_strategy_config
from shared.domain.contracts import ScreenerDecision
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import VolLabel
from tests.factories import score_event, ts, vol_event
from tests.unit.screener_configs import CORE, NO_CAP, SHIPPED, make_cfg

SATELLITE = SeriesKey("demo", "SOL/USD", "1m")
TACTICAL = SeriesKey("demo", "ADA/USD", "1m")
ALT_EXT = SeriesKey("demo", "PEPE/USD", "1m")
MEME = SeriesKey("demo", "WIF/USD", "1m")  # a tier the sizing table does not know
STRANGER = SeriesKey("demo", "ZZZ/USD", "1m")  # not in the universe at all

BASE_WEIGHTS = {"trend": 0.40, "carry": 0.25, "expectancy": 0.20, "router": 0.15}


def decide_one(
    cfg: StrategyConfig, key: SeriesKey, label: VolLabel, state: SeriesScreen | None = None
) -> ScreenerDecision:
    """One decision through the public path (HMM disabled: the vol event alone decides)."""
    (decision,) = on_vol(state or SeriesScreen(), vol_event(0, label, key=key), cfg)
    return decision


# --- §5.2 scenario 1: CORE sizing across regimes ---------------------------------------------------

CORE_ROWS: list[tuple[VolLabel, float, float]] = [
    ("low", 1.15, 0.023),
    ("normal", 1.0, 0.02),
    ("high", 0.75, 0.015),
    ("crisis", 0.5, 0.01),
]


@pytest.mark.parametrize(("label", "multiplier", "effective"), CORE_ROWS)
def test_core_size_is_base_times_the_regime_multiplier(label: VolLabel, multiplier: float, effective: float) -> None:
    d = decide_one(NO_CAP, CORE, label)
    assert d.tier == "CORE"
    assert d.vol_regime == label
    assert d.sizing_multiplier == multiplier
    assert d.base_per_trade_nav_pct == 0.02
    assert d.effective_per_trade_nav_pct == pytest.approx(effective, rel=1e-12)
    assert d.capped is False


@pytest.mark.parametrize(("label", "multiplier", "effective"), CORE_ROWS)
def test_sizing_functions_agree_with_the_seed_table(label: str, multiplier: float, effective: float) -> None:
    assert sizing_multiplier(NO_CAP, "CORE", label) == multiplier
    value, capped = effective_nav_pct(NO_CAP, multiplier)
    assert value == pytest.approx(effective, rel=1e-12)
    assert capped is False


def test_crisis_halves_core_size() -> None:
    normal = decide_one(NO_CAP, CORE, "normal").effective_per_trade_nav_pct
    crisis = decide_one(NO_CAP, CORE, "crisis").effective_per_trade_nav_pct
    assert crisis == pytest.approx(normal / 2, rel=1e-12)


def test_low_vol_grows_core_size_by_15_percent() -> None:
    assert decide_one(NO_CAP, CORE, "low").effective_per_trade_nav_pct == pytest.approx(0.02 * 1.15, rel=1e-12)


def test_core_size_shrinks_monotonically_as_vol_rises() -> None:
    sizes = [decide_one(NO_CAP, CORE, label).effective_per_trade_nav_pct for label, _, _ in CORE_ROWS]
    assert sizes == sorted(sizes, reverse=True)
    assert len(set(sizes)) == 4


# --- §5.2 scenario 2: different tiers ----------------------------------------------------------------

TIER_ROWS: list[tuple[SeriesKey, str, dict[VolLabel, float]]] = [
    (SATELLITE, "SATELLITE", {"low": 1.1, "normal": 1.0, "high": 0.7, "crisis": 0.4}),
    (TACTICAL, "TACTICAL", {"low": 1.0, "normal": 0.9, "high": 0.6, "crisis": 0.3}),
    (ALT_EXT, "ALT-EXT", {"low": 0.9, "normal": 0.8, "high": 0.5, "crisis": 0.2}),
]


@pytest.mark.parametrize(("key", "tier", "row"), TIER_ROWS, ids=[r[1] for r in TIER_ROWS])
def test_each_tier_uses_its_own_multiplier_row(key: SeriesKey, tier: str, row: dict[VolLabel, float]) -> None:
    for label, multiplier in row.items():
        d = decide_one(NO_CAP, key, label)
        assert d.tier == tier
        assert d.sizing_multiplier == multiplier
        assert d.effective_per_trade_nav_pct == pytest.approx(0.02 * multiplier, rel=1e-12)


def test_same_regime_sizes_tiers_differently() -> None:
    keys = (CORE, SATELLITE, TACTICAL)
    crisis = {k.symbol: decide_one(NO_CAP, k, "crisis").effective_per_trade_nav_pct for k in keys}
    assert crisis["BTC/USD"] == pytest.approx(0.010, rel=1e-12)
    assert crisis["SOL/USD"] == pytest.approx(0.008, rel=1e-12)
    assert crisis["ADA/USD"] == pytest.approx(0.006, rel=1e-12)


def test_tactical_is_trimmed_even_in_normal_regime() -> None:
    assert decide_one(NO_CAP, TACTICAL, "normal").effective_per_trade_nav_pct == pytest.approx(0.018, rel=1e-12)
    assert decide_one(NO_CAP, SATELLITE, "normal").effective_per_trade_nav_pct == pytest.approx(0.02, rel=1e-12)


# --- §5.2 scenario 3: missing config --------------------------------------------------------------------


@pytest.mark.parametrize("key", [CORE, SATELLITE, TACTICAL, ALT_EXT, MEME])
@pytest.mark.parametrize("label", ["low", "normal", "high", "crisis"])
def test_without_vol_regimes_block_every_multiplier_is_one(key: SeriesKey, label: VolLabel) -> None:
    cfg = make_cfg(drop_vol_regimes=True)
    assert cfg.vol_regimes_present is False
    d = decide_one(cfg, key, label)
    assert d.sizing_multiplier == 1.0
    assert d.effective_per_trade_nav_pct == 0.02
    assert d.weights == pytest.approx(BASE_WEIGHTS, rel=1e-12)


def test_vol_regimes_without_sizing_table_falls_back_to_one() -> None:
    cfg = make_cfg(vol_regimes={"defaults": SHIPPED["vol_regimes"]["defaults"]})
    assert cfg.vol_regimes_present is True
    for label in ("low", "normal", "high", "crisis"):
        assert decide_one(cfg, CORE, label).sizing_multiplier == 1.0


def test_tier_row_missing_a_label_falls_back_to_one_for_that_label_only() -> None:
    block = copy.deepcopy(SHIPPED["vol_regimes"])
    block["sizing_multipliers"]["SATELLITE"] = {"low": 1.1, "normal": 1.0}
    del block["sizing_multipliers"]["CORE"]["crisis"]
    cfg = make_cfg(vol_regimes=block)
    assert decide_one(cfg, SATELLITE, "low").sizing_multiplier == 1.1
    assert decide_one(cfg, SATELLITE, "high").sizing_multiplier == 1.0
    assert decide_one(cfg, SATELLITE, "crisis").sizing_multiplier == 1.0
    assert decide_one(cfg, CORE, "crisis").sizing_multiplier == 1.0
    assert decide_one(cfg, CORE, "high").sizing_multiplier == 0.75


def test_empty_tier_row_falls_back_to_one_like_any_missing_label() -> None:
    # A row that lost its last label must behave like a row missing each label (1.0),
    # not silently switch to CORE's row.
    block = copy.deepcopy(SHIPPED["vol_regimes"])
    block["sizing_multipliers"]["SATELLITE"] = {}
    cfg = make_cfg(vol_regimes=block)
    for label in ("low", "normal", "high", "crisis"):
        assert sizing_multiplier(cfg, "SATELLITE", label) == 1.0, label


# --- unknown tiers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "multiplier", "effective"), CORE_ROWS)
def test_unknown_tier_uses_core_row(label: VolLabel, multiplier: float, effective: float) -> None:
    d = decide_one(NO_CAP, MEME, label)
    assert d.tier == "MEME"
    assert d.sizing_multiplier == multiplier
    assert d.effective_per_trade_nav_pct == pytest.approx(effective, rel=1e-12)


def test_series_outside_the_universe_is_sized_as_core() -> None:
    d = decide_one(NO_CAP, STRANGER, "crisis")
    assert d.tier == "CORE"
    assert d.sizing_multiplier == 0.5


def test_unknown_tier_without_core_row_falls_back_to_one() -> None:
    block = copy.deepcopy(SHIPPED["vol_regimes"])
    del block["sizing_multipliers"]["CORE"]
    cfg = make_cfg(vol_regimes=block)
    assert sizing_multiplier(cfg, "MEME", "crisis") == 1.0
    assert sizing_multiplier(cfg, "SATELLITE", "crisis") == 0.4


# --- caps --------------------------------------------------------------------------------------------------


def test_cap_cuts_an_oversized_trade_and_marks_it_capped() -> None:
    cfg = make_cfg(cap=0.022)
    d = decide_one(cfg, CORE, "low")  # 0.02 x 1.15 = 0.023 > 0.022
    assert d.effective_per_trade_nav_pct == 0.022
    assert d.capped is True
    assert d.sizing_multiplier == 1.15  # the multiplier is still reported as looked up


@pytest.mark.parametrize("label", ["normal", "high", "crisis"])
def test_cap_leaves_trades_below_it_alone(label: VolLabel) -> None:
    capped_cfg = make_cfg(cap=0.022)
    d = decide_one(capped_cfg, CORE, label)
    assert d.capped is False
    assert d.effective_per_trade_nav_pct == decide_one(NO_CAP, CORE, label).effective_per_trade_nav_pct


def test_cap_applies_to_every_tier() -> None:
    cfg = make_cfg(cap=0.021)
    d = decide_one(cfg, SATELLITE, "low")  # 0.022 > 0.021
    assert (d.effective_per_trade_nav_pct, d.capped) == (0.021, True)
    assert decide_one(cfg, TACTICAL, "low").capped is False  # 0.02 x 1.0


def test_effective_nav_pct_without_cap_is_never_capped() -> None:
    pct, capped = effective_nav_pct(NO_CAP, 10.0)
    assert pct == pytest.approx(0.2)
    assert capped is False


# --- §5.2 scenario 4: hybrid weight modulation ----------------------------------------------------------


def test_normal_regime_keeps_the_base_weights() -> None:
    assert hybrid_weights(NO_CAP, "CORE", "normal") == pytest.approx(BASE_WEIGHTS, rel=1e-12)
    assert hybrid_weights(NO_CAP, "CORE", "low") == pytest.approx(BASE_WEIGHTS, rel=1e-12)


def test_crisis_weights_are_base_times_modifiers_renormalised() -> None:
    # trend 0.4, carry 0.25 x 0.4 = 0.1, expectancy 0.2 x 0.8 = 0.16, router 0.15 x 1.1 = 0.165; total 0.825
    expected = {"trend": 0.4 / 0.825, "carry": 0.1 / 0.825, "expectancy": 0.16 / 0.825, "router": 0.165 / 0.825}
    assert hybrid_weights(NO_CAP, "CORE", "crisis") == pytest.approx(expected, rel=1e-12)


def test_high_weights_are_base_times_modifiers_renormalised() -> None:
    # trend 0.4, carry 0.175, expectancy 0.18, router 0.15; total 0.905
    expected = {"trend": 0.4 / 0.905, "carry": 0.175 / 0.905, "expectancy": 0.18 / 0.905, "router": 0.15 / 0.905}
    assert hybrid_weights(NO_CAP, "CORE", "high") == pytest.approx(expected, rel=1e-12)


def test_carry_weight_is_lower_in_crisis_than_in_normal() -> None:
    carry = {label: hybrid_weights(NO_CAP, "CORE", label)["carry"] for label in ("normal", "high", "crisis")}
    assert carry["crisis"] < carry["high"] < carry["normal"]


def test_router_weight_rises_in_crisis() -> None:
    assert hybrid_weights(NO_CAP, "CORE", "crisis")["router"] == pytest.approx(0.2, rel=1e-12)
    assert hybrid_weights(NO_CAP, "CORE", "normal")["router"] == pytest.approx(0.15, rel=1e-12)


@pytest.mark.parametrize("label", ["low", "normal", "high", "crisis"])
@pytest.mark.parametrize("tier", ["CORE", "SATELLITE", "TACTICAL", "ALT-EXT", "MEME"])
def test_weights_sum_to_one_for_every_tier_and_regime(tier: str, label: str) -> None:
    weights = hybrid_weights(NO_CAP, tier, label)
    assert set(weights) == set(BASE_WEIGHTS)
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-12)


mod = st.floats(min_value=0.01, max_value=10.0, allow_nan=False)
weight = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    mods=st.fixed_dictionaries({"carry": mod, "expectancy": mod, "router": mod, "trend": mod}),
    base=st.fixed_dictionaries({"trend": weight, "carry": weight, "expectancy": weight, "router": weight}),
    label=st.sampled_from(["low", "normal", "high", "crisis"]),
)
def test_weights_are_always_normalised_and_proportional(
    mods: dict[str, float], base: dict[str, float], label: str
) -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["hybrid"] = {"base_weights": base}
    raw["vol_regimes"]["hybrid_weight_modifiers"] = {"default": {label: mods}}
    cfg = parse_strategy_config(raw, env={})
    weights = hybrid_weights(cfg, "CORE", label)
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-12)
    unnormalised = {c: base[c] * mods[c] for c in base}
    total = math.fsum(unnormalised.values())
    assert weights == pytest.approx({c: w / total for c, w in unnormalised.items()}, rel=1e-9)


def test_tier_specific_modifier_block_applies_to_that_tier_only() -> None:
    block = copy.deepcopy(SHIPPED["vol_regimes"])
    block["hybrid_weight_modifiers"]["TACTICAL"] = {"crisis": {"carry": 0.0, "expectancy": 1.0, "router": 1.0}}
    cfg = make_cfg(vol_regimes=block)
    assert hybrid_weights(cfg, "TACTICAL", "crisis")["carry"] == 0.0
    assert hybrid_weights(cfg, "CORE", "crisis") == pytest.approx(hybrid_weights(NO_CAP, "CORE", "crisis"))


SCORES = {"trend": 0.5, "carry": 0.8, "expectancy": -0.2, "router": 0.3}


def test_hybrid_score_changes_with_regime_for_fixed_scores() -> None:
    normal = hybrid_score(hybrid_weights(NO_CAP, "CORE", "normal"), SCORES)
    crisis = hybrid_score(hybrid_weights(NO_CAP, "CORE", "crisis"), SCORES)
    # normal: 0.4*0.5 + 0.25*0.8 + 0.2*(-0.2) + 0.15*0.3 = 0.405
    # crisis: (0.4*0.5 + 0.1*0.8 + 0.16*(-0.2) + 0.165*0.3) / 0.825 = 0.2975 / 0.825
    assert normal == pytest.approx(0.405, rel=1e-12)
    assert crisis == pytest.approx(0.2975 / 0.825, rel=1e-12)
    assert crisis < normal  # a strong carry score counts for less in crisis


def test_decision_hybrid_score_uses_published_scores_and_regime_weights() -> None:
    decisions = {}
    for label in ("normal", "crisis"):
        state = SeriesScreen()
        for comp in ("carry", "expectancy", "router"):
            assert on_score(state, score_event(comp, SCORES[comp], key=CORE))
        decisions[label] = decide_one(NO_CAP, CORE, label, state)
    for label, d in decisions.items():
        assert d.trend_score == 0.0  # the slow EMA has not seen its span yet
        assert d.scores == {"trend": 0.0, "carry": 0.8, "expectancy": -0.2, "router": 0.3}
        assert d.defaulted == ()
        assert d.weights == hybrid_weights(NO_CAP, "CORE", label)
        assert d.hybrid_score == pytest.approx(hybrid_score(d.weights, d.scores), rel=1e-12)
    # trend 0: normal = 0.2 - 0.04 + 0.045 = 0.205; crisis = (0.08 - 0.032 + 0.0495) / 0.825
    assert decisions["normal"].hybrid_score == pytest.approx(0.205, rel=1e-12)
    assert decisions["crisis"].hybrid_score == pytest.approx(0.0975 / 0.825, rel=1e-12)


# --- scores not yet published ---------------------------------------------------------------------------------


def test_unpublished_scores_are_neutral_and_listed_as_defaulted() -> None:
    d = decide_one(NO_CAP, CORE, "normal")
    assert d.scores == {"trend": 0.0, "carry": 0.0, "expectancy": 0.0, "router": 0.0}
    assert d.defaulted == ("carry", "expectancy", "router")
    assert d.hybrid_score == 0.0


def test_published_score_leaves_the_defaulted_list() -> None:
    state = SeriesScreen()
    assert on_score(state, score_event("carry", 0.8, key=CORE))
    d = decide_one(NO_CAP, CORE, "normal", state)
    assert d.scores["carry"] == 0.8
    assert d.defaulted == ("expectancy", "router")
    assert d.hybrid_score == pytest.approx(0.25 * 0.8, rel=1e-12)


def test_scores_join_as_of_the_candle_close_whatever_order_they_arrived_in() -> None:
    state = SeriesScreen()
    assert on_score(state, score_event("carry", -0.5, i=6, key=CORE))
    assert on_score(state, score_event("carry", 0.8, i=3, key=CORE))  # arrives later, stamped earlier: still filed
    assert on_score(state, score_event("carry", 0.8, i=3, key=CORE)) is False  # a replayed score changes nothing
    carry = [d.scores["carry"] for i in range(8) for d in on_vol(state, vol_event(i, key=CORE), NO_CAP)]
    # The candle opened at i closes at i + 1: it sees the scores stamped up to then.
    assert carry == [0.0, 0.0, 0.8, 0.8, 0.8, -0.5, -0.5, -0.5]
    assert state.scores["carry"] == [(ts(6), -0.5)]  # superseded scores are pruned


def test_a_second_score_with_the_same_stamp_replaces_the_first() -> None:
    state = SeriesScreen()
    on_score(state, score_event("carry", 0.1, i=2, key=CORE))
    on_score(state, score_event("carry", 0.3, i=2, key=CORE))
    assert state.scores["carry"] == [(ts(2), 0.3)]
