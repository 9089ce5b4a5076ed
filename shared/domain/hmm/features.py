"""The seed's four HMM features (EMA spread, MACD histogram slope, RSI zone, log volume ratio), one candle at a time."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from shared.domain.stored import finite_float, is_int

log = logging.getLogger(__name__)


FEATURE_NAMES: Final[tuple[str, ...]] = ("ema_spread", "macd_hist_slope", "rsi_zone", "log_volume_ratio")
N_FEATURES: Final[int] = len(FEATURE_NAMES)

EMA_FAST_BARS: Final[int] = 12  # span; alpha = 2 / (span + 1)
EMA_SLOW_BARS: Final[int] = 48  # span; matches the trend detector's slow EMA (strategy_config trend.slow_ema_bars)
MACD_FAST_BARS: Final[int] = EMA_FAST_BARS
MACD_SLOW_BARS: Final[int] = 26
MACD_SIGNAL_BARS: Final[int] = 9
RSI_BARS: Final[int] = 14  # Wilder smoothing, alpha = 1 / 14
VOLUME_MA_BARS: Final[int] = 20  # span of the volume EMA
VOLUME_RATIO_FLOOR: Final[float] = 0.05  # zero volume maps to log(0.05) ≈ -3.0 instead of -inf
WARMUP_BARS: Final[int] = EMA_SLOW_BARS  # the first feature row comes with the 48th candle


def _span_alpha(span: int) -> float:
    return 2.0 / (span + 1.0)


SLOW_EMA_HALFLIFE_BARS: Final[float] = math.log(0.5) / math.log(1.0 - _span_alpha(EMA_SLOW_BARS))  # ≈ 16.6 bars
# Seed §5: a gap longer than twice the slow halflife leaves the EMAs stale.
STALE_GAP_BARS: Final[float] = 2.0 * SLOW_EMA_HALFLIFE_BARS

_A_FAST: Final[float] = _span_alpha(EMA_FAST_BARS)
_A_SLOW: Final[float] = _span_alpha(EMA_SLOW_BARS)
_A_MACD_SLOW: Final[float] = _span_alpha(MACD_SLOW_BARS)
_A_SIGNAL: Final[float] = _span_alpha(MACD_SIGNAL_BARS)
_A_RSI: Final[float] = 1.0 / RSI_BARS
_A_VOLUME: Final[float] = _span_alpha(VOLUME_MA_BARS)
_LOG_VOLUME_FLOOR: Final[float] = math.log(VOLUME_RATIO_FLOOR)

# Identifies the feature definition inside snapshots: a snapshot whose extractor
# state was built with other periods is refused.
FEATURE_SPEC: Final[tuple[int, ...]] = (
    1,
    EMA_FAST_BARS,
    EMA_SLOW_BARS,
    MACD_SLOW_BARS,
    MACD_SIGNAL_BARS,
    RSI_BARS,
    VOLUME_MA_BARS,
    WARMUP_BARS,
)
_EXTRACTOR_FIELDS: Final[tuple[str, ...]] = (
    "count",
    "prev_close",
    "ema_fast",
    "ema_slow",
    "ema_macd_slow",
    "macd_signal",
    "prev_hist",
    "avg_gain",
    "avg_loss",
    "volume_ma",
)


def usable_rows(n_candles: int) -> int:
    """Feature rows a fresh extractor yields from ``n_candles`` consecutive candles (bars)."""
    return max(0, n_candles - WARMUP_BARS + 1)


class FeatureExtractor:
    """The seed's four features, one candle at a time, from plain-float state.

    Per candle (all EMAs are seeded with the first value, pandas ``adjust=False``):

    - ``ema_spread``: (EMA12(close) − EMA48(close)) / EMA48(close), a fraction.
    - ``macd_hist_slope``: MACD = (EMA12 − EMA26) / EMA26 (divided by price so the
      feature does not scale with the price level), signal = EMA9(MACD),
      histogram = MACD − signal; the feature is histogram_t − histogram_{t−1}.
    - ``rsi_zone``: Wilder RSI(14) mapped linearly from [0, 100] to [−1, 1],
      computed as (avg_gain − avg_loss) / (avg_gain + avg_loss); 0 on flat prices.
    - ``log_volume_ratio``: log(volume / EMA20(volume)), the EMA including the
      current bar; the ratio is floored at 0.05 (zero volume → ≈ −3.0) and is 1
      (feature 0) while every volume so far was zero.

    Rows come from the ``WARMUP_BARS``-th (48th) candle on; before that
    :meth:`step` returns None. After a data gap longer than ``STALE_GAP_BARS``
    (2 × the slow EMA halflife ≈ 33 bars) the EMAs are stale: call :meth:`reset`
    and the extractor cold-starts, warming up again from the next candle.
    """

    __slots__ = _EXTRACTOR_FIELDS

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Cold start: forget every average (seed §5 gap rule); the next rows come after a new warm-up."""
        self.count: int = 0  # candles since the last cold start
        self.prev_close: float = 0.0
        self.ema_fast: float = 0.0
        self.ema_slow: float = 0.0
        self.ema_macd_slow: float = 0.0
        self.macd_signal: float = 0.0
        self.prev_hist: float = 0.0
        self.avg_gain: float = 0.0
        self.avg_loss: float = 0.0
        self.volume_ma: float = 0.0

    @staticmethod
    def gap_is_stale(missing_bars: float) -> bool:
        """Whether a gap of ``missing_bars`` bars between two candles calls for :meth:`reset`."""
        return missing_bars > STALE_GAP_BARS

    def step_values(self, close: float, volume: float) -> tuple[float, float, float, float] | None:
        """Advance by one candle; the feature row as a tuple, None during warm-up.

        Raises ValueError, leaving the state untouched, for a close that is not a
        finite positive price or a volume that is not finite and ≥ 0.
        """
        if not (math.isfinite(close) and close > 0.0):
            raise ValueError(f"close must be a finite price > 0, got {close!r}")
        if not (math.isfinite(volume) and volume >= 0.0):
            raise ValueError(f"volume must be finite and >= 0, got {volume!r}")
        close = float(close)
        volume = float(volume)
        if self.count == 0:
            self.ema_fast = self.ema_slow = self.ema_macd_slow = close
            self.avg_gain = self.avg_loss = 0.0
            self.volume_ma = volume
            macd = 0.0
            self.macd_signal = 0.0
            hist = 0.0
            slope = 0.0
        else:
            self.ema_fast += _A_FAST * (close - self.ema_fast)
            self.ema_slow += _A_SLOW * (close - self.ema_slow)
            self.ema_macd_slow += _A_MACD_SLOW * (close - self.ema_macd_slow)
            change = close - self.prev_close
            self.avg_gain += _A_RSI * ((change if change > 0.0 else 0.0) - self.avg_gain)
            self.avg_loss += _A_RSI * ((-change if change < 0.0 else 0.0) - self.avg_loss)
            self.volume_ma += _A_VOLUME * (volume - self.volume_ma)
            macd = (self.ema_fast - self.ema_macd_slow) / self.ema_macd_slow
            self.macd_signal += _A_SIGNAL * (macd - self.macd_signal)
            hist = macd - self.macd_signal
            slope = hist - self.prev_hist
        self.prev_hist = hist
        self.prev_close = close
        self.count += 1
        if self.count < WARMUP_BARS:
            return None
        spread = (self.ema_fast - self.ema_slow) / self.ema_slow
        moves = self.avg_gain + self.avg_loss
        rsi_zone = (self.avg_gain - self.avg_loss) / moves if moves > 0.0 else 0.0
        ratio = volume / self.volume_ma if self.volume_ma > 0.0 else 1.0
        log_volume = math.log(ratio) if ratio > VOLUME_RATIO_FLOOR else _LOG_VOLUME_FLOOR
        return (spread, slope, rsi_zone, log_volume)

    def step(self, close: float, volume: float) -> np.ndarray | None:
        """Advance by one candle (price, base-asset volume); the (4,) feature row, None during warm-up."""
        row = self.step_values(close, volume)
        return None if row is None else np.array(row, dtype=np.float64)

    def batch(self, closes: Sequence[float] | np.ndarray, volumes: Sequence[float] | np.ndarray) -> np.ndarray:
        """Repeated :meth:`step` over a candle history (advancing this extractor): rows as (n_valid, 4).

        Defined as the loop, so batch and incremental features are identical bit for bit.
        """
        closes_a = np.asarray(closes, dtype=np.float64)
        volumes_a = np.asarray(volumes, dtype=np.float64)
        if closes_a.ndim != 1 or closes_a.shape != volumes_a.shape:
            raise ValueError(f"closes and volumes must be 1-D of one length, got {closes_a.shape}, {volumes_a.shape}")
        rows = []
        step = self.step_values
        for close, volume in zip(closes_a.tolist(), volumes_a.tolist(), strict=True):
            row = step(close, volume)
            if row is not None:
                rows.append(row)
        return np.array(rows, dtype=np.float64).reshape(len(rows), N_FEATURES)

    def state_dict(self) -> dict[str, int | float]:
        """Plain (msgpack/JSON-safe) copy of the state."""
        return {name: getattr(self, name) for name in _EXTRACTOR_FIELDS}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> FeatureExtractor:
        """Rebuild from :meth:`state_dict`; ValueError when a field is missing or not a finite number."""
        out = cls()
        count = state["count"]
        if not is_int(count) or count < 0:
            raise ValueError(f"extractor count must be an int >= 0, got {count!r}")
        out.count = int(count)
        for name in _EXTRACTOR_FIELDS[1:]:
            setattr(out, name, finite_float(state[name], name))
        if out.count > 0 and (out.prev_close <= 0.0 or out.ema_slow <= 0.0 or out.ema_macd_slow <= 0.0):
            raise ValueError("extractor prices must be > 0 once warmed")
        return out


def as_series(
    closes: Sequence[float] | np.ndarray, volumes: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(closes, dtype=np.float64)
    v = np.asarray(volumes, dtype=np.float64)
    if c.ndim != 1 or c.shape != v.shape:
        raise ValueError(f"closes and volumes must be 1-D of one length, got {c.shape}, {v.shape}")
    if not (np.all(np.isfinite(c)) and np.all(c > 0)):
        raise ValueError("closes must be finite and > 0")
    if not (np.all(np.isfinite(v)) and np.all(v >= 0)):
        raise ValueError("volumes must be finite and >= 0")
    return c, v
