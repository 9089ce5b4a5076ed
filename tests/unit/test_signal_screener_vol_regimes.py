"""Seed 000 §5.2: the screener's tier x regime sizing, regime-aware hybrid weights, and the vol/HMM join.

Everything runs on the pure core (``services.screener.core``) with configs built by
``parse_strategy_config`` from the shipped ``config/strategy_config.json``, edited per test.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.screener.core import (
    NEUTRAL_GRID,
    SeriesScreen,
    effective_nav_pct,
    hybrid_score,
    hybrid_weights,
    on_hmm,
    on_score,
    on_vol,
    sizing_multiplier,
)
from shared.domain.config import StrategyConfig, parse_strategy_config
from shared.domain.contracts import ScreenerDecision
from shared.domain.subjects import SeriesKey
from tests.factories import hmm_event, score_event, ts, vol_event

CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "strategy_config.json"
SHIPPED: dict[str, Any] = json.loads(CONFIG_PATH.read_text())
CORE = SeriesKey("demo", "BTC/USD", "1m")
SATELLITE = SeriesKey("demo", "SOL/USD", "1m")
TACTICAL = SeriesKey("demo", "ADA/USD", "1m")
ALT_EXT = SeriesKey("demo", "PEPE/USD", "1m")
MEME = SeriesKey("demo", "WIF/USD", "1m")  # a tier the sizing table does not know
STRANGER = SeriesKey("demo", "ZZZ/USD", "1m")  # not in the universe at all
BULL = (0.05, 0.1, 0.85)  # (bearish, ranging, bullish) of a confident bullish verdict: bias 0.8, confidence 0.75

BASE_WEIGHTS = {"trend": 0.40, "carry": 0.25, "expectancy": 0.20, "router": 0.15}
TRADING_FIELDS = (
    "sizing_multiplier",
    "base_per_trade_nav_pct",
    "effective_per_trade_nav_pct",
    "capped",
    "weights",
    "scores",
    "hybrid_score",
    "trend_score",
    "dynamic_idle_target",
    "grid_bias",
)


def make_cfg(
    *,
    cap: float | None = None,
    hmm: dict[str, Any] | None = None,
    vol_regimes: dict[str, Any] | None = None,
    drop_vol_regimes: bool = False,
) -> StrategyConfig:
    """The shipped config with base per_trade_nav_pct 0.02, no cap unless given, HMM off unless given."""
    raw = copy.deepcopy(SHIPPED)
    raw["universe"].append({"exchange": "demo", "symbol": "WIF/USD", "timeframe": "1m", "tier": "MEME"})
    raw["sizing"] = {"per_trade_nav_pct": 0.02}
    if cap is not None:
        raw["sizing"]["max_per_trade_nav_pct"] = cap
    raw["hmm"] = {**raw["hmm"], "HMM_ENABLED": False, **(hmm or {})}
    if drop_vol_regimes:
        del raw["vol_regimes"]
    elif vol_regimes is not None:
        raw["vol_regimes"] = vol_regimes
    return parse_strategy_config(raw, env={})


NO_CAP = make_cfg()
HMM_ON = make_cfg(hmm={"HMM_ENABLED": True})


def decide_one(cfg: StrategyConfig, key: SeriesKey, label: str, state: SeriesScreen | None = None) -> ScreenerDecision:
    """One decision through the public path (HMM disabled: the vol event alone decides)."""
    (decision,) = on_vol(state or SeriesScreen(), vol_event(0, label, key=key), cfg)
    return decision


# --- §5.2 scenario 1: CORE sizing across regimes ---------------------------------------------------

CORE_ROWS = [("low", 1.15, 0.023), ("normal", 1.0, 0.02), ("high", 0.75, 0.015), ("crisis", 0.5, 0.01)]


@pytest.mark.parametrize(("label", "multiplier", "effective"), CORE_ROWS)
def test_core_size_is_base_times_the_regime_multiplier(label: str, multiplier: float, effective: float) -> None:
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

TIER_ROWS = [
    (SATELLITE, "SATELLITE", {"low": 1.1, "normal": 1.0, "high": 0.7, "crisis": 0.4}),
    (TACTICAL, "TACTICAL", {"low": 1.0, "normal": 0.9, "high": 0.6, "crisis": 0.3}),
    (ALT_EXT, "ALT-EXT", {"low": 0.9, "normal": 0.8, "high": 0.5, "crisis": 0.2}),
]


@pytest.mark.parametrize(("key", "tier", "row"), TIER_ROWS, ids=[r[1] for r in TIER_ROWS])
def test_each_tier_uses_its_own_multiplier_row(key: SeriesKey, tier: str, row: dict[str, float]) -> None:
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
def test_without_vol_regimes_block_every_multiplier_is_one(key: SeriesKey, label: str) -> None:
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
def test_unknown_tier_uses_core_row(label: str, multiplier: float, effective: float) -> None:
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
def test_cap_leaves_trades_below_it_alone(label: str) -> None:
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
    assert effective_nav_pct(NO_CAP, 10.0) == (pytest.approx(0.2), False)


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


# --- the join: vol and HMM events of one candle -------------------------------------------------------------


def test_with_hmm_enabled_vol_event_waits_for_its_hmm_event() -> None:
    state = SeriesScreen()
    assert on_vol(state, vol_event(0, key=CORE), HMM_ON) == []
    (d,) = on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    assert d.ts == ts(0)
    assert d.hmm_regime == "BULLISH"
    assert d.hmm_bias == pytest.approx(0.8)


def test_with_hmm_enabled_hmm_event_waits_for_its_vol_event() -> None:
    state = SeriesScreen()
    assert on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON) == []
    (d,) = on_vol(state, vol_event(0, "high", key=CORE), HMM_ON)
    assert (d.ts, d.vol_regime, d.hmm_regime) == (ts(0), "high", "BULLISH")


def test_join_is_independent_of_arrival_order() -> None:
    vol_first, hmm_first = SeriesScreen(), SeriesScreen()
    on_vol(vol_first, vol_event(0, "crisis", key=CORE), HMM_ON)
    (a,) = on_hmm(vol_first, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    on_hmm(hmm_first, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    (b,) = on_vol(hmm_first, vol_event(0, "crisis", key=CORE), HMM_ON)
    assert a == b


def interleavings(n: int, seed: int) -> list[tuple[str, int]]:
    """A random merge of the vol and HMM event streams, each in ts order (as each service publishes)."""
    rng = random.Random(seed)
    vols, hmms = list(range(n)), list(range(n))
    out: list[tuple[str, int]] = []
    while vols or hmms:
        pick_vol = bool(vols) and (not hmms or rng.random() < 0.5)
        out.append(("vol", vols.pop(0)) if pick_vol else ("hmm", hmms.pop(0)))
    return out


LABELS = ("low", "normal", "high", "crisis")


def feed(
    order: list[tuple[str, int]], cfg: StrategyConfig, state: SeriesScreen | None = None
) -> list[ScreenerDecision]:
    state = state if state is not None else SeriesScreen()
    out: list[ScreenerDecision] = []
    for kind, i in order:
        if kind == "vol":
            out += on_vol(state, vol_event(i, LABELS[i % 4], close=100.0 + i, key=CORE), cfg)
        else:
            p_bull = 0.5 + 0.4 * ((i * 7) % 10) / 10
            out += on_hmm(state, hmm_event(i, probabilities=(0.05, 0.95 - p_bull, p_bull), key=CORE), cfg)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_decisions_come_out_once_per_candle_in_ts_order(seed: int) -> None:
    n = 40
    decisions = feed(interleavings(n, seed), HMM_ON)
    assert [d.ts for d in decisions] == [ts(i) for i in range(n)]
    for i, d in enumerate(decisions):
        assert d.vol_regime == LABELS[i % 4]
        assert d.hmm_bias == pytest.approx(0.45 + 0.4 * ((i * 7) % 10) / 10)  # its own candle's HMM event


@pytest.mark.parametrize("seed", range(5))
def test_decisions_do_not_depend_on_which_service_answered_first(seed: int) -> None:
    n = 40
    in_order = feed([(k, i) for i in range(n) for k in ("vol", "hmm")], HMM_ON)
    shuffled = feed(interleavings(n, seed), HMM_ON)
    assert shuffled == in_order


def test_stale_events_for_decided_candles_are_ignored() -> None:
    state = SeriesScreen()
    feed([(k, i) for i in range(3) for k in ("vol", "hmm")], HMM_ON, state)
    before = state.dump()
    assert on_vol(state, vol_event(1, "crisis", key=CORE), HMM_ON) == []
    assert on_hmm(state, hmm_event(2, "BEARISH", (0.9, 0.05, 0.05), key=CORE), HMM_ON) == []
    assert on_vol(state, vol_event(2, key=CORE), HMM_ON) == []
    assert state.dump() == before


def test_duplicate_pending_event_keeps_the_first_copy() -> None:
    state = SeriesScreen()
    assert on_vol(state, vol_event(0, "low", key=CORE), HMM_ON) == []
    assert on_vol(state, vol_event(0, "crisis", key=CORE), HMM_ON) == []
    # Not candle 0's: candle 0 can no longer join.
    assert on_hmm(state, hmm_event(1, probabilities=BULL, key=CORE), HMM_ON) == []
    assert on_hmm(state, hmm_event(1, "BEARISH", (0.9, 0.05, 0.05), key=CORE), HMM_ON) == []
    (d1,) = on_vol(state, vol_event(1, "low", key=CORE), HMM_ON)
    assert (d1.ts, d1.hmm_regime) == (ts(1), "BULLISH")


def test_hmm_events_that_can_no_longer_join_are_dropped() -> None:
    state = SeriesScreen()
    # Its vol event never comes (vol skipped that candle).
    on_hmm(state, hmm_event(3, probabilities=BULL, key=CORE), HMM_ON)
    on_vol(state, vol_event(4, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(4, probabilities=BULL, key=CORE), HMM_ON)
    assert d.ts == ts(4)
    assert state.pending_hmm == {}
    assert state.pending_vol == {}
    assert on_vol(state, vol_event(3, key=CORE), HMM_ON) == []  # older than what was decided


def test_with_hmm_enabled_no_candle_is_ever_decided_without_its_hmm_verdict() -> None:
    state = SeriesScreen()
    for i in range(5000):
        assert on_vol(state, vol_event(i, key=CORE), HMM_ON) == []
    assert len(state.pending_vol) == 5000
    (d,) = on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    assert (d.ts, d.hmm_regime, d.hmm_trained) == (ts(0), "BULLISH", True)


def test_a_candle_whose_hmm_verdict_can_no_longer_come_is_dropped_not_decided_without_it() -> None:
    state = SeriesScreen()
    on_vol(state, vol_event(0, key=CORE), HMM_ON)
    on_vol(state, vol_event(1, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(1, probabilities=BULL, key=CORE), HMM_ON)  # the HMM service skipped candle 0
    assert d.ts == ts(1)
    assert state.pending_vol == {}


def test_the_join_buffer_reports_its_oldest_stream_sequence() -> None:
    state = SeriesScreen()
    assert state.low_water() is None
    on_vol(state, vol_event(0, key=CORE), HMM_ON, seq=7)
    on_vol(state, vol_event(1, key=CORE), HMM_ON, seq=9)
    assert state.low_water() == 7
    on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON, seq=12)
    assert state.low_water() == 9


def test_with_hmm_disabled_the_vol_event_alone_decides() -> None:
    state = SeriesScreen()
    (d,) = on_vol(state, vol_event(0, "high", key=CORE), NO_CAP)
    assert (d.ts, d.vol_regime, d.hmm_regime, d.hmm_bias, d.hmm_confidence) == (ts(0), "high", None, 0.0, 0.0)
    assert d.grid_bias == NEUTRAL_GRID


def test_with_hmm_disabled_stray_hmm_events_change_nothing() -> None:
    with_stray, without = SeriesScreen(), SeriesScreen()
    assert on_hmm(with_stray, hmm_event(0, probabilities=BULL, key=CORE), NO_CAP) == []
    (a,) = on_vol(with_stray, vol_event(0, key=CORE), NO_CAP)
    (b,) = on_vol(without, vol_event(0, key=CORE), NO_CAP)
    assert a == b
    assert a.hmm_regime is None


def test_untrained_hmm_gives_zero_bias_and_neutral_grid() -> None:
    state = SeriesScreen()
    on_vol(state, vol_event(0, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(0, "RANGING", (0.0, 1.0, 0.0), trained=False, key=CORE), HMM_ON)
    assert d.hmm_bias == 0.0
    assert d.grid_bias == NEUTRAL_GRID


def test_trained_confident_hmm_biases_the_grid_when_not_in_shadow_mode() -> None:
    state = SeriesScreen()
    on_vol(state, vol_event(0, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    assert d.grid_bias.mode == "long_bias"


# --- shadow mode: the HMM changes nothing a bot acts on ---------------------------------------------------------


def trending_run(cfg: StrategyConfig, with_hmm: bool, n: int = 120) -> list[ScreenerDecision]:
    """A rising then falling market with all four regimes, published scores, and (optionally) strong HMM verdicts."""
    state = SeriesScreen()
    for comp, score in (("carry", 0.6), ("expectancy", -0.3), ("router", 0.2)):
        on_score(state, score_event(comp, score, key=CORE))
    out: list[ScreenerDecision] = []
    close = 100.0
    for i in range(n):
        close *= 1.004 if i < n * 2 // 3 else 0.994
        out += on_vol(state, vol_event(i, LABELS[(i // 7) % 4], close=close, key=CORE), cfg)
        if with_hmm:
            if i % 2:
                verdict = hmm_event(i, probabilities=BULL, key=CORE)
            else:
                verdict = hmm_event(i, "BEARISH", (0.9, 0.07, 0.03), key=CORE)
            out += on_hmm(state, verdict, cfg)
    assert len(out) == n
    return out


def trading_fields(d: ScreenerDecision) -> dict[str, Any]:
    return {f: getattr(d, f) for f in TRADING_FIELDS}


@pytest.mark.parametrize("disabled_blend", [1.0, 0.5], ids=["disabled-blend-1.0", "disabled-shipped-blend-0.5"])
def test_shadow_mode_trades_exactly_like_hmm_disabled(disabled_blend: float) -> None:
    shadow = make_cfg(hmm={"HMM_ENABLED": True, "HMM_BLEND_WITH_TREND": 1.0})
    disabled = make_cfg(hmm={"HMM_ENABLED": False, "HMM_BLEND_WITH_TREND": disabled_blend})
    with_hmm = trending_run(shadow, with_hmm=True)
    without = trending_run(disabled, with_hmm=False)
    assert any(abs(d.trend_score) > 0.5 for d in without)  # the trend really moves the idle target
    assert any(d.hmm_bias != 0.0 for d in with_hmm)  # and the HMM really has an opinion
    for a, b in zip(with_hmm, without, strict=True):
        assert trading_fields(a) == trading_fields(b), a.ts


def test_outside_shadow_mode_the_hmm_does_move_the_idle_target_and_grid() -> None:
    blended = trending_run(make_cfg(hmm={"HMM_ENABLED": True, "HMM_BLEND_WITH_TREND": 0.5}), with_hmm=True)
    shadow = trending_run(make_cfg(hmm={"HMM_ENABLED": True, "HMM_BLEND_WITH_TREND": 1.0}), with_hmm=True)
    assert any(a.dynamic_idle_target != b.dynamic_idle_target for a, b in zip(blended, shadow, strict=True))
    assert any(d.grid_bias != NEUTRAL_GRID for d in blended)
    assert all(d.grid_bias == NEUTRAL_GRID for d in shadow)


def test_hmm_disabled_idle_target_is_the_trend_only_target() -> None:
    # Seed 003 §5: without the HMM the bot keeps its §15 behaviour, a trend_score-only idle target,
    # whatever HMM_BLEND_WITH_TREND is set to for the day the HMM gets enabled.
    cfg = make_cfg(hmm={"HMM_ENABLED": False, "HMM_BLEND_WITH_TREND": 0.5})
    idle = cfg.idle
    for d in trending_run(cfg, with_hmm=False):
        expected = max(idle.floor, min(idle.ceiling, idle.base_target - idle.sensitivity * d.trend_score))
        assert d.dynamic_idle_target == expected, d.ts


# --- persistence ---------------------------------------------------------------------------------------------------


def test_series_screen_resumes_identically_from_its_stored_state_and_a_replay_of_the_join_buffer() -> None:
    order = interleavings(80, seed=3)
    cut = next(j for j in range(30, len(order)) if order[j][0] == "hmm" and order[j - 1][0] == "vol")
    original = SeriesScreen()
    on_score(original, score_event("carry", 0.4, key=CORE))
    seqs = dict(enumerate(order))
    out: list[ScreenerDecision] = []
    for seq in range(cut):
        out += feed([seqs[seq]], HMM_ON, original)
    assert original.pending_vol or original.pending_hmm  # something is waiting mid-join
    assert original.trend.bars > 0

    # What survives a crash: the stored state, plus the stream from the oldest event still waiting.
    wire = msgpack.packb(original.dump(), use_bin_type=True)
    restored = SeriesScreen.load(msgpack.unpackb(wire, raw=False))
    waiting = [(e.ts, "vol") for e, _ in original.pending_vol.values()]
    waiting += [(e.ts, "hmm") for e, _ in original.pending_hmm.values()]
    replay_from = min(j for j in range(cut) if (ts(seqs[j][1]), seqs[j][0]) in waiting)
    assert feed(order[replay_from:cut], HMM_ON, restored) == []  # nothing decided twice
    rest_a = feed(order[cut:], HMM_ON, original)
    rest_b = feed(order[cut:], HMM_ON, restored)
    assert rest_a
    assert rest_a == rest_b
    assert restored.dump() == original.dump()


def test_fresh_series_screen_round_trips() -> None:
    fresh = SeriesScreen()
    restored = SeriesScreen.load(msgpack.unpackb(msgpack.packb(fresh.dump()), raw=False))
    assert restored == fresh
