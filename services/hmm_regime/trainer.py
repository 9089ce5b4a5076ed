"""hmm_regime's trainer: fits models off the event loop, in a process pool that dies with the service.

:meth:`Trainer.start` begins a training for a series whose candle clock made
one due (``core.training_due``); the series' messages are held by the consume
loop until the returned future is done, then ``core.adopt`` installs the model
before the held candle is applied. Nothing here decides *when*: only how.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any

from services.hmm_regime.core import Row, SeriesHmm, TrainingResult, applied_history
from shared.domain.config import HmmConfig
from shared.domain.contracts import Candle, CandleBatch, candles_in
from shared.domain.hmm import Fitted, TrainedModel, fit_model, fit_part
from shared.domain.hmm.fit import FitPart
from shared.domain.subjects import SeriesKey
from shared.infra.bus import now_ms, read_subject
from shared.infra.kv_state import Repositioned
from shared.infra.lifetime import die_with_parent
from shared.infra.service import Runtime
from shared.infra.telemetry import configure_logging

log = logging.getLogger("hmm_regime")
# Training processes: a retrain's warm and fresh EM runs go to one each at once (on 2 cores the wait a retrain
# holds its series for is the longer run, not both); many series due at once train two at a time.
_WORKERS = 2
_NICENESS = 10  # added to the workers' scheduling niceness


def _worker_start(parent: int, log_level: str, log_json: bool) -> None:
    """In each new worker: die with the service, even if it was SIGKILLed while this worker was still starting.

    And log as the service does: a spawned worker starts with no logging set up, so its warnings went out as
    bare lines through logging's last resort, and hmmlearn's were not filtered.
    """
    die_with_parent()
    if os.getppid() != parent:  # the death signal only covers a parent still alive when it was set
        os._exit(0)
    configure_logging("hmm_regime", log_level, log_json)
    # Fitting is background work: where the CPU is short, the services' own loops (lease renewals, live
    # candles) go first. Two workers importing scikit-learn at once starved a loop past its lease otherwise.
    os.nice(_NICENESS)


def _warm() -> None:
    """In the worker: import what fitting needs."""
    import hmmlearn.hmm  # noqa: F401


def _fit(
    rows: tuple[Row, ...], cfg: HmmConfig, previous: TrainedModel | None, upto: int,
    fits: tuple[Fitted, Fitted | None] | None = None,
) -> Any:
    """In a worker: the model, or the reason the data could not be fitted (the same input fails the same way)."""
    closes = [c for _, c, _ in rows]
    volumes = [v for _, _, v in rows]
    try:
        return fit_model(closes, volumes, cfg, previous, upto, fits=fits)
    except Exception as exc:  # hmmlearn/scikit-learn internals included: a property of the data, not of the run
        return f"{type(exc).__name__}: {exc}"


def _fit_part(rows: tuple[Row, ...], cfg: HmmConfig, previous: TrainedModel, part: FitPart) -> Any:
    """In a worker: one of a retrain's two EM runs, or the reason it failed."""
    try:
        return fit_part([c for _, c, _ in rows], [v for _, _, v in rows], cfg, previous, part)
    except Exception as exc:  # as in _fit
        return f"{type(exc).__name__}: {exc}"


class Trainer:
    def __init__(self, rt: Runtime, cfg: HmmConfig) -> None:
        self.rt = rt
        self.cfg = cfg
        self.window = cfg.training_candles
        self.jobs: dict[SeriesKey, asyncio.Future[TrainingResult]] = {}
        self.pool = self._new_pool()
        rt.stack.callback(lambda: self.pool.shutdown(wait=False, cancel_futures=True))
        # Start the workers now (spawning one and importing scikit-learn takes seconds), not at the first
        # training, which would hold its series meanwhile.
        for _ in range(_WORKERS):
            self.pool.submit(_warm)

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: a forked child would inherit the event loop and the NATS socket; the death signal
        # ends the worker with the service even on SIGKILL, instead of leaving it fitting for nobody.
        settings = self.rt.settings
        return ProcessPoolExecutor(
            max_workers=_WORKERS,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_start,
            initargs=(os.getpid(), settings.log_level, settings.log_json),
        )

    def start(self, key: SeriesKey, state: SeriesHmm) -> asyncio.Future[TrainingResult]:
        assert state.last_ts is not None
        rows = tuple(state.history) if state.history_complete else None
        previous = state.detector.model if state.detector.trained else None
        job = asyncio.ensure_future(self._train(key, state.last_ts, rows, previous))
        self.jobs[key] = job
        return job

    def take(self, key: SeriesKey) -> TrainingResult:
        """The finished training of ``key``; a broken pool makes the consumer start over from its position."""
        return self.jobs.pop(key).result()

    async def _train(
        self, key: SeriesKey, upto: int, rows: tuple[Row, ...] | None, previous: TrainedModel | None
    ) -> TrainingResult:
        if rows is None:
            rows = await self._history(key, upto)
        started = now_ms()
        try:
            fitted = await self._fitted(rows, previous, upto)
        except BrokenExecutor as exc:  # a worker died (OOM killer): not the data's fault, so no verdict on it
            self.pool = self._new_pool()
            raise Repositioned(f"training worker died: {exc}") from exc
        took = now_ms() - started
        self.rt.health.extra["last_training"] = {"series": key.id, "at": started, "ms": took, "upto": upto}
        if isinstance(fitted, str):
            log.warning("training %s on %d candles up to %d failed: %s", key.id, len(rows), upto, fitted)
            return TrainingResult(None, rows, upto)
        log.info("trained %s on %d candles up to %d in %d ms", key.id, len(rows), upto, took)
        return TrainingResult(fitted, rows, upto)

    async def _fitted(self, rows: tuple[Row, ...], previous: TrainedModel | None, upto: int) -> Any:
        """The model (or why not): a retrain's warm and fresh EM runs in two workers at once, then put together."""
        loop = asyncio.get_running_loop()
        if previous is None:
            return await loop.run_in_executor(self.pool, _fit, rows, self.cfg, None, upto)
        parts = await asyncio.gather(
            *(loop.run_in_executor(self.pool, _fit_part, rows, self.cfg, previous, p) for p in ("fresh", "warm"))
        )
        failed = [p for p in parts if isinstance(p, str)]
        if failed:
            return failed[0]
        fresh, warm = parts
        return await loop.run_in_executor(self.pool, _fit, rows, self.cfg, previous, upto, (fresh, warm))

    async def _history(self, key: SeriesKey, upto: int) -> tuple[Row, ...]:
        names = self.rt.names
        stored = await read_subject(
            self.rt.js, names.stream_ohlcv, names.ohlcv(key), keep_last=0, decode_as=(Candle, CandleBatch)
        )
        return applied_history(key, [c for m in stored for c in candles_in(m)], upto, self.window)

    async def flush(self) -> None:
        return None

    def discard(self) -> None:
        """After a failed batch the held series start over: trainings in flight are for nobody."""
        for job in self.jobs.values():
            job.cancel()
        self.jobs.clear()
