"""Baum-Welch training (hmmlearn) into a :class:`TrainedModel`, with labels kept across retrains."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.domain.config import COVARIANCE_TYPES, HmmConfig
from shared.domain.hmm.features import N_FEATURES, FeatureExtractor, as_series
from shared.domain.hmm.model import HMM_RANDOM_SEED, TrainedModel, validate_model
from shared.domain.sizing import Regime

log = logging.getLogger(__name__)


# Whether hmmlearn can be imported; the import itself (with scikit-learn and scipy, ~150 MB and seconds of
# CPU) waits until a model is fitted, so the service's own process, which only filters, never pays it.
# Without hmmlearn the bot runs trend-only (seed §5).
HMM_AVAILABLE: bool = importlib.util.find_spec("hmmlearn") is not None


def _gaussian_hmm() -> Any:
    from hmmlearn.hmm import GaussianHMM

    return GaussianHMM


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


def now_ms_utc() -> int:
    return int(time.time() * 1000)


def fit_model(
    closes: Sequence[float] | np.ndarray,
    volumes: Sequence[float] | np.ndarray,
    cfg: HmmConfig | Mapping[str, Any],
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
    merged = as_hmm_config(cfg)
    k = merged.n_states
    covariance_type = merged.covariance_type
    n_iter = merged.n_iter
    if k < 1 or covariance_type not in COVARIANCE_TYPES or n_iter < 1:
        raise ValueError(f"bad HMM settings n_states={k} covariance_type={covariance_type!r} n_iter={n_iter}")
    c, v = as_series(closes, volumes)
    n_train = merged.training_candles
    if 0 < n_train < len(c):
        c, v = c[-n_train:], v[-n_train:]
    x = FeatureExtractor().batch(c, v)
    needed = max(merged.min_train_samples, k, 2)
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
        trained_at=now_ms_utc() if now_ms is None else int(now_ms),
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


def as_hmm_config(cfg: HmmConfig | Mapping[str, Any] | None) -> HmmConfig:
    """``cfg`` itself, or HMM_* keys validated into one (the seed's dict spelling, as tests and backtests write it)."""
    return cfg if isinstance(cfg, HmmConfig) else HmmConfig.from_keys(cfg or {})
