"""A symbol's consensus across its timeframes, from the snapshots of its series. Pure; no Redis.

Each series' snapshot already holds its newest HMM verdict by candle time
(``apply_hmm`` ignores a verdict not newer than the one it has), so the
consensus of a symbol is a function of the snapshots alone: the same events
give the same consensus whatever order they arrived in, and a rebuild from
the streams gives it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shared.domain.consensus import TimeframeVerdict, consensus
from shared.domain.snapshot import SeriesSnapshot, SymbolConsensus
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import TIMEFRAMES_MS

Symbol = tuple[str, str]  # (exchange, symbol display form)


def symbols_of(keys: Iterable[SeriesKey]) -> set[Symbol]:
    return {(k.exchange, k.symbol) for k in keys}


def symbol_consensus(
    exchange: str, symbol: str, snaps: Iterable[SeriesSnapshot], weights: Mapping[str, float]
) -> SymbolConsensus | None:
    """The consensus of the symbol's series among ``snaps``; None while none of them has an HMM verdict."""
    verdicts: dict[str, TimeframeVerdict] = {}
    as_of: dict[str, int] = {}
    for snap in snaps:
        h = snap.hmm_regime
        if snap.exchange != exchange or snap.symbol != symbol or h is None:
            continue
        verdicts[snap.timeframe] = TimeframeVerdict(h.regime, h.bias_signal, h.trained)
        as_of[snap.timeframe] = h.ts
    if not verdicts:
        return None
    c = consensus(verdicts, weights)
    return SymbolConsensus(
        exchange, symbol, c.regime, c.agreement, c.bias, c.voting, c.dissenting, c.untrained,
        {tf: as_of[tf] for tf in sorted(as_of, key=TIMEFRAMES_MS.__getitem__)},  # shortest first, as the lists
    )  # fmt: skip


def consensuses(
    snaps: Mapping[SeriesKey, SeriesSnapshot], symbols: Iterable[Symbol], weights: Mapping[str, float]
) -> dict[Symbol, SymbolConsensus]:
    """The consensus of each of ``symbols`` that has a verdict.

    Looks each symbol's timeframes up by key (one probe per known timeframe), so a batch that touched
    a few symbols costs the same whether the stack holds ten series or ten thousand.
    """
    out: dict[Symbol, SymbolConsensus] = {}
    for exchange, symbol in symbols:
        group = [s for tf in TIMEFRAMES_MS if (s := snaps.get(SeriesKey(exchange, symbol, tf))) is not None]
        made = symbol_consensus(exchange, symbol, group, weights)
        if made is not None:
            out[(exchange, symbol)] = made
    return out
