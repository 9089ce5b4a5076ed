"""hmm_regime: candles in, one HMM regime verdict per candle out (seed 003).

Models are restored from KV at start (no retrain), trained from stream history
when missing or due, in a process pool so inference never waits, and adopted
at the series' next candle.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from services.hmm_regime.core import SeriesHmm, apply_candle, can_train
from shared.bus import Consumer, Out, StateStore, kv_bucket, now_ms, read_subject
from shared.contracts import Candle
from shared.hmm import HMM_AVAILABLE, TrainedModel, fit_model
from shared.service import Runtime, run
from shared.subjects import SeriesKey

SERVICE = "hmm_regime"
TRAINER_TICK_SEC = 2.0
log = logging.getLogger(SERVICE)


async def build(rt: Runtime) -> list[Any]:
    cfg = dict(rt.config.hmm)
    if not cfg["HMM_ENABLED"]:
        log.info("HMM_ENABLED is false: hmm_regime stays idle")
        return []
    names = rt.names
    store: StateStore[SeriesHmm] = StateStore(
        await kv_bucket(rt.js, names.bucket("hmm_state")),
        new=lambda _key: SeriesHmm.new(cfg),
        dump=SeriesHmm.dump,
        load=lambda _key, raw: SeriesHmm.load(cfg, raw),
    )
    ready: dict[SeriesKey, TrainedModel] = {}  # trained, waiting for the series' next candle

    async def on_candle(candle: Candle, _subject: str) -> list[Out] | None:
        state = await store.get(candle.key)
        event = apply_candle(state, candle, ready.pop(candle.key, None))
        if event is None:
            return None
        store.mark(candle.key)
        return [Out(names.hmm(candle.key), event, f"hmm.{candle.msg_id}")]

    # spawn: a forked child would inherit the event loop and the NATS socket.
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    rt.stack.callback(pool.shutdown, wait=False, cancel_futures=True)

    async def train(key: SeriesKey) -> None:
        state = await store.get(key)
        if not state.history_loaded and len(state.history) < int(cfg["HMM_TRAINING_CANDLES"]):
            older = await read_subject(
                rt.js,
                names.stream_ohlcv,
                names.ohlcv(key),
                keep_last=int(cfg["HMM_TRAINING_CANDLES"]),
                decode_as=Candle,
            )
            state.prepend(older)
        if not can_train(state, cfg):
            return
        if consumer.pending != 0 and len(state.history) < int(cfg["HMM_TRAINING_CANDLES"]):
            return  # still catching up on the stream: wait for the full training window
        closes, volumes, upto = state.training_data()
        previous = state.detector.model if state.detector._trained else None
        started = now_ms()
        model = await asyncio.get_running_loop().run_in_executor(
            pool, fit_model, closes, volumes, cfg, previous, started
        )
        ready[key] = model
        rt.health.extra["last_training"] = {"series": key.id, "at": started, "ms": now_ms() - started, "upto": upto}
        log.info("trained %s on %d candles in %d ms", key.id, len(closes), now_ms() - started)

    async def trainer() -> None:
        if not HMM_AVAILABLE:
            log.error("hmmlearn is not installed: every series stays RANGING with zero bias")
            return
        replica, replicas = rt.partition
        owned = [k for k in rt.config.series if k.owned_by(replica, replicas)]
        while not rt.stop.is_set():
            for key in owned:
                if rt.stop.is_set():
                    break
                state = store.peek(key) or await store.get(key)
                if key not in ready and state.detector.needs_retrain(now_ms()):
                    try:
                        await train(key)
                    except (ValueError, ArithmeticError, RuntimeError) as exc:
                        log.exception("training %s failed: %s", key.id, exc)
            try:
                await asyncio.wait_for(rt.stop.wait(), timeout=TRAINER_TICK_SEC)
            except TimeoutError:
                continue

    consumer = Consumer(
        rt.bus,
        names.stream_ohlcv,
        [names.ohlcv_all],
        rt.durable(),
        {Candle: on_candle},
        stores=[store],
        partition=rt.partition,
    )
    return [consumer.run(rt.stop), trainer()]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
