"""The Redis side of state_publisher: every series' snapshot in memory, written back once per batch.

Loaded from Redis at start (so a restart continues where the last run left
off); each batch's changes go out in one MULTI with transitions, history
points, the summary and a change notice on the pub/sub channel the dashboard
listens to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from services.state_publisher.core import HISTORY_POINTS, TRANSITIONS_KEPT, Update, new_snapshot, summarize
from shared.bus import Out, now_ms
from shared.config import StrategyConfig
from shared.store import RedisKeys
from shared.subjects import SeriesKey

Apply = Callable[[dict[str, Any], Any], Update | None]


class SnapshotWriter:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, config: StrategyConfig) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.snaps: dict[SeriesKey, dict[str, Any]] = {}
        self.pending: dict[SeriesKey, Update] = {}

    async def load(self) -> None:
        """Snapshots from Redis, plus an empty one per universe series (shown at once as rows of "—")."""
        for token in await self.redis.smembers(self.keys.symbols):
            raw = await self.redis.get(self.keys.symbol(token))
            if raw:
                self.snaps[SeriesKey.from_token(token)] = json.loads(raw)
        for spec in self.config.universe:
            self.snaps.setdefault(spec.key, new_snapshot(spec.key, spec.tier))
        self.pending = {key: Update(kinds={"init"}) for key in self.snaps}

    def handler(self, apply: Apply) -> Callable[[Any, str], Any]:
        """A consumer handler applying ``apply`` to the event's snapshot; None for a stale event."""

        async def handle(event: Any, _subject: str) -> list[Out] | None:
            key = event.key
            snap = self.snaps.get(key) or self.snaps.setdefault(key, new_snapshot(key, self.config.tier_of(key)))
            update = apply(snap, event)
            if update is None:
                return None
            self.pending.setdefault(key, Update()).merge(update)
            return []

        return handle

    async def write(self) -> None:
        if not self.pending:
            return
        keys, now = self.keys, now_ms()
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, up in self.pending.items():
                token = key.token
                pipe.sadd(keys.symbols, token)
                pipe.set(keys.symbol(token), json.dumps(self.snaps[key]))
                if up.transitions:
                    pipe.lpush(keys.transitions(token), *[json.dumps(t) for t in up.transitions])
                    pipe.ltrim(keys.transitions(token), 0, TRANSITIONS_KEPT - 1)
                if up.history:
                    pipe.rpush(keys.history(token), *[json.dumps(p) for p in up.history])
                    pipe.ltrim(keys.history(token), -HISTORY_POINTS, -1)
            pipe.set(keys.summary, json.dumps(summarize(self.snaps.values(), now)))
            kinds = sorted(set().union(*(u.kinds for u in self.pending.values())))
            pipe.publish(keys.changes, json.dumps({"series": [k.id for k in self.pending], "kinds": kinds, "at": now}))
            await pipe.execute()
        self.pending.clear()
