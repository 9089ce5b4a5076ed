"""The detector as plain msgpack/JSON-safe values (no numpy, no pickle), and back."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

import numpy as np

from shared.domain.config import HmmConfig
from shared.domain.confirm import Confirmation
from shared.domain.hmm.detector import RegimeDetector
from shared.domain.hmm.features import FEATURE_SPEC, N_FEATURES, FeatureExtractor
from shared.domain.hmm.kernel import FilterState, Kernel
from shared.domain.hmm.model import TrainedModel, validate_model
from shared.domain.sizing import Regime, RegimeState
from shared.domain.stored import finite_float, is_int, number_array

log = logging.getLogger(__name__)


SNAPSHOT_KEY: Final[str] = "_hmm_regime_state"
SNAPSHOT_FORMAT: Final[int] = 1

# Settings that change the meaning of a stored model or filter state: a snapshot
# taken under other values is refused.
_SHAPING_KEYS: Final[tuple[str, ...]] = ("HMM_N_STATES", "HMM_COVARIANCE_TYPE", "HMM_INFERENCE_WINDOW")


# --------------------------------------------------------------------------- snapshots


def serialize_for_snapshot(detector: RegimeDetector) -> dict[str, Any]:
    """``{"_hmm_regime_state": {...}}`` of plain msgpack/JSON-safe values (no numpy, no pickle).

    Layout: ``format`` (int), ``config`` (the shaping keys HMM_N_STATES,
    HMM_COVARIANCE_TYPE, HMM_INFERENCE_WINDOW), ``trained`` (bool), ``model``
    (:meth:`TrainedModel.to_dict` or None), ``features`` (``spec`` + extractor
    ``state``), ``filter`` (``alpha``: K floats or None; ``window``: list of
    standardised 4-float rows, oldest first), ``state`` (RegimeState with the
    regimes by name), ``confirm`` (the regime's confirmation: ``label``,
    ``candidate`` by name or None, ``run`` in bars). Snapshots written before
    ``confirm`` and the raw verdict existed restore with the stored regime in force.
    """
    flt = detector.filter_state
    st = detector.state
    body: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "config": _shaping(detector.cfg),
        "trained": detector.trained,
        "model": detector.model.to_dict() if detector.trained and detector.model is not None else None,
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
            "raw_regime": None if st.raw_regime is None else Regime(st.raw_regime).name,
            "raw_confidence": None if st.raw_confidence is None else float(st.raw_confidence),
        },
        "confirm": detector.confirmation.to_state(),
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
    model, kernel, extractor, flt, state, confirmation = parsed
    if model is None or kernel is None:
        # The snapshotted detector had no model: so has this one now (it must retrain), warm features kept.
        detector.load(None, None, extractor, flt, state, confirmation)
        log.info("HMM snapshot restored (untrained: feature warm-up only)")
        return True
    detector.load(model, kernel, extractor, flt, state, confirmation)
    log.info(
        "HMM snapshot restored: model trained at %d ms, %d observations", model.trained_at, state.observation_count
    )
    return True


def _parse_snapshot(
    detector: RegimeDetector, body: Any
) -> tuple[TrainedModel | None, Kernel | None, FeatureExtractor, FilterState, RegimeState, Confirmation]:
    if not isinstance(body, Mapping):
        raise TypeError("snapshot body is not a map")
    if body["format"] != SNAPSHOT_FORMAT:
        raise ValueError(f"snapshot format {body['format']!r}, expected {SNAPSHOT_FORMAT}")
    cfg = body["config"]
    mine = _shaping(detector.cfg)
    for key in _SHAPING_KEYS:
        if cfg[key] != mine[key]:
            raise ValueError(f"snapshot {key}={cfg[key]!r} does not fit the configured {mine[key]!r}")
    feats = body["features"]
    if list(feats["spec"]) != list(FEATURE_SPEC):
        raise ValueError(f"snapshot feature spec {feats['spec']!r} != {list(FEATURE_SPEC)}")
    extractor = FeatureExtractor.from_state(feats["state"])
    state = _parse_state(body["state"])
    trained = body["trained"]
    if not isinstance(trained, bool):
        raise TypeError("trained must be a bool")
    flt = detector.new_filter()
    confirmation = Confirmation(detector.cfg.confirm_bars)
    if not trained:
        neutral = replace(RegimeState(), observation_count=state.observation_count)
        return None, None, extractor, flt, neutral, confirmation
    if "confirm" in body:
        confirmation.load(body["confirm"], tuple(r.name for r in Regime))
    else:  # written before confirmation: the regime it last reported is the one in force
        confirmation.update(state.regime.name)
    model = TrainedModel.from_dict(body["model"])
    reason = validate_model(model, detector.cfg.n_states, detector.cfg.covariance_type)
    if reason is not None:
        raise ValueError(f"model: {reason}")
    kernel = Kernel(model, detector.fast_path, detector.cfg.evidence_weight)
    k = model.n_states
    raw_filter = body["filter"]
    alpha_raw = raw_filter["alpha"]
    if alpha_raw is not None:
        alpha = number_array(alpha_raw, (k,))
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
        arr = number_array(row, (N_FEATURES,))
        if not np.all(np.isfinite(arr)):
            raise ValueError("window holds NaN or infinity")
        z = tuple(float(x) for x in row)
        flt.window.append(z)
        flt.window_log_e.append(kernel.log_emission(z))
    return model, kernel, extractor, flt, state, confirmation


def _parse_state(raw: Mapping[str, Any]) -> RegimeState:
    regime = Regime[raw["regime"]] if isinstance(raw["regime"], str) else None
    if regime is None:
        raise TypeError("state regime must be a name")
    probs = raw["probabilities"]
    if not isinstance(probs, list | tuple) or len(probs) != 3:
        raise ValueError("state probabilities must be 3 numbers")
    p = tuple(finite_float(x, "probability") for x in probs)
    if min(p) < 0.0 or max(p) > 1.0 or abs(sum(p) - 1.0) > 1e-6:
        raise ValueError(f"state probabilities {p} are not a distribution")
    count = raw["observation_count"]
    if not is_int(count) or count < 0:
        raise ValueError("observation_count must be an int >= 0")
    bias = finite_float(raw["bias_signal"], "bias_signal")
    if not -1.0 <= bias <= 1.0:
        raise ValueError("bias_signal outside [-1, 1]")
    raw_regime = raw.get("raw_regime")
    if raw_regime is not None and not (isinstance(raw_regime, str) and raw_regime in Regime.__members__):
        raise ValueError(f"state raw_regime {raw_regime!r} is not a regime name")
    raw_confidence = raw.get("raw_confidence")
    if raw_confidence is not None:
        raw_confidence = finite_float(raw_confidence, "raw_confidence")
    return RegimeState(
        regime,
        (p[0], p[1], p[2]),
        finite_float(raw["confidence"], "confidence"),
        bias,
        int(count),
        None if raw_regime is None else Regime[raw_regime],
        raw_confidence,
    )


def _shaping(cfg: HmmConfig) -> dict[str, Any]:
    """The shaping keys as a snapshot stores them, in the seed's HMM_* spelling (stored snapshots keep it)."""
    keys = cfg.as_keys()
    return {key: keys[key] for key in _SHAPING_KEYS}
