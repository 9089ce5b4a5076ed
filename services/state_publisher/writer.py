"""The Redis side of state_publisher: every series' snapshot in memory, written back once per batch.

Redis is a cache of the streams. Each consumer's position (the stream
sequence its writes cover) is written in the same MULTI as the snapshots,
transitions, history points, summary and change notice of its batch, so a
crash at any point leaves Redis at a batch boundary, and the consumer resumes
right after it: nothing is written twice, nothing skipped. A flushed or empty
Redis has no position: the consumers then start over from the streams'
beginning and rebuild everything (the streams' retention bounds what can be
rebuilt; see the README).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from services.state_publisher.consensus import consensuses, symbols_of
from services.state_publisher.core import HISTORY_POINTS, TRANSITIONS_KEPT, SummaryTally, Update, new_snapshot
from shared.domain import snapshot
from shared.domain.config import StrategyConfig
from shared.domain.contracts import events_in
from shared.domain.errors import ContractError
from shared.domain.snapshot import SeriesSnapshot, Transition
from shared.domain.subjects import SeriesKey
from shared.infra.bus import Out, now_ms
from shared.infra.redis_keys import RedisKeys

Apply = Callable[[SeriesSnapshot, Any], Update | None]
log = logging.getLogger(__name__)


class RedisReset(RedisError):
    """Redis lost what this writer wrote (flushed, or a fresh server): rebuild from the streams."""


class SnapshotWriter:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, config: StrategyConfig) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self._snaps: dict[SeriesKey, SeriesSnapshot] = {}
        self.tally = SummaryTally()  # the summary of the snapshots, kept with every one replaced (:meth:`put`)
        self.pending: dict[SeriesKey, Update] = {}
        self.epoch = 0  # bumped on every reset, so each consumer of this writer starts over too
        self._loaded = False
        self._listed: set[SeriesKey] = set()  # series known to be in the symbols set (since the last load)

    async def load(self) -> None:
        """Snapshots from Redis, plus an empty one per universe series (shown at once as rows of "—")."""
        if self._loaded:
            return
        tokens = sorted(cast(set[str], await self.redis.smembers(self.keys.symbols)))  # decode_responses: str
        raws = await self.redis.mget([self.keys.symbol(t) for t in tokens]) if tokens else []
        self._snaps = {}
        self.tally = SummaryTally()
        self._listed = set()  # a loaded series is added again with its first write: SADD of a member is a no-op
        for token, raw in zip(tokens, raws, strict=True):
            if raw:
                try:
                    self.put(SeriesKey.from_token(token), snapshot.loads(raw, SeriesSnapshot))
                except ContractError as exc:  # not one this build wrote: the series starts afresh from its events
                    log.warning("stored snapshot %s unreadable: %s", token, exc.reason)
        for spec in self.config.universe:
            if spec.key not in self._snaps:
                self.put(spec.key, new_snapshot(spec.key, spec.tier))
        self.pending = {key: Update(snap, kinds={"init"}) for key, snap in self._snaps.items()}
        self._loaded = True

    @property
    def snaps(self) -> Mapping[SeriesKey, SeriesSnapshot]:
        """Every series' snapshot in memory (read-only: :meth:`put` replaces one, and keeps the summary with it)."""
        return MappingProxyType(self._snaps)

    def put(self, key: SeriesKey, snap: SeriesSnapshot) -> None:
        """``snap`` is now the snapshot of ``key``; the summary's tally follows (the one it replaced taken back)."""
        before = self._snaps.get(key)
        if before is snap:
            return
        if before is not None:
            self.tally.remove(before)
        self.tally.add(snap)
        self._snaps[key] = snap

    def discard(self) -> None:
        """Forget the uncommitted: the next load (or the next event handled) reads back what Redis holds.

        Only ever called between batches (under the consumers' shared lock), so
        no batch in progress loses what it applied.
        """
        self._snaps.clear()
        self.tally = SummaryTally()
        self.pending.clear()
        self._loaded = False

    def reset(self, why: str) -> RedisReset:
        """Redis lost our writes: every consumer of this writer must start over from its (now missing) position."""
        self.discard()
        self.epoch += 1
        return RedisReset(why)

    async def flush(self) -> None:
        return None

    def handler(self, apply: Apply) -> Callable[[Any, int], Any]:
        """A consumer handler applying ``apply`` to each event (one, or a batch's) of a snapshot; None if all stale."""

        async def handle(msg: Any, _seq: int) -> list[Out] | None:
            if not self._loaded:  # the other consumer of this writer discarded since: read back what Redis holds
                await self.load()
            key = msg.key
            snap = self._snaps.get(key) or new_snapshot(key, self.config.tier_of(key))
            applied = False
            for event in events_in(msg):
                update = apply(snap, event)
                if update is not None:
                    snap = update.snapshot
                    pending = self.pending.get(key)
                    if pending is None:
                        self.pending[key] = update
                    else:
                        pending.merge(update)
                    applied = True
            self.put(key, snap)
            return [] if applied else None

        return handle

    def position(self, name: str) -> RedisPosition:
        return RedisPosition(self, self.keys.position(name))

    async def write(self, position_key: str, expected: str | None, seq: int) -> None:
        """The batch's changes and the new position, in one MULTI; RedisReset if the position is not ``expected``."""
        keys, now = self.keys, now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(position_key)
            if await pipe.get(position_key) != expected:
                raise self.reset(f"{position_key} is not {expected!r}: Redis was flushed or replaced")
            # Vol and HMM transitions arrive interleaved as the two services happened to answer; the list is
            # kept in candle-time order (newest first) instead, so it is the same in every run.
            changed = [k for k, up in self.pending.items() if up.transitions]
            stored = [cast(list[str], await pipe.lrange(keys.transitions(k.token), 0, -1)) for k in changed]
            pipe.multi()
            for key, old in zip(changed, stored, strict=True):
                merged = sorted([*_transitions(old), *self.pending[key].transitions], key=_newest_first)
                pipe.delete(keys.transitions(key.token))
                pipe.rpush(keys.transitions(key.token), *[snapshot.dumps(t) for t in merged[:TRANSITIONS_KEPT]])
            listing = [k for k in self.pending if k not in self._listed]
            if listing:  # a command per new series, not per series written
                pipe.sadd(keys.symbols, *[k.token for k in listing])
            if self.pending:  # one MSET: a SET per series costs redis-py a command packed and a reply parsed each
                pipe.mset({keys.symbol(k.token): snapshot.dumps(self._snaps[k]) for k in self.pending})
            for key, up in self.pending.items():
                if up.history:
                    token = key.token
                    pipe.rpush(keys.history(token), *[snapshot.dumps(p) for p in up.history])
                    pipe.ltrim(keys.history(token), -HISTORY_POINTS, -1)
            self._write_consensus(pipe)
            if self.pending:
                pipe.set(keys.summary, snapshot.dumps(self.tally.summary(now)))
                kinds = sorted(set().union(*(u.kinds for u in self.pending.values())))
                notice = {"series": [k.id for k in self.pending], "kinds": kinds, "at": now}
                pipe.publish(keys.changes, json.dumps(notice))
            pipe.set(position_key, str(seq))
            try:
                await pipe.execute()
            except WatchError as exc:
                raise self.reset(f"{position_key} changed under the write: {exc}") from exc
        self._listed.update(listing)
        self.pending.clear()

    def _write_consensus(self, pipe: Any) -> None:
        """The consensus of every symbol whose HMM verdicts this batch changed, in the batch's MULTI.

        "init" counts as a change: after a load (or a flush's rebuild) every symbol's consensus is written
        again from the snapshots, so Redis never keeps one the snapshots no longer give.
        """
        if not self.config.consensus.enabled:
            return
        touched = symbols_of(k for k, up in self.pending.items() if up.kinds & {"hmm", "init"})
        made = consensuses(self._snaps, touched, self.config.consensus.weights)
        if made:
            pipe.mset({self.keys.consensus(ex, sym): snapshot.dumps(c) for (ex, sym), c in made.items()})


def _newest_first(transition: Transition) -> tuple[int, str]:
    return -transition.ts, str(transition.__struct_config__.tag)


def _transitions(stored: list[str]) -> list[Transition]:
    """The transitions Redis holds for a series (one this build cannot read is dropped: the list is a log)."""
    out: list[Transition] = []
    for raw in stored:
        try:
            out.append(snapshot.loads(raw, Transition))
        except ContractError as exc:
            log.warning("stored transition unreadable: %s", exc.reason)
    return out


@dataclass
class RedisPosition:
    """A consumer's position in Redis, committed with the writes it covers (see the module doc)."""

    writer: SnapshotWriter
    key: str
    _value: str | None = None
    _epoch: int = -1

    async def load(self, partitions: frozenset[int]) -> dict[int, int]:
        """The position (state_publisher has one partition: one writer of everything)."""
        if partitions != frozenset({0}):
            raise ValueError(f"state_publisher holds its one partition or none, not {sorted(partitions)}")
        await self.writer.load()
        self._value = cast(str | None, await self.writer.redis.get(self.key))
        self._epoch = self.writer.epoch
        seq = int(self._value) if self._value else 0
        if self.writer.pending:  # the universe's empty rows, shown at once; rebuilt after a flush too
            await self.writer.write(self.key, self._value, seq)
            self._value = str(seq)
        return {0: seq}

    async def commit(self, seq: int) -> None:
        await self._check_epoch()
        await self.writer.write(self.key, self._value, seq)
        self._value = str(seq)

    async def verify(self) -> None:
        """Notice a flush while idle: the position (written with the first batch) is gone."""
        await self._check_epoch()
        if self._value is not None and await self.writer.redis.get(self.key) != self._value:
            raise self.writer.reset(f"{self.key} vanished: Redis was flushed or replaced")

    async def _check_epoch(self) -> None:
        if self._epoch != self.writer.epoch:
            raise RedisReset("another consumer of this writer found Redis reset")
