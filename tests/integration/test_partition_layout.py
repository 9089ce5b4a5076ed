"""What a consumer's partitions split is recorded with its positions; a change restarts every partition from the
lowest position any of them had, so no series skips events of its own (the screener moved from series to symbols)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from regimes.servers import ManagedServer
from shared.infra.bus import kv_bucket
from shared.infra.service import _check_partitioning

KEY = "screener"


@pytest.fixture
async def kv(nats_server: ManagedServer, namespace: str) -> AsyncIterator[KeyValue]:
    conn: NATS = await nats.connect(nats_server.url)
    yield await kv_bucket(conn.jetstream(), f"{namespace}_positions")
    await conn.close()


async def positions(kv: KeyValue, partitions: int) -> list[int]:
    return [int((await kv.get(f"{KEY}.p{p}")).value or b"0") for p in range(partitions)]


async def test_positions_laid_out_by_series_restart_from_the_lowest_when_split_by_symbol(kv: KeyValue) -> None:
    for p, seq in enumerate([500, 120, 900, 340]):
        await kv.put(f"{KEY}.p{p}", str(seq).encode())
    await _check_partitioning(kv, KEY, "symbol", 4)
    assert await positions(kv, 4) == [120] * 4
    assert (await kv.get(f"{KEY}.by")).value == b"symbol"
    await kv.put(f"{KEY}.p0", b"700")  # work done since: a second start with the same layout moves nothing
    await _check_partitioning(kv, KEY, "symbol", 4)
    assert await positions(kv, 4) == [700, 120, 120, 120]


async def test_a_new_stack_records_its_layout_and_writes_no_position(kv: KeyValue) -> None:
    await _check_partitioning(kv, KEY, "symbol", 4)
    assert (await kv.get(f"{KEY}.by")).value == b"symbol"
    assert [k for k in await kv.keys() if k.startswith(f"{KEY}.p")] == []


async def test_a_partition_with_no_position_yet_counts_from_where_it_would_start(kv: KeyValue) -> None:
    await kv.put(f"{KEY}.p0", b"500")  # p1 has applied nothing: its series start from 0
    await _check_partitioning(kv, KEY, "symbol", 2)
    assert await positions(kv, 2) == [0, 0]


async def test_switching_back_to_series_migrates_the_same_way(kv: KeyValue) -> None:
    await _check_partitioning(kv, KEY, "symbol", 2)
    for p, seq in enumerate([40, 30]):
        await kv.put(f"{KEY}.p{p}", str(seq).encode())
    await _check_partitioning(kv, KEY, "series", 2)
    assert await positions(kv, 2) == [30, 30]
    assert (await kv.get(f"{KEY}.by")).value == b"series"
