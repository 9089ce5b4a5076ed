"""vol_regime: candles in, one volatility-regime event per candle out (seed 000 §2)."""

from __future__ import annotations

from typing import Any

from services.vol_regime.core import SeriesVol, apply_candle
from shared.domain.contracts import Candle, CandleBatch, batch_of
from shared.infra.bus import Out
from shared.infra.consume import Consumer
from shared.infra.kv_state import StateStore
from shared.infra.service import Runtime, run

SERVICE = "vol_regime"


async def build(rt: Runtime) -> list[Any]:
    cfg = rt.config.vol
    store: StateStore[SeriesVol] = StateStore(
        await rt.kv("vol_state"),
        rt.bus.acks,
        new=lambda _key: SeriesVol.new(cfg),
        dump=SeriesVol.dump,
        load=lambda _key, raw: SeriesVol.load(cfg, raw),
    )

    async def on_candle(candle: Candle, _seq: int) -> list[Out] | None:
        state = await store.get(candle.key)
        event = apply_candle(state, candle, cfg)
        if event is None:
            return None
        store.mark(candle.key)
        return [Out(rt.names.vol(candle.key), event, f"vol.{candle.msg_id}")]

    async def on_batch(batch: CandleBatch, _seq: int) -> list[Out] | None:
        state = await store.get(batch.key)
        events = [e for c in batch.candles() if (e := apply_candle(state, c, cfg)) is not None]
        if not events:
            return None
        store.mark(batch.key)
        out = batch_of(events)
        return [Out(rt.names.vol(batch.key), out, f"vol.{out.span}")]

    consumer = Consumer(
        rt.bus, rt.names.stream_ohlcv, [rt.names.ohlcv_all], rt.durable(), {Candle: on_candle, CandleBatch: on_batch},
        await rt.kv_position(), stores=[store], owner=await rt.leases(), admission=await rt.admission(),
        future_tolerance_ms=rt.settings.future_tolerance_ms,
    )
    return [consumer.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
