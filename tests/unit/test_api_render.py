"""The status API's rendering: each series' bytes are what FastAPI makes of the parsed snapshot; gzip splices.

The reference is FastAPI's own serialization of a ``response_model``: validate the
parsed value with the route's TypeAdapter, then ``dump_json(by_alias=True)``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
import zlib
from typing import Any

import pytest
from pydantic import TypeAdapter

from services.dashboard_api import core, read_model
from services.dashboard_api.models import (
    SeriesStatus,
    Summary,
    SymbolConsensus,
    SymbolDetail,
    SymbolSnapshot,
    TuningRow,
)
from services.state_publisher.core import apply_decision, apply_hmm, apply_pipeline, apply_vol, new_snapshot
from shared.domain import snapshot
from shared.domain.contracts import HmmRegimeEvent, ScreenerDecision, VolRegimeEvent
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import HmmLabel, VolLabel
from tests.factories import Bar, pipeline_status, recent_start, regime_events
from tests.harness import small_config

KEY = SeriesKey("test", "BTC/USD", "1m")
CONFIG = small_config([("BTC/USD", "CORE")])


def fastapi_bytes(annotation: Any, value: Any) -> bytes:
    adapter = TypeAdapter(annotation)
    return adapter.dump_json(adapter.validate_python(value, from_attributes=True), by_alias=True)


def snapshots() -> list[dict[str, Any]]:
    """An empty snapshot, a lived-in one (every block, tuning with its accumulators), and odd numbers."""
    lived = new_snapshot(KEY, "CORE")
    now = int(time.time() * 1000)
    vol_cycle: list[VolLabel] = ["low", "high", "crisis", "normal"]
    hmm_cycle: list[HmmLabel | None] = ["BULLISH", None, "BEARISH"]
    vols, hmms = vol_cycle * 5, hmm_cycle * 7
    bars = [Bar(vols[i], hmms[i]) for i in range(20)]
    events = regime_events(CONFIG, KEY, bars, recent_start(len(bars)))
    for ev in events:
        up = None
        if isinstance(ev, VolRegimeEvent):
            up = apply_vol(lived, ev, now)
        elif isinstance(ev, HmmRegimeEvent):
            up = apply_hmm(lived, ev, 0.5, now)
        elif isinstance(ev, ScreenerDecision):
            up = apply_decision(lived, ev, now)
        lived = up.snapshot if up is not None else lived
    up = apply_pipeline(lived, pipeline_status(100, key=KEY, last_ts=events[-1].ts), now)
    assert up is not None
    snap = json.loads(snapshot.dumps(up.snapshot))  # as stored in Redis
    odd = json.loads(json.dumps(snap))
    odd["vol"] |= {"short": 1e-7, "long": 1e16, "ratio": -0.0}
    odd["screener"]["scores"] = {"trend": 5e-324, "carry": 1.7976931348623157e308, "x": 123456789.123456789}
    odd["price"]["close"] = 1  # an int where the model wants a float
    odd["tier"] = "Ünïcode ✓"
    return [json.loads(snapshot.dumps(new_snapshot(KEY, "CORE"))), snap, odd]


@pytest.mark.parametrize("snap", snapshots(), ids=["empty", "lived-in", "odd"])
def test_each_series_renders_as_fastapi_serializes_it(snap: dict[str, Any]) -> None:
    raw = json.dumps(snap)
    listed = fastapi_bytes(list[SymbolSnapshot], [json.loads(raw)])
    rendered = core.snapshot(raw)
    assert rendered is not None
    assert core.json_list([rendered.data, rendered.data]) == listed[:-1] + b"," + listed[1:]
    status = SeriesStatus(
        series=snap["series"],
        vol_regime=snap.get("vol_regime"),
        hmm_regime=snap.get("hmm_regime"),
        hmm_data_pipeline=snap.get("hmm_data_pipeline"),
    )
    assert core.series_status(raw) == fastapi_bytes(SeriesStatus, status)
    row = {"series": snap["series"], "hmm": snap.get("hmm_tuning"), "vol": snap.get("vol_tuning")}
    assert core.tuning_row(raw) == fastapi_bytes(TuningRow, row)


def test_a_detail_renders_as_fastapi_serializes_it() -> None:
    snap = snapshots()[1]
    points = [json.dumps({**p, "nav": 1}) for p in _points(snap)]
    trans = [json.dumps({"kind": "vol", "ts": 5, "from": "low", "to": "high", "ratio": 1.3, "close": 2.0})]
    thresholds = core.thresholds(CONFIG)
    body = core.detail(json.dumps(snap), points, trans, json.dumps(thresholds))
    assert body is not None
    assert body.data == fastapi_bytes(SymbolDetail, core.detail_dict(json.dumps(snap), points, trans, thresholds))
    assert b'"from":"low"' in body.data


def _points(snap: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"ts": 1, "close": 2.5, "vol": "low", "ratio": 0.4, "hmm": None, "p": None, "idle": 0.4, "score": 0.1}
    return [base, {**base, "ts": 2, "hmm": "BULLISH", "p": [0.1, 0.2, 0.7]}]


@pytest.mark.parametrize(
    "raw",
    [
        '{"series": 1}',
        "[]",
        "null",
        "{not json",
        json.dumps({**json.loads(snapshot.dumps(new_snapshot(KEY, "CORE"))), "vol_regime": "panic"}),
        json.dumps({**json.loads(snapshot.dumps(new_snapshot(KEY, "CORE"))), "vol": {"short": float("nan")}}),
    ],
)
def test_what_the_models_reject_goes_to_the_reference_path(raw: str) -> None:
    assert core.snapshot(raw) is None
    assert core.detail(raw, [], [], "{}") is None


def test_an_absent_or_empty_summary_is_the_empty_one() -> None:
    empty = core.summary(None)
    assert empty == core.summary("") == fastapi_bytes(Summary, core.empty_summary())
    assert core.summary('{"symbols": "many"}') is None


@pytest.mark.parametrize("head_size", [0, 1, 37, 70_000])
@pytest.mark.parametrize("tail_size", [0, 2, 300_000])
def test_a_spliced_gzip_is_the_gzip_of_head_and_tail(head_size: int, tail_size: int) -> None:
    rng = random.Random(head_size * 31 + tail_size)
    words = [b'"series":', b'"vol_regime":"low"', b"null", b"0.123", b"{", b"}", b","]
    head = b"".join(rng.choice(words) for _ in range(head_size))[:head_size]
    tail = core.Body(b"".join(rng.choice(words) for _ in range(tail_size))[:tail_size])
    spliced = core.gzip_spliced(head, tail)
    assert gzip.decompress(spliced) == head + tail.data
    streaming = zlib.decompressobj(zlib.MAX_WBITS | 16)  # as HTTP clients decode, chunk by chunk
    out = b"".join(streaming.decompress(spliced[i : i + 999]) for i in range(0, len(spliced), 999))
    assert out + streaming.flush() == head + tail.data
    assert streaming.eof
    assert not streaming.unused_data
    assert gzip.decompress(tail.gzip()) == tail.data
    assert tail.gzip() is tail.gzip()  # made once


def test_a_read_is_current_only_while_subscribed_unchanged_and_young(monkeypatch: pytest.MonkeyPatch) -> None:
    feed = read_model.ChangeFeed(None, "changes", None)  # type: ignore[arg-type]
    at = time.monotonic()
    assert not feed.current(feed.generation, at)  # not subscribed: nothing is trusted
    feed.live = True
    assert feed.current(feed.generation, at)
    feed.changed()
    assert not feed.current(feed.generation - 1, at)
    monkeypatch.setattr(read_model, "MAX_AGE_SEC", 0.0)
    assert not feed.current(feed.generation, at)


async def test_concurrent_health_reads_share_one_and_expire() -> None:
    calls: list[int] = []

    async def compute() -> list[int]:
        calls.append(1)
        await asyncio.sleep(0.01)
        return [len(calls)]

    cache = read_model._TtlCache(ttl=3600.0)
    assert await asyncio.gather(*(cache.get(compute) for _ in range(5))) == [[1]] * 5
    assert len(calls) == 1
    cache.ttl = 0.0
    assert await cache.get(compute) == [2]


STORED_CONSENSUS = snapshot.SymbolConsensus(
    "test", "BTC/USD", "BULLISH", 2 / 3, 0.25, ("1m", "15m", "1h"), ("1h",), (), {"1m": 60_000, "15m": 0, "1h": 0}
)


def test_the_consensus_renders_as_fastapi_serializes_it_and_rides_in_the_detail() -> None:
    raw = snapshot.dumps(STORED_CONSENSUS)
    data = core.consensus(raw)
    assert data is not None
    assert data == fastapi_bytes(SymbolConsensus, json.loads(raw))
    assert json.loads(data)["regime"] == "bullish"  # lowered, as every label the API serves
    snap = json.dumps(snapshots()[1])
    thresholds = core.thresholds(CONFIG)
    for agreed in (raw, None):
        body = core.detail(snap, [], [], json.dumps(thresholds), consensus=agreed)
        assert body is not None
        assert body.data == fastapi_bytes(SymbolDetail, core.detail_dict(snap, [], [], thresholds, consensus=agreed))
        assert json.loads(body.data)["consensus"] == (None if agreed is None else json.loads(data))


def test_a_consensus_the_model_rejects_goes_to_the_reference_path() -> None:
    assert core.consensus(json.dumps({**json.loads(snapshot.dumps(STORED_CONSENSUS)), "regime": "SIDEWAYS"})) is None
