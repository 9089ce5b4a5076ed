"""state_publisher: regime events, decisions and pipeline telemetry in; Redis snapshots out (seed 000 §4.1).

The only writer of Redis. Snapshots of every series are held in memory (loaded
from Redis at start) and written back once per consumed batch, in one MULTI,
together with transitions, history points, the summary and a change notice on
the pub/sub channel the dashboard listens to.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from services.state_publisher.core import (
    HISTORY_POINTS,
    TRANSITIONS_KEPT,
    Update,
    apply_decision,
    apply_hmm,
    apply_pipeline,
    apply_vol,
    new_snapshot,
    summarize,
)
from shared.bus import Consumer, Out, now_ms
from shared.contracts import HmmRegimeEvent, PipelineStatus, ScreenerDecision, VolRegimeEvent
from shared.service import Runtime, run
from shared.store import RedisKeys
from shared.subjects import SeriesKey

SERVICE = "state_publisher"


async def build(rt: Runtime) -> list[Any]:
    cfg = rt.config
    keys = RedisKeys(rt.names)
    r = aioredis.from_url(rt.settings.redis_url, decode_responses=True)
    rt.stack.push_async_callback(r.aclose)
    snaps: dict[SeriesKey, dict[str, Any]] = {}
    for token in await r.smembers(keys.symbols):
        raw = await r.get(keys.symbol(token))
        if raw:
            snaps[SeriesKey.from_token(token)] = json.loads(raw)
    for spec in cfg.universe:  # the universe shows up at once, as rows of "—"
        snaps.setdefault(spec.key, new_snapshot(spec.key, spec.tier))
    pending: dict[SeriesKey, Update] = {key: Update(kinds={"init"}) for key in snaps}
    blend = float(cfg.hmm["HMM_BLEND_WITH_TREND"])

    def on(apply: Callable[[dict[str, Any], Any], Update | None]) -> Callable[[Any, str], Awaitable[list[Out] | None]]:
        async def handle(event: Any, _subject: str) -> list[Out] | None:
            key = event.key
            snap = snaps.get(key) or snaps.setdefault(key, new_snapshot(key, cfg.tier_of(key)))
            up = apply(snap, event)
            if up is None:
                return None
            pending.setdefault(key, Update()).merge(up)
            return []

        return handle

    async def write() -> None:
        if not pending:
            return
        now = now_ms()
        async with r.pipeline(transaction=True) as pipe:
            for key, up in pending.items():
                token = key.token
                pipe.sadd(keys.symbols, token)
                pipe.set(keys.symbol(token), json.dumps(snaps[key]))
                if up.transitions:
                    pipe.lpush(keys.transitions(token), *[json.dumps(t) for t in up.transitions])
                    pipe.ltrim(keys.transitions(token), 0, TRANSITIONS_KEPT - 1)
                if up.history:
                    pipe.rpush(keys.history(token), *[json.dumps(p) for p in up.history])
                    pipe.ltrim(keys.history(token), -HISTORY_POINTS, -1)
            pipe.set(keys.summary, json.dumps(summarize(snaps.values(), now)))
            kinds = sorted(set().union(*(u.kinds for u in pending.values())))
            notice = {"series": [k.id for k in pending], "kinds": kinds, "at": now}
            pipe.publish(keys.changes, json.dumps(notice))
            await pipe.execute()
        pending.clear()

    handlers = {
        VolRegimeEvent: on(lambda s, e: apply_vol(s, e, now_ms())),
        HmmRegimeEvent: on(lambda s, e: apply_hmm(s, e, blend, now_ms())),
        ScreenerDecision: on(lambda s, e: apply_decision(s, e, now_ms())),
        PipelineStatus: on(lambda s, e: apply_pipeline(s, e, now_ms())),
    }
    names = rt.names
    regimes = Consumer(
        rt.bus, names.stream_regimes, [names.vol_all, names.hmm_all, names.screener_all],
        rt.durable(), handlers, after_batch=write,
    )
    telemetry = Consumer(
        rt.bus, names.stream_telemetry, [names.pipeline_all], rt.durable("telemetry"), handlers, after_batch=write,
    )
    await write()
    return [regimes.run(rt.stop), telemetry.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
