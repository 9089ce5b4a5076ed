"""hmm_regime's per-series logic: candle history, detector, training schedule, one verdict per candle. Pure.

Training is scheduled by the series' own candle clock, never the wall clock,
and a model is adopted at a candle fixed by the data, so a replay, a live run
and a run killed and restarted anywhere give the same verdicts:

- Before a candle is applied, :func:`training_due` asks whether the series
  must (re)train first: untrained with ``HMM_MIN_TRAIN_SAMPLES`` usable rows in
  its window, or ``HMM_RETRAIN_INTERVAL_SEC`` of candle time after the last
  training (or failed attempt).
- If so, the model is fitted on the last ``HMM_TRAINING_CANDLES`` candles
  applied (ending at ``last_ts``), the series waits meanwhile, and
  :func:`adopt` installs the model just before that candle is applied. The
  model's ``trained_at`` is ``last_ts``: candle time.

The fitting itself (a process pool in the service, inline in a backtest) is
the caller's; everything that decides is here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.domain.config import HmmConfig
from shared.domain.contracts import TS_FLOOR_MS, Candle, HmmRegimeEvent
from shared.domain.hmm import (
    HMM_AVAILABLE,
    RegimeDetector,
    TrainedModel,
    restore_from_snapshot,
    serialize_for_snapshot,
    usable_rows,
)
from shared.domain.stored import optional_int, stored_int
from shared.domain.subjects import SeriesKey, timeframe_ms
from shared.domain.vocab import depth_tier

Row = tuple[int, float, float]  # (ts ms, close, volume)


@dataclass
class SeriesHmm:
    """One series: its detector, the last candle applied, and the training schedule's inputs.

    ``history`` (the last HMM_TRAINING_CANDLES candles applied) is memory only;
    after a restart ``history_complete`` is False and a training reads it back
    from stream OHLCV (:func:`applied_history`).
    """

    detector: RegimeDetector
    last_ts: int | None = None  # ms, open time of the last candle applied
    seen: int = 0  # candles applied since the series began
    failed_at: int | None = None  # last_ts at the last training that failed, ms
    history: deque[Row] = field(default_factory=deque)
    history_complete: bool = True

    @classmethod
    def new(cls, cfg: HmmConfig) -> SeriesHmm:
        return cls(RegimeDetector(cfg), history=deque(maxlen=cfg.training_candles))

    def dump(self) -> dict[str, Any]:
        return {
            "last_ts": self.last_ts,
            "seen": self.seen,
            "failed_at": self.failed_at,
            "detector": serialize_for_snapshot(self.detector),
        }

    @classmethod
    def load(cls, cfg: HmmConfig, raw: Mapping[str, Any]) -> SeriesHmm:
        """A stored detector that no longer fits ``cfg`` is refused (logged); the series keeps its place."""
        state = cls.new(cfg)
        last_ts = optional_int(raw["last_ts"], "last_ts")
        seen = stored_int(raw.get("seen", 0), "seen")
        failed_at = optional_int(raw.get("failed_at"), "failed_at")
        restore_from_snapshot(state.detector, raw["detector"])
        state.last_ts, state.seen, state.failed_at = last_ts, seen, failed_at
        state.history_complete = state.seen == 0
        return state


@dataclass(frozen=True, slots=True)
class TrainingResult:
    """What a training produced: the model (None: the fit failed on this data) and the window it used."""

    model: TrainedModel | None
    rows: tuple[Row, ...]
    upto: int  # ts of the newest candle in the window, ms


def is_newer(state: SeriesHmm, candle: Candle) -> bool:
    return state.last_ts is None or candle.ts > state.last_ts


def training_due(state: SeriesHmm, cfg: HmmConfig) -> bool:
    """Whether the series must (re)train before its next candle; a function of persisted state only."""
    if not HMM_AVAILABLE or state.last_ts is None:
        return False
    det = state.detector
    attempts = [t for t in (det.model.trained_at if det.trained and det.model else None, state.failed_at) if t]
    interval_ms = cfg.retrain_interval_sec * 1000.0
    if attempts and state.last_ts - max(attempts) < interval_ms:
        return False
    if det.trained:
        return True
    window = min(state.seen, cfg.training_candles)
    return usable_rows(window) >= cfg.min_train_samples


def adopt(state: SeriesHmm, result: TrainingResult) -> bool:
    """Install a training's model (the detector replays its window); a failed fit is remembered. True if installed."""
    state.history.clear()
    state.history.extend(result.rows)
    state.history_complete = True
    model = result.model
    if model is not None:
        closes = [c for _, c, _ in result.rows]
        volumes = [v for _, _, v in result.rows]
        if state.detector.install(model, closes, volumes):
            return True
    state.failed_at = result.upto
    return False


def applied_history(key: SeriesKey, stored: Iterable[Candle], upto: int, keep: int) -> tuple[Row, ...]:
    """The last ``keep`` candles a consumer applied up to ``upto``, rebuilt from the stream's candles in order.

    The same rules as live: the payload's series, a ts after the floor, and
    only candles newer than the last applied (duplicates and late ones are
    skipped). Candles after ``upto`` were not applied yet and play no part.
    """
    rows: deque[Row] = deque(maxlen=keep)
    last: int | None = None
    for c in stored:
        if c.key != key or c.ts < TS_FLOOR_MS or c.ts > upto or (last is not None and c.ts <= last):
            continue
        last = c.ts
        rows.append((c.ts, c.close, c.volume))
    return tuple(rows)


def apply_candle(state: SeriesHmm, candle: Candle) -> HmmRegimeEvent | None:
    """Advance by one candle (None for one not newer than the last)."""
    if not is_newer(state, candle):
        return None
    det = state.detector
    if state.last_ts is not None:
        missing = (candle.ts - state.last_ts) // timeframe_ms(candle.timeframe) - 1
        if missing > 0:
            det.note_gap(float(missing))
    state.history.append((candle.ts, candle.close, candle.volume))
    state.last_ts = candle.ts
    state.seen += 1
    verdict = det.update(candle.close, candle.volume)
    model = det.model if det.trained else None
    trained = model is not None
    raw_regime = verdict.raw_regime if verdict.raw_regime is not None else verdict.regime
    raw_confidence = verdict.raw_confidence if verdict.raw_confidence is not None else verdict.confidence
    return HmmRegimeEvent(
        exchange=candle.exchange,
        symbol=candle.symbol,
        timeframe=candle.timeframe,
        ts=candle.ts,
        regime=verdict.regime.name,  # type: ignore[arg-type]
        probabilities=tuple(float(p) for p in verdict.probabilities),  # type: ignore[arg-type]
        confidence=float(verdict.confidence),
        bias_signal=float(verdict.bias_signal),
        observation_count=int(verdict.observation_count),
        trained=trained,
        trained_at=model.trained_at if model is not None else None,
        raw_regime=raw_regime.name,  # type: ignore[arg-type]
        raw_confidence=float(raw_confidence),
        depth_tier=depth_tier(model.training_candles) if model is not None else None,
        training_candles=model.training_candles if model is not None else None,
        label_agreement=model.label_agreement if model is not None else None,
    )
