"""The forward filter's arithmetic for one model: standardise, log-emission, forward step, verdict."""

from __future__ import annotations

import logging
import math
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from shared.domain.hmm.model import TrainedModel, full_covars
from shared.domain.sizing import Regime, RegimeState

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inference kernel

_LOG_2PI: Final[float] = math.log(2.0 * math.pi)
FAST_PATH_MAX_STATES: Final[int] = 4  # beyond this, numpy's per-call overhead is cheaper than Python loops


class Kernel:
    """Per-model inference constants, derived once from a validated model (never serialised).

    Two implementations of the same arithmetic: plain Python floats for small K
    with diagonal/spherical covariances (a 3-state step is a few dozen float
    operations, unrolled over the 4 features; numpy's per-call overhead would
    dominate), numpy for everything else. Both agree with hmmlearn to rounding.

    ``evidence_weight`` (``HMM_EVIDENCE_WEIGHT``, fraction in (0, 1]) scales
    every log-emission: the filter then counts that share of each bar's
    evidence (a tempered likelihood). At 1 the arithmetic is hmmlearn's.
    """

    def __init__(self, model: TrainedModel, fast: bool, evidence_weight: float = 1.0) -> None:
        if not 0.0 < evidence_weight <= 1.0:
            raise ValueError(f"evidence_weight must be in (0, 1], got {evidence_weight}")
        k, d = model.means.shape
        self.k = k
        self.weight = evidence_weight
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
            w = evidence_weight  # folded into the constants: no cost per bar, and exact at 1
            log_norm = (w * (-0.5 * (d * _LOG_2PI + np.log(var).sum(axis=1)))).tolist()
            # Per state: 4 means, 4 × weight × 0.5/variance, weight × log normaliser.
            self.fast_states = tuple(
                (*mu, *hp, c)
                for mu, hp, c in zip(model.means.tolist(), (w * (0.5 / var)).tolist(), log_norm, strict=True)
            )
        else:
            chol = np.linalg.cholesky(full_covars(model))
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
        """``evidence_weight`` × log N(z | mean_k, cov_k) per state k (nats)."""
        if self.fast:
            z0, z1, z2, z3 = z
            return [
                c - (d0 := z0 - m0) * d0 * h0 - (d1 := z1 - m1) * d1 * h1 - (d2 := z2 - m2) * d2 * h2
                - (d3 := z3 - m3) * d3 * h3
                for m0, m1, m2, m3, h0, h1, h2, h3, c in self.fast_states
            ]  # fmt: skip
        diff = np.asarray(z, dtype=np.float64)[None, :] - self.np_means
        y = np.einsum("kij,kj->ki", self.prec_chol, diff)
        log_e = self.np_log_norm - 0.5 * np.einsum("ki,ki->k", y, y)
        out: list[float] = (log_e if self.weight == 1.0 else self.weight * log_e).tolist()
        return out

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
                out: list[float] = (new_np / total).tolist()
                return out
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
        out: list[float] = (p / p.sum()).tolist()
        return out

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
        out: np.ndarray = np.log(np.exp(a - safe).sum(axis=0)) + safe
    return out


@dataclass
class FilterState:
    """Forward-filter state: mode 0 keeps ``alpha``; window mode keeps the last N observations."""

    alpha: list[float] | None = None  # filtered state probabilities after the last observation
    window: deque[tuple[float, ...]] = field(default_factory=deque)  # standardised features, oldest first
    window_log_e: deque[list[float]] = field(default_factory=deque)  # their log-emissions (cache)
