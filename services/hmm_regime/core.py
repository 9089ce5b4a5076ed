"""hmm_regime's per-series logic: candle history, detector, one verdict per candle. Pure; no bus.

Training happens elsewhere (a process pool, off the event loop); a model it
returns is *installed* here, at the next candle of its series, so the swap is
part of an ordinary batch: persisted and acked with it, never in between.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import Candle, HmmRegimeEvent
from shared.hmm import RegimeDetector, TrainedModel, restore_from_snapshot, serialize_for_snapshot, usable_rows
from shared.subjects import timeframe_ms


@dataclass
class SeriesHmm:
    """One series: its detector, the last candle applied, and recent candles for (re)training.

    ``history`` is memory only (at most HMM_TRAINING_CANDLES bars); after a
    restart it is refilled from stream OHLCV when a retrain needs it.
    """

    detector: RegimeDetector
    last_ts: int | None = None  # ms
    history: deque[tuple[int, float, float]] = field(default_factory=deque)  # (ts, close, volume)
    history_loaded: bool = False  # whether older candles were read back from the stream since start

    @classmethod
    def new(cls, cfg: Mapping[str, Any]) -> SeriesHmm:
        return cls(RegimeDetector(cfg), history=deque(maxlen=int(cfg["HMM_TRAINING_CANDLES"])))

    def dump(self) -> dict[str, Any]:
        return {"last_ts": self.last_ts, "detector": serialize_for_snapshot(self.detector)}

    @classmethod
    def load(cls, cfg: Mapping[str, Any], raw: Mapping[str, Any]) -> SeriesHmm:
        """A stored detector that no longer fits ``cfg`` is refused (logged); the series keeps its place."""
        state = cls.new(cfg)
        restore_from_snapshot(state.detector, raw["detector"])
        state.last_ts = raw["last_ts"]
        return state

    def training_data(self) -> tuple[list[float], list[float], int | None]:
        """Closes, volumes and the ts of the newest candle in the training window."""
        closes = [c for _, c, _ in self.history]
        volumes = [v for _, _, v in self.history]
        return closes, volumes, (self.history[-1][0] if self.history else None)

    def prepend(self, older: Iterable[Candle]) -> None:
        """Add candles read back from the stream in front of the in-memory history.

        Only candles already applied (ts <= last_ts) and older than the history
        qualify: newer ones are still on their way through the consumer.
        """
        self.history_loaded = True
        if self.last_ts is None:
            return
        first = self.history[0][0] if self.history else self.last_ts + 1
        # The stream holds candles in publish order; a later backfill adds older ones at its end.
        by_ts = {c.ts: (c.ts, c.close, c.volume) for c in older if c.ts < first}
        rows = [by_ts[ts] for ts in sorted(by_ts)]
        keep = self.history.maxlen or len(rows) + len(self.history)
        merged = [*rows, *self.history][-keep:]
        self.history.clear()
        self.history.extend(merged)


def can_train(state: SeriesHmm, cfg: Mapping[str, Any]) -> bool:
    """Enough history for HMM_MIN_TRAIN_SAMPLES feature rows."""
    return usable_rows(len(state.history)) >= int(cfg["HMM_MIN_TRAIN_SAMPLES"])


def apply_candle(state: SeriesHmm, candle: Candle, model: TrainedModel | None = None) -> HmmRegimeEvent | None:
    """Advance by one candle (None for one not newer than the last). ``model``: a fresh model to adopt first."""
    if state.last_ts is not None and candle.ts <= state.last_ts:
        return None
    det = state.detector
    if model is not None:
        closes, volumes, _ = state.training_data()
        det.install(model, closes, volumes)
    if state.last_ts is not None:
        missing = (candle.ts - state.last_ts) // timeframe_ms(candle.timeframe) - 1
        if missing > 0:
            det.note_gap(float(missing))
    state.history.append((candle.ts, candle.close, candle.volume))
    state.last_ts = candle.ts
    verdict = det.update(candle.close, candle.volume)
    trained = bool(det._trained)
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
        trained_at=det.model.trained_at if trained and det.model is not None else None,
    )
