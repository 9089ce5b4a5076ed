"""The screener's message handlers: each regime event applied to its series' screen, the decisions it completes out.

The join itself is the pure core (:mod:`services.screener.core`); these hold
the per-series state store and the position's low water around it.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.screener.core import SeriesScreen, on_hmm, on_peer, on_score, on_vol, siblings
from shared.domain.config import StrategyConfig
from shared.domain.contracts import (
    DECISIONS_PER_BATCH,
    HmmRegimeBatch,
    HmmRegimeEvent,
    ScoreEvent,
    ScreenerDecision,
    VolRegimeBatch,
    VolRegimeEvent,
    as_messages,
    events_in,
)
from shared.domain.subjects import Names, SeriesKey
from shared.infra.bus import Out
from shared.infra.kv_state import StateStore
from shared.infra.low_water import LowWaters


@dataclass
class ScreenerHandlers:
    """Handlers by message type for the one consumer of vol and HMM regimes and scores.

    The join buffer changes only in :meth:`vol` and :meth:`hmm`, which touch the low water before the buffer
    changes: a handler that raises midway must not hide it.
    """

    cfg: StrategyConfig
    names: Names
    store: StateStore[SeriesScreen]
    low_water: LowWaters

    async def vol(self, msg: VolRegimeEvent | VolRegimeBatch, seq: int) -> list[Out]:
        state = await self.store.get(msg.key)
        self.store.mark(msg.key)
        self.low_water.touch(msg.key, seq)
        return self.publish([d for e in events_in(msg) for d in on_vol(state, e, self.cfg, seq)])

    async def hmm(self, msg: HmmRegimeEvent | HmmRegimeBatch, seq: int) -> list[Out]:
        state = await self.store.get(msg.key)
        self.store.mark(msg.key)
        self.low_water.touch(msg.key, seq)
        events = events_in(msg)
        decided = [d for e in events for d in on_hmm(state, e, self.cfg, seq)]
        return self.publish(decided + await self.to_siblings(msg.key, events))

    async def to_siblings(self, key: SeriesKey, events: list[HmmRegimeEvent]) -> list[ScreenerDecision]:
        """The verdicts go to the symbol's other timeframes too, deciding the bars of theirs that waited on them
        (one replica holds them all: the consumer partitions by symbol)."""
        decided: list[ScreenerDecision] = []
        for sibling in siblings(self.cfg, key):
            peer = await self.store.get(sibling)
            self.store.mark(sibling)
            decided += [d for e in events for d in on_peer(peer, e, self.cfg)]
        return decided

    async def score(self, event: ScoreEvent, _seq: int) -> list[Out]:
        state = await self.store.get(event.key)
        if on_score(state, event):
            self.store.mark(event.key)
        return []

    def publish(self, decisions: list[ScreenerDecision]) -> list[Out]:
        """One message per series for the decisions a message completed (a lone one stays a ScreenerDecision)."""
        by_series: dict[SeriesKey, list[ScreenerDecision]] = {}
        for d in decisions:
            by_series.setdefault(d.key, []).append(d)
        outs = []
        for key, ds in by_series.items():
            for m in as_messages(ds, DECISIONS_PER_BATCH):
                ident = f"{key.token}.{m.ts}" if isinstance(m, ScreenerDecision) else m.span
                outs.append(Out(self.names.screener(key), m, f"screener.{ident}"))
        return outs
