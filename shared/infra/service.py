"""How every service starts and stops: settings, config, logging, NATS, streams, metrics, health, signals.

A service's ``__main__`` only supplies ``build(runtime) -> list of coroutines``;
:func:`run` does the rest, in the shape of nats.py's micro-service example:
signals set an ``asyncio.Event``, resources live on an ``AsyncExitStack``, and
the connection is drained on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import start_http_server

from shared.domain.access import SERVICES, roles
from shared.domain.config import StrategyConfig, load_strategy_config
from shared.domain.errors import ConfigError
from shared.domain.partitions import PartitionBy
from shared.domain.subjects import Names
from shared.infra.admission import Admission
from shared.infra.bus import BUS_ERRORS, Bus, Health, connect, ensure_streams, kv_bucket
from shared.infra.kv_state import KvPosition
from shared.infra.ownership import Leases, Owner
from shared.infra.settings import Settings, new_replica_id
from shared.infra.telemetry import Metrics, configure_logging

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a service's wiring needs, built once in :func:`run` and passed in."""

    service: str
    settings: Settings
    config: StrategyConfig
    nc: NATS
    bus: Bus
    metrics: Metrics
    health: Health
    stop: asyncio.Event
    stack: AsyncExitStack
    replica: str  # this process's id among the replicas of its service

    @property
    def names(self) -> Names:
        return self.settings.names

    @property
    def js(self) -> JetStreamContext:
        return self.bus.js

    def durable(self, suffix: str = "") -> str:
        """This replica's consumer name (its positions are the service's: see :meth:`kv_position`)."""
        return self.names.durable(self._name(suffix), self.replica)

    def position_key(self, suffix: str = "") -> str:
        """The name the service's replicas share for consumer ``suffix``: where its positions are kept."""
        return self.names.durable(self._name(suffix))

    def _name(self, suffix: str) -> str:
        return f"{self.service}_{suffix}" if suffix else self.service

    async def kv(self, name: str, ttl: float | None = None) -> KeyValue:
        """KV bucket ``name`` of this stack, created with the configured replica count when missing."""
        return await kv_bucket(self.js, self.names.bucket(name), ttl=ttl, replicas=self.settings.nats_replicas)

    async def kv_position(self, suffix: str = "", by: PartitionBy = "series") -> KvPosition:
        """The committed stream positions of the service's consumer ``suffix``, per partition, in bucket ``positions``.

        The number of partitions is recorded there the first time: state laid out
        by one number cannot be read by another, so a changed ``PARTITIONS`` stops
        the service with the reason instead of silently reprocessing or skipping.
        What the partitions split (``by``) is recorded too; see :func:`_check_partitioning`.
        """
        kv = await self.kv("positions")
        key = self.position_key(suffix)
        await _check_partitions(kv, f"{key}.partitions", self.settings.partitions)
        await _check_partitioning(kv, key, by, self.settings.partitions)
        return KvPosition(kv, key, self.bus.acks)

    async def admission(self) -> Admission:
        """The series cap shared by every candle consumer of the stack (``MAX_SERIES``)."""
        return Admission(await self.kv("series"), self.settings.max_series)

    async def leases(self, partitions: int | None = None, *, sticky: bool = False) -> Owner:
        """This replica's share of the service's partitions (``partitions``: the service's own fixed number)."""
        ttl = self.settings.lease_ttl_sec
        owner = Leases(
            await self.kv("members", ttl=ttl),
            await self.kv("leases", ttl=ttl),
            self.service,
            self.replica,
            partitions or self.settings.partitions,
            ttl,
            sticky=sticky,
        )
        self.stack.push_async_callback(owner.release_all)
        self.health.extra["partitions"] = lambda: sorted(owner.held())
        return owner


async def _check_partitions(kv: KeyValue, key: str, partitions: int) -> None:
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):  # a replica starting beside us
            await kv.create(key, str(partitions).encode())
        return
    stored = int(entry.value or b"0")
    if stored != partitions:
        raise ConfigError(
            "PARTITIONS",
            f"{partitions} does not match the {stored} this stack's positions were laid out with "
            f"(set PARTITIONS={stored}, or reset the stack's state to change it)",
        )


async def _check_partitioning(kv: KeyValue, key: str, by: PartitionBy, partitions: int) -> None:
    """Record what the positions' partitions split; on a change (a release that moved the screener from series
    to symbols), every partition restarts from the lowest position any of them had.

    A series may land in a partition whose position is past events of its own it never applied; from the
    lowest position nothing is skipped, and what is read twice is ignored (every consumer drops a candle or
    event not newer than its state's). Layouts from before this key split by series.
    """
    marker = f"{key}.by"
    recorded = await _text(kv, marker)
    if (recorded or "series") != by:
        legacy = await _text(kv, key)
        found = [await _text(kv, f"{key}.p{p}") for p in range(partitions)]
        if legacy is not None or any(v is not None for v in found):
            # A partition with no position yet starts where KvPosition.load starts it: the legacy key, or 0.
            low = min(int(v if v is not None else legacy or 0) for v in found)
            for p in range(partitions):  # before the marker: a crash in between migrates again, to the same floor
                await kv.put(f"{key}.p{p}", str(low).encode())
            log.warning("positions of %s now split by %s: every partition restarts from %d", key, by, low)
    if recorded != by:
        await kv.put(marker, by.encode())


async def _text(kv: KeyValue, key: str) -> str | None:
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return (entry.value or b"").decode() or None


Build = Callable[[Runtime], Awaitable[list[Coroutine[Any, Any, None]]]]


def load(env: Mapping[str, str] | None = None) -> tuple[Settings, StrategyConfig]:
    """Settings and strategy config, or ConfigError naming the key."""
    settings = Settings.from_env(env)
    return settings, load_strategy_config(settings.strategy_config, env)


def run(service: str, build: Build) -> None:
    """Entry point of every service: exits 2 on bad config, 0 on a clean stop, 1 when a task died."""
    try:
        settings, config = load()
    except ConfigError as exc:
        print(f"{service}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(service, settings.log_level, settings.log_json)
    try:
        code = _run_loop(serve(service, build, settings, config))
    except ConfigError as exc:  # found while wiring, e.g. a port already taken
        print(f"{service}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


class _StartInterrupted(Exception):
    """NATS failed the wiring (a server restarting just then): the start is tried again, not the service failed."""


_START_RETRY_S = 60.0  # s a service keeps trying to start while NATS fails its wiring, then it exits 1


async def serve(
    service: str,
    build: Build,
    settings: Settings,
    config: StrategyConfig,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> int:
    """Run one service until ``stop`` is set (by a signal, or by a test) or one of its tasks fails.

    A start that NATS interrupts (streams, buckets or leases that time out while the server restarts)
    starts over after a second, for up to a minute: a replica restarted by its supervisor at the moment
    NATS also restarts must come up, not exit.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM) if handle_signals else ():
        # Outside the main thread (tests) there are no signal handlers: the caller owns `stop`.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    metrics = Metrics.create(service)
    async with AsyncExitStack() as outer:
        if settings.metrics_port:
            server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)
            outer.callback(server.server_close)
            outer.callback(server.shutdown)
        deadline = loop.time() + _START_RETRY_S
        while True:
            try:
                return await _serve_once(service, build, settings, config, stop, metrics)
            except _StartInterrupted as exc:
                cause = exc.__cause__ or exc
                if stop.is_set() or loop.time() > deadline:
                    raise cause from None
                log.warning("start-up interrupted by NATS (%s: %s); starting again", type(cause).__name__, cause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _serve_once(
    service: str, build: Build, settings: Settings, config: StrategyConfig, stop: asyncio.Event, metrics: Metrics
) -> int:
    closed = asyncio.Event()
    async with AsyncExitStack() as stack:
        try:
            nc = await connect(settings.nats_url, service, stop, closed=closed, credentials=settings.nats_credentials)
            stack.push_async_callback(_close, nc)
            bus = Bus(nc, settings.names, service, metrics)
            # Only the streams this service uses: its NATS user may create no others.
            used = roles(settings.names)[service].streams if service in SERVICES else None
            await ensure_streams(
                bus.js, settings.names, config.hmm.ohlcv_retention_days, settings.nats_replicas, only=used
            )
            health_kv = await kv_bucket(
                bus.js, settings.names.bucket("health"), ttl=60.0, replicas=settings.nats_replicas
            )
            replica = settings.replica_id or new_replica_id()
            health = Health(health_kv, service, replica, metrics)
            rt = Runtime(service, settings, config, nc, bus, metrics, health, stop, stack, replica)
            coros = [*await build(rt), health.run(stop, settings.health_interval_sec), _watch_closed(closed, stop)]
        except BUS_ERRORS as exc:
            raise _StartInterrupted from exc
        return await _run_tasks(coros, settings, stop)


async def _run_tasks(coros: list[Coroutine[Any, Any, None]], settings: Settings, stop: asyncio.Event) -> int:
    """The service's tasks until ``stop`` or a failure; 1 when a task died."""
    tasks = [asyncio.create_task(c) for c in coros]
    stopper = asyncio.create_task(stop.wait())
    log.info("started", extra={"fields": {"nats": settings.nats_url, "namespace": settings.namespace}})
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and not t.cancelled() and t.exception() is not None]
    for task in failed:
        log.error("task failed; stopping", exc_info=task.exception())
    stop.set()
    # Tasks watch `stop` and finish their batch; give them a moment before cancelling.
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=5.0)
        for t in still:
            t.cancel()
        await asyncio.gather(*still, return_exceptions=True)
    stopper.cancel()
    log.info("stopped")
    return 1 if failed else 0


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed (its socket and timer paths cost less CPU per message), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _watch_closed(closed: asyncio.Event, stop: asyncio.Event) -> None:
    """Fail the service when its NATS connection is closed for good, so a supervisor restarts it."""
    waits = [asyncio.ensure_future(closed.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    if closed.is_set() and not stop.is_set():
        raise ConnectionError("the NATS connection was closed and will not reconnect")


async def _close(nc: NATS) -> None:
    if nc.is_connected:
        await nc.drain()
    else:
        await nc.close()
