"""state_publisher's writer against a real Redis: positions committed with the data, resets, shared use."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from regimes.servers import ManagedServer
from services.state_publisher.core import apply_hmm, apply_vol
from services.state_publisher.writer import RedisReset, SnapshotWriter
from shared.domain.subjects import Names, SeriesKey
from shared.infra.redis_keys import RedisKeys
from tests.factories import T0, hmm_event, vol_event
from tests.harness import small_config

KEY = SeriesKey("test", "AAA/USD", "1m")
ONE = frozenset({0})  # state_publisher has one partition


@pytest.fixture
async def writer(redis_server: ManagedServer) -> AsyncIterator[SnapshotWriter]:
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    w = SnapshotWriter(r, RedisKeys(Names("w" + uuid.uuid4().hex[:10])), small_config([("AAA/USD", "CORE")]))
    yield w
    await r.aclose()


async def snapshot(w: SnapshotWriter) -> dict[str, Any]:
    raw = await w.redis.get(w.keys.symbol(KEY.token))
    assert raw is not None
    return json.loads(raw)


async def test_events_after_another_consumer_discarded_build_on_what_redis_holds(writer: SnapshotWriter) -> None:
    a, b = writer.position("a"), writer.position("b")
    assert await a.load(ONE) == {0: 0}
    assert await b.load(ONE) == {0: 0}
    handle = writer.handler(lambda s, e: apply_vol(s, e, 0))
    await handle(vol_event(0, "low", key=KEY, close=100.0), 1)
    await a.commit(1)
    writer.discard()  # b's batch failed (a NATS restart, say): b forgets its uncommitted changes
    await handle(vol_event(1, "low", "low", key=KEY, close=101.0), 2)
    await a.commit(2)
    snap = await snapshot(writer)
    assert snap["vol"]["ts"] == T0 + 60_000
    assert snap["vol"]["since_ts"] == T0  # the earlier state was read back, not started afresh


async def test_a_flushed_redis_resets_every_consumer_of_the_writer(writer: SnapshotWriter) -> None:
    a, b = writer.position("a"), writer.position("b")
    await a.load(ONE)
    await b.load(ONE)
    await a.commit(5)
    await writer.redis.delete(writer.keys.position("a"), writer.keys.position("b"))
    with pytest.raises(RedisReset):
        await a.commit(6)
    with pytest.raises(RedisReset):
        await b.verify()
    assert await a.load(ONE) == {0: 0}  # both start over from the streams' beginning
    assert await b.load(ONE) == {0: 0}


async def test_the_consensus_is_written_with_the_batch_only_when_enabled(redis_server: ManagedServer) -> None:
    r = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        for enabled in (False, True):
            config = small_config([("AAA/USD", "CORE")], consensus={"enabled": enabled})
            w = SnapshotWriter(r, RedisKeys(Names("w" + uuid.uuid4().hex[:10])), config)
            position = w.position("a")
            await position.load(ONE)
            handle = w.handler(lambda s, e: apply_hmm(s, e, 0.5, 0))
            await handle(hmm_event(0, "BULLISH", key=KEY), 1)
            key = w.keys.consensus("test", "AAA/USD")
            assert await r.get(key) is None  # nothing before the batch's MULTI
            await position.commit(1)
            stored = await r.get(key)
            if not enabled:
                assert stored is None
                continue
            assert stored is not None
            agreed = json.loads(stored)
            assert (agreed["regime"], agreed["voting"], agreed["as_of"]) == ("BULLISH", ["1m"], {"1m": T0})
    finally:
        await r.aclose()


async def summary(w: SnapshotWriter) -> dict[str, Any]:
    raw = await w.redis.get(w.keys.summary)
    assert raw is not None
    return json.loads(raw)


async def test_the_summary_follows_each_series_label_and_is_rebuilt_after_a_discard(writer: SnapshotWriter) -> None:
    position = writer.position("a")
    await position.load(ONE)
    other = SeriesKey("test", "BBB/USD", "1m")  # not in the universe: heard of through its first event
    handle = writer.handler(lambda s, e: apply_vol(s, e, 0))
    await handle(vol_event(0, "low", key=KEY, vol_short=0.002), 1)
    await handle(vol_event(0, "crisis", key=other, vol_short=0.09), 2)
    await position.commit(2)
    first = await summary(writer)
    assert first["symbols"] == 2
    assert (first["vol_regime_summary"]["low"], first["vol_regime_summary"]["crisis"]) == (1, 1)
    await handle(vol_event(1, "high", "low", key=KEY, vol_short=0.03), 3)  # the series moves: low -> high
    await position.commit(3)
    moved = await summary(writer)
    assert moved["vol_regime_summary"] == {"low": 0, "normal": 0, "high": 1, "crisis": 1}
    assert moved["vol_regime_avg_vol_short"]["high"] == 0.03
    assert moved["vol_regime_avg_vol_short"]["low"] is None
    writer.discard()  # another consumer's batch failed: the tally goes with the snapshots and comes back from Redis
    await handle(vol_event(2, "high", "high", key=KEY, vol_short=0.05), 4)
    await position.commit(4)
    after = await summary(writer)
    assert after["vol_regime_summary"] == moved["vol_regime_summary"]
    assert after["vol_regime_avg_vol_short"]["high"] == 0.05
    assert after["symbols"] == 2
