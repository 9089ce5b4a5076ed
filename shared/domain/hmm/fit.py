"""Baum-Welch training (hmmlearn) into a :class:`TrainedModel`, with labels kept across retrains."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


@functools.lru_cache(maxsize=1)
def _thread_limits() -> Any:
    """threadpoolctl's view of the process' native thread pools, made once (after hmmlearn's import loads them).

    Each ``threadpool_limits(...)`` scans every loaded library again: 15 % of a 2,000-candle fit here.
    """
    from threadpoolctl import ThreadpoolController  # comes with scikit-learn, which hmmlearn requires

    _gaussian_hmm()
    return ThreadpoolController()


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


# Warm start against fresh start (see fit_model): the warm-started fit is kept unless its log-likelihood per
# feature row is below the fresh fit's by more than this (nats per row of 4 standardised features). EM from
# the previous model reaches a local optimum next to it; one a whole WARM_START_MARGIN_NATS per row worse
# than a fresh k-means start means the market moved away from the old partition, not that EM stopped short.
WARM_START_MARGIN_NATS: float = 0.05


def fit_model(
    closes: Sequence[float] | np.ndarray,
    volumes: Sequence[float] | np.ndarray,
    cfg: HmmConfig | Mapping[str, Any],
    previous: TrainedModel | None = None,
    now_ms: int | None = None,
    *,
    warm_start: bool = True,
    fits: tuple[Fitted, Fitted | None] | None = None,
) -> TrainedModel:
    """Baum-Welch fit of a GaussianHMM on the features of a candle history; pure and process-pool safe.

    Uses the last ``HMM_TRAINING_CANDLES`` candles (all when ≤ 0), standardises the
    features with their own mean/std (a zero std becomes 1), and fits
    ``GaussianHMM(HMM_N_STATES, HMM_COVARIANCE_TYPE, n_iter=HMM_N_ITER,
    random_state=HMM_RANDOM_SEED)``: the same input gives the same model.

    First training (no compatible ``previous``): a fresh fit (k-means start),
    states sorted by mean EMA spread (lowest BEARISH, highest BULLISH, the
    rest RANGING).

    Retrain (a ``previous`` model of the same shape): **warm start**. The
    previous model's start probabilities, transition matrix, means and
    covariances are mapped from its standardisation into the new one (means
    ``(μ·σ_old + m_old − m_new) / σ_new``, covariances scaled by
    ``σ_old/σ_new`` per feature; a spherical variance by the mean of the
    squared ratios) and EM continues from there (``init_params=""``,
    ``params="stmc"``), so new state ``i`` is old state ``i`` and keeps its
    label. A fresh fit runs beside it, and wins only when the warm fit's
    log-likelihood per feature row is below the fresh fit's by more than
    :data:`WARM_START_MARGIN_NATS`, or when EM from the old parameters breaks
    down because no row reaches an old state (then the fresh fit's states are
    matched to the old ones by minimum total distance between means, in the previous model's
    standardised units, over all permutations for K ≤ 7). Either way, should
    the kept labels contradict the new spreads (a BULLISH state below a
    BEARISH one: the market changed, not the labelling), the states are
    relabelled, with a warning, as the labelling consistent with the spreads
    that agrees most with the previous model's labels over the window (rather
    than a plain sort by spread, which can rename every state at once).
    ``warm_start=False`` skips the warm fit (the behaviour before it existed;
    benchmarks compare the two). ``fits`` hands in the two EM runs made
    elsewhere by :func:`fit_part` (hmm_regime runs them in two processes at
    once): the result is the same model.

    The model records ``warm_started`` and ``label_agreement``: the fraction of
    the new training window's rows where the previous and the new model's
    Viterbi paths carry the same label (None for a first training).

    ``now_ms`` (ms UTC) stamps ``trained_at``; the clock when None.
    Raises RuntimeError without hmmlearn, ValueError for bad input or fewer
    than ``max(HMM_MIN_TRAIN_SAMPLES, HMM_N_STATES)`` feature rows.
    """
    w = _window(closes, volumes, cfg, previous)
    if fits is not None:
        return _assemble(w, *fits, now_ms)
    fresh = _run(w, "fresh")
    assert fresh is not None  # the fresh run always fits
    return _assemble(w, fresh, _run(w, "warm") if warm_start else None, now_ms)


FitPart = Literal["fresh", "warm"]


def fit_part(
    closes: Sequence[float] | np.ndarray,
    volumes: Sequence[float] | np.ndarray,
    cfg: HmmConfig | Mapping[str, Any],
    previous: TrainedModel | None,
    part: FitPart,
) -> Fitted | None:
    """One of a retrain's two EM runs, for ``fit_model(fits=)``.

    The warm one is None without a usable ``previous``, or when EM from it breaks down.
    """
    return _run(_window(closes, volumes, cfg, previous, quiet=True), part)


@dataclass(frozen=True)
class _Window:
    """A fit's standardised feature rows, its settings, and the previous model if it can seed a warm start."""

    x: np.ndarray
    z: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    k: int
    covariance_type: str
    n_iter: int
    sticky: float
    previous: TrainedModel | None


def _window(
    closes: Sequence[float] | np.ndarray,
    volumes: Sequence[float] | np.ndarray,
    cfg: HmmConfig | Mapping[str, Any],
    previous: TrainedModel | None,
    quiet: bool = False,
) -> _Window:
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
    if previous is not None:
        reason = validate_model(previous, n_states=k, covariance_type=covariance_type)
        if reason is not None:
            if not quiet:
                log.warning("retrain ignores the previous model: %s", reason)
            previous = None
    return _Window(x, (x - mean) / std, mean, std, k, covariance_type, n_iter, merged.transition_stickiness, previous)


def _run(w: _Window, part: FitPart) -> Fitted | None:
    """The fresh fit (states in spread order) or the warm one (None without a previous model, or when EM from
    the previous model's parameters breaks down)."""
    if part == "fresh":
        fresh = _fit(w.z, w.k, w.covariance_type, w.n_iter, None, w.sticky)
        order = np.argsort(fresh.means[:, 0], kind="stable").tolist()
        return fresh.permuted(order, w.covariance_type)
    if w.previous is None:
        return None
    start = _warm_params(w.previous, w.mean, w.std)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            return _fit(w.z, w.k, w.covariance_type, w.n_iter, start, w.sticky)
    except ValueError as exc:
        # An old state no row of the new window reaches gets no weight in the E-step, and hmmlearn's M-step
        # divides by that zero (NaN means, then a NaN start vector it refuses). That warm start is as bad as
        # one can be: the fresh fit, matched to the old states, is kept instead of failing the retrain.
        log.info("retrain: the warm start failed (%s); the fresh fit is kept", exc)
        return None


def _chosen(w: _Window, fresh: Fitted, warm_fit: Fitted | None) -> tuple[Fitted, bool]:
    """The fit kept (the warm one unless clearly worse, else the fresh one matched to the old states), warm or not."""
    previous = w.previous
    if previous is None:
        return fresh, False
    n = len(w.z)
    if warm_fit is not None and warm_fit.log_likelihood / n >= fresh.log_likelihood / n - WARM_START_MARGIN_NATS:
        return warm_fit, True
    if warm_fit is not None:
        log.info(
            "retrain: warm start %.4f nats/row is below the fresh fit's %.4f by more than %.2f; fresh fit kept",
            warm_fit.log_likelihood / n,
            fresh.log_likelihood / n,
            WARM_START_MARGIN_NATS,
        )
    in_prev_units = (fresh.means * w.std + w.mean - previous.scaler_mean) / previous.scaler_std
    cost = np.linalg.norm(in_prev_units[:, None, :] - previous.means[None, :, :], axis=2)
    slot = _match_states(cost)
    inverse = [0] * w.k
    for new_i, old_j in enumerate(slot):
        inverse[old_j] = new_i
    return fresh.permuted(inverse, w.covariance_type), False


def _assemble(w: _Window, fresh: Fitted, warm_fit: Fitted | None, now_ms: int | None) -> TrainedModel:
    """The model of the fit kept, its labels checked against the new spreads and its agreement recorded."""
    previous = w.previous
    chosen, warm = _chosen(w, fresh, warm_fit)
    model = TrainedModel(
        covariance_type=w.covariance_type,
        startprob=chosen.startprob,
        transmat=chosen.transmat,
        means=chosen.means,
        covars=chosen.covars,
        scaler_mean=w.mean,
        scaler_std=w.std,
        label_order=_labels_by_spread(fresh.means[:, 0]) if previous is None else previous.label_order,
        trained_at=now_ms_utc() if now_ms is None else int(now_ms),
        n_samples=len(w.x),
        log_likelihood=chosen.log_likelihood,
        warm_started=warm,
    )
    if previous is None:
        return model
    # The previous model's labels and the new model's states along their Viterbi paths over this window:
    # what the labels are judged by, and what the recorded agreement is.
    old_labels = viterbi_labels(previous, w.x)
    new_states = np.asarray(as_hmmlearn(model).predict(w.z), dtype=np.intp)
    spread_raw = chosen.means[:, 0] * w.std[0] + w.mean[0]
    if not _labels_agree_with_spread(previous.label_order, spread_raw):
        labels = _closest_consistent_labels(spread_raw, old_labels, new_states)
        log.warning(
            "retrain: kept labels %s contradict the new state spreads %s; relabelled as %s, the labelling "
            "consistent with the spreads that agrees most with the previous model",
            previous.label_order,
            spread_raw.tolist(),
            labels,
        )
        model = dataclasses.replace(model, label_order=labels)
    agreement = float(np.mean(np.asarray(model.label_order, dtype=np.int64)[new_states] == old_labels))
    return dataclasses.replace(model, label_agreement=agreement)


def _closest_consistent_labels(spreads: np.ndarray, old_labels: np.ndarray, new_states: np.ndarray) -> tuple[int, ...]:
    """The labelling (one BEARISH, one BULLISH, the rest RANGING) whose BULLISH state's spread exceeds the
    BEARISH one's and whose labels of ``new_states`` agree most with ``old_labels``.

    A plain sort by spread could rename every state at once; this renames as few rows as the spreads allow.
    Ties go to the sort by spread, then to the first found (BEARISH state, then BULLISH state, by index).
    """
    k = len(spreads)
    by_spread = _labels_by_spread(spreads)
    if k < 2:
        return by_spread
    best, best_score = by_spread, -1
    for bear in range(k):
        for bull in range(k):
            if bull == bear or not spreads[bull] > spreads[bear]:
                continue
            labels = [int(Regime.RANGING)] * k
            labels[bear], labels[bull] = int(Regime.BEARISH), int(Regime.BULLISH)
            score = int(np.sum(np.asarray(labels)[new_states] == old_labels))
            candidate = tuple(labels)
            if score > best_score or (score == best_score and candidate == by_spread):
                best, best_score = candidate, score
    return best


@dataclass(frozen=True)
class Fitted:
    """One Baum-Welch result, in TrainedModel's array forms; ``log_likelihood`` in nats over all rows."""

    startprob: np.ndarray
    transmat: np.ndarray
    means: np.ndarray
    covars: np.ndarray
    log_likelihood: float

    def permuted(self, order: Sequence[int], covariance_type: str) -> Fitted:
        startprob, transmat, means, covars = _permuted(
            order, self.startprob, self.transmat, self.means, self.covars, covariance_type
        )
        return Fitted(startprob, transmat, means, covars, self.log_likelihood)


def _fit(
    z: np.ndarray,
    k: int,
    covariance_type: str,
    n_iter: int,
    start: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None,
    stickiness: float = 0.0,
) -> Fitted:
    """EM on standardised rows ``z``: from a k-means start (``start`` None) or from the given parameters.

    ``stickiness`` (bars, ``HMM_TRANSITION_STICKINESS``) is added to the diagonal of hmmlearn's
    ``transmat_prior`` (1 elsewhere: no pull between different states), so the M-step counts that
    many extra stays in every state: MAP instead of maximum likelihood for the transition matrix.
    """
    prior = 1.0 + stickiness * np.eye(k)
    if start is None:
        hmm = _gaussian_hmm()(
            n_components=k,
            covariance_type=covariance_type,
            n_iter=n_iter,
            random_state=HMM_RANDOM_SEED,
            transmat_prior=prior,
        )
    else:
        hmm = _gaussian_hmm()(
            n_components=k,
            covariance_type=covariance_type,
            n_iter=n_iter,
            random_state=HMM_RANDOM_SEED,
            init_params="",
            params="stmc",
            transmat_prior=prior,
        )
        hmm.n_features = N_FEATURES
        hmm.startprob_, hmm.transmat_, hmm.means_, hmm.covars_ = start
    # One OpenMP thread: on a few thousand 4-feature rows, scikit-learn's threaded KMeans init spends
    # its time synchronising (measured 30x slower with 2 threads), and pools parallelise across fits anyway.
    with _thread_limits().limit(limits=1, user_api="openmp"):
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
    return Fitted(startprob, transmat, means, covars, log_likelihood)


def _warm_params(
    previous: TrainedModel, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The previous model's parameters in the new standardisation (``mean``/``std`` of the new window)."""
    ratio = previous.scaler_std / std  # old standardised unit, in new ones, per feature
    means = (previous.means * previous.scaler_std + previous.scaler_mean - mean) / std
    ct = previous.covariance_type
    if ct == "diag":
        covars = previous.covars * ratio**2
    elif ct == "spherical":
        # One variance per state cannot follow per-feature rescaling exactly: the mean of the scaled ones.
        covars = previous.covars * float(np.mean(ratio**2))
    elif ct == "full":
        covars = previous.covars * np.outer(ratio, ratio)[None, :, :]
    else:  # tied
        covars = previous.covars * np.outer(ratio, ratio)
    return np.array(previous.startprob), np.array(previous.transmat), means, covars


def viterbi_labels(model: TrainedModel, features: np.ndarray) -> np.ndarray:
    """The Regime label of every row of raw ``features`` (n, 4) along the model's Viterbi path."""
    states = as_hmmlearn(model).predict(model.standardise(features))
    labels: np.ndarray = np.asarray(model.label_order, dtype=np.int64)[states]
    return labels


def label_agreement(old: TrainedModel, new: TrainedModel, features: np.ndarray) -> float:
    """Fraction (0..1) of rows of raw ``features`` where both models' Viterbi paths give the same label."""
    if len(features) == 0:
        return 1.0
    return float(np.mean(viterbi_labels(old, features) == viterbi_labels(new, features)))


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
