"""NATS/JetStream plumbing, written once: connect, streams, KV state, publish, and the consume loop.

The consume loop is the only place that fetches, decodes, validates, hands a
message to its handler, publishes what the handler returns, persists state,
acks, and dead-letters. Its batch protocol is what makes restarts lossless:

1. fetch a batch from the durable consumer;
2. decode + check each message (refused -> ``dlq.{service}`` with the reason);
3. hand each to the handler registered for its type, collecting outputs;
4. publish the outputs, each with a ``Nats-Msg-Id`` (a replay is deduplicated);
5. flush dirty per-series state to KV;
6. ack the batch.

A crash anywhere before 6 redelivers the batch; the per-series "ts not newer
than the last processed" rule and the message ids make the replay a no-op for
whatever had already landed, so the end state equals an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgpack
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.kv import KeyValue

from shared.contracts import DeadLetter, decode, encode
from shared.errors import ContractError
from shared.subjects import Names, SeriesKey
from shared.telemetry import Metrics

log = logging.getLogger(__name__)

S = TypeVar("S")
_DAY_S = 86_400.0
# Failures of NATS itself (or the socket under it): retry the batch, never blame the message.
BUS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)


def now_ms() -> int:
    return int(time.time() * 1000)


async def connect(url: str, name: str, stop: asyncio.Event | None = None, attempts: int = 0) -> NATS:
    """Connect, retrying every second until connected, ``stop`` is set, or ``attempts`` (0 = forever) run out.

    Once connected, nats-py reconnects by itself forever; the service only logs it.
    """

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"fields": {"url": url}})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"fields": {"url": url}})

    async def on_error(exc: Exception) -> None:
        log.debug("nats client error: %s", exc)

    tried = 0
    while True:
        tried += 1
        try:
            return await nats.connect(
                servers=[url],
                name=name,
                connect_timeout=2,
                drain_timeout=5,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
            )
        except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
            if (attempts and tried >= attempts) or (stop is not None and stop.is_set()):
                raise
            log.warning("nats not reachable at %s (%s); retrying", url, exc)
            await asyncio.sleep(1.0)


async def ensure_streams(js: JetStreamContext, names: Names, retention_days: int) -> None:
    """Create or update the streams. Idempotent; every service calls it at start."""
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
        try:
            await js.add_stream(cfg)
        except nats.js.errors.BadRequestError:
            # Exists with other settings (e.g. retention changed): bring it in line.
            await js.update_stream(cfg)


async def kv_bucket(js: JetStreamContext, bucket: str, ttl: float | None = None) -> KeyValue:
    """Bind a KV bucket, creating it (history 1) when missing."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(js_api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl))


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
        self.names = names
        self.service = service
        self.metrics = metrics

    async def publish(self, out: Out) -> None:
        headers = {"Nats-Msg-Id": out.msg_id} if out.msg_id else None
        await self.js.publish(out.subject, encode(out.msg), headers=headers)
        self.metrics.published.labels(self.service, type(out.msg).KIND).inc()

    async def dead_letter(self, reason: str, subject: str, payload: bytes, origin: str | None = None) -> None:
        """Park a refused message; ``origin`` (stream and sequence) dedupes a redelivered batch's second letter."""
        letter = DeadLetter(self.service, reason, subject, payload, now_ms())
        headers = {"Nats-Msg-Id": f"dlq.{self.service}.{origin}"} if origin else None
        await self.js.publish(self.names.dlq(self.service), encode(letter), headers=headers)
        self.metrics.messages.labels(self.service, "dead_lettered").inc()
        log.warning("dead-lettered", extra={"fields": {"reason": reason, "subject": subject}})


class StateStore(Generic[S]):
    """Per-series state cached in memory and persisted to a KV bucket as plain msgpack.

    ``load`` raising ValueError (a stored state that no longer fits the config)
    starts the series afresh, with a log line: better a cold start than a wrong one.
    """

    def __init__(
        self,
        kv: KeyValue,
        *,
        new: Callable[[SeriesKey], S],
        dump: Callable[[S], dict[str, Any]],
        load: Callable[[SeriesKey, dict[str, Any]], S],
    ) -> None:
        self._kv = kv
        self._new = new
        self._dump = dump
        self._load = load
        self._cache: dict[SeriesKey, S] = {}
        self._dirty: set[SeriesKey] = set()

    async def get(self, key: SeriesKey) -> S:
        state = self._cache.get(key)
        if state is not None:
            return state
        try:
            entry = await self._kv.get(key.token)
            raw = msgpack.unpackb(entry.value or b"", raw=False) if entry.value else None
        except nats.js.errors.KeyNotFoundError:
            raw = None
        state = None
        if isinstance(raw, dict):
            try:
                state = self._load(key, raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("stored state of %s discarded: %s", key.id, exc)
        if state is None:
            state = self._new(key)
        self._cache[key] = state
        return state

    def mark(self, key: SeriesKey) -> None:
        self._dirty.add(key)

    async def flush(self) -> None:
        for key in sorted(self._dirty):
            await self._kv.put(key.token, msgpack.packb(self._dump(self._cache[key]), use_bin_type=True))
        self._dirty.clear()

    def discard(self) -> None:
        """Forget everything in memory: after a failed batch, KV is the truth."""
        self._cache.clear()
        self._dirty.clear()


# A handler returns what to publish, or None for a message it skipped as stale or
# duplicate (counted as "skipped", not an error).
Handler = Callable[[Any, str], Awaitable[Sequence[Out] | None]]


@dataclass
class Consumer:
    """A durable pull consumer and its handlers, run by :meth:`run` until ``stop`` is set."""

    bus: Bus
    stream: str
    subjects: Sequence[str]
    durable: str
    handlers: Mapping[type, Handler]
    stores: Sequence[StateStore[Any]] = ()
    partition: tuple[int, int] = (0, 1)  # (replica, replicas)
    batch: int = 256
    fetch_timeout: float = 1.0
    after_batch: Callable[[], Awaitable[None]] | None = None
    # Failures of the service's other backends (e.g. Redis) that should retry the batch like a NATS failure.
    retry_on: tuple[type[BaseException], ...] = ()
    pending: int = field(default=-1, init=False)  # messages left in the consumer after the last batch; -1 unknown

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        cfg = js_api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=60.0,
            max_ack_pending=4 * self.batch,
            deliver_policy=js_api.DeliverPolicy.ALL,
        )
        if len(self.subjects) == 1:
            cfg.filter_subject = self.subjects[0]
        else:
            cfg.filter_subjects = list(self.subjects)
        try:
            await self.bus.js.add_consumer(self.stream, cfg)
        except nats.js.errors.BadRequestError:
            # Exists with another filter (the config changed). Recreating it replays the stream from
            # the start, which the per-series "ts not newer" rule turns into a no-op for seen candles.
            log.warning("consumer %s changed; recreating it", self.durable)
            await self.bus.js.delete_consumer(self.stream, self.durable)
            await self.bus.js.add_consumer(self.stream, cfg)
        return await self.bus.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self._subscribe()
        log.info("consuming", extra={"fields": {"stream": self.stream, "durable": self.durable}})
        try:
            await self._loop(sub, stop)
        finally:
            # A pull subscription left open makes drain() wait out its timeout.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _loop(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.batch, timeout=self.fetch_timeout)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either when nothing came
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
                log.warning("fetch interrupted (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.process(msgs)
            except (*BUS_ERRORS, *self.retry_on) as exc:
                # The bus failed under us mid-batch: forget in-memory state and let the batch redeliver.
                log.warning("batch of %d not completed (%s); it will be redelivered", len(msgs), exc)
                for store in self.stores:
                    store.discard()
                for msg in msgs:
                    try:
                        await msg.nak(delay=1.0)
                    except (nats.errors.Error, OSError):
                        break
                await asyncio.sleep(0.5)

    async def process(self, msgs: Sequence[Msg]) -> None:
        outs: list[Out] = []
        expected = tuple(self.handlers)
        replica, replicas = self.partition
        service = self.bus.service
        metrics = self.bus.metrics
        for msg in msgs:
            started = time.perf_counter()
            try:
                obj = decode(msg.data, expected)
            except ContractError as exc:
                await self.bus.dead_letter(exc.reason, msg.subject, msg.data, _origin(msg))
                continue
            key = getattr(obj, "key", None)
            if isinstance(key, SeriesKey) and not key.owned_by(replica, replicas):
                metrics.messages.labels(service, "not_owned").inc()
                continue
            try:
                produced = await self.handlers[type(obj)](obj, msg.subject)
            except ContractError as exc:
                await self.bus.dead_letter(exc.reason, msg.subject, msg.data, _origin(msg))
                continue
            except (*BUS_ERRORS, *self.retry_on):
                raise  # a backend failed, not the message: the whole batch is redelivered
            except Exception as exc:
                # Anything else is a bug meeting one message: park that message, keep the series moving.
                log.exception("handler failed on %s", msg.subject)
                reason = f"handler error: {type(exc).__name__}: {exc}"
                await self.bus.dead_letter(reason, msg.subject, msg.data, _origin(msg))
                continue
            if produced is None:
                metrics.messages.labels(service, "skipped").inc()
                continue
            outs.extend(produced)
            metrics.messages.labels(service, "handled").inc()
            metrics.handle_seconds.labels(service).observe(time.perf_counter() - started)
            if isinstance(key, SeriesKey):
                metrics.last_event_ts.labels(service, key.id).set(getattr(obj, "ts", 0))
        for out in outs:
            await self.bus.publish(out)
        for store in self.stores:
            await store.flush()
        if self.after_batch is not None:
            await self.after_batch()
        for msg in msgs:
            await msg.ack()
        if msgs:
            self.pending = msgs[-1].metadata.num_pending


def _origin(msg: Msg) -> str | None:
    """``STREAM.seq`` of a JetStream message: its identity across redeliveries."""
    try:
        meta = msg.metadata
    except (nats.errors.Error, AttributeError, ValueError):
        return None
    return f"{meta.stream}.{meta.sequence.stream}"


class Health:
    """A heartbeat in KV bucket ``health`` (entries expire after a minute), in the spirit of arq's health key."""

    def __init__(self, kv: KeyValue, service: str, replica: int, replicas: int, metrics: Metrics) -> None:
        self._kv = kv
        self._key = f"{service}.{replica + 1}of{replicas}"
        self._service = service
        self._metrics = metrics
        self._started = now_ms()
        self._replica = f"{replica + 1}/{replicas}"
        self.extra: dict[str, Any] = {}

    def _count(self, outcome: str) -> float:
        return self._metrics.count(self._service, outcome)

    async def beat(self) -> None:
        record = {
            "service": self._service,
            "replica": self._replica,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started,
            "last_seen": now_ms(),
            "handled": int(self._count("handled")),
            "skipped": int(self._count("skipped")),
            "dead_lettered": int(self._count("dead_lettered")),
            **self.extra,
        }
        await self._kv.put(self._key, msgpack.packb(record, use_bin_type=True))

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                await self.beat()
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.debug("heartbeat skipped: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


async def read_health(js: JetStreamContext, names: Names) -> list[dict[str, Any]]:
    """Every live heartbeat, for the status API."""
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
            out.append(msgpack.unpackb(entry.value, raw=False))
    return sorted(out, key=lambda r: (r.get("service", ""), r.get("replica", "")))


async def read_subject(
    js: JetStreamContext, stream: str, subject: str, *, keep_last: int, decode_as: type[Any], timeout: float = 5.0
) -> list[Any]:
    """The newest ``keep_last`` messages stored under ``subject`` of ``stream``, decoded; bad ones left out.

    An ephemeral ordered consumer reads the subject once, front to back; for a
    series' candles over the retention window (about 20k at 1m) that is quick
    and needs no index. An empty subject costs one stream-info request.
    """
    from collections import deque

    info = await js.stream_info(stream, subjects_filter=subject)
    if not (info.state.subjects or {}).get(subject):
        return []
    out: deque[Any] = deque(maxlen=keep_last)
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            with contextlib.suppress(ContractError):
                out.append(decode(msg.data, (decode_as,)))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return list(out)
