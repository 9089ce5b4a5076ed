"""The screener's decisions (seed 000 §3.2-3.3, seed 003 §2.3). Pure functions of plain values; no bus.

Per series it joins, by candle ``ts``, the vol regime event and (when the HMM
is enabled) the HMM event, then decides: tier x regime sizing, regime-aware
hybrid weights and score, the blended idle target and the grid bias. Waiting
for both events of a candle makes the decision a function of its inputs only,
never of which service happened to answer first, so replays and restarts give
the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.config import HYBRID_COMPONENTS, StrategyConfig, TrendConfig
from shared.contracts import (
    SCORE_COMPONENTS,
    GridBias,
    HmmRegimeEvent,
    ScoreEvent,
    ScreenerDecision,
    VolRegimeEvent,
    from_plain,
    to_plain,
)
from shared.hmm import Regime, RegimeState, compute_blended_idle_target, compute_grid_bias

NEUTRAL_GRID = GridBias("symmetric", 1.0, 1.0, None)
# Beyond this many candles waiting for their HMM event, decide without it rather than stall.
MAX_PENDING = 2000


def sizing_multiplier(cfg: StrategyConfig, tier: str, label: str) -> float:
    """``sizing_multipliers[tier][label]``; an unknown tier uses CORE's row; anything missing is 1.0."""
    table = cfg.sizing_multipliers
    row = table[tier] if tier in table else table.get("CORE", {})
    return float(row.get(label, 1.0))


def hybrid_weights(cfg: StrategyConfig, tier: str, label: str) -> dict[str, float]:
    """Base weights x the regime's modifiers, normalised to 1.

    The tier's own block decides for the regimes it names; for the others the
    ``default`` block does, so a tier block that only tunes ``crisis`` keeps the
    default carry cut in ``high``.
    """
    by_scope = cfg.hybrid_modifiers
    tier_block = by_scope.get(tier, {})
    mods = tier_block[label] if label in tier_block else by_scope.get("default", {}).get(label, {})
    raw = {c: cfg.base_weights[c] * mods.get(c, 1.0) for c in HYBRID_COMPONENTS}
    total = sum(raw.values())
    return {c: (w / total if total > 0 else 0.0) for c, w in raw.items()}


def hybrid_score(weights: Mapping[str, float], scores: Mapping[str, float]) -> float:
    return sum(weights[c] * scores[c] for c in HYBRID_COMPONENTS)


def effective_nav_pct(cfg: StrategyConfig, multiplier: float) -> tuple[float, bool]:
    """Base per-trade NAV fraction x multiplier, then the cap; returns (value, capped)."""
    value = cfg.per_trade_nav_pct * multiplier
    cap = cfg.max_per_trade_nav_pct
    if cap is not None and value > cap:
        return cap, True
    return value, False


@dataclass
class Trend:
    """EMA-spread trend score over closes: tanh(((EMA_fast - EMA_slow) / EMA_slow) / scale), in [-1, 1]."""

    fast: float | None = None
    slow: float | None = None
    bars: int = 0

    def update(self, close: float, cfg: TrendConfig) -> float:
        af = 2.0 / (cfg.fast_ema_bars + 1)
        aslow = 2.0 / (cfg.slow_ema_bars + 1)
        if self.fast is None or self.slow is None:
            self.fast = self.slow = close
        else:
            self.fast += af * (close - self.fast)
            self.slow += aslow * (close - self.slow)
        self.bars += 1
        return self.score(cfg)

    def score(self, cfg: TrendConfig) -> float:
        # Until the slow EMA has seen its span the spread is mostly start-up noise.
        if self.fast is None or self.slow is None or self.bars < cfg.slow_ema_bars:
            return 0.0
        return math.tanh(((self.fast - self.slow) / self.slow) / cfg.score_scale)


@dataclass
class SeriesScreen:
    """One series' screener state: the join buffer, trend EMAs, latest external scores."""

    trend: Trend = field(default_factory=Trend)
    last_decided_ts: int | None = None
    pending_vol: dict[int, VolRegimeEvent] = field(default_factory=dict)
    pending_hmm: dict[int, HmmRegimeEvent] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    score_ts: dict[str, int] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        return {
            "trend": [self.trend.fast, self.trend.slow, self.trend.bars],
            "last_decided_ts": self.last_decided_ts,
            "pending_vol": [to_plain(e) for e in self.pending_vol.values()],
            "pending_hmm": [to_plain(e) for e in self.pending_hmm.values()],
            "scores": self.scores,
            "score_ts": self.score_ts,
        }

    @classmethod
    def load(cls, raw: dict[str, Any]) -> SeriesScreen:
        fast, slow, bars = raw["trend"]
        vols = [from_plain(VolRegimeEvent, e) for e in raw["pending_vol"]]
        hmms = [from_plain(HmmRegimeEvent, e) for e in raw["pending_hmm"]]
        return cls(
            trend=Trend(fast, slow, bars),
            last_decided_ts=raw["last_decided_ts"],
            pending_vol={e.ts: e for e in vols},
            pending_hmm={e.ts: e for e in hmms},
            scores=dict(raw["scores"]),
            score_ts=dict(raw["score_ts"]),
        )


def _stale(state: SeriesScreen, ts: int) -> bool:
    return state.last_decided_ts is not None and ts <= state.last_decided_ts


def on_vol(state: SeriesScreen, event: VolRegimeEvent, cfg: StrategyConfig) -> list[ScreenerDecision]:
    if _stale(state, event.ts) or event.ts in state.pending_vol:
        return []
    state.pending_vol[event.ts] = event
    return _drain(state, cfg)


def on_hmm(state: SeriesScreen, event: HmmRegimeEvent, cfg: StrategyConfig) -> list[ScreenerDecision]:
    if _stale(state, event.ts) or event.ts in state.pending_hmm:
        return []
    state.pending_hmm[event.ts] = event
    return _drain(state, cfg)


def on_score(state: SeriesScreen, event: ScoreEvent) -> bool:
    """Remember the latest score of its component; False for one older than what we hold."""
    if event.ts < state.score_ts.get(event.component, -1):
        return False
    state.scores[event.component] = event.score
    state.score_ts[event.component] = event.ts
    return True


def _drain(state: SeriesScreen, cfg: StrategyConfig) -> list[ScreenerDecision]:
    """Decide every candle whose inputs are complete, oldest first."""
    hmm_on = bool(cfg.hmm["HMM_ENABLED"])
    out: list[ScreenerDecision] = []
    for ts in sorted(state.pending_vol):
        vol = state.pending_vol[ts]
        hmm = state.pending_hmm.get(ts)
        if hmm_on and hmm is None and len(state.pending_vol) <= MAX_PENDING:
            break
        out.append(decide(state, vol, hmm if hmm_on else None, cfg))
        state.last_decided_ts = ts
        del state.pending_vol[ts]
    last = state.last_decided_ts
    if last is not None:
        # HMM events for candles already decided (or never seen by vol) can no longer join.
        for ts in [t for t in state.pending_hmm if t <= last]:
            del state.pending_hmm[ts]
    return out


def _hmm_state(event: HmmRegimeEvent) -> RegimeState:
    return RegimeState(
        regime=Regime[event.regime],
        probabilities=event.probabilities,
        confidence=event.confidence,
        bias_signal=event.bias_signal,
        observation_count=event.observation_count,
    )


def decide(
    state: SeriesScreen, vol: VolRegimeEvent, hmm: HmmRegimeEvent | None, cfg: StrategyConfig
) -> ScreenerDecision:
    """One decision: every number in it is derived here from the events and the config."""
    key = vol.key
    tier = cfg.tier_of(key)
    trend_score = state.trend.update(vol.close, cfg.trend)
    multiplier = sizing_multiplier(cfg, tier, vol.label)
    nav, capped = effective_nav_pct(cfg, multiplier)
    weights = hybrid_weights(cfg, tier, vol.label)
    scores = {"trend": trend_score}
    defaulted: list[str] = []
    for comp in SCORE_COMPONENTS:
        if comp in state.scores:
            scores[comp] = state.scores[comp]
        else:
            scores[comp] = 0.0
            defaulted.append(comp)
    # With the HMM off the bot falls back to the trend alone (seed 003 §5), exactly as in shadow mode.
    blend = float(cfg.hmm["HMM_BLEND_WITH_TREND"]) if cfg.hmm["HMM_ENABLED"] else 1.0
    shadow = blend >= 1.0
    hmm_bias = hmm.bias_signal if hmm is not None and hmm.trained else 0.0
    idle = cfg.idle
    target = compute_blended_idle_target(
        trend_score=trend_score,
        hmm_bias=hmm_bias,
        blend_factor=blend,
        base_target=idle.base_target,
        sensitivity=idle.sensitivity,
        floor=idle.floor,
        ceiling=idle.ceiling,
    )
    # Shadow mode means the HMM changes nothing a bot acts on, grid spacing included.
    if hmm is None or not hmm.trained or shadow:
        grid = NEUTRAL_GRID
    else:
        grid = compute_grid_bias(_hmm_state(hmm), float(cfg.hmm["HMM_CONFIDENCE_THRESHOLD"]))
    return ScreenerDecision(
        exchange=key.exchange,
        symbol=key.symbol,
        timeframe=key.timeframe,
        ts=vol.ts,
        close=vol.close,
        tier=tier,
        vol_regime=vol.label,
        vol_short=vol.vol_short,
        vol_long=vol.vol_long,
        vol_ratio=vol.ratio,
        sizing_multiplier=multiplier,
        base_per_trade_nav_pct=cfg.per_trade_nav_pct,
        effective_per_trade_nav_pct=nav,
        capped=capped,
        weights=weights,
        scores=scores,
        defaulted=tuple(defaulted),
        hybrid_score=hybrid_score(weights, scores),
        trend_score=trend_score,
        hmm_regime=hmm.regime if hmm is not None else None,
        hmm_bias=hmm_bias,
        hmm_confidence=hmm.confidence if hmm is not None else 0.0,
        blend_factor=blend,
        dynamic_idle_target=target,
        grid_bias=grid,
    )
