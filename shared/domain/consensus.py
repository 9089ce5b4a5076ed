"""One symbol's HMM verdicts across timeframes, reduced to a consensus. Pure.

Each timeframe of a symbol (its base series and the ones aggregated from it)
is classified on its own; a consensus says how far they agree: the regime
with the most weight behind it, the share of the weight that agrees, the
weighted bias, and which timeframes dissent. Only trained verdicts vote: an
untrained model's RANGING is a default, not an opinion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shared.domain.vocab import HMM_LABELS, TIMEFRAMES_MS, HmmLabel

NEUTRAL: HmmLabel = "RANGING"


@dataclass(frozen=True, slots=True)
class TimeframeVerdict:
    """The latest HMM verdict of one timeframe of the symbol."""

    regime: HmmLabel
    bias: float  # in [-1, 1]
    trained: bool


@dataclass(frozen=True, slots=True)
class Consensus:
    regime: HmmLabel  # the regime with the most weight; RANGING on a tie between others, or with no vote
    agreement: float  # share of the voting weight behind ``regime``, a fraction in [0, 1]; 0 with no vote
    bias: float  # weight-averaged bias of the voting timeframes, in [-1, 1]; 0 with no vote
    voting: tuple[str, ...]  # timeframes that voted (trained, weight > 0), shortest first
    dissenting: tuple[str, ...]  # voting timeframes whose regime is not ``regime``
    untrained: tuple[str, ...]  # timeframes whose model is not trained yet


def consensus(verdicts: Mapping[str, TimeframeVerdict], weights: Mapping[str, float]) -> Consensus:
    """The consensus of ``verdicts`` (timeframe -> verdict); a timeframe missing from ``weights`` weighs 1."""
    order = sorted(verdicts, key=TIMEFRAMES_MS.__getitem__)
    voting = [tf for tf in order if verdicts[tf].trained and weights.get(tf, 1.0) > 0]
    untrained = tuple(tf for tf in order if not verdicts[tf].trained)
    total = sum(weights.get(tf, 1.0) for tf in voting)
    if not voting or total <= 0:
        return Consensus(NEUTRAL, 0.0, 0.0, (), (), untrained)
    behind = {label: sum(weights.get(tf, 1.0) for tf in voting if verdicts[tf].regime == label) for label in HMM_LABELS}
    top = max(behind.values())
    leaders = [label for label, w in behind.items() if w == top]
    # A tie is no majority: bullish against bearish (or either against ranging) says "no clear trend".
    regime: HmmLabel = leaders[0] if len(leaders) == 1 else NEUTRAL
    bias = sum(weights.get(tf, 1.0) * verdicts[tf].bias for tf in voting) / total
    return Consensus(
        regime=regime,
        agreement=behind[regime] / total,
        bias=max(-1.0, min(1.0, bias)),
        voting=tuple(voting),
        dissenting=tuple(tf for tf in voting if verdicts[tf].regime != regime),
        untrained=untrained,
    )
