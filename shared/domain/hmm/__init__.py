"""HMM regime detector core (seed 003), one module per job: features, model, fit, kernel, detector, snapshot.

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

from shared.domain.config import COVARIANCE_TYPES, HmmConfig
from shared.domain.hmm.detector import RegimeDetector, depth_factor
from shared.domain.hmm.features import (
    FEATURE_NAMES,
    N_FEATURES,
    SLOW_EMA_HALFLIFE_BARS,
    STALE_GAP_BARS,
    WARMUP_BARS,
    FeatureExtractor,
    usable_rows,
)
from shared.domain.hmm.fit import (
    HMM_AVAILABLE,
    WARM_START_MARGIN_NATS,
    Fitted,
    as_hmmlearn,
    fit_model,
    fit_part,
    label_agreement,
)
from shared.domain.hmm.model import HMM_RANDOM_SEED, TrainedModel, validate_model
from shared.domain.hmm.snapshot import SNAPSHOT_KEY, restore_from_snapshot, serialize_for_snapshot
from shared.domain.sizing import (  # the seed's names live here too
    GRID_BIAS_MAX_ADJUST,
    GRID_SIZE_SKEW_SCALE,
    Regime,
    RegimeState,
    compute_blended_idle_target,
    compute_grid_bias,
)

__all__ = [
    "COVARIANCE_TYPES",
    "FEATURE_NAMES",
    "GRID_BIAS_MAX_ADJUST",
    "GRID_SIZE_SKEW_SCALE",
    "HMM_AVAILABLE",
    "HMM_RANDOM_SEED",
    "N_FEATURES",
    "SLOW_EMA_HALFLIFE_BARS",
    "SNAPSHOT_KEY",
    "STALE_GAP_BARS",
    "WARMUP_BARS",
    "WARM_START_MARGIN_NATS",
    "FeatureExtractor",
    "Fitted",
    "HmmConfig",
    "Regime",
    "RegimeDetector",
    "RegimeState",
    "TrainedModel",
    "as_hmmlearn",
    "compute_blended_idle_target",
    "compute_grid_bias",
    "depth_factor",
    "fit_model",
    "fit_part",
    "label_agreement",
    "restore_from_snapshot",
    "serialize_for_snapshot",
    "usable_rows",
    "validate_model",
]
