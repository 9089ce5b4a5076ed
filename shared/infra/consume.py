"""The one consume loop: ordered, gap-free, exactly-once application of a stream to per-series state.

Every service that consumes a stream runs :class:`Consumer`. Its guarantee:
per series, messages are handed to the handler in stream order, each applied
exactly once to the state that survives a crash, whatever the crash (SIGKILL
included), and a candle is never skipped because a newer one overtook it.

How (see the README, "Restarts and scaling"):

- The service keeps its own **position**: the stream sequence up to which every
  message's effects are durable (outputs published, state in KV or Redis).
  JetStream redelivery is not used at all (``AckPolicy.NONE``): at start, and
  after any failure, the durable consumer is recreated to deliver from
  position + 1, so redelivered work always comes before new work, at once
  (no ``ack_wait`` to sit out).
- A batch: fetch; decode, check and hand each message to its handler; publish
  the outputs pipelined (each with a ``Nats-Msg-Id``); flush dirty state; then
  commit the position ``commit_delay_s`` after the first batch it covers, or
  once caught up while the server says more is pending (a series in many
  batches is written once; a burst's outputs all go on before its state). A
  crash replays from the last commit; state flushed ahead of the position
  skips what it has seen (the cores' "ts not newer than the last applied"
  rule), and republished outputs are deduplicated by their message ids.
- A handler may answer :class:`Hold` for a series that cannot go on yet (an HMM
  model being trained for it): that series' messages wait in memory, in order,
  while other series go on, and the position stops short of the first one
  held, so a crash replays them. ``low_water`` does the same for messages a
  core keeps in memory (the screener's join buffer).
- Deliveries carry consecutive consumer sequences; a hole (messages lost in a
  reconnect) makes the loop reposition instead of silently going on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api as js_api

from shared.domain.contracts import decode, time_problem
from shared.domain.errors import ContractError
from shared.domain.partitions import PartitionBy, partition_of
from shared.domain.subjects import SeriesKey
from shared.infra.admission import Admission, refusal
from shared.infra.bus import BUS_ERRORS, Bus, Out, now_ms
from shared.infra.kv_state import Repositioned
from shared.infra.ownership import Everything, Owner
from shared.infra.pull import Pull

log = logging.getLogger(__name__)

S = TypeVar("S")

_ORPHAN_CONSUMER_S = 120.0  # s without a fetch before the server drops a consumer (its replica is gone)
_IDLE_BEAT_S = 0.5  # s a replica holding nothing waits between looks for a partition to take


class Hold:
    """A handler's answer for a series that must wait until ``ready`` is done; its messages are kept in order.

    ``outs`` is what the handler produced before it had to stop (a batch's
    first candles): published now. The held message is handed to the handler
    again in full, which skips what it already applied.
    """

    __slots__ = ("outs", "ready")

    def __init__(self, ready: asyncio.Future[Any], outs: Sequence[Out] = ()) -> None:
        self.ready = ready
        self.outs = outs


# A handler gets the decoded message and its stream sequence, and returns what to publish,
# None for a message it skipped as stale or duplicate (counted as "skipped"), or a Hold.
Handler = Callable[[Any, int], Awaitable[Sequence[Out] | Hold | None]]


class Resettable(Protocol):
    async def flush(self) -> None: ...

    def discard(self) -> None: ...


class Position(Protocol):
    """Where a consumer's committed stream sequence is kept, per partition held (0: nothing applied yet)."""

    async def load(self, partitions: frozenset[int]) -> dict[int, int]:
        """The committed sequence of each partition; the ones committed from now on are these."""

    async def commit(self, seq: int) -> None:
        """Everything up to ``seq`` of the partitions loaded is applied; raise if another replica moved one."""

    async def verify(self) -> None:
        """Raise (an error the consumer retries on) when the position's home was wiped since it was loaded."""


@dataclass
class _Held:
    ready: asyncio.Future[Any]
    items: list[tuple[Any, int, Msg]]


@dataclass
class Consumer:
    """A durable pull consumer applying one stream to per-series state; :meth:`run` until ``stop`` is set."""

    bus: Bus
    stream: str
    subjects: Sequence[str]
    durable: str
    handlers: Mapping[Any, Handler]  # message type -> its handler
    position: Position
    stores: Sequence[Resettable] = ()
    # The partitions of the series this replica may process now (leases); Everything: a replica alone by design.
    owner: Owner = field(default_factory=Everything)
    partition_by: PartitionBy = "series"  # "symbol": a symbol's timeframes in one replica (the screener's join)
    # Candle consumers: the series cap (every series is registered here, those of other partitions too).
    admission: Admission | None = None
    batch: int = 256
    fetch_timeout: float = 1.0
    # Lowest stream sequence a core still keeps in memory only (None: none); the position stays below it.
    low_water: Callable[[], int | None] | None = None
    # Failures of the service's other backends (e.g. Redis) that should retry the batch like a NATS failure.
    retry_on: tuple[type[BaseException], ...] = ()
    # Serialises batches of consumers that share a writer (state_publisher's two streams).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    future_tolerance_ms: int = 60_000
    # What was applied is committed (state, then position) this long (s) after the first batch since the last
    # commit: a series touched by many batches is written once, the state writes of a burst of live candles come
    # after its outputs have gone on downstream, and a crash replays at most this much more. 0: every batch.
    commit_delay_s: float = 0.5
    # While more is pending on the server (a burst, a backfill), the commit waits until caught up, this long (s) at
    # most (never less than commit_delay_s): a burst's state writes come after its outputs, not amid them.
    behind_commit_delay_s: float = 10.0
    committed: int = field(default=0, init=False)  # the position as last loaded or committed
    _held: dict[SeriesKey, _Held] = field(default_factory=dict, init=False)
    _floors: dict[int, int] = field(default_factory=dict, init=False)  # partition -> its committed position
    _owned_version: int = field(default=-1, init=False)
    _next_delivery: int = field(default=0, init=False)
    _last_seq: int = field(default=0, init=False)
    _verified_at: float = field(default=0.0, init=False)
    _dirty_since: float | None = field(default=None, init=False)  # monotonic s of the first uncommitted batch
    _behind: bool = field(default=False, init=False)  # the last fetch left messages pending for this consumer
    _counted: dict[str, Any] = field(default_factory=dict, init=False)  # outcome -> its counter, looked up once
    # The stores' ``prefetch`` (StateStore has one; state_publisher's writer, holding everything, has none).
    _prefetchers: list[Callable[[set[SeriesKey]], Awaitable[None]]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        metrics, service = self.bus.metrics, self.bus.service
        self._counted = {o: metrics.messages.labels(service, o) for o in ("handled", "skipped", "not_owned")}
        self._counted["seconds"] = metrics.handle_seconds.labels(service)
        self._prefetchers = [p for p in (getattr(store, "prefetch", None) for store in self.stores) if p is not None]

    @property
    def _retryable(self) -> tuple[type[BaseException], ...]:
        return (*BUS_ERRORS, *self.retry_on, Repositioned)

    async def _open(self) -> Pull:
        """(Re)create the durable at the lowest committed position of the partitions held + 1 and bind to it."""
        if self.admission is not None:
            await self.admission.load()
        async with self.lock:
            self._owned_version = self.owner.version
            self._floors = await self.position.load(self.owner.held())
            self.committed = self._last_seq = min(self._floors.values())
        self._next_delivery = 1
        cfg = js_api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=js_api.AckPolicy.NONE,
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.committed + 1,
            inactive_threshold=_ORPHAN_CONSUMER_S,  # a SIGKILLed replica's consumer goes away by itself
        )
        if len(self.subjects) == 1:
            cfg.filter_subject = self.subjects[0]
        else:
            cfg.filter_subjects = list(self.subjects)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.bus.js.delete_consumer(self.stream, self.durable)
        await self.bus.js.add_consumer(self.stream, cfg)
        return Pull(await self.bus.js.pull_subscribe_bind(durable=self.durable, stream=self.stream))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sub = None
            try:
                if not await self._hold_something(stop):
                    continue
                sub = await self._open()
                log.info(
                    "consuming",
                    extra={"fields": {"stream": self.stream, "durable": self.durable, "from": self.committed + 1}},
                )
                await self._loop(sub, stop)
            except self._retryable as exc:
                # Forget everything in memory; the committed position and the stored state are the truth.
                log.warning("consumer %s restarts from its position (%s: %s)", self.durable, type(exc).__name__, exc)
                async with self.lock:
                    self._reset()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
            finally:
                if sub is not None:
                    # A pull subscription left open makes drain() wait out its timeout.
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()

    async def _hold_something(self, stop: asyncio.Event) -> bool:
        """Rebalance; False (after a beat's wait) while this replica holds no partition, e.g. a standby."""
        await self.owner.rebalance(self._commit_locked)
        if self.owner.held():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=_IDLE_BEAT_S)
        return False

    async def _commit_locked(self) -> None:
        async with self.lock:
            await self._commit()

    def _reset(self) -> None:
        for store in self.stores:
            store.discard()
        self._held.clear()
        # What was fetched since the last commit is forgotten with the state: a commit before the next open
        # (handing a partition over, say) must not move the position past work that was discarded.
        self._last_seq = self.committed
        self._dirty_since = None
        self._behind = False

    async def _loop(self, sub: Pull, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.owner.rebalance(self._commit_locked)
            if self.owner.version != self._owned_version:
                # Between batches, with everything applied committed: start over with the partitions held now.
                raise Repositioned(f"partitions held changed to {sorted(self.owner.held())}")
            timeout = self.fetch_timeout
            if self._held:
                # A series waits: go on the moment its model is ready, looking for new messages meanwhile.
                waits = {h.ready for h in self._held.values()}
                done, _ = await asyncio.wait(waits, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                if done:  # go on at once: a fetch first would wait out its timeout once nothing new is left
                    async with self.lock:
                        await self.process([])
                    continue
                timeout = 0.01
            if self._dirty_since is not None:  # wait no longer than until the commit is due (behind, that is late:
                # a fetch cut to a millisecond could come back empty under load and pass for having caught up)
                timeout = min(timeout, max(0.001, self._dirty_since + self._commit_delay() - time.monotonic()))
            try:
                msgs = await sub.fetch(self.batch, timeout=timeout)
            except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either when nothing came
                msgs = []
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
                raise Repositioned(f"fetch interrupted: {exc}") from exc
            if not msgs:
                self._behind = False  # a fetch that found nothing: caught up
            if not msgs and not self._held:
                if self._commit_due():
                    async with self.lock:
                        await self._commit()
                await self._verify_now_and_then()
                continue
            async with self.lock:
                await self.process(msgs)
        if self._dirty_since is not None:  # a clean stop leaves nothing applied to replay
            async with self.lock:
                await self._commit()

    async def _verify_now_and_then(self) -> None:
        if time.monotonic() - self._verified_at >= 1.0:
            self._verified_at = time.monotonic()
            async with self.lock:
                await self.position.verify()

    async def process(self, msgs: Sequence[Msg]) -> None:
        """One batch: apply, release held series that can go on, publish, flush, commit the position."""
        outs: list[Out] = []
        await self._prefetch(msgs)
        for msg in msgs:
            meta = msg.metadata
            if meta.sequence.consumer != self._next_delivery:
                raise Repositioned(f"delivery {meta.sequence.consumer} where {self._next_delivery} was due")
            self._next_delivery += 1
            self._last_seq = meta.sequence.stream
            await self._one(msg, self._last_seq, outs)
        if msgs:
            self._behind = msgs[-1].metadata.num_pending > 0
        await self._release(outs)
        await self.bus.publish_all(outs)
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        if self._held or self._commit_due():
            await self._commit()

    def _commit_due(self) -> bool:
        """Whether what was applied has waited its :meth:`_commit_delay` (a held series commits every batch)."""
        return self._dirty_since is not None and time.monotonic() - self._dirty_since >= self._commit_delay()

    def _commit_delay(self) -> float:
        """Seconds what was applied waits for its commit now: longer while more is pending on the server."""
        return max(self.commit_delay_s, self.behind_commit_delay_s) if self._behind else self.commit_delay_s

    async def _commit(self) -> None:
        """Make what was applied durable (the stores' dirty state), then move the position past it."""
        if not self.owner.valid():
            raise Repositioned("leases not renewed in time: what this replica applied is left to replay")
        for store in self.stores:
            await store.flush()
        position = self._position()
        if position != self.committed:
            await self.position.commit(position)
            self.committed = position
        self._dirty_since = None

    async def _prefetch(self, msgs: Sequence[Msg]) -> None:
        """Read the stored state of every series the batch names in one round of concurrent requests."""
        if not self._prefetchers:  # state_publisher's writer holds every snapshot already: no need to name the series
            return
        keys = set()
        for msg in msgs:
            with contextlib.suppress(ValueError):  # a subject naming no series is dead-lettered later
                key = self.bus.names.series_of(msg.subject)
                if self._mine(key, msg.metadata.sequence.stream):
                    keys.add(key)
        if keys:
            for prefetch in self._prefetchers:
                await prefetch(keys)

    def _position(self) -> int:
        bounds = [self._last_seq]
        bounds.extend(h.items[0][1] - 1 for h in self._held.values())
        water = self.low_water() if self.low_water is not None else None
        if water is not None:
            bounds.append(water - 1)
        return max(self.committed, min(bounds))

    async def _one(self, msg: Msg, seq: int, outs: list[Out]) -> None:
        try:
            obj = decode(msg.data, tuple(self.handlers))
            key = getattr(obj, "key", None)
            self._admit(obj, key, msg.subject)
        except ContractError as exc:
            await self.bus.dead_letter(exc.reason, msg.subject, msg.data, _origin(msg))
            return
        if isinstance(key, SeriesKey):
            if self.admission is not None and not await self.admission.admit(key, seq):
                if self._mine(key, seq):  # one dead letter per refused candle, from the replica that owns it
                    await self.bus.dead_letter(refusal(self.admission.max_series), msg.subject, msg.data, _origin(msg))
                return
            if not self._mine(key, seq):
                self._counted["not_owned"].inc()
                return
            held = self._held.get(key)
            if held is not None:
                held.items.append((obj, seq, msg))
                return
        await self._handle(obj, key, seq, msg, outs)

    def _mine(self, key: SeriesKey, seq: int) -> bool:
        """Whether this replica applies ``seq``: its series' partition is held, and not yet past ``seq``."""
        p = partition_of(key, self.owner.partitions, self.partition_by)
        return self.owner.owns(p) and seq > self._floors.get(p, 0)

    def _admit(self, obj: Any, key: Any, subject: str) -> None:
        """What the contract cannot check alone: the subject names the payload's series, and a sane ts."""
        if isinstance(key, SeriesKey):
            try:
                named = self.bus.names.series_of(subject)
            except (ValueError, KeyError) as exc:
                raise ContractError(f"subject {subject!r} names no series") from exc
            if named != key:
                raise ContractError(f"subject names series {named.id} but the payload is for {key.id}")
        problem = time_problem(obj, now_ms(), self.future_tolerance_ms)
        if problem is not None:
            raise ContractError(problem)

    async def _handle(self, obj: Any, key: Any, seq: int, msg: Msg, outs: list[Out]) -> None:
        metrics, service = self.bus.metrics, self.bus.service
        started = time.perf_counter()
        try:
            produced = await self.handlers[type(obj)](obj, seq)
        except ContractError as exc:
            await self.bus.dead_letter(exc.reason, msg.subject, msg.data, _origin(msg))
            return
        except self._retryable:
            raise  # a backend failed, not the message: the batch is replayed from the position
        except Exception as exc:
            # Anything else is a bug meeting one message: park that message, keep the series moving.
            log.exception("handler failed on %s", msg.subject)
            reason = f"handler error: {type(exc).__name__}: {exc}"
            await self.bus.dead_letter(reason, msg.subject, msg.data, _origin(msg))
            return
        if isinstance(produced, Hold):
            self._held[key] = _Held(produced.ready, [(obj, seq, msg)])
            outs.extend(produced.outs)
            return
        if produced is None:
            self._counted["skipped"].inc()
            return
        outs.extend(produced)
        self._counted["handled"].inc()
        self._counted["seconds"].observe(time.perf_counter() - started)
        if isinstance(key, SeriesKey):
            metrics.last_event_ts.labels(service, key.id).set(getattr(obj, "ts", 0))

    async def _release(self, outs: list[Out]) -> None:
        """Hand the held messages of every series whose wait is over to the handler again, in order."""
        for key in [k for k, h in self._held.items() if h.ready.done()]:
            items = self._held.pop(key).items
            for i, (obj, seq, msg) in enumerate(items):
                await self._handle(obj, key, seq, msg, outs)
                again = self._held.get(key)
                if again is not None:
                    again.items.extend(items[i + 1 :])
                    break


def _origin(msg: Msg) -> str | None:
    """``STREAM.seq`` of a JetStream message: its identity across redeliveries."""
    try:
        meta = msg.metadata
    except (nats.errors.Error, AttributeError, ValueError):
        return None
    return f"{meta.stream}.{meta.sequence.stream}"
