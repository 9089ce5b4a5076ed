"""What the status API answers on purpose differently from before, against real Redis filled by the
state publisher's own writer (the world of test_api_speed_paths): lowercase labels, one rule for
every filter, ``?bars=`` and ``?format=compact``, readiness over the universe, security headers on
every response and per-route metrics scraped from /metrics."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import ClientDisconnect
from starlette.types import Message

from regimes.servers import free_port
from services.dashboard_api.app import create_app, read_model
from services.state_publisher.core import new_snapshot
from shared.domain import snapshot
from shared.domain.subjects import SeriesKey, encode_symbol
from shared.infra.telemetry import Metrics
from tests.integration import test_api_speed_paths as speed
from tests.integration.test_api_speed_paths import DUO_1M, LONG, PERP, Apps, World, universe

# The same world (Redis filled through the state publisher's writer) and app as the byte comparisons.
world = speed.world
apps = speed.apps

API_LABELS = {"bearish", "ranging", "bullish"}


async def get(apps: Apps, path: str, **kw: Any) -> httpx.Response:
    return await apps.new.get(path, **kw)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


# --------------------------------------------------------------------------- labels


async def test_every_label_in_the_json_is_lowercase_and_redis_keeps_its_own(apps: Apps, world: World) -> None:
    summary = (await get(apps, "/api/summary")).json()
    assert set(summary["hmm_regime_summary"]) == API_LABELS
    assert sum(summary["hmm_regime_summary"].values()) > 0
    snaps = (await get(apps, "/api/symbols")).json()
    regimes = {s["hmm_regime"]["regime"] for s in snaps if s["hmm_regime"]}
    assert regimes
    assert regimes <= API_LABELS
    current = {s["hmm_tuning"]["current"] for s in snaps if s["hmm_tuning"]}
    assert current
    assert current <= API_LABELS
    detail = (await get(apps, "/api/symbols/alpha/S01-USD")).json()  # trained, with HMM verdicts
    assert {p["hmm"] for p in detail["history"]} - {None} <= API_LABELS
    hmm_moves = [t for t in detail["transitions"] if t["kind"] == "hmm"]
    assert hmm_moves
    assert {t["from"] for t in hmm_moves} | {t["to"] for t in hmm_moves} <= API_LABELS
    tuning = (await get(apps, "/api/tuning")).json()
    assert all("_acc" not in (row["hmm"] or {}) for row in tuning)  # internal accumulators stay internal
    assert {k for row in tuning if row["hmm"] for k in row["hmm"]["bars"]} <= API_LABELS
    status = (await get(apps, "/api/status")).json()
    assert set(status["summary"]["hmm_regime_summary"]) == API_LABELS
    assert {s["hmm_regime"]["regime"] for s in status["series"] if s["hmm_regime"]} <= API_LABELS
    # The wire and the stored snapshots keep the contracts' upper case: nothing else had to change.
    raw = await world.redis.get(world.keys.summary)
    assert raw is not None
    stored = json.loads(raw)
    assert set(stored["hmm_regime_summary"]) == {"BEARISH", "RANGING", "BULLISH"}


# --------------------------------------------------------------------------- filters


async def test_vocabulary_filters_match_in_any_case_and_refuse_what_nothing_can_be(apps: Apps) -> None:
    core_upper = (await get(apps, "/api/symbols?tier=CORE")).content
    assert json.loads(core_upper)
    assert (await get(apps, "/api/symbols?tier=core")).content == core_upper
    assert (await get(apps, "/api/symbols?tier=Core")).content == core_upper
    crisis = (await get(apps, "/api/symbols?vol_regime=crisis")).content
    assert json.loads(crisis)
    assert (await get(apps, "/api/symbols?vol_regime=CRISIS")).content == crisis
    bull = (await get(apps, "/api/symbols?hmm_regime=bullish")).content
    assert json.loads(bull)
    assert (await get(apps, "/api/symbols?hmm_regime=BULLISH")).content == bull
    for path, name in [
        ("/api/symbols?tier=nope", "tier"),
        ("/api/symbols?tier=", "tier"),
        ("/api/symbols?vol_regime=bogus", "vol_regime"),
        ("/api/symbols?hmm_regime=sideways", "hmm_regime"),
        ("/api/symbols?tier=CORE&vol_regime=panic", "vol_regime"),
    ]:
        reply = await get(apps, path)
        assert reply.status_code == 400, path
        assert reply.json()["detail"].startswith(f"{name} must be one of"), reply.text


async def test_an_identifier_no_series_has_is_an_empty_list(apps: Apps) -> None:
    for path in ["/api/symbols?exchange=nope", "/api/symbols?exchange=ALPHA", "/api/symbols?exchange="]:
        reply = await get(apps, path)
        assert (reply.status_code, reply.json()) == (200, []), path
    assert len((await get(apps, "/api/symbols?exchange=beta")).json()) == sum(
        1 for k, _ in universe() if k.exchange == "beta"
    )


async def test_a_parameter_a_route_does_not_take_is_refused(apps: Apps) -> None:
    for path in ["/api/symbols?volregime=crisis", "/api/summary?x=1", "/api/symbols/alpha/S01-USD?bar=3"]:
        reply = await get(apps, path)
        assert reply.status_code == 400, path
        assert "unknown query parameter" in reply.json()["detail"]
    for path in ["/?utm_source=chat", "/healthz?probe=1", "/readyz?x=1"]:  # the page and probes: not the API's
        assert (await get(apps, path)).status_code == 200, path


# --------------------------------------------------------------------------- one series


async def test_bars_bound_the_history_and_bad_values_are_400(apps: Apps) -> None:
    base = f"/api/symbols/{LONG.exchange}/{encode_symbol(LONG.symbol)}"
    default = await get(apps, base)
    assert len(default.json()["history"]) == 600
    assert (await get(apps, f"{base}?history=600")).content == default.content
    assert (await get(apps, f"{base}?bars=600")).content == default.content
    five = await get(apps, f"{base}?bars=5")
    assert [p["ts"] for p in five.json()["history"]] == [p["ts"] for p in default.json()["history"][-5:]]
    assert (await get(apps, f"{base}?history=5")).content == five.content
    assert len((await get(apps, f"{base}?bars=1440")).json()["history"]) == 650
    for query in ["bars=-1", "bars=1441", "bars=abc", "bars=1.5", "bars=", "history=-1", "history=1441",
                  "bars=3&history=4", "format=xml", "format=", "timeframe=7x", "timeframe="]:
        reply = await get(apps, f"{base}?{query}")
        assert reply.status_code == 400, (query, reply.text)
        assert isinstance(reply.json()["detail"], str), query


async def test_the_compact_form_holds_the_same_values_in_fewer_bytes(apps: Apps) -> None:
    base = f"/api/symbols/{LONG.exchange}/{encode_symbol(LONG.symbol)}"
    rows = await get(apps, base)
    compact = await get(apps, f"{base}?format=compact")
    assert compact.status_code == 200
    assert (await get(apps, f"{base}?format=COMPACT&bars=600")).content == compact.content
    assert (await get(apps, f"{base}?format=rows")).content == rows.content
    r, c = rows.json(), compact.json()
    assert c["snapshot"] == r["snapshot"]
    assert c["transitions"] == r["transitions"]
    assert set(c["history"]) == set(r["history"][0])
    for field, column in c["history"].items():
        assert column == [p[field] for p in r["history"]], field
    assert len(compact.content) < 0.8 * len(rows.content)
    zipped = await get(apps, f"{base}?format=compact", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    print(f"\n600 bars: rows {len(rows.content)} B, compact {len(compact.content)} B")


async def test_series_ids_in_paths_stay_exact(apps: Apps) -> None:
    assert (await get(apps, f"/api/symbols/alpha/{encode_symbol(DUO_1M.symbol)}?timeframe=1m")).status_code == 200
    assert (await get(apps, f"/api/symbols/alpha/{encode_symbol(PERP.symbol)}")).status_code == 200
    assert (await get(apps, f"/api/symbols/ALPHA/{encode_symbol(PERP.symbol)}")).status_code == 404


# --------------------------------------------------------------------------- readiness


async def test_readiness_covers_the_universe_and_reports_imported_series_apart(apps: Apps, world: World) -> None:
    read_model(apps.app)  # the app's readiness cache: HMM_READINESS_CACHE_SEC of the test config
    now = int(time.time() * 1000)
    imported = SeriesKey("files", "IMP/USD", "1m")  # imported: not in the universe, 13 minutes old
    snap = json.loads(snapshot.dumps(new_snapshot(imported, "CORE")))  # as Redis holds it
    snap["price"] = {"close": 1.0, "ts": now - 14 * 60_000}
    snap["vol"] = None
    await world.redis.set(world.keys.symbol(imported.token), json.dumps(snap))
    await world.redis.sadd(world.keys.symbols, imported.token)
    ready = await get(apps, "/readyz")
    body = ready.json()
    assert ready.status_code == 200
    assert body["ready"] is True
    assert body["other_stale_series"] == [imported.id]
    assert "1 series outside the universe stale" in body["detail"]["other_data"]
    # The universe: series whose pipeline reports are recent are fresh, those without one are judged
    # by their newest candle (the world's are a minute old), EMPTY has no candle at all.
    assert "alpha:EMPTY/USD:1m" in body["stale_series"]
    assert imported.id not in body["stale_series"]
    assert body["data_ok"] is False
    assert f"{len(body['stale_series'])} series stale" == body["detail"]["data"]


# --------------------------------------------------------------------------- headers


SECURITY = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")


async def test_every_response_carries_the_security_headers(apps: Apps, world: World) -> None:
    paths = ["/", "/static/app.js", "/static/labels.js", "/api/symbols", "/api/summary", "/readyz", "/healthz",
             "/metrics", "/openapi.json", "/docs", "/nope", "/api/symbols?tier=nope", "/api/symbols/alpha/NOPE-USD"]
    for path in paths:
        reply = await get(apps, path)
        assert reply.status_code < 500, path
        for name in SECURITY:
            assert name in reply.headers, (path, name)
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["x-content-type-options"] == "nosniff"
    page = (await get(apps, "/")).headers["content-security-policy"]
    assert "script-src 'self';" in page
    docs = (await get(apps, "/docs")).headers["content-security-policy"]
    assert "script-src 'self' 'unsafe-inline'" in docs  # Swagger UI's one inline script, its files served here
    assert "http" not in docs  # no other host
    posted = await apps.new.post("/api/backfill", json={})
    assert posted.status_code == 403  # no API_TOKEN in this world
    assert "content-security-policy" in posted.headers
    # A 500 (a snapshot the models reject) is answered by Starlette's error middleware: headers all the same.
    key = SeriesKey("alpha", "S01/USD", "1m")
    bad = dict(json.loads(snapshot.dumps(world.writer.snaps[key])), vol_regime="x")
    await world.redis.set(world.keys.symbol(key.token), json.dumps(bad))
    broken = await get(apps, "/api/symbols/alpha/S01-USD")
    assert broken.status_code == 500
    for name in SECURITY:
        assert name in broken.headers, name


# --------------------------------------------------------------------------- metrics


async def test_metrics_count_and_time_each_route_by_its_template(apps: Apps) -> None:
    for path in ["/api/symbols/alpha/S01-USD", "/api/symbols/beta/S03-USD", "/api/symbols/alpha/NOPE-USD",
                 "/api/symbols?tier=nope", "/api/summary", "/no/such/path", "/no/other/path"]:
        await get(apps, path)
    for method in ("BREW", "X" * 50):  # a method is any token to uvicorn: it must not mint label values
        await apps.new.request(method, "/api/summary")
    text = (await get(apps, "/metrics")).text
    methods = {dict(k)["method"] for k in samples(text, "regimes_api_requests_total")}
    assert methods == {"GET", "other"}
    counts = samples(text, "regimes_api_requests_total")
    detail = "/api/symbols/{exchange}/{symbol:path}"
    assert counts[(("method", "GET"), ("route", detail), ("status", "200"))] == 2
    assert counts[(("method", "GET"), ("route", detail), ("status", "404"))] == 1
    assert counts[(("method", "GET"), ("route", "/api/symbols"), ("status", "400"))] == 1
    assert counts[(("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 2
    assert not [labels for labels in counts if "S01" in str(labels) or "/no/" in str(labels)]  # templates only
    timed = samples(text, "regimes_api_request_seconds_count")
    assert timed[(("method", "GET"), ("route", detail))] == 3
    assert samples(text, "regimes_api_sse_clients") == {(): 0.0}
    assert "regimes_messages_total" in text or "regimes_up_since_seconds" in text  # the shared ones stay


@pytest.fixture
async def dead_redis_app(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """The same app over a Redis that is not there."""
    redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True, socket_timeout=1)
    app = create_app(world.settings, world.config, redis, world.nc, Metrics.create("dashboard_api"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http
    await read_model(app).aclose()
    await redis.aclose()


async def test_redis_errors_are_counted_and_answered_503(dead_redis_app: httpx.AsyncClient) -> None:
    for path in ["/api/symbols", "/api/summary"]:
        reply = await dead_redis_app.get(path)
        assert reply.status_code == 503, path
        assert "redis unavailable" in reply.json()["detail"]
        assert reply.headers["retry-after"] == "1"
    stream = await dead_redis_app.get("/api/stream")  # would look live and stay silent: refused instead
    assert stream.status_code == 503
    assert stream.headers["retry-after"] == "10"
    assert "change notices unavailable" in stream.json()["detail"]
    ready = await dead_redis_app.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["redis"] is False
    text = (await dead_redis_app.get("/metrics")).text
    errors = samples(text, "regimes_api_redis_errors_total")
    assert errors[(("where", "request"),)] == 2
    assert errors[(("where", "readiness"),)] == 1
    assert errors[(("where", "changes"),)] >= 1
    refused = samples(text, "regimes_api_sse_refused_total")
    assert refused[(("reason", "no_notices"),)] == 1
    assert re.search(r'regimes_api_requests_total\{method="GET",route="/api/summary",status="503"\} 1', text)


async def test_a_stream_client_gone_before_its_first_byte_gives_its_place_back(apps: Apps) -> None:
    fanout = read_model(apps.app).feed.fanout
    counts: list[int] = []
    fanout._on_count = counts.append

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            raise OSError("the client hung up")

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/api/stream", "raw_path": b"/api/stream", "query_string": b"", "root_path": "",
        "headers": [], "client": ("127.0.0.1", 1), "server": ("api", 80),
    }
    with contextlib.suppress(OSError, ClientDisconnect):
        await apps.app(scope, receive, send)
    assert counts == [1, 0]  # joined, and left although its stream never started
    assert len(fanout) == 0


async def test_the_config_shows_the_vol_confirmation_settings_in_force_typed_in_the_schema(world: World) -> None:
    # Values other than the defaults, so the answer is shown to come from the config given.
    vol = dataclasses.replace(world.config.vol, confirm_bars=5, hysteresis=0.05)
    app = create_app(world.settings, dataclasses.replace(world.config, vol=vol), world.redis, world.nc,
                     Metrics.create("dashboard_api"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            config = (await http.get("/api/config")).json()
            schema = (await http.get("/openapi.json")).json()
    finally:
        await read_model(app).aclose()
    assert config["vol_confirmation"] == {"confirm_bars": 5, "hysteresis": 0.05}
    shown = schema["components"]["schemas"]["VolConfirmation"]["properties"]
    assert (shown["confirm_bars"]["type"], shown["hysteresis"]["type"]) == ("integer", "number")
    assert schema["components"]["schemas"]["ConfigView"]["properties"]["vol_confirmation"]
