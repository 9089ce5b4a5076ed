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
from shared.domain.contracts import HMM_EVENTS_PER_BATCH, Candle, CandleBatch, HmmRegimeEvent, batch_of, candles_in
from shared.domain.hmm import HMM_AVAILABLE
from shared.infra.bus import Out
from shared.infra.consume import Consumer, Hold
from shared.infra.kv_state import StateStore
from shared.infra.service import Runtime, run

SERVICE = "hmm_regime"
log = logging.getLogger(SERVICE)


async def build(rt: Runtime) -> list[Any]:
    cfg = rt.config.hmm
    if not cfg.enabled:
        log.info("HMM_ENABLED is false: hmm_regime stays idle")
        return []
    if not HMM_AVAILABLE:
        log.error("hmmlearn is not installed: every series stays RANGING with zero bias")
    store: StateStore[SeriesHmm] = StateStore(
        await rt.kv("hmm_state"),
        rt.bus.acks,
        new=lambda _key: SeriesHmm.new(cfg),
        dump=SeriesHmm.dump,
        load=lambda _key, raw: SeriesHmm.load(cfg, raw),
    )
    trainer = Trainer(rt, cfg)

    async def on_candles(msg: Candle | CandleBatch, _seq: int) -> list[Out] | Hold | None:
        """Apply the message's candles in order; at one that finds a training due, hold the rest until it is done."""
        key = msg.key
        state = await store.get(key)
        events: list[HmmRegimeEvent] = []
        hold: Hold | None = None
        for candle in candles_in(msg):
            if not is_newer(state, candle):
                continue
            job = trainer.jobs.get(key)
            if job is None and training_due(state, cfg):
                job = trainer.start(key, state)
            if job is not None:
                if not job.done():
                    hold = Hold(job)
                    break
                adopt(state, trainer.take(key))
            events.append(apply_candle(state, candle))  # type: ignore[arg-type]
        outs = publish(msg, events)
        if hold is not None:
            hold.outs = outs
            return hold
        return outs or None

    def publish(msg: Candle | CandleBatch, events: list[HmmRegimeEvent]) -> list[Out]:
        if not events:
            return []
        store.mark(msg.key)
        if isinstance(msg, Candle):
            return [Out(rt.names.hmm(msg.key), events[0], f"hmm.{msg.msg_id}")]
        # An HMM event is larger than a candle: a candle batch's events go out in batches of HMM_EVENTS_PER_BATCH.
        outs = []
        for i in range(0, len(events), HMM_EVENTS_PER_BATCH):
            out = batch_of(events[i : i + HMM_EVENTS_PER_BATCH])
            outs.append(Out(rt.names.hmm(msg.key), out, f"hmm.{out.span}"))
        return outs

    consumer = Consumer(
        rt.bus, rt.names.stream_ohlcv, [rt.names.ohlcv_all], rt.durable(),
        {Candle: on_candles, CandleBatch: on_candles},
        await rt.kv_position(), stores=[store, trainer], owner=await rt.leases(), admission=await rt.admission(),
        future_tolerance_ms=rt.settings.future_tolerance_ms,
    )
    return [consumer.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
