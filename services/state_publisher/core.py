"""Snapshots the API serves, built from the events the compute services publish. Pure; no Redis.

The publisher re-uses the values it receives and never recomputes a regime
(seed 000 §4.1). Every ``apply_*`` is idempotent: an event not newer than the
part of the snapshot it feeds changes nothing, so a redelivered batch is harmless.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.domain.contracts import (
    HMM_LABELS,
    VOL_LABELS,
    HmmRegimeEvent,
    PipelineStatus,
    ScreenerDecision,
    VolRegimeEvent,
    to_plain,
)
from shared.domain.subjects import SeriesKey

HISTORY_POINTS = 1440  # per series, for the symbol view: one day of 1m bars
TRANSITIONS_KEPT = 200  # per series
DAY_MS = 86_400_000


def new_snapshot(key: SeriesKey, tier: str) -> dict[str, Any]:
    """A series the publisher has heard of but has no verdicts for: every field present, null."""
    return {
        "series": key.id,
        "exchange": key.exchange,
        "symbol": key.symbol,
        "timeframe": key.timeframe,
        "tier": tier,
        "price": None,  # {"close", "ts"}
        "vol_regime": None,
        "vol": None,  # {"short", "long", "ratio", "samples", "sufficient", "ts", "since_ts", "raw_label", ...}
        "hmm_regime": None,  # seed 003 §2.6 block, plus the raw verdict and the training depth
        "screener": None,
        "hmm_data_pipeline": None,
        "hmm_tuning": None,
        "vol_tuning": None,
        "updated_at": None,
    }


@dataclass
class Update:
    """What applying one event changed: transitions and a history point to append."""

    transitions: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)

    def merge(self, other: Update) -> None:
        self.transitions.extend(other.transitions)
        self.history.extend(other.history)
        self.kinds |= other.kinds


def _ts(part: Mapping[str, Any] | None) -> int:
    return -1 if not part else int(part.get("ts", -1))


def apply_vol(snap: dict[str, Any], ev: VolRegimeEvent, now: int) -> Update | None:
    prev = snap["vol"]
    if ev.ts <= _ts(prev):
        return None
    up = Update(kinds={"vol"})
    since = prev["since_ts"] if prev and snap["vol_regime"] == ev.label else ev.ts
    snap["vol_regime"] = ev.label
    snap["vol"] = {
        "short": ev.vol_short,
        "long": ev.vol_long,
        "ratio": ev.ratio,
        "samples": ev.samples,
        "sufficient": ev.sufficient,
        "ts": ev.ts,
        "since_ts": since,
        "raw_label": ev.raw_label,
        "pending_label": ev.pending_label,
    }
    snap["price"] = {"close": ev.close, "ts": ev.ts}
    snap["updated_at"] = now
    if ev.changed and ev.prev_label is not None:
        up.transitions.append(
            {"kind": "vol", "ts": ev.ts, "from": ev.prev_label, "to": ev.label, "ratio": ev.ratio, "close": ev.close}
        )
    return up


def apply_hmm(snap: dict[str, Any], ev: HmmRegimeEvent, blend_factor: float, now: int) -> Update | None:
    prev = snap["hmm_regime"]
    if ev.ts <= _ts(prev):
        return None
    up = Update(kinds={"hmm"})
    bear, rng, bull = ev.probabilities
    snap["hmm_regime"] = {
        "regime": ev.regime,
        "confidence": ev.confidence,
        "bias_signal": ev.bias_signal,
        "probabilities": {"bearish": bear, "ranging": rng, "bullish": bull},
        "trained": ev.trained,
        "observation_count": ev.observation_count,
        "blend_factor": blend_factor,
        "trained_at": ev.trained_at,
        "ts": ev.ts,
        "since_ts": prev["since_ts"] if prev and prev["regime"] == ev.regime else ev.ts,
        "raw_regime": ev.raw_regime,
        "raw_confidence": ev.raw_confidence,
        "depth_tier": ev.depth_tier,
        "training_candles": ev.training_candles,
        "label_agreement": ev.label_agreement,
    }
    snap["updated_at"] = now
    if prev is not None and prev["regime"] != ev.regime and ev.trained:
        up.transitions.append(
            {"kind": "hmm", "ts": ev.ts, "from": prev["regime"], "to": ev.regime, "confidence": ev.confidence}
        )
    return up


def apply_decision(snap: dict[str, Any], d: ScreenerDecision, now: int) -> Update | None:
    prev = snap["screener"]
    if d.ts <= _ts(prev):
        return None
    snap["screener"] = _screener_block(d)
    snap["tier"] = d.tier
    snap["updated_at"] = now
    snap["vol_tuning"] = RegimeStats.load(snap["vol_tuning"], VOL_LABELS).add(d.ts, d.vol_regime, d.close).dump()
    # The HMM verdict of this bar counts only once a model is trained: before that, RANGING is just the neutral default.
    # It comes from the decision itself, never from the snapshot, which the HMM service may have moved past already.
    trained = d.hmm_regime is not None and d.hmm_trained and d.hmm_probabilities is not None
    if trained:
        snap["hmm_tuning"] = RegimeStats.load(snap["hmm_tuning"], HMM_LABELS).add(d.ts, d.hmm_regime, d.close).dump()
    point = {
        "ts": d.ts,
        "close": d.close,
        "vol": d.vol_regime,
        "ratio": d.vol_ratio,
        "hmm": d.hmm_regime if trained else None,
        "p": list(d.hmm_probabilities) if trained and d.hmm_probabilities is not None else None,
        "nav": d.effective_per_trade_nav_pct,
        "idle": d.dynamic_idle_target,
        "score": d.hybrid_score,
    }
    return Update(history=[point], kinds={"screener"})


_SCREENER_SCALARS = (
    "ts",
    "tier",
    "sizing_multiplier",
    "base_per_trade_nav_pct",
    "effective_per_trade_nav_pct",
    "capped",
)
_SCREENER_SIGNALS = ("hybrid_score", "trend_score", "hmm_bias", "hmm_confidence", "blend_factor", "dynamic_idle_target")


def _screener_block(d: ScreenerDecision) -> dict[str, Any]:
    """The decision's part of the snapshot, in the API's field order (built per decision: no generic walk)."""
    g = d.grid_bias
    return {
        **{k: getattr(d, k) for k in _SCREENER_SCALARS},
        "weights": dict(d.weights),
        "scores": dict(d.scores),
        "defaulted": list(d.defaulted),
        **{k: getattr(d, k) for k in _SCREENER_SIGNALS},
        "grid_bias": {
            "mode": g.mode,
            "entry_spacing_mult_a": g.entry_spacing_mult_a,
            "entry_spacing_mult_b": g.entry_spacing_mult_b,
            "size_skew_override": g.size_skew_override,
        },
    }


def apply_pipeline(snap: dict[str, Any], p: PipelineStatus, now: int) -> Update | None:
    prev = snap["hmm_data_pipeline"]
    if prev is not None and p.reported_at <= prev.get("reported_at", -1):
        return None
    plain = to_plain(p)
    snap["hmm_data_pipeline"] = {k: v for k, v in plain.items() if k not in ("kind", "v", "exchange", "symbol")}
    snap["updated_at"] = now
    return Update(kinds={"pipeline"})


@dataclass
class RegimeStats:
    """Tuning metrics of one labelling (seed 003 §4): flips, dwell times, mean forward return per regime.

    Accumulated one decision at a time; the forward return of a bar is
    log(close_next / close), credited to the regime the bar was in.
    """

    labels: tuple[str, ...]
    first_ts: int | None = None
    last_ts: int | None = None
    last_close: float | None = None
    current: str | None = None
    run_start: int | None = None  # ts the current run began, ms
    flips: int = 0
    bars: dict[str, int] = field(default_factory=dict)
    dwell_ms: dict[str, int] = field(default_factory=dict)  # completed runs only
    runs: dict[str, int] = field(default_factory=dict)
    fwd_sum: dict[str, float] = field(default_factory=dict)
    fwd_n: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, raw: Mapping[str, Any] | None, labels: Iterable[str]) -> RegimeStats:
        labels = tuple(labels)
        if not raw:
            return cls(labels)
        acc = raw["_acc"]
        return cls(labels, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in acc.items()})

    def add(self, ts: int, label: str, close: float) -> RegimeStats:
        if self.last_ts is not None and ts <= self.last_ts:
            return self
        if self.current is not None and self.last_close and close > 0:
            r = math.log(close / self.last_close)
            self.fwd_sum[self.current] = self.fwd_sum.get(self.current, 0.0) + r
            self.fwd_n[self.current] = self.fwd_n.get(self.current, 0) + 1
        if self.current != label:
            if self.current is not None and self.run_start is not None:
                self.flips += 1
                self.dwell_ms[self.current] = self.dwell_ms.get(self.current, 0) + (ts - self.run_start)
                self.runs[self.current] = self.runs.get(self.current, 0) + 1
            self.current = label
            self.run_start = ts
        self.bars[label] = self.bars.get(label, 0) + 1
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts
        self.last_close = close
        return self

    def dump(self) -> dict[str, Any]:
        span_days = ((self.last_ts or 0) - (self.first_ts or 0)) / DAY_MS
        return {
            "flips": self.flips,
            "flips_per_day": (self.flips / span_days) if span_days > 0 else None,
            "span_days": span_days,
            "current": self.current,
            "current_since_ts": self.run_start,
            "bars": {lb: self.bars.get(lb, 0) for lb in self.labels},
            "mean_dwell_min": {
                lb: (self.dwell_ms[lb] / self.runs[lb] / 60_000 if self.runs.get(lb) else None) for lb in self.labels
            },
            "mean_forward_return": {
                lb: (self.fwd_sum[lb] / self.fwd_n[lb] if self.fwd_n.get(lb) else None) for lb in self.labels
            },
            "_acc": {
                "first_ts": self.first_ts,
                "last_ts": self.last_ts,
                "last_close": self.last_close,
                "current": self.current,
                "run_start": self.run_start,
                "flips": self.flips,
                "bars": self.bars,
                "dwell_ms": self.dwell_ms,
                "runs": self.runs,
                "fwd_sum": self.fwd_sum,
                "fwd_n": self.fwd_n,
            },
        }


def summarize(snapshots: Iterable[Mapping[str, Any]], now: int) -> dict[str, Any]:
    """``vol_regime_summary`` (seed 000 §4.1) and its HMM twin: symbols per regime."""
    vol = dict.fromkeys(VOL_LABELS, 0)
    hmm = dict.fromkeys(HMM_LABELS, 0)
    vol_sum: dict[str, float] = dict.fromkeys(VOL_LABELS, 0.0)
    total = 0
    untrained = 0
    for snap in snapshots:
        total += 1
        label = snap.get("vol_regime")
        if label in vol:
            vol[label] += 1
            vol_sum[label] += (snap.get("vol") or {}).get("short", 0.0)
        h = snap.get("hmm_regime")
        if h:
            if h.get("trained"):
                hmm[h["regime"]] += 1
            else:
                untrained += 1
    return {
        "symbols": total,
        "vol_regime_summary": vol,
        "vol_regime_avg_vol_short": {lb: (vol_sum[lb] / vol[lb] if vol[lb] else None) for lb in VOL_LABELS},
        "hmm_regime_summary": hmm,
        "hmm_untrained": untrained,
        "updated_at": now,
    }
