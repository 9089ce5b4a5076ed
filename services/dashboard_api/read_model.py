"""What the status API reads from Redis (written by state_publisher only) and NATS, and how long it may keep it.

Reading 1,000 snapshots is one SMEMBERS and one MGET of megabytes, tens of milliseconds
of parsing alone, so the API keeps what it read while nothing can have changed: the
publisher sends a notice on ``RedisKeys.changes`` with every batch it writes (in the
same MULTI), and a :class:`ChangeFeed` counts those notices. A cached read is served
only while the feed is subscribed, no notice came since the read began, and it is
younger than :data:`MAX_AGE_SEC` (for what sends no notice, like a flushed Redis).
Each series' rendered bytes are kept as long as its stored JSON is the same text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

import msgspec
import nats.errors
import nats.js.errors
import redis.asyncio as aioredis
from fastapi import HTTPException
from nats.aio.client import Client as NATS
from redis.exceptions import RedisError

from services.dashboard_api import core, readiness
from services.dashboard_api.live import Fanout
from services.dashboard_api.models import ServiceHealth
from shared.domain.control import Heartbeat
from shared.domain.errors import ContractError
from shared.domain.subjects import Names, SeriesKey, decode_symbol
from shared.domain.vocab import TIMEFRAMES_MS
from shared.infra.admission import registered
from shared.infra.bus import read_health
from shared.infra.redis_keys import RedisKeys

log = logging.getLogger(__name__)

MAX_AGE_SEC = 1.0
RESUBSCRIBE_SEC = 1.0
_POLL_SEC = 1.0
_MAX_BODIES = 64  # per state: one per filter combination asked for
_MAX_DETAILS = 256
DEFAULT_SSE_CLIENTS = 200  # Settings.api_sse_max_clients' default


class ChangeFeed:
    """Counts the publisher's change notices; a read is current while the count is the one it began at.

    The same one subscription feeds the live stream's clients (:class:`~services.dashboard_api.live.Fanout`).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        shutdown: asyncio.Event | None,
        fanout: Fanout | None = None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._shutdown = shutdown
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.generation = 0
        self.live = False  # subscribed: notices reach us
        self._live_event = asyncio.Event()
        self.fanout = fanout if fanout is not None else Fanout(DEFAULT_SSE_CLIENTS)
        self._on_error = on_error

    def changed(self) -> None:
        self.generation += 1

    def current(self, generation: int, at: float) -> bool:
        """Whether what was read from ``generation`` at ``at`` (monotonic) is still what Redis holds."""
        return self.live and generation == self.generation and time.monotonic() - at < MAX_AGE_SEC

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="dashboard_api changes")

    async def wait_live(self, timeout: float) -> bool:
        """Start the feed if need be and wait up to ``timeout`` s for its subscription."""
        self.start()
        if not self.live:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._live_event.wait(), timeout)
        return self.live

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _stopping(self) -> bool:
        # ``_closed`` too, not only the cancellation: on Python 3.11 a cancel() landing as redis-py's read
        # timeout expires is taken for the timeout, and the loop would go on listening for good.
        return self._closed or (self._shutdown is not None and self._shutdown.is_set())

    async def _run(self) -> None:
        while not self._stopping():
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                self._on_error()
                log.debug("change notices unavailable: %s", exc)
            except Exception:
                self._on_error()
                log.exception("change notices failed; reading Redis on every request until resubscribed")
            if not self._stopping():
                await asyncio.sleep(RESUBSCRIBE_SEC)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            # Trusted only from the confirmation on: a notice can be missed before Redis has the subscription.
            while not self._stopping() and not self.live:
                msg = await pubsub.get_message(timeout=_POLL_SEC)
                if msg is not None and msg["type"] == "subscribe":
                    self.live = True
                    self._live_event.set()
            self.changed()
            while not self._stopping():
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_SEC)
                if msg is not None:
                    self.changed()  # before any client hears of it and asks: never answered from before
                    self.fanout.publish(msg["data"])
        finally:
            self.live = False
            self._live_event.clear()
            self.changed()
            # Notices may be lost until the next subscription: every stream ends, its browser reconnects
            # (refused while there is no subscription) and refetches everything on its next hello.
            self.fanout.close_all()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


class Entry:
    """One stored snapshot and its bytes in each list route, each made on first demand (None: not valid)."""

    def __init__(self, raw: str) -> None:
        self.raw = raw

    @cached_property
    def snapshot(self) -> core.Rendered | None:
        return core.snapshot(self.raw)

    @cached_property
    def status(self) -> bytes | None:
        return core.series_status(self.raw)

    @cached_property
    def tuning(self) -> bytes | None:
        return core.tuning_row(self.raw)

    @cached_property
    def freshness(self) -> readiness.Freshness | None:
        return readiness.freshness(self.raw)


@dataclass(frozen=True, slots=True)
class DetailParts:
    """What the symbol view's document is assembled from, as stored (texts, not parsed)."""

    snapshot: str | None
    history: list[str]
    transitions: list[str]
    consensus: str | None  # None: consensus off, or no verdict for the symbol yet


@dataclass(frozen=True, slots=True)
class Read:
    """When a read of Redis began: the feed's count then, the monotonic clock, and the read's number."""

    generation: int
    at: float
    number: int


class ReadState:
    """Every snapshot and the summary as one read saw them, with the bodies made of them so far."""

    def __init__(self, read: Read, entries: dict[str, Entry], summary: str | None) -> None:
        self.read = read
        self.entries = entries  # token -> entry, in token order; tokens without a snapshot left out
        self.summary = summary
        self.bodies: dict[Any, core.Body | None] = {}  # None: the reference path serves it

    def raws(self) -> list[str]:
        return [e.raw for e in self.entries.values()]

    def body(self, key: Any, make: Callable[[ReadState], bytes | None]) -> core.Body | None:
        if key not in self.bodies:
            if len(self.bodies) >= _MAX_BODIES:
                self.bodies.clear()
            data = make(self)
            self.bodies[key] = None if data is None else core.Body(data)
        return self.bodies[key]

    def same_as(self, other: ReadState) -> bool:
        return self.summary == other.summary and list(self.entries.items()) == list(other.entries.items())


class ReadModel:
    """The API's reads: snapshots, one series' detail, the summary and service health."""

    def __init__(
        self,
        redis: aioredis.Redis,
        nc: NATS,
        names: Names,
        health_ttl: float,
        shutdown: asyncio.Event | None = None,
        fanout: Fanout | None = None,
        on_redis_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.redis = redis
        self.keys = RedisKeys(names)
        self.feed = ChangeFeed(redis, self.keys.changes, shutdown, fanout, on_redis_error)
        self._nc = nc
        self._names = names
        self._state: ReadState | None = None
        self._refreshing = asyncio.Lock()
        self._reads = 0  # reads begun so far
        self._details: dict[tuple[Any, ...], tuple[Read, core.Body]] = {}
        self._detail_locks: dict[tuple[Any, ...], asyncio.Lock] = {}
        self._summary: tuple[str | None, core.Body | None] | None = None
        self._health = _TtlCache(health_ttl)
        self._registry = _TtlCache(health_ttl)
        self._registered: dict[str, int] = {}  # grows only: a registry entry never changes once written

    async def aclose(self) -> None:
        await self.feed.aclose()

    def begin(self) -> Read:
        """A read starts: what it gives stays current while :meth:`ChangeFeed.current` says so."""
        self.feed.start()
        self._reads += 1
        return Read(self.feed.generation, time.monotonic(), self._reads)

    def ticket(self) -> int:
        """Taken as a request arrives: any read numbered above it began later, so it is as good as a new one."""
        return self._reads

    def usable(self, read: Read, ticket: int) -> bool:
        return read.number > ticket or self.feed.current(read.generation, read.at)

    # ----------------------------------------------------------------- every snapshot

    async def state(self) -> ReadState:
        """Every snapshot, read again unless the last read is still current or began after this call.

        One read at a time: the calls that queued behind one take the next, all together.
        """
        ticket = self.ticket()
        async with self._refreshing:
            old = self._state
            if old is not None and self.usable(old.read, ticket):
                return old
            new = await self._read(old)
            if old is not None and new.same_as(old):
                new.bodies = old.bodies  # nothing changed: the bodies (and their gzip) stand
            self._state = new
            return new

    async def _read(self, old: ReadState | None) -> ReadState:
        read = self.begin()
        tokens = sorted(cast(set[str], await self.redis.smembers(self.keys.symbols)))  # decode_responses: str
        if tokens:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.mget([self.keys.symbol(t) for t in tokens])
                pipe.get(self.keys.summary)
                raws, summary = await pipe.execute()
        else:
            raws, summary = [], await self.redis.get(self.keys.summary)
        known = old.entries if old is not None else {}
        entries = {}
        for token, raw in zip(tokens, raws, strict=True):
            if raw:
                entry = known.get(token)
                entries[token] = entry if entry is not None and entry.raw == raw else Entry(raw)
        return ReadState(read, entries, summary)

    # ----------------------------------------------------------------- one series

    def detail_lock(self, key: tuple[Any, ...]) -> asyncio.Lock:
        """Held while one request reads a detail, so the others asking for it wait and take its answer."""
        if key not in self._detail_locks and len(self._detail_locks) >= _MAX_DETAILS:
            self._detail_locks = {k: lock for k, lock in self._detail_locks.items() if lock.locked()}
        return self._detail_locks.setdefault(key, asyncio.Lock())

    def cached_detail(self, key: tuple[Any, ...], ticket: int) -> core.Body | None:
        hit = self._details.get(key)
        if hit is not None and self.usable(hit[0], ticket):
            return hit[1]
        return None

    def keep_detail(self, key: tuple[Any, ...], read: Read, body: core.Body) -> None:
        if len(self._details) >= _MAX_DETAILS:
            self._details.clear()
        self._details[key] = (read, body)

    async def find(self, exchange: str, symbol: str, timeframe: str | None) -> SeriesKey:
        """The one series ``exchange``/``symbol`` (``BTC/USD`` or ``BTC-USD``) names: one SMISMEMBER."""
        display = symbol if "/" in symbol else _decode(symbol)
        timeframes = list(TIMEFRAMES_MS) if timeframe is None else [timeframe] if timeframe in TIMEFRAMES_MS else []
        try:
            wanted = [SeriesKey(exchange, display, tf) for tf in timeframes]
            tokens = [k.token for k in wanted]
        except ContractError:  # a symbol no series can have
            wanted, tokens = [], []
        found = await self.redis.smismember(self.keys.symbols, tokens) if tokens else []
        candidates = [k for k, there in zip(wanted, found, strict=True) if there]
        if not candidates:
            raise HTTPException(404, f"no series {exchange}:{display}" + (f":{timeframe}" if timeframe else ""))
        if len(candidates) > 1:
            tfs = ", ".join(sorted(k.timeframe for k in candidates))
            raise HTTPException(400, f"{exchange}:{display} has several timeframes ({tfs}); add ?timeframe=")
        return candidates[0]

    async def detail_parts(self, key: SeriesKey, history: int) -> DetailParts:
        """The snapshot, the newest ``history`` points, the transitions and the symbol's consensus: one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.symbol(key.token))
            pipe.get(self.keys.consensus(key.exchange, key.symbol))
            if history:
                pipe.lrange(self.keys.history(key.token), -history, -1)
            pipe.lrange(self.keys.transitions(key.token), 0, -1)
            replies = await pipe.execute()
        return DetailParts(replies[0], (replies[2] if history else []), replies[-1], replies[1])

    async def consensus(self, exchange: str, symbol: str) -> str:
        """The stored consensus of ``exchange``/``symbol`` (``BTC/USD`` or ``BTC-USD``); 404 when there is none."""
        display = symbol if "/" in symbol else _decode(symbol)
        try:
            key = self.keys.consensus(exchange, display)
        except ContractError:  # a symbol no series can have
            key = None
        raw = cast(str | None, await self.redis.get(key)) if key is not None else None
        if raw is None:
            raise HTTPException(404, f"no consensus for {exchange}:{display} (consensus off, or no verdict yet)")
        return raw

    # ----------------------------------------------------------------- summary and health

    async def summary(self) -> tuple[str | None, core.Body | None]:
        """The stored summary and its body (None: not valid for the model); one GET, rendered once per text."""
        self.feed.start()
        raw = cast(str | None, await self.redis.get(self.keys.summary))
        if self._summary is None or self._summary[0] != raw:
            data = core.summary(raw)
            self._summary = (raw, None if data is None else core.Body(data))
        return self._summary

    async def services(self) -> Sequence[ServiceHealth]:
        """Every live heartbeat, read at most once per ``health_ttl`` (NATS unreachable: none)."""
        return await self._health.get(self._read_services)

    async def _read_services(self) -> list[ServiceHealth]:
        try:
            return [_health(h) for h in await read_health(self._nc.jetstream(), self._names)]
        except (nats.errors.Error, OSError, TimeoutError):
            return []

    async def registry(self) -> dict[str, int] | None:
        """The admission registry (bucket ``series``: token -> first sequence), read at most once per
        ``health_ttl``, so a page of requests costs one read of the bucket; None: NATS unreachable."""
        result: dict[str, int] | None = await self._registry.get(self._read_registry)
        return result

    async def _read_registry(self) -> dict[str, int] | None:
        try:
            # Bound, never created: the bucket is the candle consumers'; the API only reads it.
            kv = await self._nc.jetstream().key_value(self._names.bucket("series"))
            self._registered = await registered(kv, self._registered)
            return self._registered
        except nats.js.errors.BucketNotFoundError:
            return {}  # no candle consumer has started yet: nothing is admitted
        except (nats.errors.Error, OSError, TimeoutError):
            return None


class _TtlCache:
    """One value, computed again once ``ttl`` seconds old; concurrent callers share one computation."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._at = -1e18
        self._value: Any = None
        self._lock = asyncio.Lock()

    async def get(self, compute: Callable[[], Awaitable[Any]]) -> Any:
        async with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._value = await compute()
                self._at = time.monotonic()
            return self._value


def _decode(token: str) -> str:
    try:
        return decode_symbol(token)
    except ContractError as exc:
        raise HTTPException(400, exc.reason) from None


def _health(beat: Heartbeat) -> ServiceHealth:
    return ServiceHealth(**msgspec.structs.asdict(beat))
