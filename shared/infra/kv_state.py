"""Where a consumer keeps what it applied, in KV: per-series state and its positions, each write compare-and-set.

:class:`StateStore` caches each series' state in memory and writes the dirty
ones back pipelined; :class:`KvPosition` keeps a consumer's committed stream
sequence per partition. Both write only over the revision they read, so a
replica that lost a partition cannot overwrite its successor: the write fails
with :class:`Repositioned` and the consume loop (``shared.infra.consume``)
starts over from its position.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgpack
import nats.js.errors
from nats.js.kv import KeyValue

from shared.domain.subjects import SeriesKey
from shared.infra.acks import Ack, AckPipeline, kv_write

log = logging.getLogger(__name__)

S = TypeVar("S")


class Repositioned(Exception):
    """The loop must start over from the committed position (lost deliveries, a wiped read model)."""


@dataclass
class KvPosition:
    """Positions in KV bucket ``positions``: key ``<service>.p<k>`` per partition, written after the state they cover.

    Each write is a compare-and-set on the revision read, so a replica that lost
    a partition (paused past its lease) cannot move its successor's position.
    The key ``<service>`` of a single-replica stack from before partitions is
    the starting point of every partition that has none yet.
    """

    kv: KeyValue
    key: str
    acks: AckPipeline
    _held: dict[int, tuple[int, int | None]] = field(default_factory=dict)  # partition -> (seq, revision)

    async def load(self, partitions: frozenset[int]) -> dict[int, int]:
        legacy = await self._get(self.key)
        found = await asyncio.gather(*(self._get(f"{self.key}.p{p}") for p in sorted(partitions)))
        self._held = {}
        for p, entry in zip(sorted(partitions), found, strict=True):
            start = entry if entry is not None else ((legacy[0], None) if legacy is not None else (0, None))
            self._held[p] = (start[0], entry[1] if entry is not None else None)
        return {p: seq for p, (seq, _rev) in self._held.items()}

    async def commit(self, seq: int) -> None:
        behind = [p for p, (at, _rev) in self._held.items() if at < seq]
        value = str(seq).encode()
        writes = [(f"{self.key}.p{p}", self._held[p][1] or 0) for p in behind]
        outcomes = await self.acks.send_each([kv_write(self.kv, key, value, rev) for key, rev in writes])
        for p, (key, rev), outcome in zip(behind, writes, outcomes, strict=True):
            self._held[p] = (seq, await _revision(self.kv, key, value, rev, outcome, f"position of partition {p}"))

    async def verify(self) -> None:
        return None

    async def _get(self, key: str) -> tuple[int, int] | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return int(entry.value or b"0"), entry.revision or 0


async def _revision(
    kv: KeyValue, key: str, value: bytes, expected: int, outcome: Ack | BaseException, what: str
) -> int:
    """The new revision of a compare-and-set write of ``key`` (expected revision ``expected``, 0: none), given its
    outcome; Repositioned if another writer got there first.

    A create that missed may have met a deleted key's marker rather than a value: nats-py's
    ``create`` knows that case, so it gets a second try there.
    """
    if isinstance(outcome, Ack):
        return outcome.seq
    if not isinstance(outcome, nats.js.errors.KeyWrongLastSequenceError):
        raise outcome
    if expected == 0:
        try:
            return await kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise Repositioned(f"{what} was written by another replica") from exc
    raise Repositioned(f"{what} was written by another replica") from outcome


# What a service's ``load`` of a stored state may raise for a state of the wrong shape: the series then starts afresh.
STATE_LOAD_ERRORS: tuple[type[Exception], ...] = (
    ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError,
)


def _unpacked(key: SeriesKey, value: bytes) -> Any:
    """The stored state's msgpack, or None when it is not msgpack at all (a value put by hand, say).

    Raising here would fail the batch, and every retry of it: the consumer would never get past the series.
    """
    try:
        return msgpack.unpackb(value, raw=False)
    except ValueError as exc:  # msgpack's FormatError, ExtraData, StackError and bad UTF-8 are all ValueErrors
        log.warning("stored state of %s is not msgpack, discarded: %s: %s", key.id, type(exc).__name__, exc)
        return None


class StateStore(Generic[S]):
    """Per-series state cached in memory and persisted to a KV bucket as plain msgpack.

    ``load`` raising ValueError (a stored state that no longer fits the config),
    or a stored value that is not msgpack or not a state at all, starts the
    series afresh, with a log line: better a cold start than a wrong one.
    Writes are compare-and-set on the revision read: a replica that lost a
    series' partition cannot overwrite what its successor wrote (the batch is
    then replayed, and the partition is found gone).
    """

    def __init__(
        self,
        kv: KeyValue,
        acks: AckPipeline,
        *,
        new: Callable[[SeriesKey], S],
        dump: Callable[[S], dict[str, Any]],
        load: Callable[[SeriesKey, dict[str, Any]], S],
    ) -> None:
        self._kv = kv
        self._acks = acks
        self._new = new
        self._dump = dump
        self._load = load
        self._cache: dict[SeriesKey, S] = {}
        self._dirty: set[SeriesKey] = set()
        self._revision: dict[SeriesKey, int] = {}  # of the stored state this cache holds (absent: none stored)

    def cached(self) -> Mapping[SeriesKey, S]:
        return self._cache

    async def prefetch(self, keys: Iterable[SeriesKey]) -> None:
        """Load the states of ``keys`` not in memory, concurrently (a burst of series new since the start)."""
        missing = [k for k in keys if k not in self._cache]
        await asyncio.gather(*(self.get(k) for k in missing))

    async def get(self, key: SeriesKey) -> S:
        state = self._cache.get(key)
        if state is not None:
            return state
        revision: int | None = None
        try:
            entry = await self._kv.get(key.token)
            revision = entry.revision
            raw = _unpacked(key, entry.value) if entry.value else None
        except nats.js.errors.KeyNotFoundError:
            raw = None
        if key in self._cache:  # a concurrent get (prefetch) got there first
            return self._cache[key]
        if revision is not None:
            self._revision[key] = revision
        state = None
        if isinstance(raw, dict):
            try:
                state = self._load(key, raw)
            except STATE_LOAD_ERRORS as exc:
                log.warning("stored state of %s discarded: %s: %s", key.id, type(exc).__name__, exc)
        if state is None:
            state = self._new(key)
        self._cache[key] = state
        return state

    def mark(self, key: SeriesKey) -> None:
        self._dirty.add(key)

    async def flush(self) -> None:
        """Write every dirty series, pipelined; raises if any put fails (the batch is then replayed)."""
        dirty = sorted(self._dirty)
        values = [msgpack.packb(self._dump(self._cache[k]), use_bin_type=True) for k in dirty]
        revs = [self._revision.get(k, 0) for k in dirty]
        outcomes = await self._acks.send_each(
            [kv_write(self._kv, k.token, v, r) for k, v, r in zip(dirty, values, revs, strict=True)]
        )
        for key, value, rev, outcome in zip(dirty, values, revs, outcomes, strict=True):
            self._revision[key] = await _revision(self._kv, key.token, value, rev, outcome, f"state of {key.id}")
        self._dirty.clear()

    def discard(self) -> None:
        """Forget everything in memory: after a failed batch, KV is the truth."""
        self._cache.clear()
        self._dirty.clear()
        self._revision.clear()
