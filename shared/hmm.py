"""HMM regime detector core (seed 003): features, Baum-Welch training, forward filter, snapshots.

Pure: no I/O, no NATS, no clock except where a caller leaves ``now_ms`` out.
A backtest can drive it directly::

    det = RegimeDetector({"HMM_N_STATES": 3})
    det.train(closes, volumes)            # or: det.install(fit_model(...), closes, volumes)
    for close, volume in live:
        state = det.update(close, volume)  # one candle, one O(K²) forward step

Pipeline per candle:

1. :class:`FeatureExtractor` turns (close, volume) into four features (see its
   docstring for periods); the first ``WARMUP_BARS - 1`` candles give none.
2. Features are standardised with the training mean/std held in the model.
3. One forward-filter step: ``alpha_t ∝ (alpha_{t-1} @ transmat) * emission_t``,
   emissions in log space. With ``HMM_INFERENCE_WINDOW = 0`` the filter runs over
   all history since the model was installed, and the filtered probabilities
   equal hmmlearn's ``predict_proba(X[:t+1])[-1]``. With a window of N > 0 the
   seed's literal semantics hold instead: every candle re-runs the forward pass
   over the last N standardised observations, equal to
   ``predict_proba(X[t+1-N:t+1])[-1]``.
4. State probabilities are summed by label into (bearish, ranging, bullish);
   confidence is the top minus the second; bias is ``(p_bull - p_bear) × gain``,
   clipped to [-1, 1], zero under the confidence threshold.

Safety (seed §5): anything that goes wrong leaves the detector RANGING with zero
bias (never trained, model refused) or on its last valid state (inference
failure), so the bot degrades to trend-only behaviour.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np

from shared.sizing import (  # re-exported: the seed's names live here too
    GRID_BIAS_MAX_ADJUST,
    GRID_SIZE_SKEW_SCALE,
    Regime,
    RegimeState,
    compute_blended_idle_target,
    compute_grid_bias,
)

# Whether hmmlearn can be imported; the import itself (with scikit-learn and scipy, ~150 MB and seconds of
# CPU) waits until a model is fitted, so the service's own process, which only filters, never pays it.
# Without hmmlearn the bot runs trend-only (seed §5).
HMM_AVAILABLE: bool = importlib.util.find_spec("hmmlearn") is not None


def _gaussian_hmm() -> Any:
    from hmmlearn.hmm import GaussianHMM

    return GaussianHMM

log = logging.getLogger(__name__)

__all__ = [
    "COVARIANCE_TYPES",
    "FEATURE_NAMES",
    "GRID_BIAS_MAX_ADJUST",
    "GRID_SIZE_SKEW_SCALE",
    "HMM_AVAILABLE",
    "HMM_DEFAULTS",
    "HMM_RANDOM_SEED",
    "N_FEATURES",
    "SLOW_EMA_HALFLIFE_BARS",
    "SNAPSHOT_KEY",
    "STALE_GAP_BARS",
    "WARMUP_BARS",
    "FeatureExtractor",
    "Regime",
    "RegimeDetector",
    "RegimeState",
    "TrainedModel",
    "as_hmmlearn",
    "compute_blended_idle_target",
    "compute_grid_bias",
    "fit_model",
    "restore_from_snapshot",
    "serialize_for_snapshot",
    "usable_rows",
    "validate_model",
]


# --------------------------------------------------------------------------- vocabulary



# The detector's keys of the seed §7 table, with the seed's defaults, except
# HMM_INFERENCE_WINDOW: 0 selects the exact O(K²)-per-candle forward filter over
# all history; N > 0 is the seed's literal "last N observations" semantics.
HMM_DEFAULTS: Final[dict[str, Any]] = {
    "HMM_N_STATES": 3,
    "HMM_N_ITER": 100,
    "HMM_COVARIANCE_TYPE": "diag",
    "HMM_INFERENCE_WINDOW": 0,  # observations (bars); 0 = forward filter over all history
    "HMM_CONFIDENCE_THRESHOLD": 0.15,  # fraction
    "HMM_RETRAIN_INTERVAL_SEC": 86400.0,  # s
    "HMM_MIN_TRAIN_SAMPLES": 500,  # usable feature rows (bars after warm-up)
    "HMM_BIAS_GAIN": 1.0,
    "HMM_BLEND_WITH_TREND": 0.5,  # 0 = pure HMM, 1 = pure trend (shadow mode)
    "HMM_TRAINING_CANDLES": 2000,  # bars; training uses the last this many candles
    # Bars the service fetches to re-warm features when it has neither snapshot nor model;
    # the detector itself only carries it (it filters one candle at a time).
    "HMM_RECENT_CANDLES": 100,
}

COVARIANCE_TYPES: Final[tuple[str, ...]] = ("spherical", "diag", "full", "tied")
HMM_RANDOM_SEED: Final[int] = 20260215  # fixed so training is reproducible
SNAPSHOT_KEY: Final[str] = "_hmm_regime_state"
SNAPSHOT_FORMAT: Final[int] = 1

# Settings that change the meaning of a stored model or filter state: a snapshot
# taken under other values is refused.
_SHAPING_KEYS: Final[tuple[str, ...]] = ("HMM_N_STATES", "HMM_COVARIANCE_TYPE", "HMM_INFERENCE_WINDOW")


# --------------------------------------------------------------------------- features

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
        if not _is_int(count) or count < 0:
            raise ValueError(f"extractor count must be an int >= 0, got {count!r}")
        out.count = int(count)
        for name in _EXTRACTOR_FIELDS[1:]:
            setattr(out, name, _finite_float(state[name], name))
        if out.count > 0 and (out.prev_close <= 0.0 or out.ema_slow <= 0.0 or out.ema_macd_slow <= 0.0):
            raise ValueError("extractor prices must be > 0 once warmed")
        return out


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A fitted Gaussian HMM as plain numpy arrays (picklable; crosses process pools).

    States are ordered canonically: by mean EMA spread ascending when trained from
    scratch, or aligned index-for-index with the previous model on a retrain, so
    state ``i`` keeps its meaning and its label across retrains.

    - ``startprob`` (K,), ``transmat`` (K, K): probabilities.
    - ``means`` (K, 4): in standardised feature units.
    - ``covars``: hmmlearn's internal form for ``covariance_type``: spherical (K,),
      diag (K, 4), full (K, 4, 4), tied (4, 4).
    - ``scaler_mean``/``scaler_std`` (4,): training feature mean and std (std 0 → 1).
    - ``label_order``: ``label_order[i]`` is the Regime value of state ``i``.
    - ``trained_at``: ms UTC; ``n_samples``: feature rows fitted; ``log_likelihood``:
      total log-likelihood of the training rows under the model (nats).
    """

    covariance_type: str
    startprob: np.ndarray
    transmat: np.ndarray
    means: np.ndarray
    covars: np.ndarray
    scaler_mean: np.ndarray
    scaler_std: np.ndarray
    label_order: tuple[int, ...]
    trained_at: int
    n_samples: int
    log_likelihood: float

    def __post_init__(self) -> None:
        # Read-only copies: a model may be shared by detectors and threads, and must not change under them.
        for name in ("startprob", "transmat", "means", "covars", "scaler_mean", "scaler_std"):
            arr = np.array(getattr(self, name), dtype=np.float64, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "label_order", tuple(int(v) for v in self.label_order))

    @property
    def n_states(self) -> int:
        return int(self.startprob.shape[0])

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """Raw feature rows (n, 4) → standardised rows, as the model was trained on."""
        return (np.asarray(features, dtype=np.float64) - self.scaler_mean) / self.scaler_std

    def to_dict(self) -> dict[str, Any]:
        """Plain msgpack/JSON-safe form (lists of floats, ints, str)."""
        return {
            "n_states": self.n_states,
            "n_features": int(self.means.shape[1]) if self.means.ndim == 2 else N_FEATURES,
            "covariance_type": self.covariance_type,
            "startprob": self.startprob.tolist(),
            "transmat": self.transmat.tolist(),
            "means": self.means.tolist(),
            "covars": self.covars.tolist(),
            "scaler_mean": self.scaler_mean.tolist(),
            "scaler_std": self.scaler_std.tolist(),
            "label_order": list(self.label_order),
            "trained_at": int(self.trained_at),
            "n_samples": int(self.n_samples),
            "log_likelihood": float(self.log_likelihood),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainedModel:
        """Inverse of :meth:`to_dict`; ValueError/KeyError/TypeError on malformed input (not validated further)."""
        k = data["n_states"]
        d = data["n_features"]
        ct = data["covariance_type"]
        if not (_is_int(k) and k >= 1 and _is_int(d) and d == N_FEATURES):
            raise ValueError(f"bad model dimensions n_states={k!r} n_features={d!r}")
        if ct not in COVARIANCE_TYPES:
            raise ValueError(f"unknown covariance_type {ct!r}")
        labels = data["label_order"]
        if not isinstance(labels, list | tuple) or not all(_is_int(v) for v in labels):
            raise ValueError("label_order must be a list of ints")
        for key in ("trained_at", "n_samples"):
            if not _is_int(data[key]):
                raise ValueError(f"{key} must be an int")
        return cls(
            covariance_type=ct,
            startprob=_number_array(data["startprob"], (k,)),
            transmat=_number_array(data["transmat"], (k, k)),
            means=_number_array(data["means"], (k, d)),
            covars=_number_array(data["covars"], _covars_shape(ct, k, d)),
            scaler_mean=_number_array(data["scaler_mean"], (d,)),
            scaler_std=_number_array(data["scaler_std"], (d,)),
            label_order=tuple(labels),
            trained_at=int(data["trained_at"]),
            n_samples=int(data["n_samples"]),
            log_likelihood=_finite_float(data["log_likelihood"], "log_likelihood"),
        )


def _covars_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    return {"spherical": (k,), "diag": (k, d), "full": (k, d, d), "tied": (d, d)}[covariance_type]


def _full_covars(model: TrainedModel) -> np.ndarray:
    """Covariances as (K, D, D) whatever the covariance type."""
    k, d = model.means.shape
    c = model.covars
    if model.covariance_type == "spherical":
        return np.stack([np.eye(d) * v for v in c])
    if model.covariance_type == "diag":
        return np.stack([np.diag(row) for row in c])
    if model.covariance_type == "tied":
        return np.repeat(c[None, :, :], k, axis=0)
    return np.array(c)


def validate_model(model: TrainedModel, n_states: int | None = None, covariance_type: str | None = None) -> str | None:
    """Why ``model`` cannot be used (garbage parameters, wrong shape or config), or None when it can."""
    if model.covariance_type not in COVARIANCE_TYPES:
        return f"unknown covariance_type {model.covariance_type!r}"
    if covariance_type is not None and model.covariance_type != covariance_type:
        return f"covariance_type {model.covariance_type!r} != configured {covariance_type!r}"
    if model.startprob.ndim != 1 or model.startprob.shape[0] < 1:
        return f"startprob shape {model.startprob.shape}"
    k = model.n_states
    if n_states is not None and k != n_states:
        return f"n_states {k} != configured {n_states}"
    d = N_FEATURES
    shapes = {
        "transmat": (model.transmat, (k, k)),
        "means": (model.means, (k, d)),
        "covars": (model.covars, _covars_shape(model.covariance_type, k, d)),
        "scaler_mean": (model.scaler_mean, (d,)),
        "scaler_std": (model.scaler_std, (d,)),
    }
    for name, (arr, shape) in shapes.items():
        if arr.shape != shape:
            return f"{name} shape {arr.shape}, expected {shape}"
    for name in ("startprob", "transmat", "means", "covars", "scaler_mean", "scaler_std"):
        if not np.all(np.isfinite(getattr(model, name))):
            return f"{name} holds NaN or infinity"
    if not math.isfinite(model.log_likelihood):
        return "log_likelihood is not finite"
    tol = 1e-6
    if np.any(model.startprob < 0) or abs(float(model.startprob.sum()) - 1.0) > tol:
        return "startprob is not a probability vector"
    if np.any(model.transmat < 0) or np.any(np.abs(model.transmat.sum(axis=1) - 1.0) > tol):
        return "transmat is not row-stochastic"
    if np.any(model.scaler_std <= 0):
        return "scaler_std must be > 0"
    if model.covariance_type in ("spherical", "diag"):
        if np.any(model.covars <= 0):
            return "covariances must be > 0"
    else:
        full = _full_covars(model)
        if not np.allclose(full, np.swapaxes(full, 1, 2), rtol=1e-9, atol=1e-12):
            return "covariance matrices are not symmetric"
        try:
            np.linalg.cholesky(full)
        except np.linalg.LinAlgError:
            return "covariance matrices are not positive definite"
    if len(model.label_order) != k or any(v not in (0, 1, 2) for v in model.label_order):
        return f"label_order {model.label_order} does not map {k} states to regimes"
    return None


def _labels_by_spread(spread_means: np.ndarray) -> tuple[int, ...]:
    """Lowest mean EMA spread → BEARISH, highest → BULLISH, everything else RANGING."""
    k = len(spread_means)
    labels = [int(Regime.RANGING)] * k
    if k >= 2:
        order = np.argsort(spread_means, kind="stable")
        labels[int(order[0])] = int(Regime.BEARISH)
        labels[int(order[-1])] = int(Regime.BULLISH)
    return tuple(labels)


def _labels_agree_with_spread(labels: Sequence[int], spread_means: np.ndarray) -> bool:
    """Whether every BULLISH state has a higher mean EMA spread than every BEARISH one."""
    bull = [spread_means[i] for i, lab in enumerate(labels) if lab == Regime.BULLISH]
    bear = [spread_means[i] for i, lab in enumerate(labels) if lab == Regime.BEARISH]
    return not bull or not bear or min(bull) > max(bear)


def _match_states(cost: np.ndarray) -> list[int]:
    """Assignment new state i → old slot ``result[i]`` with minimum total cost (ties: first found)."""
    k = cost.shape[0]
    if k <= 7:
        best: tuple[int, ...] = tuple(range(k))
        best_cost = math.inf
        for perm in itertools.permutations(range(k)):
            total = sum(float(cost[i, perm[i]]) for i in range(k))
            if total < best_cost - 1e-12:
                best, best_cost = perm, total
        return list(best)
    from scipy.optimize import linear_sum_assignment  # scipy comes with scikit-learn

    rows, cols = linear_sum_assignment(cost)
    out = [0] * k
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        out[r] = c
    return out


def _permuted(
    order: Sequence[int],
    startprob: np.ndarray,
    transmat: np.ndarray,
    means: np.ndarray,
    covars: np.ndarray,
    covariance_type: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reorder states so new state i is old state ``order[i]`` (a relabelling; the likelihood is unchanged)."""
    idx = np.asarray(order, dtype=np.intp)
    new_covars = covars if covariance_type == "tied" else covars[idx]
    return startprob[idx], transmat[np.ix_(idx, idx)], means[idx], new_covars


def _as_series(
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


def _now_ms() -> int:
    return int(time.time() * 1000)


def fit_model(
    closes: Sequence[float] | np.ndarray,
    volumes: Sequence[float] | np.ndarray,
    cfg: Mapping[str, Any],
    previous: TrainedModel | None = None,
    now_ms: int | None = None,
) -> TrainedModel:
    """Baum-Welch fit of a GaussianHMM on the features of a candle history; pure and process-pool safe.

    Uses the last ``HMM_TRAINING_CANDLES`` candles (all when ≤ 0), standardises the
    features with their own mean/std (a zero std becomes 1), and fits
    ``GaussianHMM(HMM_N_STATES, HMM_COVARIANCE_TYPE, n_iter=HMM_N_ITER,
    random_state=HMM_RANDOM_SEED)``: the same input gives the same model.

    Labels: states are sorted by mean EMA spread (lowest BEARISH, highest
    BULLISH, the rest RANGING). With a compatible ``previous`` model the new
    states are instead matched to the old ones (minimum total distance between
    state means, compared in the previous model's standardised units, over all
    permutations for K ≤ 7) and take their index and label, so a retrain on the
    same market never swaps labels. Should the matched labels contradict the
    new spreads (a BULLISH state below a BEARISH one: the market changed, not
    the labelling), the spread rule wins and a warning is logged.

    ``now_ms`` (ms UTC) stamps ``trained_at``; the clock when None.
    Raises RuntimeError without hmmlearn, ValueError for bad input or fewer
    than ``max(HMM_MIN_TRAIN_SAMPLES, HMM_N_STATES)`` feature rows.
    """
    if not HMM_AVAILABLE:
        raise RuntimeError("hmmlearn is not installed")
    merged = {**HMM_DEFAULTS, **cfg}
    k = int(merged["HMM_N_STATES"])
    covariance_type = str(merged["HMM_COVARIANCE_TYPE"])
    n_iter = int(merged["HMM_N_ITER"])
    if k < 1 or covariance_type not in COVARIANCE_TYPES or n_iter < 1:
        raise ValueError(f"bad HMM settings n_states={k} covariance_type={covariance_type!r} n_iter={n_iter}")
    c, v = _as_series(closes, volumes)
    n_train = int(merged["HMM_TRAINING_CANDLES"])
    if 0 < n_train < len(c):
        c, v = c[-n_train:], v[-n_train:]
    x = FeatureExtractor().batch(c, v)
    needed = max(int(merged["HMM_MIN_TRAIN_SAMPLES"]), k, 2)
    if len(x) < needed:
        raise ValueError(f"{len(x)} feature rows from {len(c)} candles, need {needed}")
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    # A constant feature (flat volume, say) carries nothing; std 1 keeps it at 0 instead of dividing by 0.
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    z = (x - mean) / std

    from threadpoolctl import threadpool_limits  # comes with scikit-learn, which hmmlearn requires

    hmm = _gaussian_hmm()(n_components=k, covariance_type=covariance_type, n_iter=n_iter, random_state=HMM_RANDOM_SEED)
    # One OpenMP thread: on a few thousand 4-feature rows, scikit-learn's threaded KMeans init spends
    # its time synchronising (measured 30x slower with 2 threads), and pools parallelise across fits anyway.
    with threadpool_limits(limits=1, user_api="openmp"):
        hmm.fit(z)
    startprob = np.array(hmm.startprob_, dtype=np.float64)
    transmat = np.array(hmm.transmat_, dtype=np.float64)
    # A state never left during training has an all-zero row; uniform keeps the chain stochastic.
    dead = transmat.sum(axis=1) <= 0
    if np.any(dead):
        transmat[dead] = 1.0 / k
    transmat /= transmat.sum(axis=1, keepdims=True)
    startprob /= startprob.sum()
    hmm.startprob_ = startprob
    hmm.transmat_ = transmat
    log_likelihood = float(hmm.score(z))
    means = np.array(hmm.means_, dtype=np.float64)
    covars = np.array(hmm._covars_, dtype=np.float64)
    if covariance_type == "spherical" and covars.ndim == 2:
        covars = covars[:, 0]  # hmmlearn keeps spherical variances tiled over features; its setter takes (K,)

    order = np.argsort(means[:, 0], kind="stable").tolist()
    startprob, transmat, means, covars = _permuted(order, startprob, transmat, means, covars, covariance_type)
    labels = _labels_by_spread(means[:, 0])

    if previous is not None:
        reason = validate_model(previous, n_states=k, covariance_type=covariance_type)
        if reason is not None:
            log.warning("retrain ignores the previous model for label matching: %s", reason)
        else:
            in_prev_units = (means * std + mean - previous.scaler_mean) / previous.scaler_std
            cost = np.linalg.norm(in_prev_units[:, None, :] - previous.means[None, :, :], axis=2)
            slot = _match_states(cost)
            inverse = [0] * k
            for new_i, old_j in enumerate(slot):
                inverse[old_j] = new_i
            startprob, transmat, means, covars = _permuted(inverse, startprob, transmat, means, covars, covariance_type)
            spread_raw = means[:, 0] * std[0] + mean[0]
            if _labels_agree_with_spread(previous.label_order, spread_raw):
                labels = previous.label_order
            else:
                labels = _labels_by_spread(means[:, 0])
                log.warning(
                    "retrain: matched labels %s contradict the new state spreads %s; relabelled by spread as %s",
                    previous.label_order,
                    spread_raw.tolist(),
                    labels,
                )

    return TrainedModel(
        covariance_type=covariance_type,
        startprob=startprob,
        transmat=transmat,
        means=means,
        covars=covars,
        scaler_mean=mean,
        scaler_std=std,
        label_order=labels,
        trained_at=_now_ms() if now_ms is None else int(now_ms),
        n_samples=len(x),
        log_likelihood=log_likelihood,
    )


def as_hmmlearn(model: TrainedModel) -> Any:
    """The model as a fitted hmmlearn ``GaussianHMM`` (expects standardised rows, see ``model.standardise``)."""
    if not HMM_AVAILABLE:
        raise RuntimeError("hmmlearn is not installed")
    hmm = _gaussian_hmm()(n_components=model.n_states, covariance_type=model.covariance_type)
    hmm.n_features = N_FEATURES
    hmm.startprob_ = np.array(model.startprob)
    hmm.transmat_ = np.array(model.transmat)
    hmm.means_ = np.array(model.means)
    hmm.covars_ = np.array(model.covars)
    return hmm


# --------------------------------------------------------------------------- inference kernel

_LOG_2PI: Final[float] = math.log(2.0 * math.pi)
FAST_PATH_MAX_STATES: Final[int] = 4  # beyond this, numpy's per-call overhead is cheaper than Python loops


class _Kernel:
    """Per-model inference constants, derived once from a validated model (never serialised).

    Two implementations of the same arithmetic: plain Python floats for small K
    with diagonal/spherical covariances (a 3-state step is a few dozen float
    operations, unrolled over the 4 features; numpy's per-call overhead would
    dominate), numpy for everything else. Both agree with hmmlearn to rounding.
    """

    def __init__(self, model: TrainedModel, fast: bool) -> None:
        k, d = model.means.shape
        self.k = k
        self.fast = fast and k <= FAST_PATH_MAX_STATES and model.covariance_type in ("diag", "spherical")
        self.labels = model.label_order
        self.mean = tuple(model.scaler_mean.tolist())
        self.std = tuple(model.scaler_std.tolist())
        self.startprob = tuple(model.startprob.tolist())
        # Columns of transmat: pred_j = sum_i alpha_i * transmat[i][j].
        self.transmat_cols = tuple(tuple(col) for col in model.transmat.T.tolist())
        with np.errstate(divide="ignore"):
            self.log_startprob = np.log(model.startprob)
            self.log_transmat = np.log(model.transmat)
        self.np_startprob = np.array(model.startprob)
        self.np_transmat = np.array(model.transmat)
        self.np_means = np.array(model.means)
        if self.fast:
            var = model.covars if model.covariance_type == "diag" else np.repeat(model.covars[:, None], d, axis=1)
            log_norm = (-0.5 * (d * _LOG_2PI + np.log(var).sum(axis=1))).tolist()
            # Per state: 4 means, 4 × 0.5/variance, log normaliser.
            self.fast_states = tuple(
                (*mu, *hp, c) for mu, hp, c in zip(model.means.tolist(), (0.5 / var).tolist(), log_norm, strict=True)
            )
        else:
            chol = np.linalg.cholesky(_full_covars(model))
            eye = np.broadcast_to(np.eye(d), chol.shape)
            self.prec_chol = np.linalg.solve(chol, eye)  # L⁻¹ per state
            logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
            self.np_log_norm = -0.5 * (d * _LOG_2PI + logdet)

    def standardise(self, row: Sequence[float]) -> tuple[float, float, float, float]:
        """Raw feature row → training-standardised row (same float ops as ``TrainedModel.standardise``)."""
        r0, r1, r2, r3 = row
        m0, m1, m2, m3 = self.mean
        s0, s1, s2, s3 = self.std
        return ((r0 - m0) / s0, (r1 - m1) / s1, (r2 - m2) / s2, (r3 - m3) / s3)

    def log_emission(self, z: Sequence[float]) -> list[float]:
        """log N(z | mean_k, cov_k) per state k (nats)."""
        if self.fast:
            z0, z1, z2, z3 = z
            return [
                c - (d0 := z0 - m0) * d0 * h0 - (d1 := z1 - m1) * d1 * h1 - (d2 := z2 - m2) * d2 * h2
                - (d3 := z3 - m3) * d3 * h3
                for m0, m1, m2, m3, h0, h1, h2, h3, c in self.fast_states
            ]  # fmt: skip
        diff = np.asarray(z, dtype=np.float64)[None, :] - self.np_means
        y = np.einsum("kij,kj->ki", self.prec_chol, diff)
        return (self.np_log_norm - 0.5 * np.einsum("ki,ki->k", y, y)).tolist()

    def forward(self, alpha: Sequence[float] | None, log_e: Sequence[float]) -> list[float]:
        """One filter step: normalised ``(alpha @ transmat) * emission``; ``alpha`` None = first observation.

        Emissions are shifted by their maximum before exponentiating so they
        cannot overflow; when every product still underflows to 0 the step is
        redone in log space. FloatingPointError when the observation is
        impossible under the model (every state has zero probability).
        """
        top = max(log_e)
        if not math.isfinite(top):
            raise FloatingPointError(f"log-emissions {log_e} have no finite maximum")
        if self.fast:
            if alpha is None:
                pred: Sequence[float] = self.startprob
            elif self.k == 3:
                a0, a1, a2 = alpha
                pred = [a0 * c0 + a1 * c1 + a2 * c2 for c0, c1, c2 in self.transmat_cols]
            else:
                pred = [sum(map(operator.mul, alpha, col)) for col in self.transmat_cols]
            exp = math.exp
            new = [p * exp(le - top) for p, le in zip(pred, log_e, strict=True)]
            total = sum(new)
            if total > 1e-290 and total < math.inf:
                return [x / total for x in new]
        else:
            pred_np = self.np_startprob if alpha is None else np.asarray(alpha) @ self.np_transmat
            new_np = pred_np * np.exp(np.asarray(log_e) - top)
            total = float(new_np.sum())
            if total > 1e-290 and total < math.inf:
                return (new_np / total).tolist()
        return self._forward_log(alpha, log_e)

    def _forward_log(self, alpha: Sequence[float] | None, log_e: Sequence[float]) -> list[float]:
        with np.errstate(divide="ignore"):
            if alpha is None:
                la = self.log_startprob + np.asarray(log_e)
            else:
                prev = np.log(np.asarray(alpha, dtype=np.float64))
                la = _logsumexp_cols(prev[:, None] + self.log_transmat) + np.asarray(log_e)
        top = float(np.max(la))
        if not math.isfinite(top):
            raise FloatingPointError("observation has zero probability under every state")
        p = np.exp(la - top)
        return (p / p.sum()).tolist()

    def verdict(self, alpha: Sequence[float], gain: float, threshold: float, count: int) -> RegimeState:
        """Filtered state probabilities → RegimeState (probabilities summed by label)."""
        agg = [0.0, 0.0, 0.0]
        for lab, p in zip(self.labels, alpha, strict=True):
            agg[lab] += p
        bear, rng, bull = (p if p <= 1.0 else 1.0 for p in agg)  # sums of several states may round above 1
        # Written so NaN fails the test: garbage must not become a verdict.
        if not (abs(bear + rng + bull - 1.0) <= 1e-6 and bear >= 0.0 and rng >= 0.0 and bull >= 0.0):
            raise FloatingPointError(f"filtered probabilities {agg} are not a distribution")
        if rng >= bear and rng >= bull:  # on a tie RANGING wins: a tie carries no direction
            regime, second = Regime.RANGING, (bear if bear > bull else bull)
            confidence = rng - second
        elif bull == bear:  # bullish and bearish tied on top: no direction either
            regime, confidence = Regime.RANGING, 0.0
        elif bull > bear:
            regime = Regime.BULLISH
            confidence = bull - (bear if bear > rng else rng)
        else:
            regime = Regime.BEARISH
            confidence = bear - (bull if bull > rng else rng)
        bias = 0.0
        if confidence >= threshold:
            bias = (bull - bear) * gain
            bias = 1.0 if bias > 1.0 else (-1.0 if bias < -1.0 else bias)
        return RegimeState(regime, (bear, rng, bull), confidence, bias, count)


def _logsumexp_cols(a: np.ndarray) -> np.ndarray:
    top = np.max(a, axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - safe).sum(axis=0)) + safe


# --------------------------------------------------------------------------- detector


@dataclass
class _Filter:
    """Forward-filter state: mode 0 keeps ``alpha``; window mode keeps the last N observations."""

    alpha: list[float] | None = None  # filtered state probabilities after the last observation
    window: deque[tuple[float, ...]] = field(default_factory=deque)  # standardised features, oldest first
    window_log_e: deque[list[float]] = field(default_factory=deque)  # their log-emissions (cache)


class RegimeDetector:
    """Seed 003's detector: train on history, then filter one candle at a time.

    ``cfg`` is ``HMM_DEFAULTS`` updated with ``config`` (already validated by the
    caller). ``state`` is the latest :class:`RegimeState`; ``_trained`` says
    whether a model is installed; ``model`` is that model. ``fast_path`` False
    forces the numpy kernel (the results agree to rounding; used by tests).

    The shaping keys (HMM_N_STATES, HMM_COVARIANCE_TYPE, HMM_INFERENCE_WINDOW)
    are fixed at construction; gain and thresholds are read from ``cfg`` on
    every candle, so they can be tuned at runtime.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, fast_path: bool = True) -> None:
        self.cfg: dict[str, Any] = {**HMM_DEFAULTS, **(config or {})}
        self.state: RegimeState = RegimeState()
        self._trained: bool = False
        self.model: TrainedModel | None = None
        self.features: FeatureExtractor = FeatureExtractor()
        self._fast_path = fast_path
        self._kernel: _Kernel | None = None
        self._window = int(self.cfg["HMM_INFERENCE_WINDOW"])
        self._filter = self._new_filter()

    @property
    def trained(self) -> bool:
        """Whether a model is installed (else every verdict is the neutral RANGING default)."""
        return self._trained

    @property
    def window(self) -> int:
        """HMM_INFERENCE_WINDOW: observations (bars) per inference; 0 = all history."""
        return self._window

    # ---- training

    def train(
        self,
        closes: Sequence[float] | np.ndarray,
        volumes: Sequence[float] | np.ndarray,
        now_ms: int | None = None,
    ) -> bool:
        """Fit on the last ``HMM_TRAINING_CANDLES`` candles and install the model; False (logged) when refused.

        Refused without hmmlearn, on bad input, with fewer than
        ``HMM_MIN_TRAIN_SAMPLES`` feature rows, or when fitting fails; the
        detector then keeps what it had (neutral RANGING if never trained).
        """
        if not HMM_AVAILABLE:
            log.warning("HMM training skipped: hmmlearn is not installed; regime stays RANGING, bias 0")
            return False
        try:
            c, v = _as_series(closes, volumes)
        except ValueError as exc:
            log.warning("HMM training refused: %s", exc)
            return False
        n_train = int(self.cfg["HMM_TRAINING_CANDLES"])
        if 0 < n_train < len(c):
            c, v = c[-n_train:], v[-n_train:]
        rows = usable_rows(len(c))
        needed = int(self.cfg["HMM_MIN_TRAIN_SAMPLES"])
        if rows < needed:
            log.warning("HMM training refused: %d feature rows from %d candles, need %d", rows, len(c), needed)
            return False
        try:
            model = fit_model(c, v, self.cfg, previous=self.model, now_ms=now_ms)
        except Exception:  # a failed fit (sklearn/hmmlearn internals included) must never take the service down
            log.exception("HMM training failed; keeping the previous state")
            return False
        return self.install(model, c, v)

    def install(
        self,
        model: TrainedModel,
        closes: Sequence[float] | np.ndarray,
        volumes: Sequence[float] | np.ndarray,
    ) -> bool:
        """Adopt ``model`` (trained here or elsewhere) and replay ``closes``/``volumes`` through it.

        The history should end at the latest candle: features and filter are
        rebuilt from it, so afterwards the filtered probabilities equal
        ``predict_proba(X)[-1]`` (or over the last N rows in window mode) for the
        features X of that history. False (logged, nothing changed) when the
        model is garbage or does not fit the config, or the history is bad.
        """
        reason = validate_model(model, int(self.cfg["HMM_N_STATES"]), str(self.cfg["HMM_COVARIANCE_TYPE"]))
        if reason is not None:
            log.error("HMM model refused: %s", reason)
            return False
        try:
            c, v = _as_series(closes, volumes)
            kernel = _Kernel(model, self._fast_path)
            extractor = FeatureExtractor()
            flt = self._new_filter()
            for close, volume in zip(c.tolist(), v.tolist(), strict=True):
                row = extractor.step_values(close, volume)
                if row is not None:
                    self._observe(kernel, flt, row)
            state = RegimeState() if not _has_posterior(flt) else self._verdict(kernel, flt, 0)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            log.error("HMM model refused: replaying history failed: %s", exc)
            return False
        self._commit(model, kernel, extractor, flt, state)
        log.info(
            "HMM model installed: %d states, %s, %d samples, log-likelihood %.3f, labels %s",
            model.n_states,
            model.covariance_type,
            model.n_samples,
            model.log_likelihood,
            [Regime(lab).name for lab in model.label_order],
        )
        return True

    def needs_retrain(self, now_ms: int | None = None) -> bool:
        """True when untrained or the model is at least HMM_RETRAIN_INTERVAL_SEC old (``now_ms``: ms UTC)."""
        if not self._trained or self.model is None:
            return True
        now = _now_ms() if now_ms is None else now_ms
        return now - self.model.trained_at >= float(self.cfg["HMM_RETRAIN_INTERVAL_SEC"]) * 1000.0

    def note_gap(self, missing_bars: float) -> bool:
        """Tell the detector ``missing_bars`` bars are missing before the next candle; cold-starts stale EMAs.

        Returns whether the features were reset (gap > ``STALE_GAP_BARS``). The
        filter keeps its probabilities; it resumes once the features have warmed up.
        """
        if FeatureExtractor.gap_is_stale(missing_bars):
            log.info("HMM features cold-start after a gap of %s bars", missing_bars)
            self.features.reset()
            return True
        return False

    # ---- inference

    def update(self, close: float, volume: float) -> RegimeState:
        """Take in one closed candle (price, base-asset volume) and return the new state.

        Untrained or warming up: the neutral state, with ``observation_count``
        advancing. A bad candle or a failure inside inference is logged and the
        last valid state is returned unchanged.
        """
        try:
            row = self.features.step_values(close, volume)
        except ValueError as exc:
            log.warning("HMM update skipped a candle: %s", exc)
            return self.state
        count = self.state.observation_count + 1
        kernel = self._kernel
        if kernel is None or row is None:
            self.state = replace(self.state, observation_count=count)
            return self.state
        try:
            flt = self._filter
            if self._window > 0:
                # Work on copies: a failure must leave the window as it was.
                trial = _Filter(None, deque(flt.window, self._window), deque(flt.window_log_e, self._window))
                self._observe(kernel, trial, row)
                state = self._verdict(kernel, trial, count)
                self._filter = trial
            else:
                z = kernel.standardise(row)
                alpha = kernel.forward(flt.alpha, kernel.log_emission(z))
                state = kernel.verdict(alpha, float(self.cfg["HMM_BIAS_GAIN"]), self._threshold, count)
                flt.alpha = alpha
        except Exception:  # seed §5: whatever breaks inside inference, the bot keeps the last valid state
            log.exception("HMM inference failed; returning the last valid state")
            return self.state
        self.state = state
        return state

    # ---- internals

    @property
    def _threshold(self) -> float:
        return float(self.cfg["HMM_CONFIDENCE_THRESHOLD"])

    def _new_filter(self) -> _Filter:
        n = self.window
        return _Filter(None, deque(maxlen=n or None), deque(maxlen=n or None))

    def _observe(self, kernel: _Kernel, flt: _Filter, row: Sequence[float]) -> None:
        z = kernel.standardise(row)
        log_e = kernel.log_emission(z)
        if self.window > 0:
            flt.window.append(z)
            flt.window_log_e.append(log_e)
        else:
            flt.alpha = kernel.forward(flt.alpha, log_e)

    def _verdict(self, kernel: _Kernel, flt: _Filter, count: int) -> RegimeState:
        if self.window > 0:
            alpha: list[float] | None = None
            for log_e in flt.window_log_e:
                alpha = kernel.forward(alpha, log_e)
            flt.alpha = alpha
        if flt.alpha is None:
            raise FloatingPointError("no observation to filter")
        return kernel.verdict(flt.alpha, float(self.cfg["HMM_BIAS_GAIN"]), self._threshold, count)

    def _commit(
        self,
        model: TrainedModel,
        kernel: _Kernel,
        extractor: FeatureExtractor,
        flt: _Filter,
        state: RegimeState,
    ) -> None:
        self.model = model
        self._kernel = kernel
        self.features = extractor
        self._filter = flt
        self.state = state
        self._trained = True


def _has_posterior(flt: _Filter) -> bool:
    return flt.alpha is not None or len(flt.window) > 0


# --------------------------------------------------------------------------- snapshots


def serialize_for_snapshot(detector: RegimeDetector) -> dict[str, Any]:
    """``{"_hmm_regime_state": {...}}`` of plain msgpack/JSON-safe values (no numpy, no pickle).

    Layout: ``format`` (int), ``config`` (the shaping keys HMM_N_STATES,
    HMM_COVARIANCE_TYPE, HMM_INFERENCE_WINDOW), ``trained`` (bool), ``model``
    (:meth:`TrainedModel.to_dict` or None), ``features`` (``spec`` + extractor
    ``state``), ``filter`` (``alpha``: K floats or None; ``window``: list of
    standardised 4-float rows, oldest first), ``state`` (RegimeState with the
    regime by name).
    """
    flt = detector._filter
    st = detector.state
    body: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "config": {key: _plain(detector.cfg[key]) for key in _SHAPING_KEYS},
        "trained": bool(detector._trained),
        "model": detector.model.to_dict() if detector._trained and detector.model is not None else None,
        "features": {"spec": list(FEATURE_SPEC), "state": detector.features.state_dict()},
        "filter": {
            "alpha": None if flt.alpha is None else [float(p) for p in flt.alpha],
            "window": [[float(x) for x in z] for z in flt.window],
        },
        "state": {
            "regime": Regime(st.regime).name,
            "probabilities": [float(p) for p in st.probabilities],
            "confidence": float(st.confidence),
            "bias_signal": float(st.bias_signal),
            "observation_count": int(st.observation_count),
        },
    }
    return {SNAPSHOT_KEY: body}


def restore_from_snapshot(detector: RegimeDetector, snapshot: Mapping[str, Any]) -> bool:
    """Load ``snapshot[SNAPSHOT_KEY]`` into ``detector``; False (logged, detector unchanged) when refused.

    Refused when the key is missing, the snapshot is malformed, its shaping
    config or feature spec differs from the detector's, or its model is
    garbage. After a successful restore the next :meth:`RegimeDetector.update`
    gives what an uninterrupted detector would have given. An untrained
    snapshot restores the feature warm-up only; check ``needs_retrain``.
    """
    try:
        body = snapshot[SNAPSHOT_KEY]
        parsed = _parse_snapshot(detector, body)
    except (KeyError, TypeError, ValueError, IndexError, FloatingPointError, np.linalg.LinAlgError) as exc:
        log.warning("HMM snapshot refused: %s: %s", type(exc).__name__, exc)
        return False
    model, kernel, extractor, flt, state = parsed
    if model is None or kernel is None:
        # The snapshotted detector had no model: so has this one now (it must retrain), warm features kept.
        detector.model = None
        detector._kernel = None
        detector._trained = False
        detector._filter = flt
        detector.features = extractor
        detector.state = state
        log.info("HMM snapshot restored (untrained: feature warm-up only)")
        return True
    detector._commit(model, kernel, extractor, flt, state)
    log.info(
        "HMM snapshot restored: model trained at %d ms, %d observations", model.trained_at, state.observation_count
    )
    return True


def _parse_snapshot(
    detector: RegimeDetector, body: Any
) -> tuple[TrainedModel | None, _Kernel | None, FeatureExtractor, _Filter, RegimeState]:
    if not isinstance(body, Mapping):
        raise TypeError("snapshot body is not a map")
    if body["format"] != SNAPSHOT_FORMAT:
        raise ValueError(f"snapshot format {body['format']!r}, expected {SNAPSHOT_FORMAT}")
    cfg = body["config"]
    for key in _SHAPING_KEYS:
        if cfg[key] != detector.cfg[key]:
            raise ValueError(f"snapshot {key}={cfg[key]!r} does not fit the configured {detector.cfg[key]!r}")
    feats = body["features"]
    if list(feats["spec"]) != list(FEATURE_SPEC):
        raise ValueError(f"snapshot feature spec {feats['spec']!r} != {list(FEATURE_SPEC)}")
    extractor = FeatureExtractor.from_state(feats["state"])
    state = _parse_state(body["state"])
    trained = body["trained"]
    if not isinstance(trained, bool):
        raise TypeError("trained must be a bool")
    flt = detector._new_filter()
    if not trained:
        return None, None, extractor, flt, replace(RegimeState(), observation_count=state.observation_count)
    model = TrainedModel.from_dict(body["model"])
    reason = validate_model(model, int(detector.cfg["HMM_N_STATES"]), str(detector.cfg["HMM_COVARIANCE_TYPE"]))
    if reason is not None:
        raise ValueError(f"model: {reason}")
    kernel = _Kernel(model, detector._fast_path)
    k = model.n_states
    raw_filter = body["filter"]
    alpha_raw = raw_filter["alpha"]
    if alpha_raw is not None:
        alpha = _number_array(alpha_raw, (k,))
        if not (np.all(np.isfinite(alpha)) and np.all(alpha >= 0) and abs(float(alpha.sum()) - 1.0) < 1e-6):
            raise ValueError("filter alpha is not a probability vector")
        flt.alpha = [float(p) for p in alpha_raw]
    window_raw = raw_filter["window"]
    if not isinstance(window_raw, list):
        raise TypeError("filter window must be a list")
    n = detector.window
    if n == 0 and window_raw:
        raise ValueError("a window in a snapshot taken without HMM_INFERENCE_WINDOW")
    if n > 0 and len(window_raw) > n:
        raise ValueError(f"window of {len(window_raw)} rows exceeds HMM_INFERENCE_WINDOW={n}")
    for row in window_raw:
        arr = _number_array(row, (N_FEATURES,))
        if not np.all(np.isfinite(arr)):
            raise ValueError("window holds NaN or infinity")
        z = tuple(float(x) for x in row)
        flt.window.append(z)
        flt.window_log_e.append(kernel.log_emission(z))
    return model, kernel, extractor, flt, state


def _parse_state(raw: Mapping[str, Any]) -> RegimeState:
    regime = Regime[raw["regime"]] if isinstance(raw["regime"], str) else None
    if regime is None:
        raise TypeError("state regime must be a name")
    probs = raw["probabilities"]
    if not isinstance(probs, list | tuple) or len(probs) != 3:
        raise ValueError("state probabilities must be 3 numbers")
    p = tuple(_finite_float(x, "probability") for x in probs)
    if min(p) < 0.0 or max(p) > 1.0 or abs(sum(p) - 1.0) > 1e-6:
        raise ValueError(f"state probabilities {p} are not a distribution")
    count = raw["observation_count"]
    if not _is_int(count) or count < 0:
        raise ValueError("observation_count must be an int >= 0")
    bias = _finite_float(raw["bias_signal"], "bias_signal")
    if not -1.0 <= bias <= 1.0:
        raise ValueError("bias_signal outside [-1, 1]")
    return RegimeState(regime, (p[0], p[1], p[2]), _finite_float(raw["confidence"], "confidence"), bias, int(count))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite_float(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def _number_array(obj: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Nested lists of int/float (nothing else: no strings, bools or None) of exactly ``shape``."""

    def check(node: Any, depth: int) -> None:
        if depth == len(shape):
            if isinstance(node, bool) or not isinstance(node, int | float):
                raise TypeError(f"expected a number, got {node!r}")
            return
        if not isinstance(node, list | tuple) or len(node) != shape[depth]:
            raise ValueError(f"expected a list of {shape[depth]} at depth {depth}, shape {shape}")
        for child in node:
            check(child, depth + 1)

    check(obj, 0)
    return np.array(obj, dtype=np.float64).reshape(shape)


def _plain(value: Any) -> Any:
    """Config value as a msgpack-safe scalar (numpy scalars become Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------- consumers
