"""Snapshots the API serves, built from the events the compute services publish. Pure; no Redis.

The publisher re-uses the values it receives and never recomputes a regime
(seed 000 §4.1). Every ``apply_*`` is idempotent: an event not newer than the
part of the snapshot it feeds changes nothing, so a redelivered batch is harmless.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from msgspec.structs import replace

from shared.domain.contracts import (
    HMM_LABELS,
    VOL_LABELS,
    HmmRegimeEvent,
    PipelineStatus,
    ScreenerDecision,
    VolRegimeEvent,
)
from shared.domain.snapshot import (
    HistoryPoint,
    HmmBlock,
    HmmTransition,
    PipelineBlock,
    Price,
    Probabilities,
    ScreenerBlock,
    SeriesSnapshot,
    Summary,
    Transition,
    Tuning,
    TuningAccumulator,
    VolBlock,
    VolTransition,
)
from shared.domain.subjects import SeriesKey

HISTORY_POINTS = 1440  # per series, for the symbol view: one day of 1m bars
TRANSITIONS_KEPT = 200  # per series
DAY_MS = 86_400_000


def new_snapshot(key: SeriesKey, tier: str) -> SeriesSnapshot:
    """A series the publisher has heard of but has no verdicts for: every block null."""
    return SeriesSnapshot(key.id, key.exchange, key.symbol, key.timeframe, tier)


@dataclass
class Update:
    """What applying events changed: the snapshot after them, transitions and history points to append."""

    snapshot: SeriesSnapshot
    transitions: list[Transition] = field(default_factory=list)
    history: list[HistoryPoint] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)

    def merge(self, other: Update) -> None:
        self.snapshot = other.snapshot
        self.transitions.extend(other.transitions)
        self.history.extend(other.history)
        self.kinds |= other.kinds


def apply_vol(snap: SeriesSnapshot, ev: VolRegimeEvent, now: int) -> Update | None:
    prev = snap.vol
    if prev is not None and ev.ts <= prev.ts:
        return None
    since = prev.since_ts if prev is not None and snap.vol_regime == ev.label else ev.ts
    vol = VolBlock(
        ev.vol_short, ev.vol_long, ev.ratio, ev.samples, ev.sufficient, ev.ts, since, ev.raw_label, ev.pending_label
    )
    after = replace(snap, vol_regime=ev.label, vol=vol, price=Price(ev.close, ev.ts), updated_at=now)
    up = Update(after, kinds={"vol"})
    if ev.changed and ev.prev_label is not None:
        up.transitions.append(VolTransition(ev.ts, ev.prev_label, ev.label, ev.ratio, ev.close))
    return up


def apply_hmm(snap: SeriesSnapshot, ev: HmmRegimeEvent, blend_factor: float, now: int) -> Update | None:
    prev = snap.hmm_regime
    if prev is not None and ev.ts <= prev.ts:
        return None
    since = prev.since_ts if prev is not None and prev.regime == ev.regime else ev.ts
    block = HmmBlock(
        ev.regime, ev.confidence, ev.bias_signal, Probabilities(*ev.probabilities), ev.trained,
        ev.observation_count, blend_factor, ev.trained_at, ev.ts, since, ev.raw_regime, ev.raw_confidence,
        ev.depth_tier, ev.training_candles, ev.label_agreement,
    )  # fmt: skip
    up = Update(replace(snap, hmm_regime=block, updated_at=now), kinds={"hmm"})
    if prev is not None and prev.regime != ev.regime and ev.trained:
        up.transitions.append(HmmTransition(ev.ts, prev.regime, ev.regime, ev.confidence))
    return up


def apply_decision(snap: SeriesSnapshot, d: ScreenerDecision, now: int) -> Update | None:
    prev = snap.screener
    if prev is not None and d.ts <= prev.ts:
        return None
    vol_tuning = RegimeStats.load(snap.vol_tuning, VOL_LABELS).add(d.ts, d.vol_regime, d.close).dump()
    # The HMM verdict of this bar counts only once a model is trained: before that, RANGING is just the neutral default.
    # It comes from the decision itself, never from the snapshot, which the HMM service may have moved past already.
    trained = d.hmm_regime is not None and d.hmm_trained and d.hmm_probabilities is not None
    hmm_tuning = snap.hmm_tuning
    if trained and d.hmm_regime is not None:  # (repeated for the type checker's narrowing)
        hmm_tuning = RegimeStats.load(hmm_tuning, HMM_LABELS).add(d.ts, d.hmm_regime, d.close).dump()
    after = replace(
        snap, tier=d.tier, screener=_screener_block(d), hmm_tuning=hmm_tuning, vol_tuning=vol_tuning, updated_at=now
    )
    point = HistoryPoint(
        d.ts, d.close, d.vol_regime, d.vol_ratio, d.hmm_regime if trained else None,
        d.hmm_probabilities if trained else None, d.effective_per_trade_nav_pct, d.dynamic_idle_target, d.hybrid_score,
    )  # fmt: skip
    return Update(after, history=[point], kinds={"screener"})


def _screener_block(d: ScreenerDecision) -> ScreenerBlock:
    """The decision's part of the snapshot (its maps are the decision's own: both are frozen by contract)."""
    return ScreenerBlock(
        d.ts, d.tier, d.sizing_multiplier, d.base_per_trade_nav_pct, d.effective_per_trade_nav_pct, d.capped,
        d.weights, d.scores, d.defaulted, d.hybrid_score, d.trend_score, d.hmm_bias, d.hmm_confidence,
        d.blend_factor, d.dynamic_idle_target, d.grid_bias, d.consensus,
    )  # fmt: skip


def apply_pipeline(snap: SeriesSnapshot, p: PipelineStatus, now: int) -> Update | None:
    prev = snap.hmm_data_pipeline
    if prev is not None and p.reported_at <= prev.reported_at:
        return None
    block = PipelineBlock(
        p.timeframe, p.source, p.interval_min, p.sync_interval_sec, p.samples, p.coverage_pct, p.last_ts,
        p.freshness_sec, p.freshness_limit_sec, p.freshness_ok, p.gaps, p.backfill_last_at, p.backfill_last_rows,
        p.backfill_last_message, p.last_error, p.reported_at,
    )  # fmt: skip
    return Update(replace(snap, hmm_data_pipeline=block, updated_at=now), kinds={"pipeline"})


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
    def load(cls, tuning: Tuning | None, labels: Iterable[str]) -> RegimeStats:
        labels = tuple(labels)
        if tuning is None:
            return cls(labels)
        a = tuning.acc
        return cls(
            labels, a.first_ts, a.last_ts, a.last_close, a.current, a.run_start, a.flips, dict(a.bars),
            dict(a.dwell_ms), dict(a.runs), dict(a.fwd_sum), dict(a.fwd_n),
        )  # fmt: skip

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

    def dump(self) -> Tuning:
        span_days = ((self.last_ts or 0) - (self.first_ts or 0)) / DAY_MS
        return Tuning(
            flips=self.flips,
            flips_per_day=(self.flips / span_days) if span_days > 0 else None,
            span_days=span_days,
            current=self.current,
            current_since_ts=self.run_start,
            bars={lb: self.bars.get(lb, 0) for lb in self.labels},
            mean_dwell_min={
                lb: (self.dwell_ms[lb] / self.runs[lb] / 60_000 if self.runs.get(lb) else None) for lb in self.labels
            },
            mean_forward_return={
                lb: (self.fwd_sum[lb] / self.fwd_n[lb] if self.fwd_n.get(lb) else None) for lb in self.labels
            },
            acc=TuningAccumulator(
                self.first_ts, self.last_ts, self.last_close, self.current, self.run_start, self.flips, self.bars,
                self.dwell_ms, self.runs, self.fwd_sum, self.fwd_n,
            ),
        )


_EXACT_BITS = 1074  # every finite double is a whole multiple of 2**-1074


def _exact(x: float) -> int:
    """``x`` as a whole number of 2**-1074 (exact for every finite double)."""
    num, den = x.as_integer_ratio()  # den is a power of two, at most 2**1074
    return num << (_EXACT_BITS - (den.bit_length() - 1))


class SummaryTally:
    """The summary's counts and sums, kept one snapshot at a time: O(1) per change, not O(series) per batch.

    At 10,000 series a summary made over every snapshot cost about 2 ms; the
    publisher writes one per batch, and a burst's batches are small, so that
    was most of its CPU. The sums of ``vol.short`` are whole numbers of
    2**-1074, so a mean is the correctly rounded exact one whatever order the
    series came and went in (a float running sum would differ by an ulp
    between runs of the same candles).
    """

    def __init__(self, snapshots: Iterable[SeriesSnapshot] = ()) -> None:
        self.symbols = 0
        self.vol = dict.fromkeys(VOL_LABELS, 0)
        self.hmm = dict.fromkeys(HMM_LABELS, 0)
        self.untrained = 0
        self._short = dict.fromkeys(VOL_LABELS, 0)  # per vol label: the sum of vol.short, in 2**-1074
        for snap in snapshots:
            self.add(snap)

    def add(self, snap: SeriesSnapshot) -> None:
        self._count(snap, 1)

    def remove(self, snap: SeriesSnapshot) -> None:
        """Take back a snapshot :meth:`add` counted (the one a series had before its new one)."""
        self._count(snap, -1)

    def _count(self, snap: SeriesSnapshot, sign: int) -> None:
        self.symbols += sign
        label = snap.vol_regime
        if label is not None:
            self.vol[label] += sign
            if snap.vol is not None:
                self._short[label] += sign * _exact(snap.vol.short)
        h = snap.hmm_regime
        if h is not None:
            if h.trained:
                self.hmm[h.regime] += sign
            else:
                self.untrained += sign

    def summary(self, now: int) -> Summary:
        """``vol_regime_summary`` (seed 000 §4.1) and its HMM twin: symbols per regime, as of ``now`` (ms)."""
        scale = 1 << _EXACT_BITS
        return Summary(
            symbols=self.symbols,
            vol_regime_summary=dict(self.vol),
            # int / int is correctly rounded: the exact sum as a double, then the mean as before.
            vol_regime_avg_vol_short={
                lb: (self._short[lb] / scale / self.vol[lb] if self.vol[lb] else None) for lb in VOL_LABELS
            },
            hmm_regime_summary=dict(self.hmm),
            hmm_untrained=self.untrained,
            updated_at=now,
        )


def summarize(snapshots: Iterable[SeriesSnapshot], now: int) -> Summary:
    """The summary of ``snapshots`` at once (what :class:`SummaryTally` keeps up to date)."""
    return SummaryTally(snapshots).summary(now)
