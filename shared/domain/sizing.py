"""The HMM verdict's plain types and what the screener derives from them (seed 003 §2.3): no numpy.

Kept apart from :mod:`shared.domain.hmm` so that the screener, which only blends and
advises, never loads numpy, hmmlearn or scikit-learn (about 150 MB of memory
per process). :mod:`shared.domain.hmm` re-exports every name, as the seed spells them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from shared.domain.contracts import GridBias


class Regime(IntEnum):
    """Market regime; the value is the index into ``RegimeState.probabilities``."""

    BEARISH = 0
    RANGING = 1
    BULLISH = 2


NEUTRAL_PROBABILITIES: Final[tuple[float, float, float]] = (0.0, 1.0, 0.0)


@dataclass(frozen=True, slots=True)
class RegimeState:
    """What the detector believes after the last candle.

    The default is the neutral verdict (seed §5: "Default RegimeState is RANGING
    with 0.0 bias"): all probability mass on RANGING, i.e. ``(0.0, 1.0, 0.0)``
    rather than uniform, so the published probabilities agree with the published
    regime and still sum to 1. Confidence 0 keeps the bias at 0 whatever the
    threshold.

    ``regime``, ``confidence`` and ``bias_signal`` are what the stack acts on:
    the confirmed regime (see HMM_CONFIRM_BARS) and the depth-scaled confidence
    and bias (see HMM_DEPTH_SCALING); ``raw_regime``/``raw_confidence`` keep the
    filter's own verdict of the bar.
    """

    regime: Regime = Regime.RANGING
    probabilities: tuple[float, float, float] = NEUTRAL_PROBABILITIES  # (bearish, ranging, bullish), sum 1
    confidence: float = 0.0  # top probability minus the second, fraction in [0, 1]
    bias_signal: float = 0.0  # (p_bull - p_bear) × HMM_BIAS_GAIN, in [-1, 1]; 0 under the threshold
    observation_count: int = 0  # candles taken in by update() since the last train/install/restore
    # The filter's own verdict before confirmation and depth scaling (None: the same as regime / confidence).
    raw_regime: Regime | None = None  # the label on top this bar; ``regime`` follows it after HMM_CONFIRM_BARS
    raw_confidence: float | None = None  # top minus second before the training-depth factor


GRID_BIAS_MAX_ADJUST: Final[float] = 0.30  # at |bias| = 1: favoured side spacing × 0.7, other side × 1.3
GRID_SIZE_SKEW_SCALE: Final[float] = 0.5  # size_skew_override = bias × 0.5, so at most ±0.5 inventory skew


def compute_blended_idle_target(
    trend_score: float,
    hmm_bias: float,
    blend_factor: float,
    base_target: float,
    sensitivity: float,
    floor: float,
    ceiling: float,
) -> float:
    """Idle-quote target (fraction of capital) from the trend score blended with the HMM bias.

    signal = blend × trend_score + (1 − blend) × hmm_bias; target = base_target −
    sensitivity × signal (bullish → less idle quote, more inventory), clamped to
    [floor, ceiling]. ``blend_factor`` is clamped to [0, 1]; at 1.0 (shadow mode)
    the result is bit-identical to the trend-only
    ``max(floor, min(ceiling, base_target − sensitivity × trend_score))``, whatever
    ``hmm_bias`` holds. A non-finite ``hmm_bias`` counts as 0 (a broken HMM
    degrades to the trend signal).
    """
    blend = min(1.0, max(0.0, blend_factor)) if math.isfinite(blend_factor) else 1.0
    if not math.isfinite(hmm_bias):
        hmm_bias = 0.0
    if blend >= 1.0:
        signal = trend_score  # not 1.0 × trend + 0.0 × bias: -0.0 and NaN would leak in
    elif blend <= 0.0:
        signal = hmm_bias
    else:
        signal = blend * trend_score + (1.0 - blend) * hmm_bias
    return max(floor, min(ceiling, base_target - sensitivity * signal))


def compute_grid_bias(regime_state: RegimeState, confidence_threshold: float = 0.15) -> GridBias:
    """Grid spacing advice (seed §2.3 option B); neutral ``GridBias("symmetric", 1.0, 1.0, None)`` by default.

    Neutral when RANGING, when confidence < ``confidence_threshold`` or when the
    bias is 0 or not finite. With m = min(|bias|, 1) × GRID_BIAS_MAX_ADJUST (≤ 0.30):

    - bullish (bias > 0): "long_bias", buy-side B spacing × (1 − m) (buys fill
      sooner), sell-side A spacing × (1 + m) (inventory is held longer);
    - bearish (bias < 0): "short_bias", the mirror.

    ``size_skew_override`` = bias × GRID_SIZE_SKEW_SCALE (positive = lean long),
    within [−0.5, 0.5]. Multipliers stay within [0.7, 1.3], always positive.
    """
    bias = regime_state.bias_signal
    if (
        regime_state.regime == Regime.RANGING
        or not math.isfinite(bias)
        or bias == 0.0
        or not regime_state.confidence >= confidence_threshold
    ):
        return GridBias("symmetric", 1.0, 1.0, None)
    strength = min(1.0, abs(bias))
    m = strength * GRID_BIAS_MAX_ADJUST
    skew = math.copysign(strength, bias) * GRID_SIZE_SKEW_SCALE
    if bias > 0:
        return GridBias("long_bias", 1.0 + m, 1.0 - m, skew)
    return GridBias("short_bias", 1.0 - m, 1.0 + m, skew)
