"""What the regime verdicts were worth, measured against what prices did next. Pure: arrays and events in, numbers out.

``regimes evaluate`` replays the cores (``regimes.backtest``) and hands the
events here; :mod:`regimes.report` draws the result. Nothing in this module
reads a file, a clock or a bus, so every number the report shows has a unit
test on generated data whose answer is known.

Conventions, once:

- A *bar* is one row of a series' events, in candle order. Horizons, dwell
  and lags are counted in bars (rows), not in time: a gap in the candles is
  one bar, as it is for the cores.
- A *forward return* at horizon ``h`` after bar ``t`` is the log return
  ``ln(close[t+h] / close[t])`` (a fraction for small moves). The verdict of
  bar ``t`` is known when bar ``t`` closes, so pairing it with the return
  from that close onward looks nothing up ahead of time. The last ``h`` bars
  have no forward return and are left out of every count.
- A label of ``None`` is "no verdict": an untrained HMM (it emits RANGING by
  default, which would otherwise flood the RANGING row), or a bar where the
  model did not speak. Such bars are left out of per-regime statistics and
  break no run; a flip is a change between two consecutive labelled bars.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.domain.contracts import HmmRegimeEvent, ScreenerDecision, VolRegimeEvent
from shared.domain.subjects import SeriesKey, timeframe_ms
from shared.domain.vocab import HMM_LABELS, VOL_LABELS

HORIZONS: tuple[int, ...] = (1, 5, 20)  # bars ahead
DAY_MS = 86_400_000
# Where the events carry the label before confirmation (hysteresis), its field is one of these.
RAW_FIELDS: tuple[str, ...] = ("raw_label", "raw_regime")

Labels = Sequence[str | None]


# --- returns ------------------------------------------------------------------------


def forward_log_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """``ln(close[t+h] / close[t])`` per bar ``t``; NaN for the last ``h`` bars. Unit: log return."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 bar, got {horizon}")
    close = np.asarray(close, dtype=np.float64)
    out = np.full(close.shape, np.nan)
    if close.size > horizon:
        out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    return out


@dataclass(frozen=True, slots=True)
class ForwardStats:
    """Forward returns of the bars with one label, at one horizon."""

    count: int  # bars with a forward return
    mean: float  # log return; NaN when count == 0
    median: float  # log return; NaN when count == 0
    positive: float  # fraction of those returns > 0; NaN when count == 0


def _stats(values: np.ndarray) -> ForwardStats:
    if values.size == 0:
        return ForwardStats(0, math.nan, math.nan, math.nan)
    return ForwardStats(int(values.size), float(values.mean()), float(np.median(values)), float((values > 0).mean()))


def forward_by_label(
    labels: Labels, close: np.ndarray, order: Sequence[str], horizons: Sequence[int] = HORIZONS
) -> dict[str, dict[int, ForwardStats]]:
    """Per label of ``order`` and horizon (bars): the forward returns of the bars carrying that label."""
    lab = np.asarray(labels, dtype=object)
    out: dict[str, dict[int, ForwardStats]] = {}
    ahead = {h: forward_log_returns(close, h) for h in horizons}
    for label in order:
        mask = lab == label
        out[label] = {}
        for h, r in ahead.items():
            picked = r[mask]
            out[label][h] = _stats(picked[np.isfinite(picked)])
    return out


@dataclass(frozen=True, slots=True)
class HitRate:
    """How often the sign of the HMM bias matched the sign of the forward return, at one horizon."""

    horizon: int  # bars
    count: int  # bars with a non-zero bias and a non-zero forward return
    hits: int  # of those, bars where the signs agree
    rate: float  # hits / count, a fraction; NaN when count == 0
    long_count: int  # of ``count``, bars with bias > 0
    long_rate: float  # hit rate of those; NaN when none
    short_count: int  # bars with bias < 0
    short_rate: float


def bias_hit_rates(bias: np.ndarray, close: np.ndarray, horizons: Sequence[int] = HORIZONS) -> list[HitRate]:
    """Hit rate of ``sign(bias_t)`` against ``sign(r_{t→t+h})`` per horizon.

    A zero bias (under the confidence threshold, untrained) is no call and is
    left out, as is a zero return (no move to be right about) and a NaN bias
    (no HMM event for the bar).
    """
    bias = np.asarray(bias, dtype=np.float64)
    out = []
    for h in horizons:
        r = forward_log_returns(close, h)
        with np.errstate(invalid="ignore"):
            called = np.isfinite(bias) & (bias != 0) & np.isfinite(r) & (r != 0)
        b, rr = np.sign(bias[called]), np.sign(r[called])
        hits = b == rr
        longs, shorts = b > 0, b < 0
        out.append(
            HitRate(
                horizon=h,
                count=int(called.sum()),
                hits=int(hits.sum()),
                rate=_frac(hits),
                long_count=int(longs.sum()),
                long_rate=_frac(hits[longs]),
                short_count=int(shorts.sum()),
                short_rate=_frac(hits[shorts]),
            )
        )
    return out


def _frac(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else math.nan


# --- runs, flips, dwell -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """A maximal stretch of consecutive bars with one label."""

    label: str | None
    start: int  # index of its first bar
    length: int  # bars


def runs(labels: Labels) -> list[Run]:
    """The maximal runs of ``labels``, in order (``None`` runs included; callers skip them)."""
    out: list[Run] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append(Run(labels[start], start, i - start))
            start = i
    return out


@dataclass(frozen=True, slots=True)
class Transition:
    index: int  # bar at which the new label is first carried
    ts: int  # that bar's candle open time, ms
    before: str
    after: str


def transitions(labels: Labels, ts: Sequence[int] | np.ndarray) -> list[Transition]:
    """Every change between two consecutive labelled bars (bars labelled ``None`` in between are skipped)."""
    out: list[Transition] = []
    last: str | None = None
    for i, label in enumerate(labels):
        if label is None:
            continue
        if last is not None and label != last:
            out.append(Transition(i, int(ts[i]), last, label))
        last = label
    return out


@dataclass(frozen=True, slots=True)
class Dwell:
    """How long a label held, over its runs."""

    runs: int  # runs of this label (the first and last may be cut by the data's ends)
    bars: int  # bars carrying it
    share: float  # bars / labelled bars, a fraction
    mean: float  # bars per run; NaN when no run
    median: float  # bars per run; NaN when no run


def dwell_by_label(labels: Labels, order: Sequence[str]) -> dict[str, Dwell]:
    """Mean and median run length (bars) per label of ``order``, and its share of the labelled bars."""
    lengths: dict[str, list[int]] = {label: [] for label in order}
    for run in runs(labels):
        if run.label in lengths:
            lengths[run.label].append(run.length)
    labelled = sum(sum(v) for v in lengths.values())
    out = {}
    for label, ls in lengths.items():
        arr = np.asarray(ls, dtype=np.float64)
        out[label] = Dwell(
            runs=len(ls),
            bars=int(arr.sum()),
            share=float(arr.sum() / labelled) if labelled else math.nan,
            mean=float(arr.mean()) if ls else math.nan,
            median=float(np.median(arr)) if ls else math.nan,
        )
    return out


def flips_per_day(flips: int, bars: int, bar_ms: int) -> float:
    """Flips per day of candle time, the span being ``bars × bar_ms``; NaN for no bars."""
    return flips / (bars * bar_ms / DAY_MS) if bars else math.nan


# --- raw vs confirmed ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawVsConfirmed:
    """What confirmation (hysteresis) did to a model's transitions."""

    raw_flips: int
    confirmed_flips: int
    raw_per_day: float
    confirmed_per_day: float
    suppressed: float  # 1 - confirmed / raw, a fraction: the share of raw flips confirmation removed; NaN if none
    mean_lag: float  # bars from the start of the raw run a confirmed label came from to its confirmation
    median_lag: float  # bars; NaN when there is no confirmed transition to measure


def raw_vs_confirmed(raw: Labels, confirmed: Labels, bar_ms: int) -> RawVsConfirmed:
    """Compare the raw labels with the confirmed ones, bar for bar.

    The lag of a confirmed transition into X at bar ``i`` is ``i - j``, ``j``
    being the first bar of the latest raw run of X starting at or before ``i``:
    how long the raw label had been saying X when confirmation agreed.
    """
    ts = range(len(raw))
    raw_t, conf_t = transitions(raw, ts), transitions(confirmed, ts)
    starts: dict[str, list[int]] = {}
    for run in runs(raw):
        if run.label is not None:
            starts.setdefault(run.label, []).append(run.start)
    lags: list[int] = []
    for t in conf_t:
        label_starts = starts.get(t.after, [])
        k = bisect.bisect_right(label_starts, t.index)  # starts are ascending: the latest at or before i
        if k:
            lags.append(t.index - label_starts[k - 1])
    n = len(raw)
    arr = np.asarray(lags, dtype=np.float64)
    return RawVsConfirmed(
        raw_flips=len(raw_t),
        confirmed_flips=len(conf_t),
        raw_per_day=flips_per_day(len(raw_t), n, bar_ms),
        confirmed_per_day=flips_per_day(len(conf_t), n, bar_ms),
        suppressed=1.0 - len(conf_t) / len(raw_t) if raw_t else math.nan,
        mean_lag=float(arr.mean()) if lags else math.nan,
        median_lag=float(np.median(arr)) if lags else math.nan,
    )


# --- sizing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizingEdge:
    """Return per unit of exposure of the sizing in force, against flat sizing, over the same bars."""

    bars: int  # bars with a size and a next-bar return
    sized: float  # sum(size_t × r_{t+1}) / sum(|size_t|): log return per unit of exposure per bar
    flat: float  # the same with size_t = 1: the mean next-bar log return
    edge: float  # sized - flat, log return per bar
    mean_size: float  # mean size_t, in the size's own unit (fraction of NAV per trade)


def sizing_vs_flat(size: np.ndarray, close: np.ndarray) -> SizingEdge:
    """Whether the sizing leaned into the bars that paid: exposure-weighted next-bar return vs the plain mean.

    ``size_t`` is what was in force after bar ``t`` closed (the decision of
    bar ``t``), ``r_{t+1} = ln(close[t+1] / close[t])`` what it earned. Bars
    with no size (NaN: no decision) are left out of both, so the two are
    measured on the same bars.
    """
    size = np.asarray(size, dtype=np.float64)
    r = forward_log_returns(close, 1)
    ok = np.isfinite(size) & np.isfinite(r)
    s, rr = size[ok], r[ok]
    exposure = np.abs(s).sum()
    sized = float((s * rr).sum() / exposure) if exposure > 0 else math.nan
    flat = float(rr.mean()) if rr.size else math.nan
    return SizingEdge(int(ok.sum()), sized, flat, sized - flat, float(s.mean()) if s.size else math.nan)


# --- one series' events, as arrays ---------------------------------------------------------


@dataclass
class SeriesFrame:
    """One series' verdicts bar by bar (one row per vol event, the stack's per-candle timeline).

    HMM and decision columns are aligned to it by candle ``ts``: NaN / None
    where that bar has no HMM event or no decision.
    """

    key: SeriesKey
    ts: np.ndarray  # int64, candle open time, ms
    close: np.ndarray  # float64, price
    vol_label: list[str]
    vol_raw: list[str | None] | None  # the label before confirmation, when the events carry one
    vol_ratio: np.ndarray  # short / long vol
    hmm_on: bool  # whether any HMM event came for this series
    hmm_label: list[str | None]  # None where untrained or no event
    hmm_raw: list[str | None] | None
    hmm_bias: np.ndarray  # float64 in [-1, 1]; NaN where no event
    hmm_trained: np.ndarray  # bool
    size: np.ndarray  # float64: effective_per_trade_nav_pct in force (fraction of NAV); NaN where no decision
    multiplier: np.ndarray  # float64: the sizing multiplier; NaN where no decision

    @property
    def bars(self) -> int:
        return int(self.ts.size)

    @property
    def bar_ms(self) -> int:
        return timeframe_ms(self.key.timeframe)


def _raw_of(event: Any) -> str | None:
    for name in RAW_FIELDS:
        value = getattr(event, name, None)
        if value is not None:
            return str(value)
    return None


def _raw_labels(events: Sequence[Any], labels: Labels) -> list[str | None] | None:
    """The raw label per bar when any event carries one (else None); a bar without one keeps its label."""
    raw = [_raw_of(e) if e is not None and label is not None else None for e, label in zip(events, labels, strict=True)]
    if all(r is None for r in raw):
        return None
    return [r if r is not None else label for r, label in zip(raw, labels, strict=True)]


def frames(events: Iterable[Any]) -> dict[SeriesKey, SeriesFrame]:
    """The events of a replay (any order across series, candle order within one), one frame per series."""
    vols: dict[SeriesKey, list[VolRegimeEvent]] = {}
    hmms: dict[SeriesKey, dict[int, HmmRegimeEvent]] = {}
    decisions: dict[SeriesKey, dict[int, ScreenerDecision]] = {}
    for e in events:
        if isinstance(e, VolRegimeEvent):
            vols.setdefault(e.key, []).append(e)
        elif isinstance(e, HmmRegimeEvent):
            hmms.setdefault(e.key, {})[e.ts] = e
        elif isinstance(e, ScreenerDecision):
            decisions.setdefault(e.key, {})[e.ts] = e
    out = {}
    for key, vs in vols.items():
        hm = hmms.get(key, {})
        dm = decisions.get(key, {})
        hs = [hm.get(v.ts) for v in vs]
        ds = [dm.get(v.ts) for v in vs]
        hmm_label: list[str | None] = [h.regime if h is not None and h.trained else None for h in hs]
        out[key] = SeriesFrame(
            key=key,
            ts=np.array([v.ts for v in vs], dtype=np.int64),
            close=np.array([v.close for v in vs], dtype=np.float64),
            vol_label=[v.label for v in vs],
            vol_raw=_raw_labels(vs, [v.label for v in vs]),
            vol_ratio=np.array([v.ratio for v in vs], dtype=np.float64),
            hmm_on=bool(hm),
            hmm_label=hmm_label,
            hmm_raw=_raw_labels(hs, hmm_label),
            hmm_bias=np.array([h.bias_signal if h is not None else np.nan for h in hs], dtype=np.float64),
            hmm_trained=np.array([h is not None and h.trained for h in hs], dtype=bool),
            size=np.array([d.effective_per_trade_nav_pct if d else np.nan for d in ds], dtype=np.float64),
            multiplier=np.array([d.sizing_multiplier if d else np.nan for d in ds], dtype=np.float64),
        )
    return out


# --- the whole evaluation of one series ----------------------------------------------------


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's labels (vol or HMM) over one series."""

    order: tuple[str, ...]  # its labels, in display order
    labelled_bars: int  # bars with a verdict (for the HMM: trained)
    forward: dict[str, dict[int, ForwardStats]]  # label -> horizon (bars) -> stats
    baseline: dict[int, ForwardStats]  # horizon -> stats over every labelled bar: what a label must beat
    dwell: dict[str, Dwell]
    flips: int  # transitions of the labels in force
    flips_per_day: float
    transitions: list[Transition]
    raw_vs_confirmed: RawVsConfirmed | None  # None when the events carry no raw label


@dataclass(frozen=True)
class SeriesEvaluation:
    key: SeriesKey
    bars: int
    first_ts: int  # ms
    last_ts: int  # ms
    bar_ms: int
    vol: ModelEvaluation
    hmm: ModelEvaluation | None  # None when the HMM was off for this series
    hit_rates: list[HitRate] = field(default_factory=list)
    sizing: SizingEdge | None = None


def evaluate_model(
    labels: Labels, raw: Labels | None, close: np.ndarray, ts: np.ndarray, order: Sequence[str], bar_ms: int,
    horizons: Sequence[int] = HORIZONS,
) -> ModelEvaluation:
    trans = transitions(labels, ts)
    n = len(labels)
    return ModelEvaluation(
        order=tuple(order),
        labelled_bars=sum(1 for x in labels if x is not None),
        forward=forward_by_label(labels, close, order, horizons),
        baseline=forward_by_label(["*" if x is not None else None for x in labels], close, ["*"], horizons)["*"],
        dwell=dwell_by_label(labels, order),
        flips=len(trans),
        flips_per_day=flips_per_day(len(trans), n, bar_ms),
        transitions=trans,
        raw_vs_confirmed=raw_vs_confirmed(raw, labels, bar_ms) if raw is not None else None,
    )


def evaluate_series(frame: SeriesFrame, horizons: Sequence[int] = HORIZONS) -> SeriesEvaluation:
    """Every number the report shows for one series."""
    bar_ms = frame.bar_ms
    vol = evaluate_model(frame.vol_label, frame.vol_raw, frame.close, frame.ts, VOL_LABELS, bar_ms, horizons)
    hmm = None
    hits: list[HitRate] = []
    if frame.hmm_on:
        hmm = evaluate_model(frame.hmm_label, frame.hmm_raw, frame.close, frame.ts, HMM_LABELS, bar_ms, horizons)
        hits = bias_hit_rates(frame.hmm_bias, frame.close, horizons)
    return SeriesEvaluation(
        key=frame.key,
        bars=frame.bars,
        first_ts=int(frame.ts[0]) if frame.bars else 0,
        last_ts=int(frame.ts[-1]) if frame.bars else 0,
        bar_ms=bar_ms,
        vol=vol,
        hmm=hmm,
        hit_rates=hits,
        sizing=sizing_vs_flat(frame.size, frame.close),
    )
