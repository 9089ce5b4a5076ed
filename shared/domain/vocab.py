"""Every word of the product, defined once: regime labels, training depths, sizing tiers, components, timeframes.

Messages, the config, the API models and the page (through ``/api/config``)
read these; nothing else spells them out.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

VolLabel = Literal["low", "normal", "high", "crisis"]
VOL_LABELS: Final[tuple[VolLabel, ...]] = get_args(VolLabel)  # calmest first

HmmLabel = Literal["BEARISH", "RANGING", "BULLISH"]
HMM_LABELS: Final[tuple[HmmLabel, ...]] = get_args(HmmLabel)  # the order of every probability triple

# How much history an HMM was trained on, in candles of its training window (bars):
# shallow < DEPTH_MODERATE_CANDLES <= moderate < DEPTH_DEEP_CANDLES <= deep.
DepthTier = Literal["shallow", "moderate", "deep"]
DEPTH_TIERS: Final[tuple[DepthTier, ...]] = get_args(DepthTier)  # shallowest first
DEPTH_MODERATE_CANDLES: Final[int] = 1000
DEPTH_DEEP_CANDLES: Final[int] = 2000


def depth_tier(training_candles: int) -> DepthTier:
    """The training-depth tier of a model fitted on ``training_candles`` candles (bars)."""
    if training_candles < DEPTH_MODERATE_CANDLES:
        return "shallow"
    if training_candles < DEPTH_DEEP_CANDLES:
        return "moderate"
    return "deep"


Tier = Literal["CORE", "SATELLITE", "TACTICAL", "ALT-EXT"]
TIERS: Final[tuple[Tier, ...]] = get_args(Tier)

ScoreComponent = Literal["carry", "expectancy", "router"]  # scores bots publish on scores.*
SCORE_COMPONENTS: Final[tuple[ScoreComponent, ...]] = get_args(ScoreComponent)
HybridComponent = Literal["trend", "carry", "expectancy", "router"]  # the screener adds its own trend
HYBRID_COMPONENTS: Final[tuple[HybridComponent, ...]] = get_args(HybridComponent)

# Timeframe token -> bar length in ms. Only these reach the bus.
TIMEFRAMES_MS: Final[dict[str, int]] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}
