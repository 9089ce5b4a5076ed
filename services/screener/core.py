"""The screener's decisions (seed 000 §3.2-3.3, seed 003 §2.3). Pure functions of plain values; no bus.

Per series it joins, by candle ``ts``, the vol regime event and (when the HMM
is enabled) the HMM event, then decides: tier x regime sizing, regime-aware
hybrid weights and score, the blended idle target and the grid bias. Waiting
for both events of a candle makes the decision a function of its inputs only,
never of which service happened to answer first, so replays and restarts give
the same decisions.

With ``consensus.screener`` a bar of a symbol's timeframe also waits for the
HMM verdict of each of the symbol's other timeframes as of the bar's close:
timeframe T's bar that opened at ``close // T * T - T``, the last one closed
by then (see :func:`peer_verdicts`). The decision's HMM inputs are then the
consensus of those verdicts (:func:`decision_consensus`).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.domain.config import StrategyConfig, TrendConfig
from shared.domain.consensus import TimeframeVerdict, consensus
from shared.domain.contracts import (
    HMM_LABELS,
    SCORE_COMPONENTS,
    DecisionConsensus,
    GridBias,
    HmmRegimeEvent,
    ScoreEvent,
    ScreenerDecision,
    VolRegimeEvent,
)
from shared.domain.sizing import Regime, RegimeState, compute_blended_idle_target, compute_grid_bias
from shared.domain.stored import finite_float, optional_int, stored_int
from shared.domain.subjects import SeriesKey, bar_close, timeframe_ms
from shared.domain.vocab import HYBRID_COMPONENTS, TIMEFRAMES_MS, HmmLabel

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

PeerVerdict = tuple[HmmLabel, float, float, bool]  # another timeframe's HMM (regime, bias, confidence, trained)
PeerPoint = tuple[int, PeerVerdict]  # (open time of its bar, ms; the verdict)


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
    scores: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # component -> [(ts ms, score)]
    # ts -> (event, seq). OrderedDict, not dict: the join takes from the front, and a dict's first key is found
    # by stepping over every slot deleted before it (O(n) a look while vol runs thousands of candles ahead).
    pending_vol: OrderedDict[int, tuple[VolRegimeEvent, int]] = field(default_factory=OrderedDict)
    pending_hmm: OrderedDict[int, tuple[HmmRegimeEvent, int]] = field(default_factory=OrderedDict)
    # The consensus join (``consensus.screener``), persisted: the verdicts of the symbol's other timeframes not yet
    # superseded for this series' next bar, in ts order, and the newest ts seen of each; the newest bar of this
    # series decided or dropped (ms), which tells a gap in the candles from a verdict still to come.
    peers: dict[str, list[PeerPoint]] = field(default_factory=dict)
    peer_seen: dict[str, int] = field(default_factory=dict)
    last_bar_ts: int | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "trend": [self.trend.fast, self.trend.slow, self.trend.bars],
            "last_decided_ts": self.last_decided_ts,
            "scores": {c: [list(p) for p in pts] for c, pts in self.scores.items()},
            "peers": {tf: [[t, *v] for t, v in pts] for tf, pts in self.peers.items()},
            "peer_seen": self.peer_seen,
            "last_bar_ts": self.last_bar_ts,
        }

    @classmethod
    def load(cls, raw: dict[str, Any]) -> SeriesScreen:
        """ValueError (or KeyError, TypeError) when a part is missing or of the wrong type."""
        fast, slow, bars = raw["trend"]
        trend = Trend(_optional_real(fast, "trend.fast"), _optional_real(slow, "trend.slow"), stored_int(bars, "trend"))
        last_decided = optional_int(raw["last_decided_ts"], "last_decided_ts")
        return cls(
            trend=trend,
            last_decided_ts=last_decided,
            scores={
                c: [(stored_int(t, "score ts"), finite_float(v, "score")) for t, v in pts]
                for c, pts in raw["scores"].items()
            },
            peers={_timeframe(tf): [_peer_point(p) for p in pts] for tf, pts in raw.get("peers", {}).items()},
            peer_seen={_timeframe(tf): stored_int(t, "peer_seen") for tf, t in raw.get("peer_seen", {}).items()},
            # a state from before it: the last decided
            last_bar_ts=optional_int(raw.get("last_bar_ts", last_decided), "last_bar_ts"),
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


def _peer_point(raw: list[Any]) -> PeerPoint:
    t, regime, bias, confidence, trained = raw
    if regime not in HMM_LABELS or not isinstance(trained, bool):
        raise ValueError(f"stored peer verdict {raw!r} is malformed")
    verdict = (regime, finite_float(bias, "peer bias"), finite_float(confidence, "peer confidence"), trained)
    return stored_int(t, "peer ts"), verdict


def _optional_real(x: Any, name: str) -> float | None:
    return None if x is None else finite_float(x, name)


def _timeframe(tf: Any) -> str:
    if tf not in TIMEFRAMES_MS:
        raise ValueError(f"stored timeframe {tf!r} is not one of {list(TIMEFRAMES_MS)}")
    return str(tf)


def _stale(state: SeriesScreen, ts: int) -> bool:
    """Whether the candle ``ts`` (ms) was decided or dropped already (an event read again after a restart)."""
    return state.last_bar_ts is not None and ts <= state.last_bar_ts


def on_vol(state: SeriesScreen, event: VolRegimeEvent, cfg: StrategyConfig, seq: int = 0) -> list[ScreenerDecision]:
    if _stale(state, event.ts) or event.ts in state.pending_vol:
        return []
    _queue(state.pending_vol, event, seq)
    return _drain(state, cfg)


def on_hmm(state: SeriesScreen, event: HmmRegimeEvent, cfg: StrategyConfig, seq: int = 0) -> list[ScreenerDecision]:
    if _stale(state, event.ts) or event.ts in state.pending_hmm:
        return []
    _queue(state.pending_hmm, event, seq)
    return _drain(state, cfg)


def siblings(cfg: StrategyConfig, key: SeriesKey) -> tuple[SeriesKey, ...]:
    """The series whose decisions join ``key``'s HMM verdicts (:func:`on_peer`): its symbol's other timeframes,
    with ``consensus.screener`` and the HMM on; none otherwise."""
    if not (cfg.consensus.screener and cfg.hmm.enabled):
        return ()
    return tuple(SeriesKey(key.exchange, key.symbol, tf) for tf in cfg.timeframes_of(key) if tf != key.timeframe)


def on_peer(state: SeriesScreen, event: HmmRegimeEvent, cfg: StrategyConfig) -> list[ScreenerDecision]:
    """File the HMM verdict of another timeframe of this series' symbol; decide the bars it completes.

    A verdict not newer than the newest of its timeframe seen is a replay, and changes nothing.
    """
    tf = event.timeframe
    seen = state.peer_seen.get(tf)
    if seen is not None and event.ts <= seen:
        return []
    verdict: PeerVerdict = (event.regime, event.bias_signal, event.confidence, event.trained)
    state.peers.setdefault(tf, []).append((event.ts, verdict))
    state.peer_seen[tf] = event.ts
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
            # The missing half's kind has come for a later candle: events of a kind come in order, so not for
            # this one. Only what the buffers hold is asked, never a newest-seen mark kept in the state: after a
            # restart the buffers are read again from the stream, and such a mark would be ahead of them.
            missing = state.pending_vol if vol is None else state.pending_hmm
            if not missing or next(reversed(missing)) <= ts:
                break  # the missing half may still come
            state.pending_vol.pop(ts, None)
            state.pending_hmm.pop(ts, None)
            state.last_bar_ts = ts
            continue
        verdict = hmm[0] if hmm is not None else None
        family = cfg.timeframes_of(vol[0].key) if verdict is not None and cfg.consensus.screener else ()
        peers = peer_verdicts(state, vol[0].timeframe, ts, family)
        if peers is None:
            break  # another timeframe's verdict as of this bar may still come
        agreed = decision_consensus(verdict, peers, cfg.consensus.weights) if verdict is not None and family else None
        out.append(decide(state, vol[0], verdict, cfg, agreed))
        state.last_decided_ts = state.last_bar_ts = ts
        del state.pending_vol[ts]
        state.pending_hmm.pop(ts, None)
        close = bar_close(ts, vol[0].timeframe)
        _prune_scores(state, close)
        _prune_peers(state, close)
    return out


def last_closed(close: int, timeframe: str) -> int:
    """Open time (ms) of ``timeframe``'s last bar closed at or before ``close`` (ms): bars open on multiples of it."""
    t_ms = timeframe_ms(timeframe)
    return close // t_ms * t_ms - t_ms


def peer_verdicts(
    state: SeriesScreen, timeframe: str, ts: int, family: tuple[str, ...]
) -> dict[str, PeerPoint | None] | None:
    """The verdict of each other timeframe of ``family`` as of the close of this series' bar ``ts`` (ms); None
    while one may still come.

    Timeframe T counts its newest verdict for a bar that opened at or before :func:`last_closed`, once its
    verdicts have reached that bar: they come in bar order, so none older can follow. That depends on the
    verdicts only, never on when they came. A T with no bar in that bucket at all (this series, built from the
    same candles, had none there: a gap in the base candles) is absent (None), whether T's later bars came
    already or not (asked first, so the answer cannot depend on which came first); without such a bar in the
    stack's history it has no verdict to count, and is absent too.
    """
    out: dict[str, PeerPoint | None] = {}
    own_ms = timeframe_ms(timeframe)
    for tf in family:
        if tf == timeframe:
            continue
        start = last_closed(ts + own_ms, tf)
        if _bucket_empty(state, ts, own_ms, tf, start):
            out[tf] = None
            continue
        seen = state.peer_seen.get(tf)
        if seen is None or seen < start:
            return None
        points = state.peers.get(tf, [])
        i = bisect.bisect_right(points, start, key=lambda p: p[0])
        out[tf] = points[i - 1] if i else None
    return out


def _bucket_empty(state: SeriesScreen, ts: int, own_ms: int, timeframe: str, start: int) -> bool:
    """Whether ``timeframe``'s bucket opening at ``start`` (ms) holds no candle, as this series' own bars show.

    Only a coarser timeframe that this one divides, and a bar of this series after the bucket, can tell: the bucket
    then holds a candle only if this series had a bar in it, and its newest bar before ``ts`` is the last one.
    """
    t_ms = timeframe_ms(timeframe)
    if t_ms <= own_ms or t_ms % own_ms or ts < start + t_ms:
        return False
    return state.last_bar_ts is None or state.last_bar_ts < start


def _prune_peers(state: SeriesScreen, decided_close: int) -> None:
    """Verdicts superseded for every later bar: keep each timeframe's one in force as of the last close, and newer."""
    for tf, points in state.peers.items():
        i = bisect.bisect_right(points, last_closed(decided_close, tf), key=lambda p: p[0])
        if i > 1:
            del points[: i - 1]


def decision_consensus(
    own: HmmRegimeEvent, peers: Mapping[str, PeerPoint | None], weights: Mapping[str, float]
) -> DecisionConsensus:
    """The consensus of this bar's own verdict and the other timeframes' (shared.domain.consensus).

    Its confidence is the agreement x the voting timeframes' weight-averaged confidence: a split vote, or
    unsure models, hold the grid bias back as one unsure model does (``HMM_CONFIDENCE_THRESHOLD``).
    """
    verdicts = {own.timeframe: TimeframeVerdict(own.regime, own.bias_signal, own.trained)}
    confidence, as_of = {own.timeframe: own.confidence}, {own.timeframe: own.ts}
    for tf, point in peers.items():
        if point is not None:
            t, (regime, bias, conf, trained) = point
            verdicts[tf], confidence[tf], as_of[tf] = TimeframeVerdict(regime, bias, trained), conf, t
    c = consensus(verdicts, weights)
    total = sum(weights.get(tf, 1.0) for tf in c.voting)
    mean = sum(weights.get(tf, 1.0) * confidence[tf] for tf in c.voting) / total if total > 0 else 0.0
    return DecisionConsensus(
        regime=c.regime,
        agreement=c.agreement,
        bias=c.bias,
        confidence=min(1.0, max(0.0, c.agreement * mean)),
        voting=c.voting,
        dissenting=c.dissenting,
        untrained=c.untrained,
        absent=tuple(sorted((tf for tf, p in peers.items() if p is None), key=TIMEFRAMES_MS.__getitem__)),
        as_of={tf: as_of[tf] for tf in sorted(as_of, key=TIMEFRAMES_MS.__getitem__)},
    )


def _hmm_state(event: HmmRegimeEvent) -> RegimeState:
    return RegimeState(
        regime=Regime[event.regime],
        probabilities=event.probabilities,
        confidence=event.confidence,
        bias_signal=event.bias_signal,
        observation_count=event.observation_count,
    )


def _hmm_inputs(
    hmm: HmmRegimeEvent | None, agreed: DecisionConsensus | None, cfg: StrategyConfig, shadow: bool
) -> tuple[float, GridBias]:
    """The HMM's bias in the blend and its grid advice: from the consensus when one is given, else the verdict."""
    if agreed is not None and hmm is not None:
        if not agreed.voting:
            return 0.0, NEUTRAL_GRID
        state = RegimeState(
            Regime[agreed.regime], hmm.probabilities, agreed.confidence, agreed.bias, hmm.observation_count
        )
        # Shadow mode means the HMM changes nothing a bot acts on, grid spacing included.
        return agreed.bias, NEUTRAL_GRID if shadow else compute_grid_bias(state, cfg.hmm.confidence_threshold)
    if hmm is None or not hmm.trained:
        return 0.0, NEUTRAL_GRID
    return hmm.bias_signal, NEUTRAL_GRID if shadow else compute_grid_bias(_hmm_state(hmm), cfg.hmm.confidence_threshold)


def _joined_scores(
    state: SeriesScreen, vol: VolRegimeEvent, trend_score: float
) -> tuple[dict[str, float], list[str]]:
    """The hybrid's inputs, trend first, and the components that had no score yet (so count as 0.0)."""
    scores = {"trend": trend_score}
    defaulted: list[str] = []
    # Scores join as of the candle's close: what a bot had published by the time the bar ended.
    close_ts = bar_close(vol.ts, vol.timeframe)
    for comp in SCORE_COMPONENTS:
        value = state.score_as_of(comp, close_ts)
        if value is None:
            scores[comp] = 0.0
            defaulted.append(comp)
        else:
            scores[comp] = value
    return scores, defaulted


def _idle_target(cfg: StrategyConfig, trend_score: float, hmm_bias: float, blend: float) -> float:
    """The dynamic idle target (fraction of capital) from the blended trend and HMM bias, bounded by ``cfg.idle``."""
    idle = cfg.idle
    return compute_blended_idle_target(
        trend_score=trend_score,
        hmm_bias=hmm_bias,
        blend_factor=blend,
        base_target=idle.base_target,
        sensitivity=idle.sensitivity,
        floor=idle.floor,
        ceiling=idle.ceiling,
    )


def decide(
    state: SeriesScreen,
    vol: VolRegimeEvent,
    hmm: HmmRegimeEvent | None,
    cfg: StrategyConfig,
    agreed: DecisionConsensus | None = None,
) -> ScreenerDecision:
    """One decision: every number in it is derived here from the events and the config (and ``agreed``, the
    symbol's consensus as of the bar, with ``consensus.screener``)."""
    key = vol.key
    tier = cfg.tier_of(key)
    trend_score = state.trend.update(vol.close, cfg.trend)
    multiplier = sizing_multiplier(cfg, tier, vol.label)
    nav, capped = effective_nav_pct(cfg, multiplier)
    weights = hybrid_weights(cfg, tier, vol.label)
    scores, defaulted = _joined_scores(state, vol, trend_score)
    # With the HMM off the bot falls back to the trend alone (seed 003 §5), exactly as in shadow mode.
    blend = cfg.hmm.blend_with_trend if cfg.hmm.enabled else 1.0
    hmm_bias, grid = _hmm_inputs(hmm, agreed, cfg, shadow=blend >= 1.0)
    target = _idle_target(cfg, trend_score, hmm_bias, blend)
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
        consensus=agreed,
    )
