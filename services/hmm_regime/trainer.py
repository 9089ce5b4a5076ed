"""hmm_regime's trainer: (re)trains each owned series off the event loop, in a process pool.

A model it trains waits in ``ready`` until the series' next candle adopts it,
inside an ordinary batch (see ``core.apply_candle``), so inference never
pauses and the swap is persisted and acked with that batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from services.hmm_regime.core import SeriesHmm, can_train
from shared.bus import StateStore, now_ms, read_subject
from shared.contracts import Candle
from shared.hmm import HMM_AVAILABLE, TrainedModel, fit_model
from shared.service import Runtime
from shared.subjects import SeriesKey

TICK_SEC = 2.0  # how often due retrains are looked for
log = logging.getLogger("hmm_regime")


class Trainer:
    def __init__(
        self, rt: Runtime, store: StateStore[SeriesHmm], cfg: Mapping[str, Any], pending: Callable[[], int]
    ) -> None:
        self.rt = rt
        self.store = store
        self.cfg = cfg
        self.pending = pending  # messages the candle consumer has yet to read (-1: unknown)
        self.ready: dict[SeriesKey, TrainedModel] = {}
        # spawn: a forked child would inherit the event loop and the NATS socket.
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        rt.stack.callback(self.pool.shutdown, wait=False, cancel_futures=True)

    async def train(self, key: SeriesKey) -> None:
        rt, cfg = self.rt, self.cfg
        window = int(cfg["HMM_TRAINING_CANDLES"])
        state = await self.store.get(key)
        if not state.history_loaded and len(state.history) < window:
            names = rt.names
            older = await read_subject(
                rt.js, names.stream_ohlcv, names.ohlcv(key), keep_last=window, decode_as=Candle
            )
            state.prepend(older)
        if not can_train(state, cfg):
            return
        if self.pending() != 0 and len(state.history) < window:
            return  # still catching up on the stream: wait for the full training window
        closes, volumes, upto = state.training_data()
        previous = state.detector.model if state.detector._trained else None
        started = now_ms()
        loop = asyncio.get_running_loop()
        self.ready[key] = await loop.run_in_executor(self.pool, fit_model, closes, volumes, cfg, previous, started)
        took = now_ms() - started
        rt.health.extra["last_training"] = {"series": key.id, "at": started, "ms": took, "upto": upto}
        log.info("trained %s on %d candles in %d ms", key.id, len(closes), took)

    async def run(self) -> None:
        if not HMM_AVAILABLE:
            log.error("hmmlearn is not installed: every series stays RANGING with zero bias")
            return
        rt = self.rt
        replica, replicas = rt.partition
        owned = [k for k in rt.config.series if k.owned_by(replica, replicas)]
        while not rt.stop.is_set():
            for key in owned:
                if rt.stop.is_set():
                    break
                state = await self.store.get(key)
                if key not in self.ready and state.detector.needs_retrain(now_ms()):
                    try:
                        await self.train(key)
                    except (ValueError, ArithmeticError, RuntimeError) as exc:
                        log.exception("training %s failed: %s", key.id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), timeout=TICK_SEC)
