"""screener: vol + HMM regime events and external scores in, one sizing/weighting decision per candle out."""

from __future__ import annotations

from typing import Any

from services.screener.core import SeriesScreen, on_hmm, on_peer, on_score, on_vol, siblings
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
from shared.domain.subjects import SeriesKey
from shared.infra.bus import Out
from shared.infra.consume import Consumer, StateStore
from shared.infra.low_water import LowWaters
from shared.infra.service import Runtime, run

SERVICE = "screener"


async def build(rt: Runtime) -> list[Any]:
    cfg = rt.config
    names = rt.names
    store: StateStore[SeriesScreen] = StateStore(
        await rt.kv("screener_state"),
        rt.bus.acks,
        new=lambda _key: SeriesScreen(),
        dump=SeriesScreen.dump,
        load=lambda _key, raw: SeriesScreen.load(raw),
    )

    def publish(decisions: list[ScreenerDecision]) -> list[Out]:
        """One message per series for the decisions a message completed (a lone one stays a ScreenerDecision)."""
        by_series: dict[SeriesKey, list[ScreenerDecision]] = {}
        for d in decisions:
            by_series.setdefault(d.key, []).append(d)
        outs = []
        for key, ds in by_series.items():
            for m in as_messages(ds, DECISIONS_PER_BATCH):
                ident = f"{key.token}.{m.ts}" if isinstance(m, ScreenerDecision) else m.span
                outs.append(Out(names.screener(key), m, f"screener.{ident}"))
        return outs

    def buffered_since(key: SeriesKey) -> int | None:
        state = store.cached().get(key)
        return state.low_water() if state is not None else None

    # The position's low water over the series whose join buffer holds events, kept as a heap: not a look at
    # every series waiting (10,000 in a burst) at every commit. The join buffer changes only in the two handlers
    # below, which touch it before the buffer changes: a handler that raises midway must not hide it.
    low_water = LowWaters(buffered_since)

    async def vol(msg: VolRegimeEvent | VolRegimeBatch, seq: int) -> list[Out]:
        state = await store.get(msg.key)
        store.mark(msg.key)
        low_water.touch(msg.key, seq)
        return publish([d for e in events_in(msg) for d in on_vol(state, e, cfg, seq)])

    async def hmm(msg: HmmRegimeEvent | HmmRegimeBatch, seq: int) -> list[Out]:
        state = await store.get(msg.key)
        store.mark(msg.key)
        low_water.touch(msg.key, seq)
        events = events_in(msg)
        decided = [d for e in events for d in on_hmm(state, e, cfg, seq)]
        return publish(decided + await to_siblings(msg.key, events))

    async def to_siblings(key: SeriesKey, events: list[HmmRegimeEvent]) -> list[ScreenerDecision]:
        """The verdicts go to the symbol's other timeframes too, deciding the bars of theirs that waited on them
        (one replica holds them all: the consumer partitions by symbol)."""
        decided: list[ScreenerDecision] = []
        for sibling in siblings(cfg, key):
            peer = await store.get(sibling)
            store.mark(sibling)
            decided += [d for e in events for d in on_peer(peer, e, cfg)]
        return decided

    async def score(event: ScoreEvent, _seq: int) -> list[Out]:
        state = await store.get(event.key)
        if on_score(state, event):
            store.mark(event.key)
        return []

    subjects = [names.vol_all, names.scores_all]
    if cfg.hmm.enabled:
        subjects.append(names.hmm_all)
    consumer = Consumer(
        rt.bus, names.stream_regimes, subjects, rt.durable(),
        {VolRegimeEvent: vol, VolRegimeBatch: vol, HmmRegimeEvent: hmm, HmmRegimeBatch: hmm, ScoreEvent: score},
        await rt.kv_position(by="symbol"), stores=[store, low_water], owner=await rt.leases(), low_water=low_water,
        partition_by="symbol",  # a symbol's timeframes in one replica: the consensus join reads them together
    )
    return [consumer.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
