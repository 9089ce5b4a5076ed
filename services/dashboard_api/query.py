"""What a request asks for, checked the same way for every filter and option. Pure.

One rule for every query parameter: a value from a vocabulary (a regime label, a tier
of the config, a timeframe, an output format) is matched case-insensitively and an
unknown one is a 400 naming the choices; an identifier (exchange, symbol) is exact,
and one no series has is no error: a list is then empty (200 ``[]``), one series 404.
A parameter a route does not take is a 400 too, so a misspelt filter cannot silently
answer everything.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from shared.domain.config import StrategyConfig
from shared.domain.contracts import HMM_LABELS, VOL_LABELS
from shared.domain.vocab import TIMEFRAMES_MS

VOL = tuple(label.lower() for label in VOL_LABELS)
HMM = tuple(label.lower() for label in HMM_LABELS)
FORMATS = ("rows", "compact")
MAX_HISTORY = 1440  # points a detail may ask for: the publisher keeps a day of 1m bars


class BadRequest(ValueError):
    """A query the API cannot answer as asked: a 400 with this message as ``detail``."""


@dataclass(frozen=True, slots=True)
class SymbolFilter:
    """/api/symbols' filters, normalised: labels lowercase, the tier casefolded."""

    vol_regime: str | None = None
    hmm_regime: str | None = None
    tier: str | None = None
    exchange: str | None = None


def known_tiers(config: StrategyConfig) -> dict[str, str]:
    """Every tier the config names, and CORE (the tier of a series outside the universe): casefolded -> as written."""
    named = [s.tier for s in config.universe]
    named += list(config.sizing_multipliers)
    named += [scope for scope in config.hybrid_modifiers if scope != "default"]
    tiers: dict[str, str] = {}
    for tier in [*named, "CORE"]:
        tiers.setdefault(tier.casefold(), tier)
    return dict(sorted(tiers.items()))


def _choice(name: str, value: str | None, choices: Mapping[str, str] | Iterable[str]) -> str | None:
    """``value`` casefolded when it is one of ``choices`` (casefolded; a mapping shows its values), else 400."""
    if value is None:
        return None
    shown = list(choices.values()) if isinstance(choices, Mapping) else list(choices)
    folded = value.casefold()
    if folded not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(shown)} (any case); got {value!r}")
    return folded


def symbol_filter(
    vol_regime: str | None, hmm_regime: str | None, tier: str | None, exchange: str | None, tiers: Mapping[str, str]
) -> SymbolFilter:
    """The filters of /api/symbols, or :class:`BadRequest` for a label or tier nothing can have."""
    return SymbolFilter(
        vol_regime=_choice("vol_regime", vol_regime, VOL),
        hmm_regime=_choice("hmm_regime", hmm_regime, HMM),
        tier=_choice("tier", tier, tiers),
        exchange=exchange,
    )


def timeframe(value: str | None) -> str | None:
    """A detail's ``?timeframe=``: one the stack knows (exact: ``1m`` and ``1M`` would differ), or 400."""
    if value is not None and value not in TIMEFRAMES_MS:
        raise BadRequest(f"timeframe must be one of {', '.join(TIMEFRAMES_MS)}; got {value!r}")
    return value


def history_points(bars: int | None, history: int | None, default: int) -> int:
    """How many history points a detail shows: ``?bars=`` (or its older name ``?history=``), bounded."""
    if bars is not None and history is not None and bars != history:
        raise BadRequest("give ?bars= or ?history= (its older name), not both")
    n = bars if bars is not None else history if history is not None else default
    if not 0 <= n <= MAX_HISTORY:
        raise BadRequest(f"bars must be between 0 and {MAX_HISTORY}; got {n}")
    return n


def output_format(value: str | None) -> str:
    return _choice("format", value, FORMATS) or "rows"


def unknown_parameters(given: Iterable[str], allowed: Collection[str]) -> None:
    """400 for a query parameter the route does not take (a typo would otherwise be ignored)."""
    extra = sorted(set(given) - set(allowed))
    if extra:
        takes = ", ".join(sorted(allowed)) or "none"
        raise BadRequest(f"unknown query parameter {', '.join(extra)} (this route takes: {takes})")
