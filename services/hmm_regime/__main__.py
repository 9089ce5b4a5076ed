"""hmm_regime: candles in, one HMM regime verdict per candle out (seed 003).

Models are restored from KV at start (no retrain). A training that the series'
candle clock makes due runs in the trainer's process pool while that series
waits (its candles held by the consume loop, others going on); the model is
adopted just before the candle that found it due.
"""

from __future__ import annotations

import logging
from typing import Any

from services.hmm_regime.core import SeriesHmm, adopt, apply_candle, is_newer, training_due
from services.hmm_regime.trainer import Trainer
from shared.bus import Out, kv_bucket
from shared.consume import Consumer, Hold, StateStore
from shared.contracts import Candle
from shared.hmm import HMM_AVAILABLE
from shared.service import Runtime, run

SERVICE = "hmm_regime"
log = logging.getLogger(SERVICE)


async def build(rt: Runtime) -> list[Any]:
    cfg = dict(rt.config.hmm)
    if not cfg["HMM_ENABLED"]:
        log.info("HMM_ENABLED is false: hmm_regime stays idle")
        return []
    if not HMM_AVAILABLE:
        log.error("hmmlearn is not installed: every series stays RANGING with zero bias")
    store: StateStore[SeriesHmm] = StateStore(
        await kv_bucket(rt.js, rt.names.bucket("hmm_state")),
        new=lambda _key: SeriesHmm.new(cfg),
        dump=SeriesHmm.dump,
        load=lambda _key, raw: SeriesHmm.load(cfg, raw),
    )
    trainer = Trainer(rt, cfg)

    async def on_candle(candle: Candle, _seq: int) -> list[Out] | Hold | None:
        key = candle.key
        state = await store.get(key)
        if not is_newer(state, candle):
            return None
        job = trainer.jobs.get(key)
        if job is None and training_due(state, cfg):
            job = trainer.start(key, state)
        if job is not None:
            if not job.done():
                return Hold(job)
            adopt(state, trainer.take(key))
        event = apply_candle(state, candle)
        store.mark(key)
        return [Out(rt.names.hmm(key), event, f"hmm.{candle.msg_id}")] if event else None

    durable = rt.durable()
    consumer = Consumer(
        rt.bus, rt.names.stream_ohlcv, [rt.names.ohlcv_all], durable, {Candle: on_candle},
        await rt.kv_position(durable), stores=[store, trainer], partition=rt.partition,
        future_tolerance_ms=rt.settings.future_tolerance_ms,
    )
    return [consumer.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
