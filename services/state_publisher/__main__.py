"""state_publisher: regime events, decisions and pipeline telemetry in; Redis snapshots out (seed 000 §4.1).

The only writer of Redis; it re-uses the values it receives and never recomputes them.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.state_publisher.core import apply_decision, apply_hmm, apply_pipeline, apply_vol
from services.state_publisher.writer import SnapshotWriter
from shared.bus import Consumer, now_ms
from shared.contracts import HmmRegimeEvent, PipelineStatus, ScreenerDecision, VolRegimeEvent
from shared.service import Runtime, run
from shared.store import RedisKeys

SERVICE = "state_publisher"


async def build(rt: Runtime) -> list[Any]:
    redis = aioredis.from_url(rt.settings.redis_url, decode_responses=True)
    rt.stack.push_async_callback(redis.aclose)
    writer = SnapshotWriter(redis, RedisKeys(rt.names), rt.config)
    await writer.load()
    blend = float(rt.config.hmm["HMM_BLEND_WITH_TREND"])
    handlers = {
        VolRegimeEvent: writer.handler(lambda s, e: apply_vol(s, e, now_ms())),
        HmmRegimeEvent: writer.handler(lambda s, e: apply_hmm(s, e, blend, now_ms())),
        ScreenerDecision: writer.handler(lambda s, e: apply_decision(s, e, now_ms())),
        PipelineStatus: writer.handler(lambda s, e: apply_pipeline(s, e, now_ms())),
    }
    names = rt.names
    regimes = Consumer(
        rt.bus, names.stream_regimes, [names.vol_all, names.hmm_all, names.screener_all],
        rt.durable(), handlers, after_batch=writer.write, retry_on=(RedisError,),
    )
    telemetry = Consumer(
        rt.bus, names.stream_telemetry, [names.pipeline_all], rt.durable("telemetry"), handlers,
        after_batch=writer.write, retry_on=(RedisError,),
    )
    await writer.write()
    return [regimes.run(rt.stop), telemetry.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
