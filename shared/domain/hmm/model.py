"""A fitted Gaussian HMM as plain arrays: validation, (de)serialisation, and the checks on stored plain values."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from shared.domain.config import COVARIANCE_TYPES
from shared.domain.hmm.features import N_FEATURES, WARMUP_BARS
from shared.domain.stored import finite_float, is_int, number_array

log = logging.getLogger(__name__)

HMM_RANDOM_SEED: Final[int] = 20260215  # fixed so training is reproducible


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
    - ``warm_started``: whether EM started from the previous model (else from k-means).
    - ``label_agreement``: fraction (0..1) of the training rows where the previous
      model's Viterbi labels equal this one's; None for a first training.
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
    warm_started: bool = False
    label_agreement: float | None = None

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

    @property
    def training_candles(self) -> int:
        """Candles in the training window (bars): the feature rows plus the extractor's warm-up."""
        return self.n_samples + WARMUP_BARS - 1

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """Raw feature rows (n, 4) → standardised rows, as the model was trained on."""
        z: np.ndarray = (np.asarray(features, dtype=np.float64) - self.scaler_mean) / self.scaler_std
        return z

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
            "warm_started": bool(self.warm_started),
            "label_agreement": None if self.label_agreement is None else float(self.label_agreement),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainedModel:
        """Inverse of :meth:`to_dict`; ValueError/KeyError/TypeError on malformed input (not validated further)."""
        k = data["n_states"]
        d = data["n_features"]
        ct = data["covariance_type"]
        if not (is_int(k) and k >= 1 and is_int(d) and d == N_FEATURES):
            raise ValueError(f"bad model dimensions n_states={k!r} n_features={d!r}")
        if ct not in COVARIANCE_TYPES:
            raise ValueError(f"unknown covariance_type {ct!r}")
        labels = data["label_order"]
        if not isinstance(labels, list | tuple) or not all(is_int(v) for v in labels):
            raise ValueError("label_order must be a list of ints")
        for key in ("trained_at", "n_samples"):
            if not is_int(data[key]):
                raise ValueError(f"{key} must be an int")
        # Absent in models stored before warm starts: such a model was fitted fresh, with no agreement recorded.
        warm = data.get("warm_started", False)
        if not isinstance(warm, bool):
            raise ValueError("warm_started must be a bool")
        agreement = data.get("label_agreement")
        if agreement is not None:
            agreement = finite_float(agreement, "label_agreement")
            if not 0.0 <= agreement <= 1.0:
                raise ValueError(f"label_agreement {agreement} outside [0, 1]")
        return cls(
            covariance_type=ct,
            startprob=number_array(data["startprob"], (k,)),
            transmat=number_array(data["transmat"], (k, k)),
            means=number_array(data["means"], (k, d)),
            covars=number_array(data["covars"], _covars_shape(ct, k, d)),
            scaler_mean=number_array(data["scaler_mean"], (d,)),
            scaler_std=number_array(data["scaler_std"], (d,)),
            label_order=tuple(labels),
            trained_at=int(data["trained_at"]),
            n_samples=int(data["n_samples"]),
            log_likelihood=finite_float(data["log_likelihood"], "log_likelihood"),
            warm_started=warm,
            label_agreement=agreement,
        )


def _covars_shape(covariance_type: str, k: int, d: int) -> tuple[int, ...]:
    return {"spherical": (k,), "diag": (k, d), "full": (k, d, d), "tied": (d, d)}[covariance_type]


def full_covars(model: TrainedModel) -> np.ndarray:
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
        full = full_covars(model)
        if not np.allclose(full, np.swapaxes(full, 1, 2), rtol=1e-9, atol=1e-12):
            return "covariance matrices are not symmetric"
        try:
            np.linalg.cholesky(full)
        except np.linalg.LinAlgError:
            return "covariance matrices are not positive definite"
    if len(model.label_order) != k or any(v not in (0, 1, 2) for v in model.label_order):
        return f"label_order {model.label_order} does not map {k} states to regimes"
    return None
