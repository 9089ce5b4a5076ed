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
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.domain.config import StrategyConfig, TrendConfig
from shared.domain.contracts import (
    SCORE_COMPONENTS,
    GridBias,
    HmmRegimeEvent,
    ScoreEvent,
    ScreenerDecision,
    VolRegimeEvent,
)
from shared.domain.sizing import Regime, RegimeState, compute_blended_idle_target, compute_grid_bias
from shared.domain.subjects import timeframe_ms
from shared.domain.vocab import HYBRID_COMPONENTS

NEUTRAL_GRID = GridBias("symmetric", 1.0, 1.0, None)


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


SCORES_KEPT = 32  # per component and series: scores newer than the last decision, plus the one in force


@dataclass
class SeriesScreen:
    """One series' screener state: trend EMAs, scores by time, and the join buffer.

    The join buffer (events waiting for their other half, each with its stream
    sequence) is memory only: the consume loop keeps its position below the
    oldest of them (:meth:`low_water`), so after a crash they are read again
    from the stream instead of being written to KV with every batch.
    """

    trend: Trend = field(default_factory=Trend)
    last_decided_ts: int | None = None
    last_vol_ts: int | None = None  # newest vol event seen, ms
    last_hmm_ts: int | None = None  # newest HMM event seen, ms
    scores: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # component -> [(ts ms, score)]
    # ts -> (event, seq). OrderedDict, not dict: the join takes from the front, and a dict's first key is found
    # by stepping over every slot deleted before it (O(n) a look while vol runs thousands of candles ahead).
    pending_vol: OrderedDict[int, tuple[VolRegimeEvent, int]] = field(default_factory=OrderedDict)
    pending_hmm: OrderedDict[int, tuple[HmmRegimeEvent, int]] = field(default_factory=OrderedDict)

    def dump(self) -> dict[str, Any]:
        return {
            "trend": [self.trend.fast, self.trend.slow, self.trend.bars],
            "last_decided_ts": self.last_decided_ts,
            "last_vol_ts": self.last_vol_ts,
            "last_hmm_ts": self.last_hmm_ts,
            "scores": {c: [list(p) for p in pts] for c, pts in self.scores.items()},
        }

    @classmethod
    def load(cls, raw: dict[str, Any]) -> SeriesScreen:
        fast, slow, bars = raw["trend"]
        return cls(
            trend=Trend(fast, slow, bars),
            last_decided_ts=raw["last_decided_ts"],
            last_vol_ts=raw.get("last_vol_ts"),
            last_hmm_ts=raw.get("last_hmm_ts"),
            scores={c: [(int(t), float(v)) for t, v in pts] for c, pts in raw["scores"].items()},
        )

    def low_water(self) -> int | None:
        """The lowest stream sequence of an event still waiting in the join buffer.

        Each buffer holds its events in arrival (stream) order, so its first entry has its lowest sequence.
        """
        seqs = [next(iter(d.values()))[1] for d in (self.pending_vol, self.pending_hmm) if d]
        return min(seqs) if seqs else None

    def score_as_of(self, component: str, ts: int) -> float | None:
        """The newest score of ``component`` stamped at or before ``ts`` (ms), if any."""
        found = None
        for t, value in self.scores.get(component, ()):
            if t > ts:
                break
            found = value
        return found


def _stale(state: SeriesScreen, ts: int) -> bool:
    return state.last_decided_ts is not None and ts <= state.last_decided_ts


def on_vol(state: SeriesScreen, event: VolRegimeEvent, cfg: StrategyConfig, seq: int = 0) -> list[ScreenerDecision]:
    if _stale(state, event.ts) or event.ts in state.pending_vol:
        return []
    _queue(state.pending_vol, event, seq)
    state.last_vol_ts = max(event.ts, state.last_vol_ts or event.ts)
    return _drain(state, cfg)


def on_hmm(state: SeriesScreen, event: HmmRegimeEvent, cfg: StrategyConfig, seq: int = 0) -> list[ScreenerDecision]:
    if _stale(state, event.ts) or event.ts in state.pending_hmm:
        return []
    _queue(state.pending_hmm, event, seq)
    state.last_hmm_ts = max(event.ts, state.last_hmm_ts or event.ts)
    return _drain(state, cfg)


def _queue(pending: OrderedDict[int, tuple[Any, int]], event: Any, seq: int) -> None:
    """Keep a join buffer in ts order: events of one kind arrive in order, so this is an append."""
    late = bool(pending) and event.ts < next(reversed(pending))
    pending[event.ts] = (event, seq)
    if late:  # never from the services, which publish each series in order; kept correct all the same
        ordered = sorted(pending.items())
        pending.clear()
        pending.update(ordered)


def on_score(state: SeriesScreen, event: ScoreEvent) -> bool:
    """File a score under its ts (a second score with the same ts replaces the first); False if nothing changed."""
    points = state.scores.setdefault(event.component, [])
    entry = (event.ts, event.score)
    if entry in points:
        return False
    points[:] = sorted([p for p in points if p[0] != event.ts] + [entry])
    del points[:-SCORES_KEPT]
    return True


def _prune_scores(state: SeriesScreen, decided_close: int) -> None:
    """Scores superseded before the last decision can never be used again: keep the one in force and newer."""
    for points in state.scores.values():
        older = [i for i, (t, _) in enumerate(points) if t <= decided_close]
        if len(older) > 1:
            del points[: older[-1]]


def _drain(state: SeriesScreen, cfg: StrategyConfig) -> list[ScreenerDecision]:
    """Decide every candle whose inputs are complete, oldest first.

    With the HMM on, a candle is decided only with its HMM verdict. One whose
    missing half can no longer come (the other service has already reported a
    later candle: it skipped this one) is dropped, never decided without it.
    """
    hmm_on = cfg.hmm.enabled
    if not hmm_on:
        state.pending_hmm.clear()
    out: list[ScreenerDecision] = []
    while state.pending_vol or state.pending_hmm:
        # The oldest candle either buffer waits on: each is in ts order, so look at their heads only.
        ts = min(next(iter(d)) for d in (state.pending_vol, state.pending_hmm) if d)
        vol = state.pending_vol.get(ts)
        hmm = state.pending_hmm.get(ts) if hmm_on else None
        if vol is None or (hmm_on and hmm is None):
            lagging = state.last_vol_ts if vol is None else state.last_hmm_ts
            if lagging is None or lagging <= ts:
                break  # the missing half may still come
            state.pending_vol.pop(ts, None)
            state.pending_hmm.pop(ts, None)
            continue
        out.append(decide(state, vol[0], hmm[0] if hmm is not None else None, cfg))
        state.last_decided_ts = ts
        del state.pending_vol[ts]
        state.pending_hmm.pop(ts, None)
        _prune_scores(state, ts + timeframe_ms(vol[0].timeframe))
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
    # Scores join as of the candle's close: what a bot had published by the time the bar ended.
    close_ts = vol.ts + timeframe_ms(vol.timeframe)
    for comp in SCORE_COMPONENTS:
        value = state.score_as_of(comp, close_ts)
        if value is None:
            scores[comp] = 0.0
            defaulted.append(comp)
        else:
            scores[comp] = value
    # With the HMM off the bot falls back to the trend alone (seed 003 §5), exactly as in shadow mode.
    blend = cfg.hmm.blend_with_trend if cfg.hmm.enabled else 1.0
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
        grid = compute_grid_bias(_hmm_state(hmm), cfg.hmm.confidence_threshold)
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
        hmm_trained=hmm is not None and hmm.trained,
        hmm_probabilities=hmm.probabilities if hmm is not None else None,
    )
