"""state_publisher: regime events, decisions and pipeline telemetry in; Redis snapshots out (seed 000 §4.1).

The only writer of Redis; it re-uses the values it receives and never
recomputes them. Redis is a cache: its positions are written with the data
(``writer``), so a flushed Redis is rebuilt from the streams.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.state_publisher.core import apply_decision, apply_hmm, apply_pipeline, apply_vol
from services.state_publisher.writer import SnapshotWriter
from shared.domain.contracts import (
    HmmRegimeBatch,
    HmmRegimeEvent,
    PipelineStatus,
    ScreenerDecision,
    ScreenerDecisionBatch,
    VolRegimeBatch,
    VolRegimeEvent,
)
from shared.infra.bus import now_ms
from shared.infra.consume import Consumer
from shared.infra.redis_keys import RedisKeys
from shared.infra.service import Runtime, run

SERVICE = "state_publisher"
WRITE_BATCH = 1024  # messages per fetch, and so at most per Redis MULTI


async def build(rt: Runtime) -> list[Any]:
    redis = aioredis.from_url(rt.settings.redis_url, password=rt.settings.redis_password, decode_responses=True)
    rt.stack.push_async_callback(redis.aclose)
    writer = SnapshotWriter(redis, RedisKeys(rt.names), rt.config)
    blend = rt.config.hmm.blend_with_trend
    vol = writer.handler(lambda s, e: apply_vol(s, e, now_ms()))
    hmm = writer.handler(lambda s, e: apply_hmm(s, e, blend, now_ms()))
    decisions = writer.handler(lambda s, d: apply_decision(s, d, now_ms()))
    handlers = {
        VolRegimeEvent: vol,
        VolRegimeBatch: vol,
        HmmRegimeEvent: hmm,
        HmmRegimeBatch: hmm,
        ScreenerDecision: decisions,
        ScreenerDecisionBatch: decisions,
        PipelineStatus: writer.handler(lambda s, e: apply_pipeline(s, e, now_ms())),
    }
    names, lock = rt.names, asyncio.Lock()  # the two consumers share the writer: one batch at a time
    # One writer of everything (the summary covers every series): replicas beyond the first are standbys that
    # take over the single partition when its holder is gone.
    owner = await rt.leases(1, sticky=True)

    def consumer(stream: str, subjects: list[str], suffix: str = "") -> Consumer:
        # Commit delays 0, behind or not: each batch is committed before the next, so when one consumer's batch
        # fails and the shared writer forgets what is uncommitted, it never takes the other consumer's work with it.
        # batch=WRITE_BATCH: a series' vol, HMM and decision messages of one burst mostly share a batch, so its
        # snapshot is written once, and the summary over every series is made once per batch, not per 256.
        return Consumer(
            rt.bus, stream, subjects, rt.durable(suffix), handlers, writer.position(rt.position_key(suffix)),
            stores=[writer], retry_on=(RedisError,), lock=lock, commit_delay_s=0.0, behind_commit_delay_s=0.0,
            owner=owner, batch=WRITE_BATCH,
        )

    regimes = consumer(names.stream_regimes, [names.vol_all, names.hmm_all, names.screener_all])
    telemetry = consumer(names.stream_telemetry, [names.pipeline_all], "telemetry")
    return [regimes.run(rt.stop), telemetry.run(rt.stop)]


def main() -> None:
    run(SERVICE, build)


if __name__ == "__main__":
    main()
