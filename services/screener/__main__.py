"""screener: vol + HMM regime events and external scores in, one sizing/weighting decision per candle out."""

from __future__ import annotations

from typing import Any

from services.screener.core import SeriesScreen
from services.screener.handlers import ScreenerHandlers
from shared.domain.contracts import HmmRegimeBatch, HmmRegimeEvent, ScoreEvent, VolRegimeBatch, VolRegimeEvent
from shared.domain.subjects import SeriesKey
from shared.infra.consume import Consumer
from shared.infra.kv_state import StateStore
from shared.infra.low_water import LowWaters
from shared.infra.service import Runtime, run

SERVICE = "screener"


async def build(rt: Runtime) -> list[Any]:
    cfg, names = rt.config, rt.names
    store: StateStore[SeriesScreen] = StateStore(
        await rt.kv("screener_state"), rt.bus.acks,
        new=lambda _key: SeriesScreen(), dump=SeriesScreen.dump, load=lambda _key, raw: SeriesScreen.load(raw),
    )
    # The position's low water over the series whose join buffer holds events, kept as a heap: not a look at
    # every series waiting (10,000 in a burst) at every commit.
    def buffered_since(key: SeriesKey) -> int | None:
        state = store.cached().get(key)
        return state.low_water() if state is not None else None

    low_water = LowWaters(buffered_since)
    h = ScreenerHandlers(cfg, names, store, low_water)
    subjects = [names.vol_all, names.scores_all, *([names.hmm_all] if cfg.hmm.enabled else [])]
    consumer = Consumer(
        rt.bus, names.stream_regimes, subjects, rt.durable(),
        {VolRegimeEvent: h.vol, VolRegimeBatch: h.vol, HmmRegimeEvent: h.hmm, HmmRegimeBatch: h.hmm,
         ScoreEvent: h.score},
        await rt.kv_position(by="symbol"), stores=[store, low_water], owner=await rt.leases(), low_water=low_water,
        partition_by="symbol",  # a symbol's timeframes in one replica: the consensus join reads them together
    )
    return [consumer.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
