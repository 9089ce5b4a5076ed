"""The status API's fast paths answer byte for byte what the original code answered.

``reference_app`` (reference_api.py) is a copy of the original routes (dicts, validated and serialized
by FastAPI through their response models), with one deliberate change since: /api/tuning
answers through its typed model (lowercase labels, no internal accumulators). What the
API answers differently on purpose (lowercase labels aside, which come from the shared
models) is tested in test_api_contract.py: a 400 for unknown labels, tiers, timeframes,
parameters and out-of-range history. It and the real app read the same Redis,
filled through the state publisher's own core and writer; every route, with and
without filters, must give the same status code and the same bytes, compressed or
not. The caches must follow the publisher's change notices, expire without them,
and step aside when the notices cannot be heard.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import msgpack
import nats
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from nats.aio.client import Client as NATS

from regimes.servers import ManagedServer
from services.dashboard_api import read_model as read_model_module
from services.dashboard_api.app import create_app, read_model
from services.dashboard_api.read_model import ChangeFeed
from services.dashboard_api.routes_ops import OpsRoutes
from services.state_publisher.core import Update, apply_decision, apply_hmm, apply_pipeline, apply_vol, new_snapshot
from services.state_publisher.writer import SnapshotWriter
from shared.domain import snapshot
from shared.domain.config import StrategyConfig
from shared.domain.contracts import HmmRegimeEvent, ScreenerDecision, VolRegimeEvent
from shared.domain.snapshot import SeriesSnapshot
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import HmmLabel, VolLabel
from shared.infra.bus import kv_bucket
from shared.infra.redis_keys import RedisKeys
from shared.infra.settings import Settings
from shared.infra.telemetry import Metrics
from tests.factories import RATIO, VOL_LONG, Bar, pipeline_status, recent_start, regime_events, vol_event
from tests.harness import eventually, small_config
from tests.integration.reference_api import reference_app

TIERS = ("CORE", "SATELLITE", "TACTICAL", "ALT-EXT")
VOLS: tuple[VolLabel, ...] = ("low", "normal", "high", "crisis")
HMMS: tuple[HmmLabel | None, ...] = ("BULLISH", "RANGING", "BEARISH", None)
LONG = SeriesKey("beta", "S00/USD", "1m")  # more history than the default 600 points
DUO_1M, DUO_5M = SeriesKey("alpha", "DUO/USD", "1m"), SeriesKey("alpha", "DUO/USD", "5m")
PERP = SeriesKey("alpha", "ETH/USDT:USDT", "1m")
EMPTY = SeriesKey("alpha", "EMPTY/USD", "1m")  # in the universe, never updated: every block null


def universe() -> list[tuple[SeriesKey, str]]:
    keys = [(SeriesKey("beta" if i % 3 == 0 else "alpha", f"S{i:02d}/USD", "1m"), TIERS[i % 4]) for i in range(40)]
    return [*keys, (DUO_1M, "CORE"), (DUO_5M, "CORE"), (PERP, "TACTICAL"), (EMPTY, "ALT-EXT")]


def bars_for(i: int, n: int) -> list[Bar]:
    """Regimes that move every 7 bars, a few series never trained, every fourth without HMM verdicts."""
    out = []
    for j in range(n):
        seg = (j // 7 + i) % 16
        out.append(Bar(VOLS[seg % 4], HMMS[(seg // 4 + i) % 4], 0.3 + 0.1 * (seg % 5), trained=(i % 7 != 0)))
    return out


@dataclass
class World:
    settings: Settings
    config: StrategyConfig
    redis: aioredis.Redis
    nc: NATS
    keys: RedisKeys
    writer: SnapshotWriter
    seq: int = 1

    @property
    def position(self) -> str:
        return self.keys.position("tests")

    async def write(self) -> None:
        await self.writer.write(self.position, str(self.seq), self.seq + 1)
        self.seq += 1


def stored(snap: SeriesSnapshot) -> dict[str, Any]:
    """A snapshot as Redis holds it (its JSON, parsed)."""
    return json.loads(snapshot.dumps(snap))


def fill(writer: SnapshotWriter, config: StrategyConfig) -> None:
    blend = config.hmm.blend_with_trend
    now = int(time.time() * 1000)
    for i, (key, tier) in enumerate(universe()):
        snap = new_snapshot(key, tier)
        up = Update(snap, kinds={"init"})
        if key != EMPTY:
            n = 650 if key == LONG else 40 if i % 5 else 12
            events = regime_events(config, key, bars_for(i, n), recent_start(n), price=3.0 + i, seed=i)
            for ev in events:
                if isinstance(ev, VolRegimeEvent):
                    u = apply_vol(snap, ev, now)
                elif isinstance(ev, HmmRegimeEvent):
                    u = apply_hmm(snap, ev, blend, now)
                elif isinstance(ev, ScreenerDecision):
                    u = apply_decision(snap, ev, now)
                if u is not None:
                    up.merge(u)
                    snap = u.snapshot
            if i % 4 != 3:
                last = max(e.ts for e in events)
                u = apply_pipeline(snap, pipeline_status(9000 - i, key=key, last_ts=last, gaps=i % 3), now)
                snap = u.snapshot if u is not None else snap
        writer.put(key, snap)
        writer.pending[key] = up


@pytest.fixture
async def world(nats_server: ManagedServer, redis_server: ManagedServer, namespace: str) -> AsyncIterator[World]:
    rows = [{"exchange": k.exchange, "symbol": k.symbol, "timeframe": k.timeframe, "tier": t} for k, t in universe()]
    config = small_config([], universe=rows)
    settings = Settings(nats_url=nats_server.url, redis_url=redis_server.url, namespace=namespace)
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    nc = await nats.connect(nats_server.url)
    keys = RedisKeys(settings.names)
    writer = SnapshotWriter(redis, keys, config)
    fill(writer, config)
    w = World(settings, config, redis, nc, keys, writer)
    await writer.write(w.position, None, 1)
    kv = await kv_bucket(nc.jetstream(), settings.names.bucket("health"), ttl=3600.0)
    for service, extra in (("screener", {}), ("state_publisher", {"lag": 0.25, "note": "ünïcode"})):
        beat = {"service": service, "replica": "1/1", "host": "h", "pid": 7, "started_at": 1, "last_seen": 2}
        beat |= {"handled": 10, "skipped": 1, "dead_lettered": 0, **extra}
        await kv.put(f"{service}.1of1", msgpack.packb(beat, use_bin_type=True))
    try:
        yield w
    finally:
        await redis.aclose()
        await nc.drain()


@dataclass
class Apps:
    new: httpx.AsyncClient
    old: httpx.AsyncClient
    app: FastAPI
    ref: FastAPI


@pytest.fixture
async def apps(world: World) -> AsyncIterator[Apps]:
    app = create_app(world.settings, world.config, world.redis, world.nc, Metrics.create("dashboard_api"))
    ref = reference_app(world.settings, world.config, world.redis, world.nc)

    def client(a: FastAPI) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=a, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://api", headers={"Accept-Encoding": "identity"})

    async with client(app) as new, client(ref) as old:
        yield Apps(new, old, app, ref)
    await read_model(app).aclose()


# --------------------------------------------------------------------------- comparisons

SYMBOLS = [
    "/api/symbols",
    "/api/symbols?vol_regime=crisis",
    "/api/symbols?vol_regime=low",
    "/api/symbols?hmm_regime=bullish",
    "/api/symbols?hmm_regime=RANGING",
    "/api/symbols?tier=CORE",
    "/api/symbols?tier=ALT-EXT&exchange=alpha",
    "/api/symbols?exchange=beta",
    "/api/symbols?vol_regime=high&hmm_regime=bearish&tier=SATELLITE&exchange=alpha",
]
DETAILS = [
    "/api/symbols/beta/S00-USD",
    "/api/symbols/beta/S00/USD",
    "/api/symbols/beta/S00-USD?history=0",
    "/api/symbols/beta/S00-USD?history=1",
    "/api/symbols/beta/S00-USD?history=1440",
    "/api/symbols/alpha/S01-USD",
    "/api/symbols/beta/S03-USD?timeframe=1m",
    "/api/symbols/alpha/DUO-USD",
    "/api/symbols/alpha/DUO-USD?timeframe=5m",
    "/api/symbols/alpha/DUO/USD?timeframe=1m&history=3",
    "/api/symbols/alpha/DUO-USD?timeframe=4h",
    "/api/symbols/alpha/ETH-USDT_3AUSDT",
    "/api/symbols/alpha/ETH/USDT:USDT",
    "/api/symbols/alpha/EMPTY-USD",
    "/api/symbols/alpha/NOPE-USD",
    "/api/symbols/gamma/S01-USD",
    "/api/symbols/ALPHA/S01-USD",
    "/api/symbols/alpha/bad_token",
    "/api/symbols/alpha/a b/c",
]
OTHERS = ["/api/summary", "/api/tuning", "/api/config"]


async def same_answers(apps: Apps, paths: list[str]) -> None:
    for path in paths:
        old = await apps.old.get(path)
        new = await apps.new.get(path)
        assert (new.status_code, new.headers.get("content-type")) == (old.status_code, old.headers.get("content-type"))
        assert new.content == old.content, path
        zipped = await apps.new.get(path, headers={"Accept-Encoding": "gzip"})
        assert zipped.status_code == old.status_code
        assert zipped.content == old.content, f"{path} (gzip)"
        if len(old.content) >= 1024 and old.status_code == 200:
            assert zipped.headers["content-encoding"] == "gzip", path


def without_clock(body: bytes) -> bytes:
    masked, n = re.subn(rb'^\{"namespace":("[^"]*"),"now":\d+,', rb'{"namespace":\1,"now":0,', body)
    assert n == 1, body[:200]
    return masked


async def same_status(apps: Apps) -> None:
    old = await apps.old.get("/api/status")
    for encoding in ("identity", "gzip"):
        new = await apps.new.get("/api/status", headers={"Accept-Encoding": encoding})
        assert new.status_code == old.status_code == 200
        assert without_clock(new.content) == without_clock(old.content)


async def test_every_route_answers_the_original_bytes(apps: Apps) -> None:
    await same_answers(apps, SYMBOLS + DETAILS + OTHERS)
    await same_status(apps)
    again = await apps.new.get("/api/symbols")  # served from the cache this time
    assert again.content == (await apps.old.get("/api/symbols")).content
    assert len(again.json()) == len(universe())


# Routes whose parameters or response model changed on purpose (test_api_contract.py covers them).
CHANGED = {"/api/symbols", "/api/symbols/{exchange}/{symbol}", "/api/tuning"}


async def test_the_openapi_schema_is_unchanged(apps: Apps) -> None:
    old = (await apps.old.get("/openapi.json")).json()
    new = (await apps.new.get("/openapi.json")).json()
    for path, ops in old["paths"].items():
        if path not in CHANGED:
            assert new["paths"][path] == ops, path
    for name, schema in old["components"]["schemas"].items():
        assert new["components"]["schemas"][name] == schema, name


async def test_an_empty_namespace_answers_as_before(apps: Apps, world: World) -> None:
    await world.redis.delete(world.keys.symbols, world.keys.summary)
    await same_answers(apps, ["/api/symbols", "/api/summary", "/api/tuning", "/api/symbols/alpha/S01-USD"])
    await same_status(apps)


async def test_malformed_snapshots_fail_or_pass_exactly_as_before(
    apps: Apps, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ChangeFeed, "start", lambda _self: None)  # every request reads what this test just wrote
    bad = dict(stored(world.writer.snaps[SeriesKey("alpha", "S01/USD", "1m")]), vol_regime="panic")  # tier SATELLITE
    await world.redis.set(world.keys.symbol(SeriesKey("alpha", "S01/USD", "1m").token), json.dumps(bad))
    await world.redis.set(world.keys.symbol(SeriesKey("alpha", "S02/USD", "1m").token), "")  # skipped as absent
    paths = [
        "/api/symbols",  # 500: the model rejects it
        "/api/symbols?vol_regime=crisis",  # filtered out before validation: 200
        "/api/symbols?tier=CORE",
        "/api/symbols?tier=SATELLITE",
        "/api/tuning",  # tuning does not look at vol_regime: 200
        "/api/symbols/alpha/S01-USD",
        "/api/symbols/alpha/S02-USD",
        "/api/symbols/alpha/S04-USD",
    ]
    await same_answers(apps, paths)
    assert (await apps.new.get("/api/symbols")).status_code == 500
    assert (await apps.new.get("/api/status")).status_code == (await apps.old.get("/api/status")).status_code == 500
    await world.redis.set(world.keys.summary, '{"symbols": "many"}')
    await same_answers(apps, ["/api/summary"])
    await world.redis.set(world.keys.symbol(SeriesKey("alpha", "S01/USD", "1m").token), "{not json")
    await same_answers(apps, ["/api/symbols?tier=CORE", "/api/tuning"])
    assert (await apps.new.get("/api/symbols?tier=CORE")).status_code == 500


# --------------------------------------------------------------------------- how long a read is served


async def change_vol(world: World, key: SeriesKey, label: VolLabel) -> None:
    """One batch the way state_publisher writes it: snapshot, history, summary and change notice in one MULTI."""
    snap = world.writer.snaps[key]
    assert snap.vol is not None
    assert snap.price is not None
    ts = snap.vol.ts + 60_000
    event = vol_event(
        label=label, prev=snap.vol_regime, key=key, ts=ts, close=snap.price.close, ratio=RATIO[label], vol_long=VOL_LONG
    )
    update = apply_vol(snap, event, int(time.time() * 1000))
    assert update is not None
    world.writer.put(key, update.snapshot)
    world.writer.pending[key] = update
    await world.write()


async def warm(apps: Apps) -> None:
    """A first request starts the change feed; wait until it hears the notices."""
    await apps.new.get("/api/summary")
    feed = read_model(apps.app).feed

    async def subscribed() -> bool:
        return feed.live

    await eventually(subscribed, timeout=5)


async def test_a_written_batch_is_served_as_soon_as_its_notice_arrives(
    apps: Apps, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(read_model_module, "MAX_AGE_SEC", 3600.0)
    key = SeriesKey("alpha", "S04/USD", "1m")
    detail = "/api/symbols/alpha/S04-USD?history=5"
    await warm(apps)
    await apps.new.get("/api/symbols")
    await apps.new.get(detail)
    before = (await apps.new.get("/api/symbols?vol_regime=crisis")).json()
    assert key.id not in {s["series"] for s in before}
    await change_vol(world, key, "crisis" if world.writer.snaps[key].vol_regime != "crisis" else "low")

    async def served() -> bool:
        body = (await apps.new.get("/api/symbols")).content
        return body == (await apps.old.get("/api/symbols")).content

    await eventually(served, timeout=5)
    await same_answers(apps, ["/api/symbols?vol_regime=crisis", "/api/symbols?vol_regime=low", detail, "/api/tuning"])
    await same_status(apps)


async def test_a_change_without_notice_is_served_after_at_most_max_age(
    apps: Apps, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(read_model_module, "MAX_AGE_SEC", 3600.0)
    key = SeriesKey("alpha", "S05/USD", "1m")
    await warm(apps)
    cached = (await apps.new.get("/api/symbols")).content
    await apps.new.get("/api/symbols/alpha/S05-USD")
    snap = dict(stored(world.writer.snaps[key]), tier="ALT-EXT")
    await world.redis.set(world.keys.symbol(key.token), json.dumps(snap))  # no notice: nothing tells the API
    assert (await apps.new.get("/api/symbols")).content == cached
    monkeypatch.setattr(read_model_module, "MAX_AGE_SEC", 0.0)
    await same_answers(apps, ["/api/symbols", "/api/symbols?tier=ALT-EXT", "/api/symbols/alpha/S05-USD"])


async def test_without_notices_every_request_reads_redis(
    apps: Apps, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ChangeFeed, "start", lambda _self: None)  # never subscribed: nothing is trusted
    monkeypatch.setattr(read_model_module, "MAX_AGE_SEC", 3600.0)
    key = SeriesKey("beta", "S06/USD", "1m")
    await same_answers(apps, ["/api/symbols", "/api/symbols/beta/S06-USD"])
    snap = dict(stored(world.writer.snaps[key]), tier="CORE")
    await world.redis.set(world.keys.symbol(key.token), json.dumps(snap))
    await same_answers(apps, ["/api/symbols", "/api/symbols?tier=CORE", "/api/symbols/beta/S06-USD"])


async def test_a_change_event_on_the_stream_is_never_answered_from_before(apps: Apps, world: World) -> None:
    """The stream counts the notice itself before the browser hears of it, however late the feed is."""
    reads = read_model(apps.app)
    routes = OpsRoutes(world.settings, world.config, reads, world.nc, Metrics.create("dashboard_api"), None)

    class Connected:
        async def is_disconnected(self) -> bool:
            return False

    response = await routes.stream(cast(Request, Connected()))
    assert isinstance(response, StreamingResponse)
    events = cast(AsyncGenerator[str, None], response.body_iterator)  # the route's events(), an async generator
    assert "hello" in await anext(events)
    generation = reads.feed.generation  # the feed itself never started: no other request came
    notice = json.dumps({"series": [], "kinds": [], "at": 0})
    await eventually(lambda: world.redis.publish(world.keys.changes, notice), timeout=5)  # the stream subscribed
    while "change" not in (event := await anext(events)):
        pass
    assert reads.feed.generation > generation, event
    await events.aclose()


async def test_requests_queued_behind_a_read_share_the_next_one(
    apps: Apps, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing cached (no notices heard), each request still sees Redis as of after it arrived."""
    monkeypatch.setattr(ChangeFeed, "start", lambda _self: None)
    reads = read_model(apps.app)
    expected = (await apps.old.get("/api/symbols")).content
    before = reads.ticket()
    answers = await asyncio.gather(*(apps.new.get("/api/symbols") for _ in range(12)))
    assert [a.content for a in answers] == [expected] * 12
    assert reads.ticket() - before <= 3  # one read in flight when they came, then one for all that queued
    key = SeriesKey("beta", "S09/USD", "1m")
    moved = dict(stored(world.writer.snaps[key]), tier="TACTICAL")
    await world.redis.set(world.keys.symbol(key.token), json.dumps(moved))
    await same_answers(apps, ["/api/symbols?tier=TACTICAL"])
