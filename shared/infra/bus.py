"""NATS/JetStream plumbing, written once: connect, streams, KV buckets, publish, dead letters, health.

The consume loop that runs on top of it lives in :mod:`shared.infra.consume`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from shared.domain.contracts import MAX_BATCH_BARS, Candle, CandleBatch, DeadLetter, candle_count, decode, encode
from shared.domain.control import Heartbeat
from shared.domain.errors import ConfigError, ContractError
from shared.domain.subjects import Names, SeriesKey
from shared.infra.acks import AckPipeline, Publish
from shared.infra.telemetry import Metrics

log = logging.getLogger(__name__)

_DAY_S = 86_400.0
# Failures of NATS itself (or the socket under it): retry the batch, never blame the message.
BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)


def now_ms() -> int:
    return int(time.time() * 1000)


class _Client(NATS):
    """A nats-py client that knows whether *we* closed it.

    nats-py calls the disconnected callback both when the server goes away and
    when we drain or close the connection at the end of a run; only the first
    deserves a warning. Server-side closes go through nats-py's private
    ``_close``, never through these two methods.
    """

    closed_by_us = False

    async def close(self) -> None:
        self.closed_by_us = True
        await super().close()

    async def drain(self) -> None:
        self.closed_by_us = True
        await super().drain()


def disconnect_level(closed_by_us: bool, stopping: bool) -> int:
    """How loud a disconnect is: a close we asked for (or one during our own stop) is routine, anything else is not."""
    return logging.INFO if closed_by_us or stopping else logging.WARNING


def _connect_options(url: str, name: str, credentials: Mapping[str, str] | None) -> dict[str, Any]:
    """nats-py ``connect`` options other than the callbacks; timeouts and waits in seconds."""
    return {
        "servers": url.split(","),
        "name": name,
        "connect_timeout": 2,
        "drain_timeout": 5,
        "allow_reconnect": True,
        # nats-py applies this to the first connect too, and -1 would never return to our
        # loop (which checks `stop` and `attempts`): one retry here, forever once connected.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 1,
        "user": (credentials or {}).get("user"),
        "password": (credentials or {}).get("password"),
    }


async def connect(
    url: str,
    name: str,
    stop: asyncio.Event | None = None,
    attempts: int = 0,
    closed: asyncio.Event | None = None,
    credentials: Mapping[str, str] | None = None,
) -> NATS:
    """Connect, retrying every second until connected, ``stop`` is set, or ``attempts`` (0 = forever) run out.

    ``url`` may list a cluster's nodes, comma-separated: all go to nats-py, which
    connects to one and fails over to the others (and to the nodes the cluster
    announces). ``credentials`` is ``Settings.nats_credentials`` (user, password).

    Once connected, nats-py reconnects by itself forever; the service only logs
    it. Should the client give up and close anyway (the server closed it for a
    protocol violation, say), ``closed`` is set: a service treats that as fatal
    and exits non-zero, so its supervisor restarts it instead of it idling.
    """
    nc = _Client()  # a fresh one per attempt; the callbacks look it up when they run

    async def on_disconnect() -> None:
        level = disconnect_level(nc.closed_by_us, stop is not None and stop.is_set())
        text = "nats connection closed" if level < logging.WARNING else "nats disconnected"
        log.log(level, text, extra={"fields": {"url": url}})

    async def on_closed() -> None:
        if closed is not None:
            closed.set()

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"fields": {"url": url}})

    async def on_error(exc: Exception) -> None:
        log.debug("nats client error: %s", exc)

    tried = 0
    while True:
        tried += 1
        nc = _Client()
        try:
            await nc.connect(
                **_connect_options(url, name, credentials),
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
                closed_cb=on_closed,
            )
            nc.options["max_reconnect_attempts"] = -1  # see _connect_options
            return nc
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            if (attempts and tried >= attempts) or (stop is not None and stop.is_set()):
                raise
            await _retry_pause(url, exc, tried)


async def _retry_pause(url: str, exc: BaseException, tried: int) -> None:
    """Between connect attempts: warn on the first failure and every 30th (not every second), then wait 1 s."""
    if tried == 1 or tried % 30 == 0:
        log.warning("nats not reachable at %s (%s); retrying", url, exc or type(exc).__name__)
    await asyncio.sleep(1.0)


async def ensure_streams(
    js: JetStreamContext,
    names: Names,
    retention_days: int,
    replicas: int = 1,
    only: Collection[str] | None = None,
) -> None:
    """Create or update the streams (``only`` these names, default all), each with ``replicas`` copies.

    Idempotent; every service calls it at start for the streams it uses (its
    NATS user may touch no others: see shared.domain.access).
    """
    specs = [
        js_api.StreamConfig(
            name=names.stream_ohlcv,
            subjects=[names.ohlcv_all],
            max_age=retention_days * _DAY_S,
            # Backfill republishes pages; a long window keeps Msg-Id dedup effective across a run.
            duplicate_window=600.0,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.stream_regimes,
            subjects=[names.vol_all, names.hmm_all, names.scores_all, names.screener_all],
            max_age=max(retention_days, 1) * _DAY_S,
            duplicate_window=600.0,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            # Reports supersede each other: keep the last few per series, not a history.
            name=names.stream_telemetry,
            subjects=[names.pipeline_all],
            max_msgs_per_subject=5,
            max_age=_DAY_S,
            storage=js_api.StorageType.FILE,
        ),
        js_api.StreamConfig(
            name=names.stream_dlq,
            subjects=[names.dlq_all],
            max_age=30 * _DAY_S,
            storage=js_api.StorageType.FILE,
        ),
    ]
    for cfg in specs:
        if only is not None and cfg.name not in only:
            continue
        cfg.num_replicas = replicas
        try:
            try:
                await js.add_stream(cfg)
            except nats.js.errors.BadRequestError:
                # Exists with other settings (e.g. retention changed): bring it in line.
                await js.update_stream(cfg)
        except nats.js.errors.APIError as exc:
            _check_replicas(exc, replicas)
            raise


# JetStream's answer to replicas > 1 on a server that is not part of a cluster: a setting that can never work.
_NOT_CLUSTERED = 10074


def _check_replicas(exc: nats.js.errors.APIError, replicas: int) -> None:
    """Turn "replicas > 1 on a lone server" into the setting to change (start-up stops naming it)."""
    if exc.err_code == _NOT_CLUSTERED:
        raise ConfigError("NATS_REPLICAS", f"{replicas} copies need a NATS cluster; this server runs alone: use 1")


async def kv_bucket(js: JetStreamContext, bucket: str, ttl: float | None = None, replicas: int = 1) -> KeyValue:
    """Bind a KV bucket, creating it (history 1, ``replicas`` copies) when missing."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        cfg = js_api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl, replicas=replicas)
        try:
            return await js.create_key_value(cfg)
        except nats.js.errors.APIError as exc:
            _check_replicas(exc, replicas)
            raise


@dataclass(frozen=True, slots=True)
class Out:
    """A message a handler wants published; ``msg_id`` makes a redelivered batch's republish a no-op."""

    subject: str
    msg: Any
    msg_id: str | None = None


class Bus:
    """A service's handle on NATS: publishing, dead-lettering, and its metrics."""

    def __init__(self, nc: NATS, names: Names, service: str, metrics: Metrics) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.acks = AckPipeline(nc)  # every publish and state write of the service's batches goes through it
        self.names = names
        self.service = service
        self.metrics = metrics

    async def publish_all(self, outs: Sequence[Out]) -> None:
        """Publish ``outs`` pipelined (all sent, then every ack awaited); raises if any is not stored."""
        if not outs:
            return
        await self.acks.send(
            [Publish(o.subject, encode(o.msg), {"Nats-Msg-Id": o.msg_id} if o.msg_id else None) for o in outs]
        )
        kinds: dict[str, int] = {}
        for o in outs:
            kind = type(o.msg).KIND
            kinds[kind] = kinds.get(kind, 0) + 1
        for kind, n in kinds.items():
            self.metrics.published.labels(self.service, kind).inc(n)

    async def dead_letter(self, reason: str, subject: str, payload: bytes, origin: str | None = None) -> None:
        """Park a refused message; ``origin`` (stream and sequence) dedupes a redelivered batch's second letter.

        The letter is bounded (see :meth:`DeadLetter.of`), so a refused message
        near the server's max payload can never make the letter itself too big.
        """
        letter = DeadLetter.of(self.service, reason, subject, payload, now_ms())
        headers = {"Nats-Msg-Id": f"dlq.{self.service}.{origin}"} if origin else None
        await self.js.publish(self.names.dlq(self.service), encode(letter), headers=headers)
        self.metrics.messages.labels(self.service, "dead_lettered").inc()
        log.warning("dead-lettered", extra={"fields": {"reason": reason, "subject": subject}})


PUBLISH_WINDOW = 256  # messages in flight at once when publishing candles


def candle_messages(candles: Sequence[Candle]) -> list[Candle | CandleBatch]:
    """``candles`` as messages: a lone candle of a series stays a Candle; runs of one series become batches.

    Per series the order is kept; a run is cut where ts stops increasing (a
    late gap fill) or at MAX_BATCH_BARS. Series interleave by their runs' first ts.
    """
    runs: dict[SeriesKey, list[list[Candle]]] = {}
    for candle in candles:
        series = runs.setdefault(candle.key, [])
        run = series[-1] if series else None
        if run is None or candle.ts <= run[-1].ts or len(run) >= MAX_BATCH_BARS:
            series.append([candle])
        else:
            run.append(candle)
    ordered = heapq.merge(*runs.values(), key=lambda run: run[0].ts)
    return [run[0] if len(run) == 1 else CandleBatch.of(run) for run in ordered]


async def publish_candles(acks: AckPipeline, names: Names, candles: Sequence[Candle]) -> int:
    """Publish ``candles`` (batched, pipelined, each message with its ``Nats-Msg-Id``); returns how many were new.

    The one way candles enter the stack: ingest, ``regimes import`` and the
    tests use it. One connection keeps the stream in publish order, so
    pipelining changes nothing a consumer sees.
    """
    return await publish_messages(acks, names, candle_messages(candles))


async def publish_messages(acks: AckPipeline, names: Names, messages: Sequence[Candle | CandleBatch]) -> int:
    """Publish candle messages in order, PUBLISH_WINDOW at a time; returns how many candles were new."""
    new = 0
    for start in range(0, len(messages), PUBLISH_WINDOW):
        window = messages[start : start + PUBLISH_WINDOW]
        stored = await acks.send([Publish(names.ohlcv(m.key), encode(m), {"Nats-Msg-Id": m.msg_id}) for m in window])
        new += sum(candle_count(m) for m, ack in zip(window, stored, strict=True) if not ack.duplicate)
    return new


class Health:
    """A heartbeat in KV bucket ``health`` (entries expire after a minute), in the spirit of arq's health key."""

    def __init__(self, kv: KeyValue, service: str, replica: str, metrics: Metrics) -> None:
        self._kv = kv
        self._key = f"{service}.{replica}"
        self._service = service
        self._metrics = metrics
        self._started = now_ms()
        self._replica = replica
        # Fields added to every beat; a callable is read at each beat (e.g. the partitions held now).
        self.extra: dict[str, Any] = {}

    def _count(self, outcome: str) -> float:
        return self._metrics.count(self._service, outcome)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            service=self._service,
            replica=self._replica,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started,
            last_seen=now_ms(),
            handled=int(self._count("handled")),
            skipped=int(self._count("skipped")),
            dead_lettered=int(self._count("dead_lettered")),
            extra={k: (v() if callable(v) else v) for k, v in self.extra.items()},
        )

    async def beat(self) -> None:
        await self._kv.put(self._key, self.heartbeat().to_msgpack())

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                await self.beat()
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.debug("heartbeat skipped: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


async def read_health(js: JetStreamContext, names: Names) -> list[Heartbeat]:
    """Every live heartbeat, for the status API (an entry that is not one is left out)."""
    try:
        kv = await js.key_value(names.bucket("health"))
        keys = await kv.keys()
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
        return []
    out = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            with contextlib.suppress(ContractError):
                out.append(Heartbeat.from_msgpack(entry.value))
    return sorted(out, key=lambda h: (h.service, h.replica))


async def read_subject(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    keep_last: int,
    decode_as: tuple[type[Any], ...],
    timeout: float = 5.0,
) -> list[Any]:
    """The newest ``keep_last`` (0: all) messages stored under ``subject`` of ``stream``, decoded; bad ones left out.

    An ephemeral ordered consumer reads the subject once, front to back; for a
    series' candles over the retention window (about 20k at 1m) that is quick
    and needs no index. An empty subject costs one stream-info request.
    """
    from collections import deque

    info = await js.stream_info(stream, subjects_filter=subject)
    if not info.state.subjects:  # nothing stored under the subject (a wildcard filter counts too)
        return []
    out: deque[Any] = deque(maxlen=keep_last or None)
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            with contextlib.suppress(ContractError):
                out.append(decode(msg.data, decode_as))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return list(out)
