"""hmm_regime: candles in, one HMM regime verdict per candle out (seed 003).

Models are restored from KV at start (no retrain), trained from stream history
when missing or due (``trainer.Trainer``, off the event loop), and adopted at
the series' next candle.
"""

from __future__ import annotations

import logging
from typing import Any

from services.hmm_regime.core import SeriesHmm, apply_candle
from services.hmm_regime.trainer import Trainer
from shared.bus import Consumer, Out, StateStore, kv_bucket
from shared.contracts import Candle
from shared.service import Runtime, run

SERVICE = "hmm_regime"


async def build(rt: Runtime) -> list[Any]:
    cfg = dict(rt.config.hmm)
    if not cfg["HMM_ENABLED"]:
        logging.getLogger(SERVICE).info("HMM_ENABLED is false: hmm_regime stays idle")
        return []
    store: StateStore[SeriesHmm] = StateStore(
        await kv_bucket(rt.js, rt.names.bucket("hmm_state")),
        new=lambda _key: SeriesHmm.new(cfg),
        dump=SeriesHmm.dump,
        load=lambda _key, raw: SeriesHmm.load(cfg, raw),
    )

    async def on_candle(candle: Candle, _subject: str) -> list[Out] | None:
        state = await store.get(candle.key)
        event = apply_candle(state, candle, trainer.ready.pop(candle.key, None))
        if event is None:
            return None
        store.mark(candle.key)
        return [Out(rt.names.hmm(candle.key), event, f"hmm.{candle.msg_id}")]

    consumer = Consumer(
        rt.bus, rt.names.stream_ohlcv, [rt.names.ohlcv_all], rt.durable(), {Candle: on_candle},
        stores=[store], partition=rt.partition,
    )
    trainer = Trainer(rt, store, cfg, pending=lambda: consumer.pending)
    return [consumer.run(rt.stop), trainer.run()]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
