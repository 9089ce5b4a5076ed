"""The strategy config from JSON and the HMM_* keys of seed 003 §7.

Every bad value raises ConfigError naming the key, so a service refuses to start with a clear message.
Settings from the environment are in ``test_config_settings.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from shared.domain.config import (
    HmmConfig,
    load_strategy_config,
    parse_strategy_config,
)
from shared.domain.hmm import RegimeDetector
from shared.domain.subjects import SeriesKey
from tests.unit.config_refusal import raises_naming

CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "strategy_config.json"
SHIPPED: dict[str, Any] = json.loads(CONFIG_PATH.read_text())

# Seed 003 §7, verbatim.
SEED_HMM_TABLE: dict[str, Any] = {
    "HMM_ENABLED": False,
    "HMM_OHLCV_ENABLED": True,
    "HMM_OHLCV_INTERVAL_MIN": 1,
    "HMM_OHLCV_SYNC_INTERVAL_SEC": 60.0,
    "HMM_OHLCV_RETENTION_DAYS": 14,
    "HMM_OHLCV_BACKFILL_ON_STARTUP": True,
    "HMM_OHLCV_BACKFILL_MAX_PAGES": 40,
    "HMM_TRAINING_CANDLES": 2000,
    "HMM_RECENT_CANDLES": 100,
    "HMM_READINESS_CACHE_SEC": 300.0,
    "HMM_N_STATES": 3,
    "HMM_N_ITER": 100,
    "HMM_COVARIANCE_TYPE": "diag",
    "HMM_INFERENCE_WINDOW": 50,
    "HMM_CONFIDENCE_THRESHOLD": 0.15,
    "HMM_RETRAIN_INTERVAL_SEC": 86400.0,
    "HMM_MIN_TRAIN_SAMPLES": 500,
    "HMM_BIAS_GAIN": 1.0,
    "HMM_BLEND_WITH_TREND": 0.5,
}
# The one documented deviation: 0 selects the exact forward filter (one O(K^2) step per candle).
DEVIATIONS = {"HMM_INFERENCE_WINDOW": 0}
# Keys beyond the seed's (issue 10): a sticky transition prior, confirmed transitions, training-depth scaling.
ADDED_HMM_KEYS: dict[str, Any] = {
    "HMM_TRANSITION_STICKINESS": 30_000.0,
    "HMM_CONFIRM_BARS": 3,
    "HMM_EVIDENCE_WEIGHT": 1.0,
    "HMM_DEPTH_SCALING": True,
}


def raw_config(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(SHIPPED)
    raw.update(changes)
    return raw


# --- parse_strategy_config --------------------------------------------------------------------------------


def test_shipped_config_parses() -> None:
    cfg = load_strategy_config(CONFIG_PATH, env={})
    assert len(cfg.universe) == 8
    assert cfg.vol_regimes_present is True
    assert cfg.per_trade_nav_pct == 0.02
    assert cfg.max_per_trade_nav_pct == 0.022
    assert cfg.sizing_multipliers["CORE"] == {"low": 1.15, "normal": 1.0, "high": 0.75, "crisis": 0.5}
    assert cfg.hybrid_modifiers["default"]["crisis"] == {"carry": 0.4, "expectancy": 0.8, "router": 1.1}
    assert cfg.base_weights == {"trend": 0.40, "carry": 0.25, "expectancy": 0.20, "router": 0.15}
    assert cfg.vol.short_window_bars == 168
    assert cfg.vol.ratio_high == 1.8
    assert cfg.tier_of(SeriesKey("demo", "PEPE/USD", "1m")) == "ALT-EXT"
    assert cfg.tier_of(SeriesKey("demo", "NOPE/USD", "1m")) == "CORE"


def test_minimal_config_takes_the_defaults() -> None:
    cfg = parse_strategy_config({"universe": [{"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1h"}]}, env={})
    assert cfg.universe[0].tier == "CORE"
    assert cfg.vol_regimes_present is False
    assert cfg.sizing_multipliers == {}
    assert cfg.hybrid_modifiers == {}
    assert (cfg.per_trade_nav_pct, cfg.max_per_trade_nav_pct) == (0.02, None)
    assert cfg.hmm == HmmConfig()


def test_keys_starting_with_underscore_are_comments() -> None:
    parse_strategy_config(raw_config(_comment="tuned 2026-02"), env={})


@pytest.mark.parametrize("key", ["sizng", "vol_regime", "HMM", "universes"])
def test_unknown_top_level_key_is_named(key: str) -> None:
    raises_naming(key, lambda: parse_strategy_config(raw_config(**{key: {}}), env={}))


def test_config_must_be_an_object() -> None:
    raises_naming("(root)", lambda: parse_strategy_config([], env={}))


@pytest.mark.parametrize(
    ("universe", "key"),
    [
        (None, "universe"),
        ([], "universe"),
        ({"exchange": "kraken"}, "universe"),
        (["BTC/USD"], "universe[0]"),
        ([{"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "size": 1}], "universe[0].size"),
        ([{"exchange": "Kraken", "symbol": "BTC/USD", "timeframe": "1m"}], "universe[0].exchange"),
        ([{"symbol": "BTC/USD", "timeframe": "1m"}], "universe[0].exchange"),
        ([{"exchange": "kraken", "symbol": 42, "timeframe": "1m"}], "universe[0].symbol"),
        ([{"exchange": "kraken", "symbol": "BTC USD", "timeframe": "1m"}], "universe[0].symbol"),
        ([{"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "7m"}], "universe[0].timeframe"),
        ([{"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "tier": ""}], "universe[0].tier"),
        ([{"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "tier": 1}], "universe[0].tier"),
    ],
)
def test_bad_universe_entry_is_named(universe: Any, key: str) -> None:
    raises_naming(key, lambda: parse_strategy_config(raw_config(universe=universe), env={}))


def test_duplicate_series_is_named() -> None:
    entry = {"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "tier": "CORE"}
    other = {"exchange": "kraken", "symbol": "ETH/USD", "timeframe": "1m"}
    err = raises_naming(
        "universe[2]", lambda: parse_strategy_config(raw_config(universe=[entry, other, {**entry, "tier": "TACTICAL"}]))
    )
    assert "duplicate series kraken:BTC/USD:1m" in err.reason


def test_same_symbol_on_another_timeframe_is_not_a_duplicate() -> None:
    entry = {"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m"}
    cfg = parse_strategy_config(raw_config(universe=[entry, {**entry, "timeframe": "5m"}]), env={})
    assert len(cfg.series) == 2


def with_vol_block(**changes: Any) -> dict[str, Any]:
    raw = raw_config()
    raw["vol_regimes"].update(changes)
    return raw


@pytest.mark.parametrize(
    ("sizing", "key"),
    [
        ({"CORE": {"extreme": 1.0}}, "vol_regimes.sizing_multipliers.CORE.extreme"),
        ({"SATELLITE": {"Crisis": 0.4}}, "vol_regimes.sizing_multipliers.SATELLITE.Crisis"),
        ({"CORE": {"low": -0.5}}, "vol_regimes.sizing_multipliers.CORE.low"),
        ({"CORE": {"low": "1.1x"}}, "vol_regimes.sizing_multipliers.CORE.low"),
        ({"CORE": {"low": True}}, "vol_regimes.sizing_multipliers.CORE.low"),
        ({"CORE": [1.15, 1.0, 0.75, 0.5]}, "vol_regimes.sizing_multipliers.CORE"),
        ([1.0], "vol_regimes.sizing_multipliers"),
    ],
)
def test_bad_sizing_multiplier_is_named(sizing: Any, key: str) -> None:
    raises_naming(key, lambda: parse_strategy_config(with_vol_block(sizing_multipliers=sizing), env={}))


@pytest.mark.parametrize(
    ("mods", "key"),
    [
        ({"default": {"panic": {"carry": 0.4}}}, "vol_regimes.hybrid_weight_modifiers.default.panic"),
        ({"default": {"crisis": {"funding": 0.4}}}, "vol_regimes.hybrid_weight_modifiers.default.crisis.funding"),
        ({"default": {"crisis": {"carry": -1}}}, "vol_regimes.hybrid_weight_modifiers.default.crisis.carry"),
        ({"default": {"crisis": 0.4}}, "vol_regimes.hybrid_weight_modifiers.default.crisis"),
        ({"default": 1}, "vol_regimes.hybrid_weight_modifiers.default"),
    ],
)
def test_bad_hybrid_modifier_is_named(mods: Any, key: str) -> None:
    raises_naming(key, lambda: parse_strategy_config(with_vol_block(hybrid_weight_modifiers=mods), env={}))


@pytest.mark.parametrize(
    ("weights", "key"),
    [
        ({"trend": -0.1}, "hybrid.base_weights.trend"),
        ({"carry": 1.5}, "hybrid.base_weights.carry"),
        ({"router": "0.15"}, None),  # a numeric string is a number
        ({"router": "lots"}, "hybrid.base_weights.router"),
        ({"expectancy": True}, "hybrid.base_weights.expectancy"),
        ({"momentum": 0.1}, "hybrid.base_weights.momentum"),
        ({"trend": 0, "carry": 0, "expectancy": 0, "router": 0}, "hybrid.base_weights"),
        ([0.4, 0.25, 0.2, 0.15], "hybrid.base_weights"),
    ],
)
def test_bad_base_weight_is_named(weights: Any, key: str | None) -> None:
    raw = raw_config(hybrid={"base_weights": weights})
    if key is None:
        assert parse_strategy_config(raw, env={}).base_weights["router"] == 0.15
    else:
        raises_naming(key, lambda: parse_strategy_config(raw, env={}))


def test_missing_base_weights_take_the_seed_defaults() -> None:
    cfg = parse_strategy_config(raw_config(hybrid={"base_weights": {"trend": 0.5}}), env={})
    assert cfg.base_weights == {"trend": 0.5, "carry": 0.25, "expectancy": 0.20, "router": 0.15}


@pytest.mark.parametrize(
    ("section", "value", "key"),
    [
        ("sizing", {"per_trade_nav_pct": 1.5}, "sizing.per_trade_nav_pct"),
        ("sizing", {"per_trade_nav_pct": 0.02, "max_per_trade_nav_pct": -0.1}, "sizing.max_per_trade_nav_pct"),
        ("trend", {"fast_ema_bars": 48, "slow_ema_bars": 48}, "trend.fast_ema_bars"),
        ("trend", {"score_scale": 0}, "trend.score_scale"),
        ("idle_target", {"TREND_IDLE_FLOOR": 0.7, "TREND_IDLE_CEILING": 0.6}, "idle_target.TREND_IDLE_FLOOR"),
        ("demo", {"bars_per_sec": 0}, "demo.bars_per_sec"),
        ("exchanges", {"kraken": 5}, "exchanges.kraken"),
        ("sizing", 0.02, "sizing"),
        ("vol_regimes", [], "vol_regimes"),
    ],
)
def test_other_bad_sections_are_named(section: str, value: Any, key: str) -> None:
    raises_naming(key, lambda: parse_strategy_config(raw_config(**{section: value}), env={}))


def test_bad_vol_defaults_are_named() -> None:
    raw = raw_config()
    raw["vol_regimes"]["defaults"]["ratio_low_high"]["high"] = 1.0  # below normal
    raises_naming("vol_regimes.defaults.ratio_low_high.high", lambda: parse_strategy_config(raw, env={}))


def test_load_strategy_config_names_the_file_setting(tmp_path: Path) -> None:
    raises_naming("STRATEGY_CONFIG", lambda: load_strategy_config(tmp_path / "missing.json", env={}))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    raises_naming("STRATEGY_CONFIG", lambda: load_strategy_config(bad, env={}))


# --- HMM keys (seed 003 §7) ---------------------------------------------------------------------------------


def test_hmm_keys_are_exactly_the_seed_table_then_the_added_keys() -> None:
    assert list(HmmConfig.keys()) == [*SEED_HMM_TABLE, *ADDED_HMM_KEYS]


@pytest.mark.parametrize("key", [*SEED_HMM_TABLE, *ADDED_HMM_KEYS])
def test_hmm_default_equals_the_seed_table(key: str) -> None:
    expected = DEVIATIONS.get(key, {**SEED_HMM_TABLE, **ADDED_HMM_KEYS}[key])
    got = HmmConfig.from_keys({}, {}).as_keys()[key]
    assert got == expected
    assert type(got) is type(expected)


def test_inference_window_default_is_the_documented_forward_filter_deviation() -> None:
    assert HmmConfig.from_keys({}, {}).as_keys()["HMM_INFERENCE_WINDOW"] == 0
    # The seed's 50 (a sliding window of observations) stays available as a setting.
    assert HmmConfig.from_keys({"HMM_INFERENCE_WINDOW": 50}, {}).as_keys()["HMM_INFERENCE_WINDOW"] == 50


def test_the_detector_takes_its_defaults_from_the_one_hmm_config() -> None:
    assert RegimeDetector().cfg == HmmConfig()
    assert RegimeDetector({"HMM_N_STATES": 4}).cfg == HmmConfig(n_states=4)


ENV_SPELLINGS: dict[str, tuple[str, Any]] = {
    "HMM_ENABLED": ("true", True),
    "HMM_OHLCV_ENABLED": ("0", False),
    "HMM_OHLCV_INTERVAL_MIN": ("5", 5),
    "HMM_OHLCV_SYNC_INTERVAL_SEC": ("30", 30.0),
    "HMM_OHLCV_RETENTION_DAYS": ("7", 7),
    "HMM_OHLCV_BACKFILL_ON_STARTUP": ("no", False),
    "HMM_OHLCV_BACKFILL_MAX_PAGES": ("3", 3),
    "HMM_TRAINING_CANDLES": ("3000", 3000),
    "HMM_RECENT_CANDLES": ("50", 50),
    "HMM_READINESS_CACHE_SEC": ("0", 0.0),
    "HMM_N_STATES": ("4", 4),
    "HMM_N_ITER": ("20", 20),
    "HMM_COVARIANCE_TYPE": ("full", "full"),
    "HMM_INFERENCE_WINDOW": ("50", 50),
    "HMM_CONFIDENCE_THRESHOLD": ("0.3", 0.3),
    "HMM_RETRAIN_INTERVAL_SEC": ("3600", 3600.0),
    "HMM_MIN_TRAIN_SAMPLES": ("200", 200),
    "HMM_BIAS_GAIN": ("2.5", 2.5),
    "HMM_BLEND_WITH_TREND": ("1.0", 1.0),
    "HMM_TRANSITION_STICKINESS": ("0", 0.0),
    "HMM_CONFIRM_BARS": ("5", 5),
    "HMM_EVIDENCE_WEIGHT": ("0.3", 0.3),
    "HMM_DEPTH_SCALING": ("off", False),
}


def test_every_hmm_key_can_be_set_from_the_environment() -> None:
    assert set(ENV_SPELLINGS) == set(HmmConfig.keys())
    got = HmmConfig.from_keys({}, {k: raw for k, (raw, _) in ENV_SPELLINGS.items()}).as_keys()
    assert got == {k: value for k, (_, value) in ENV_SPELLINGS.items()}


def test_environment_overrides_file_overrides_default() -> None:
    file = {"HMM_N_ITER": 50, "HMM_BLEND_WITH_TREND": 0.7, "HMM_ENABLED": True}
    env = {"HMM_N_ITER": "70"}
    got = HmmConfig.from_keys(file, env).as_keys()
    assert got["HMM_N_ITER"] == 70  # env beats file
    assert got["HMM_BLEND_WITH_TREND"] == 0.7  # file beats default
    assert got["HMM_ENABLED"] is True
    assert got["HMM_N_STATES"] == 3  # default


def test_strategy_config_resolves_hmm_keys_with_the_environment() -> None:
    cfg = parse_strategy_config(raw_config(), env={"HMM_BLEND_WITH_TREND": "1.0", "HMM_ENABLED": "false"})
    assert cfg.hmm.blend_with_trend == 1.0
    assert cfg.hmm.enabled is False
    assert cfg.hmm.training_candles == SHIPPED["hmm"]["HMM_TRAINING_CANDLES"]


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("HMM_ENABLED", "perhaps"),
        ("HMM_N_STATES", "1"),
        ("HMM_N_STATES", "three"),
        ("HMM_N_ITER", "0"),
        ("HMM_COVARIANCE_TYPE", "DIAG"),
        ("HMM_CONFIDENCE_THRESHOLD", "1.5"),
        ("HMM_BLEND_WITH_TREND", "-0.1"),
        ("HMM_OHLCV_SYNC_INTERVAL_SEC", "0"),
        ("HMM_RETRAIN_INTERVAL_SEC", "nan"),
        ("HMM_INFERENCE_WINDOW", "-1"),
        ("HMM_CONFIRM_BARS", "0"),
        ("HMM_CONFIRM_BARS", "2.5"),
        ("HMM_EVIDENCE_WEIGHT", "0"),
        ("HMM_EVIDENCE_WEIGHT", "0.005"),
        ("HMM_EVIDENCE_WEIGHT", "1.01"),
        ("HMM_EVIDENCE_WEIGHT", "nan"),
        ("HMM_DEPTH_SCALING", "sometimes"),
    ],
)
def test_bad_hmm_env_value_names_the_key(key: str, raw: str) -> None:
    raises_naming(key, lambda: HmmConfig.from_keys({}, {key: raw}).as_keys())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("HMM_N_STATES", 1),
        ("HMM_N_STATES", 3.0),
        ("HMM_N_STATES", True),
        ("HMM_ENABLED", 1),
        ("HMM_BIAS_GAIN", False),
        ("HMM_BLEND_WITH_TREND", 2),
        ("HMM_COVARIANCE_TYPE", None),
        ("HMM_CONFIRM_BARS", 0),
        ("HMM_CONFIRM_BARS", 1001),
        ("HMM_CONFIRM_BARS", True),
        ("HMM_EVIDENCE_WEIGHT", 0),
        ("HMM_EVIDENCE_WEIGHT", -0.5),
        ("HMM_EVIDENCE_WEIGHT", "half"),
        ("HMM_EVIDENCE_WEIGHT", True),
        ("HMM_DEPTH_SCALING", 1),
    ],
)
def test_bad_hmm_file_value_names_the_key_in_its_section(key: str, value: Any) -> None:
    raises_naming(f"hmm.{key}", lambda: HmmConfig.from_keys({key: value}, {}).as_keys())


def test_unknown_hmm_file_key_is_named() -> None:
    raises_naming("hmm.HMM_N_STATE", lambda: HmmConfig.from_keys({"HMM_N_STATE": 3}, {}).as_keys())


def test_min_train_samples_cannot_exceed_training_candles() -> None:
    raises_naming(
        "HMM_MIN_TRAIN_SAMPLES",
        lambda: HmmConfig.from_keys({"HMM_TRAINING_CANDLES": 400}, {"HMM_MIN_TRAIN_SAMPLES": "500"}).as_keys(),
    )


def test_unrelated_environment_variables_are_ignored() -> None:
    assert HmmConfig.from_keys({}, {"HMM": "x", "hmm_enabled": "maybe", "PATH": "/bin"}) == HmmConfig()


def test_a_universe_entry_without_timeframe_takes_hmm_ohlcv_interval_min() -> None:
    from shared.domain.config import parse_strategy_config

    raw = {"universe": [{"exchange": "kraken", "symbol": "BTC/USD"}], "hmm": {"HMM_OHLCV_INTERVAL_MIN": 60}}
    assert parse_strategy_config(raw, {}).universe[0].key.timeframe == "1h"
    assert parse_strategy_config(raw, {"HMM_OHLCV_INTERVAL_MIN": "5"}).universe[0].key.timeframe == "5m"


def test_an_interval_with_no_timeframe_names_the_missing_key() -> None:
    from shared.domain.config import parse_strategy_config
    from shared.domain.errors import ConfigError

    raw = {"universe": [{"exchange": "kraken", "symbol": "BTC/USD"}], "hmm": {"HMM_OHLCV_INTERVAL_MIN": 7}}
    with pytest.raises(ConfigError, match=r"universe\[0\]\.timeframe"):
        parse_strategy_config(raw, {})


# --- unknown keys at every depth ----------------------------------------------------------------------------


def _dict_nodes(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every object of the config with its dotted path (list items as ``[i]``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, child in node.items():
            out += _dict_nodes(child, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            out += _dict_nodes(child, f"{path}[{i}]")
    return out


SHIPPED_NODES = _dict_nodes(SHIPPED)


@pytest.mark.parametrize("path", [p for p, _ in SHIPPED_NODES], ids=lambda p: p or "(root)")
def test_an_unknown_key_is_refused_in_every_object_of_the_config(path: str) -> None:
    raw = copy.deepcopy(SHIPPED)
    node = dict(_dict_nodes(raw))[path]
    node["zz_not_a_key"] = 1
    err = raises_naming(f"{path}.zz_not_a_key" if path else "zz_not_a_key", lambda: parse_strategy_config(raw, env={}))
    assert "unknown" in err.reason


@pytest.mark.parametrize(
    ("path", "typo", "meant"),
    [
        ("sizing", "per_trade_nav", "per_trade_nav_pct"),
        ("vol_regimes.defaults", "ratio_lowhigh", "ratio_low_high"),
        ("vol_regimes", "sizing_multiplier", "sizing_multipliers"),
        ("trend", "slow_ema", "slow_ema_bars"),
        ("idle_target", "TREND_IDLE_FLOR", "TREND_IDLE_FLOOR"),
        ("demo", "bars_per_second", "bars_per_sec"),
        ("hybrid", "base_weight", "base_weights"),
        ("hmm", "HMM_N_STATE", "HMM_N_STATES"),
        ("universe[0]", "timefame", "timeframe"),
    ],
)
def test_a_misspelt_key_is_refused_naming_the_nearest_valid_key(path: str, typo: str, meant: str) -> None:
    raw = copy.deepcopy(SHIPPED)
    dict(_dict_nodes(raw))[path][typo] = 1
    err = raises_naming(f"{path}.{typo}", lambda: parse_strategy_config(raw, env={}))
    assert f"did you mean {meant!r}" in err.reason


def test_keys_starting_with_underscore_are_comments_at_every_depth() -> None:
    raw = copy.deepcopy(SHIPPED)
    for _path, node in _dict_nodes(raw):
        node["_note"] = "why this value"
    assert parse_strategy_config(raw, env={}) == parse_strategy_config(SHIPPED, env={})


def test_a_tier_of_the_universes_own_may_have_multipliers_and_a_misspelt_one_may_not() -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["universe"][0]["tier"] = "SWING"
    raw["vol_regimes"]["sizing_multipliers"]["SWING"] = {"low": 1.0, "normal": 1.0, "high": 0.5, "crisis": 0.25}
    assert parse_strategy_config(raw, env={}).sizing_multipliers["SWING"]["crisis"] == 0.25
    raw["vol_regimes"]["sizing_multipliers"]["SWNG"] = {"low": 1.0}
    err = raises_naming("vol_regimes.sizing_multipliers.SWNG", lambda: parse_strategy_config(raw, env={}))
    assert "did you mean 'SWING'" in err.reason
