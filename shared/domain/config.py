"""The strategy config (from JSON, with HMM_* environment overrides), loaded and validated once.

It is built in a service's ``main()`` and passed down; nothing here runs at
import time. A bad value raises :class:`ConfigError` naming the key and the
reason, and the service refuses to start.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.domain.errors import ConfigError, ContractError, check_known
from shared.domain.subjects import SeriesKey, check_exchange, encode_symbol
from shared.domain.vocab import HYBRID_COMPONENTS, TIERS, TIMEFRAMES_MS, VOL_LABELS
from shared.domain.vol import VolRegimeConfig

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "strategy_config.json"


# --- values from the environment or the file -----------------------------------


def env_bool(key: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"expected true/false, got {raw!r}")


def env_int(key: str, raw: str, lo: int, hi: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(key, f"expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(key, f"must be in [{lo}, {hi}], got {value}")
    return value


def positive_float(key: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected a number, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value}")
    return value


# --- HMM keys (seed 003 §7) -------------------------------------------------------


def _key(default: Any, parse: Callable[[str, Any], Any]) -> Any:
    """A field of :class:`HmmConfig`: its default and the parser that validates file and environment values."""
    return field(default=default, metadata={"parse": parse})


def _bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        return env_bool(key, v)
    raise ConfigError(key, f"expected true/false, got {v!r}")


def _int_in(lo: int, hi: int) -> Callable[[str, Any], int]:
    def parse(key: str, v: Any) -> int:
        if isinstance(v, str):
            return env_int(key, v, lo, hi)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(key, f"expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise ConfigError(key, f"must be in [{lo}, {hi}], got {v}")
        return v

    return parse


def _float_in(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str, Any], float]:
    def parse(key: str, v: Any) -> float:
        if isinstance(v, bool):
            raise ConfigError(key, f"expected a number, got {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {v!r}") from None
        if not (lo < x if lo_open else lo <= x) or not x <= hi:
            raise ConfigError(key, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {x}")
        return x

    return parse


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(key: str, v: Any) -> str:
        if v not in choices:
            raise ConfigError(key, f"expected one of {list(choices)}, got {v!r}")
        return str(v)

    return parse


_DAY = 86_400.0
COVARIANCE_TYPES: tuple[str, ...] = ("spherical", "diag", "full", "tied")


@dataclass(frozen=True, slots=True)
class HmmConfig:
    """The ``hmm`` block of the strategy config, typed: field ``x`` is the key ``HMM_X``.

    Each value comes from the seed's default, overridden by the config file,
    overridden by an environment variable of the key's name. Seed defaults,
    except ``inference_window``: 0 selects the exact forward filter (one O(K²)
    step per candle); the seed's 50 remains available as a setting.
    """

    enabled: bool = _key(False, _bool)
    ohlcv_enabled: bool = _key(True, _bool)
    ohlcv_interval_min: int = _key(1, _int_in(1, 1440))  # minutes: timeframe of universe entries that omit one
    ohlcv_sync_interval_sec: float = _key(60.0, _float_in(0.0, _DAY, lo_open=True))  # s between exchange syncs
    ohlcv_retention_days: int = _key(14, _int_in(1, 3650))  # days of candles the stream keeps
    ohlcv_backfill_on_startup: bool = _key(True, _bool)
    ohlcv_backfill_max_pages: int = _key(40, _int_in(1, 10_000))  # exchange pages per backfill run
    training_candles: int = _key(2000, _int_in(10, 1_000_000))  # bars: training uses the last this many
    recent_candles: int = _key(100, _int_in(1, 100_000))  # bars re-read to re-warm features with no snapshot
    readiness_cache_sec: float = _key(300.0, _float_in(0.0, _DAY))  # s the API caches its readiness verdict
    n_states: int = _key(3, _int_in(2, 8))
    n_iter: int = _key(100, _int_in(1, 10_000))  # Baum-Welch iterations at most
    covariance_type: str = _key("diag", _choice(*COVARIANCE_TYPES))
    inference_window: int = _key(0, _int_in(0, 100_000))  # observations (bars); 0 = filter over all history
    confidence_threshold: float = _key(0.15, _float_in(0.0, 1.0))  # fraction: below it the bias is 0
    retrain_interval_sec: float = _key(86_400.0, _float_in(0.0, 365 * _DAY, lo_open=True))  # s of candle time
    min_train_samples: int = _key(500, _int_in(10, 1_000_000))  # usable feature rows (bars after warm-up)
    bias_gain: float = _key(1.0, _float_in(0.0, 100.0))
    blend_with_trend: float = _key(0.5, _float_in(0.0, 1.0))  # 0 = pure HMM, 1 = pure trend (shadow mode)
    # bars: pseudo-counts added to every state's stay-put transition in EM (a Dirichlet prior), so a model
    # fitted on 2,000 bars does not switch state on every noisy stretch; 0 = plain maximum likelihood
    transition_stickiness: float = _key(30_000.0, _float_in(0.0, 1e7))
    # bars: a new regime is reported (and acted on) once the filter has put it on top this many bars in a row
    confirm_bars: int = _key(3, _int_in(1, 1000))
    # fraction 0.01-1: how much of each bar's log-likelihood the forward filter counts. The four features are
    # EMAs over 12-48 bars, so successive rows repeat most of their evidence; below 1 the filter needs that
    # much more of it before it switches (fewer flips, later changes). 1 = the plain filter. Below 0.01 it
    # would need a hundred times the evidence, hours of 1m bars for a change: a typo, not a setting.
    evidence_weight: float = _key(1.0, _float_in(0.01, 1.0))
    # scale confidence and bias by sqrt(min(1, model training candles / HMM_TRAINING_CANDLES))
    depth_scaling: bool = _key(True, _bool)

    def __post_init__(self) -> None:
        if self.min_train_samples > self.training_candles:
            raise ConfigError("HMM_MIN_TRAIN_SAMPLES", "must not exceed HMM_TRAINING_CANDLES")

    @staticmethod
    def key_of(name: str) -> str:
        """The config/environment key of a field: ``n_states`` -> ``HMM_N_STATES``."""
        return "HMM_" + name.upper()

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every HMM_* key, in the order of the fields."""
        return tuple(cls.key_of(f.name) for f in fields(cls))

    @classmethod
    def from_keys(cls, file_values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> HmmConfig:
        """Validate ``file_values`` (HMM_* keys of the file's ``hmm`` block), then apply ``env`` overrides."""
        env = {} if env is None else env
        known = cls.keys()
        check_known(file_values, "hmm", known)
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = cls.key_of(f.name)
            if key in env:
                kw[f.name] = f.metadata["parse"](key, env[key])
            elif key in file_values:
                kw[f.name] = f.metadata["parse"](f"hmm.{key}", file_values[key])
        return cls(**kw)

    def as_keys(self) -> dict[str, Any]:
        """``{"HMM_N_STATES": 3, ...}``: the seed's spelling, as ``/api/config`` shows it."""
        return {self.key_of(f.name): getattr(self, f.name) for f in fields(self)}


# --- strategy config -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """One series of the universe and its sizing tier."""

    key: SeriesKey
    tier: str
    aggregate: tuple[str, ...] = ()  # higher timeframes ingest builds from this series' candles ("15m", "1h")

    @property
    def aggregated(self) -> tuple[SeriesKey, ...]:
        """The series built from this one, one per timeframe of ``aggregate``."""
        return tuple(SeriesKey(self.key.exchange, self.key.symbol, tf) for tf in self.aggregate)


@dataclass(frozen=True, slots=True)
class TrendConfig:
    """The screener's EMA-spread trend score: tanh(spread / score_scale), spread a fraction of price."""

    fast_ema_bars: int = 12
    slow_ema_bars: int = 48
    score_scale: float = 0.004


@dataclass(frozen=True, slots=True)
class IdleTargetConfig:
    """Seed 003 §2.3 idle-target parameters, fractions of NAV held idle."""

    base_target: float = 0.40
    sensitivity: float = 0.20
    floor: float = 0.15
    ceiling: float = 0.65


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The demo market: seed, bars published at start-up, and live pace (bars per wall-clock second)."""

    seed: int = 7
    history_bars: int = 1200
    bars_per_sec: float = 4.0


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """The ``consensus`` block: a symbol's timeframes reduced to one verdict (shared.domain.consensus); off by default.

    ``weights`` per timeframe (a timeframe not named weighs 1); ``screener``:
    whether the screener decides each bar of a symbol's timeframes on their consensus as of the bar's close
    (the regime, bias and confidence in the blend and the grid bias) instead of the series' own verdict.
    """

    enabled: bool = False
    weights: Mapping[str, float] = field(default_factory=dict)
    screener: bool = False


@dataclass(frozen=True)
class StrategyConfig:
    """The whole strategy config, validated. ``vol_regimes_present`` is False when the block was absent."""

    universe: tuple[SeriesSpec, ...]
    vol: VolRegimeConfig
    vol_regimes_present: bool
    sizing_multipliers: Mapping[str, Mapping[str, float]]  # tier -> label -> multiplier (may be empty)
    hybrid_modifiers: Mapping[str, Mapping[str, Mapping[str, float]]]  # "default"/tier -> label -> component
    per_trade_nav_pct: float
    max_per_trade_nav_pct: float | None
    base_weights: Mapping[str, float]
    trend: TrendConfig
    idle: IdleTargetConfig
    hmm: HmmConfig
    demo: DemoConfig
    exchange_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)

    def tier_of(self, key: SeriesKey) -> str:
        """The universe entry's tier; CORE for a series outside the universe."""
        return self._tiers.get(key, "CORE")

    @functools.cached_property
    def _tiers(self) -> Mapping[SeriesKey, str]:
        # The first entry of a series wins, as the scan it replaces did; built once, read per decision.
        tiers: dict[SeriesKey, str] = {}
        for spec in self.universe:
            tiers.setdefault(spec.key, spec.tier)
        for spec in self.universe:  # a series built from an entry's candles sizes like the entry
            for key in spec.aggregated:
                tiers.setdefault(key, spec.tier)
        return tiers

    def timeframes_of(self, key: SeriesKey) -> tuple[str, ...]:
        """Every timeframe of ``key``'s universe entry, its own first, then those built from it (``aggregate``).

        Empty for a series outside the universe or of an entry that builds none: it has no other timeframe.
        """
        return self._families.get(key, ())

    @functools.cached_property
    def _families(self) -> Mapping[SeriesKey, tuple[str, ...]]:
        families: dict[SeriesKey, tuple[str, ...]] = {}
        for base, built in self.aggregates.items():
            family = (base.timeframe, *built)
            for tf in family:
                families.setdefault(SeriesKey(base.exchange, base.symbol, tf), family)
        return families

    @functools.cached_property
    def aggregates(self) -> Mapping[SeriesKey, tuple[str, ...]]:
        """The timeframes built from each universe series that names some (``aggregate``); the first entry wins."""
        built: dict[SeriesKey, tuple[str, ...]] = {}
        for spec in self.universe:
            if spec.aggregate:
                built.setdefault(spec.key, spec.aggregate)
        return built

    @property
    def series(self) -> tuple[SeriesKey, ...]:
        return tuple(s.key for s in self.universe)


def load_strategy_config(path: Path, env: Mapping[str, str] | None = None) -> StrategyConfig:
    """Read and validate the JSON strategy config; HMM_* keys may be overridden by the environment."""
    env = os.environ if env is None else env
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("STRATEGY_CONFIG", f"no such file: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("STRATEGY_CONFIG", f"{path} is not valid JSON: {exc}") from None
    return parse_strategy_config(raw, env)


def parse_strategy_config(raw: Any, env: Mapping[str, str] | None = None) -> StrategyConfig:
    env = {} if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("(root)", "the strategy config must be a JSON object")
    known = {
        "universe", "sizing", "hybrid", "trend", "idle_target", "vol_regimes", "hmm", "demo", "exchanges", "consensus",
    }
    check_known(raw, "", sorted(known))
    vol_present = "vol_regimes" in raw
    vol_block = _obj(raw, "vol_regimes")
    check_known(vol_block, "vol_regimes", ("defaults", "sizing_multipliers", "hybrid_weight_modifiers"))
    per_trade, cap = _sizing(raw)
    trend = _trend(raw)
    idle = _idle_target(raw)
    demo = _demo(raw)
    exchanges = _obj(raw, "exchanges")
    for ex_id, opts in exchanges.items():
        if not isinstance(opts, dict):
            raise ConfigError(f"exchanges.{ex_id}", "must be an object of ccxt options")
    hmm = HmmConfig.from_keys(_obj(raw, "hmm"), env)
    universe = _universe(raw.get("universe"), _interval_timeframe(hmm.ohlcv_interval_min))
    tiers = (*TIERS, *sorted({s.tier for s in universe} - set(TIERS)))  # the vocabulary's and the universe's own
    return StrategyConfig(
        universe=universe,
        vol=VolRegimeConfig.from_strategy_config(raw),
        vol_regimes_present=vol_present,
        sizing_multipliers=_sizing_multipliers(vol_block.get("sizing_multipliers", {}), tiers),
        hybrid_modifiers=_hybrid_modifiers(vol_block.get("hybrid_weight_modifiers", {}), tiers),
        per_trade_nav_pct=per_trade,
        max_per_trade_nav_pct=cap,
        base_weights=_base_weights(_hybrid_block(raw).get("base_weights")),
        trend=trend,
        idle=idle,
        hmm=hmm,
        demo=demo,
        exchange_options=exchanges,
        consensus=_consensus(_obj(raw, "consensus")),
    )


def _sizing(raw: Mapping[str, Any]) -> tuple[float, float | None]:
    """The ``sizing`` block: per-trade and optional maximum per-trade size, fractions of NAV."""
    sizing = _obj(raw, "sizing")
    check_known(sizing, "sizing", ("per_trade_nav_pct", "max_per_trade_nav_pct"))
    per_trade = _num(sizing, "sizing.per_trade_nav_pct", 0.02, 0.0, 1.0)
    cap = sizing.get("max_per_trade_nav_pct")
    if cap is not None:
        cap = _num(sizing, "sizing.max_per_trade_nav_pct", None, 0.0, 1.0)
    return per_trade, cap


def _trend(raw: Mapping[str, Any]) -> TrendConfig:
    trend_raw = _obj(raw, "trend")
    check_known(trend_raw, "trend", ("fast_ema_bars", "slow_ema_bars", "score_scale"))
    trend = TrendConfig(
        fast_ema_bars=_int(trend_raw, "trend.fast_ema_bars", 12, 1, 10_000),
        slow_ema_bars=_int(trend_raw, "trend.slow_ema_bars", 48, 2, 100_000),
        score_scale=_num(trend_raw, "trend.score_scale", 0.004, 0.0, 1.0, lo_open=True),
    )
    if trend.fast_ema_bars >= trend.slow_ema_bars:
        raise ConfigError("trend.fast_ema_bars", "must be smaller than trend.slow_ema_bars")
    return trend


def _idle_target(raw: Mapping[str, Any]) -> IdleTargetConfig:
    idle_raw = _obj(raw, "idle_target")
    idle_keys = ("REBALANCE_TARGET_IDLE_PCT", "TREND_IDLE_SENSITIVITY", "TREND_IDLE_FLOOR", "TREND_IDLE_CEILING")
    check_known(idle_raw, "idle_target", idle_keys)
    idle = IdleTargetConfig(
        base_target=_num(idle_raw, "idle_target.REBALANCE_TARGET_IDLE_PCT", 0.40, 0.0, 1.0),
        sensitivity=_num(idle_raw, "idle_target.TREND_IDLE_SENSITIVITY", 0.20, 0.0, 10.0),
        floor=_num(idle_raw, "idle_target.TREND_IDLE_FLOOR", 0.15, 0.0, 1.0),
        ceiling=_num(idle_raw, "idle_target.TREND_IDLE_CEILING", 0.65, 0.0, 1.0),
    )
    if idle.floor > idle.ceiling:
        raise ConfigError("idle_target.TREND_IDLE_FLOOR", "must not exceed TREND_IDLE_CEILING")
    return idle


def _demo(raw: Mapping[str, Any]) -> DemoConfig:
    demo_raw = _obj(raw, "demo")
    check_known(demo_raw, "demo", ("seed", "history_bars", "bars_per_sec"))
    return DemoConfig(
        seed=_int(demo_raw, "demo.seed", 7, 0, 2**31),
        history_bars=_int(demo_raw, "demo.history_bars", 1200, 0, 100_000),
        bars_per_sec=_num(demo_raw, "demo.bars_per_sec", 4.0, 0.0, 10_000.0, lo_open=True),
    )


def _consensus(block: Mapping[str, Any]) -> ConsensusConfig:
    check_known(block, "consensus", ("enabled", "weights", "screener"))
    weights = block.get("weights", {})
    if not isinstance(weights, dict):
        raise ConfigError("consensus.weights", 'must be an object of timeframe -> weight, e.g. {"1h": 2}')
    check_known(weights, "consensus.weights", tuple(TIMEFRAMES_MS))
    return ConsensusConfig(
        enabled=_bool("consensus.enabled", block.get("enabled", False)),
        weights={tf: _float_in(0.0, 100.0)(f"consensus.weights.{tf}", w) for tf, w in _entries(weights)},
        screener=_bool("consensus.screener", block.get("screener", False)),
    )


def _hybrid_block(raw: Mapping[str, Any]) -> dict[str, Any]:
    block = _obj(raw, "hybrid")
    check_known(block, "hybrid", ("base_weights",))
    return block


def _obj(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a JSON object")
    return value


def _num(
    raw: Mapping[str, Any], dotted: str, default: float | None, lo: float, hi: float, *, lo_open: bool = False
) -> float:
    leaf = dotted.rsplit(".", 1)[-1]
    if leaf not in raw:
        if default is None:
            raise ConfigError(dotted, "is required")
        return default
    return _float_in(lo, hi, lo_open=lo_open)(dotted, raw[leaf])


def _int(raw: Mapping[str, Any], dotted: str, default: int, lo: int, hi: int) -> int:
    leaf = dotted.rsplit(".", 1)[-1]
    return default if leaf not in raw else _int_in(lo, hi)(dotted, raw[leaf])


def _interval_timeframe(minutes: int) -> str | None:
    """HMM_OHLCV_INTERVAL_MIN as a timeframe token (60 -> "1h"), or None when no timeframe has that length."""
    for token, ms in TIMEFRAMES_MS.items():
        if ms == minutes * 60_000:
            return token
    return None


def _universe(raw: Any, default_tf: str | None) -> tuple[SeriesSpec, ...]:
    """The series; an entry without ``timeframe`` takes HMM_OHLCV_INTERVAL_MIN's (seed 003 §7)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("universe", "must be a non-empty list of {exchange, symbol, timeframe, tier}")
    out: list[SeriesSpec] = []
    seen: set[SeriesKey] = set()
    for i, item in enumerate(raw):
        where = f"universe[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, "must be an object")
        check_known(item, where, ("exchange", "symbol", "timeframe", "tier", "aggregate"))
        try:
            exchange = check_exchange(str(item.get("exchange", "")))
        except ContractError as exc:
            raise ConfigError(f"{where}.exchange", exc.reason) from None
        symbol = item.get("symbol")
        if not isinstance(symbol, str):
            raise ConfigError(f"{where}.symbol", "must be a string such as BTC/USD")
        try:
            encode_symbol(symbol)
        except ContractError as exc:
            raise ConfigError(f"{where}.symbol", exc.reason) from None
        tf = item.get("timeframe", default_tf)
        if "timeframe" not in item and default_tf is None:
            raise ConfigError(f"{where}.timeframe", "missing, and HMM_OHLCV_INTERVAL_MIN matches no timeframe")
        if not isinstance(tf, str) or tf not in TIMEFRAMES_MS:  # a list is unhashable: no dict lookup before
            raise ConfigError(f"{where}.timeframe", f"expected one of {list(TIMEFRAMES_MS)}, got {tf!r}")
        tier = item.get("tier", "CORE")
        if not isinstance(tier, str) or not tier:
            raise ConfigError(f"{where}.tier", "must be a tier name such as CORE")
        key = SeriesKey(exchange, symbol, tf)
        spec = SeriesSpec(key, tier, _aggregate(item.get("aggregate", []), tf, f"{where}.aggregate"))
        for k in (key, *spec.aggregated):
            if k in seen:
                raise ConfigError(where, f"duplicate series {k.id}")
            seen.add(k)
        out.append(spec)
    return tuple(out)


def _aggregate(raw: Any, base: str, where: str) -> tuple[str, ...]:
    """The timeframes to build from a ``base`` series: each longer than it and a whole number of its bars."""
    if not isinstance(raw, list) or not all(isinstance(tf, str) for tf in raw):
        raise ConfigError(where, 'must be a list of timeframes such as ["15m", "1h"]')
    for tf in raw:
        if tf not in TIMEFRAMES_MS:
            raise ConfigError(where, f"expected timeframes of {list(TIMEFRAMES_MS)}, got {tf!r}")
        if TIMEFRAMES_MS[tf] <= TIMEFRAMES_MS[base] or TIMEFRAMES_MS[tf] % TIMEFRAMES_MS[base]:
            raise ConfigError(where, f"{tf} is not a whole multiple (> 1) of the series' {base}")
    if len(set(raw)) != len(raw):
        raise ConfigError(where, f"lists a timeframe twice: {raw}")
    return tuple(sorted(raw, key=TIMEFRAMES_MS.__getitem__))


def _label_map(raw: Any, where: str, lo: float, hi: float) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be an object of regime -> number")
    check_known(raw, where, VOL_LABELS)
    return {label: _float_in(lo, hi)(f"{where}.{label}", value) for label, value in _entries(raw)}


def _sizing_multipliers(raw: Any, tiers: tuple[str, ...]) -> dict[str, dict[str, float]]:
    if not isinstance(raw, dict):
        raise ConfigError("vol_regimes.sizing_multipliers", "must be an object of tier -> regime -> multiplier")
    check_known(raw, "vol_regimes.sizing_multipliers", tiers)
    return {tier: _label_map(m, f"vol_regimes.sizing_multipliers.{tier}", 0.0, 10.0) for tier, m in _entries(raw)}


def _hybrid_modifiers(raw: Any, tiers: tuple[str, ...]) -> dict[str, dict[str, dict[str, float]]]:
    where = "vol_regimes.hybrid_weight_modifiers"
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be an object of default/tier -> regime -> component -> multiplier")
    check_known(raw, where, ("default", *tiers))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scope, per_label in _entries(raw):
        if not isinstance(per_label, dict):
            raise ConfigError(f"{where}.{scope}", "must be an object of regime -> modifiers")
        check_known(per_label, f"{where}.{scope}", VOL_LABELS)
        out[scope] = {}
        for label, mods in _entries(per_label):
            if not isinstance(mods, dict):
                raise ConfigError(f"{where}.{scope}.{label}", "must be an object of component -> multiplier")
            check_known(mods, f"{where}.{scope}.{label}", HYBRID_COMPONENTS)
            out[scope][label] = {
                comp: _float_in(0.0, 10.0)(f"{where}.{scope}.{label}.{comp}", v) for comp, v in _entries(mods)
            }
    return out


def _entries(block: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A block's items without its ``_`` comment keys."""
    return [(k, v) for k, v in block.items() if not k.startswith("_")]


def _base_weights(raw: Any) -> dict[str, float]:
    defaults = {"trend": 0.40, "carry": 0.25, "expectancy": 0.20, "router": 0.15}
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise ConfigError("hybrid.base_weights", "must be an object of component -> weight")
    check_known(raw, "hybrid.base_weights", HYBRID_COMPONENTS)
    out: dict[str, float] = {
        c: _float_in(0.0, 1.0)(f"hybrid.base_weights.{c}", raw.get(c, defaults[c])) for c in HYBRID_COMPONENTS
    }
    if sum(out.values()) <= 0:
        raise ConfigError("hybrid.base_weights", "weights must not all be zero")
    return out
