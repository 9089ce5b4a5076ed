"""The status API's pure decisions, without a server: labels, filters, history options, readiness,
the live fan-out, security headers, the bearer token and body limits, route labels for metrics."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from starlette.routing import Mount, Route
from starlette.types import Message

from services.dashboard_api import core, edge, query, readiness
from services.dashboard_api.live import HELLO, QUEUE_MAX, Fanout
from services.dashboard_api.models import HistoryColumns, HistoryPoint, Summary, SymbolSnapshot, Transition, Tuning
from services.state_publisher.core import new_snapshot as _new_snapshot
from shared.domain import snapshot as stored_record
from shared.domain.contracts import HMM_LABELS
from shared.domain.subjects import SeriesKey
from tests.harness import small_config


def new_snapshot(key: SeriesKey, tier: str) -> dict[str, Any]:
    """A new series' snapshot as Redis holds it (plain JSON values)."""
    plain: dict[str, Any] = json.loads(stored_record.dumps(_new_snapshot(key, tier)))
    return plain

KEY = SeriesKey("test", "BTC/USD", "1m")
CONFIG = small_config([("BTC/USD", "CORE"), ("ETH/USD", "Satellite")])
TOKEN = "t0ken-0123456789abcdef"

# --------------------------------------------------------------------------- labels


def test_every_regime_label_the_api_writes_is_lowercase_whatever_redis_holds() -> None:
    summary = Summary.model_validate(
        {
            "symbols": 1,
            "vol_regime_summary": {"low": 1},
            "vol_regime_avg_vol_short": {"low": 0.1},
            "hmm_regime_summary": dict.fromkeys(HMM_LABELS, 0),  # as state_publisher stores it
            "hmm_untrained": 0,
            "updated_at": None,
        }
    )
    assert set(summary.model_dump()["hmm_regime_summary"]) == {"bearish", "ranging", "bullish"}
    raw = {"ts": 1, "close": 1.0, "vol": "LOW", "ratio": 0.5, "hmm": "BULLISH", "p": None, "nav": 0, "idle": 0}
    point = HistoryPoint.model_validate({**raw, "score": 0})
    assert (point.vol, point.hmm) == ("low", "bullish")
    moved = Transition.model_validate({"kind": "hmm", "ts": 1, "from": "RANGING", "to": "BEARISH"})
    assert (moved.from_, moved.to) == ("ranging", "bearish")
    stats = Tuning.model_validate(
        {
            "flips": 0, "flips_per_day": None, "span_days": 0.0, "current": "BULLISH", "current_since_ts": 1,
            "bars": {"BULLISH": 3}, "mean_dwell_min": {"BULLISH": None}, "mean_forward_return": {"BULLISH": 0.1},
        }
    )
    dumped = stats.model_dump()
    assert dumped["current"] == "bullish"
    assert set(dumped["bars"]) == set(dumped["mean_dwell_min"]) == set(dumped["mean_forward_return"]) == {"bullish"}


def test_an_unknown_label_is_still_refused_in_either_case() -> None:
    snap = {**new_snapshot(KEY, "CORE"), "vol_regime": "PANIC"}
    with pytest.raises(ValueError, match="vol_regime"):
        SymbolSnapshot.model_validate(snap)


def test_compact_columns_are_the_fields_of_a_history_point() -> None:
    assert list(HistoryColumns.model_fields) == list(HistoryPoint.model_fields)


# --------------------------------------------------------------------------- filters and options


def test_tiers_are_the_configs_in_any_case_and_core_for_series_outside_the_universe() -> None:
    tiers = query.known_tiers(CONFIG)
    assert {"core", "satellite"} <= set(tiers)
    assert query.symbol_filter(None, None, "cOrE", None, tiers).tier == "core"
    assert query.symbol_filter(None, None, "SATELLITE", None, tiers).tier == "satellite"
    with pytest.raises(query.BadRequest, match="tier must be one of") as caught:
        query.symbol_filter(None, None, "nope", None, tiers)
    assert "CORE, Satellite" in str(caught.value)  # shown as the config writes them
    with pytest.raises(query.BadRequest):
        query.symbol_filter(None, None, "", None, tiers)  # ?tier= names no tier either


@pytest.mark.parametrize(
    ("vol", "hmm", "expected"),
    [("CRISIS", None, ("crisis", None)), (None, "Bullish", (None, "bullish")), ("low", "RANGING", ("low", "ranging"))],
)
def test_labels_match_in_any_case(vol: str | None, hmm: str | None, expected: tuple[Any, Any]) -> None:
    f = query.symbol_filter(vol, hmm, None, None, query.known_tiers(CONFIG))
    assert (f.vol_regime, f.hmm_regime) == expected


@pytest.mark.parametrize(("vol", "hmm"), [("bogus", None), (None, "sideways"), ("", None), (None, " bullish")])
def test_an_unknown_label_is_a_bad_request(vol: str | None, hmm: str | None) -> None:
    with pytest.raises(query.BadRequest, match="must be one of"):
        query.symbol_filter(vol, hmm, None, None, query.known_tiers(CONFIG))


def test_an_exchange_is_an_identifier_kept_exact() -> None:
    assert query.symbol_filter(None, None, None, "Kraken", {}).exchange == "Kraken"


def test_filters_match_rendered_and_stored_snapshots_alike() -> None:
    stored = {**new_snapshot(KEY, "CORE"), "vol_regime": "high", "hmm_regime": {"regime": "BEARISH"}}
    rendered = core.Rendered(b"", "high", "bearish", "CORE", "test")
    tiers = query.known_tiers(CONFIG)
    for f, hit in [
        (query.symbol_filter("HIGH", "bearish", "core", "test", tiers), True),
        (query.symbol_filter(None, "bullish", None, None, tiers), False),
        (query.symbol_filter(None, None, None, "TEST", tiers), False),
        (query.symbol_filter(None, None, "satellite", None, tiers), False),
    ]:
        assert core.matches(rendered, f) is hit
        assert (core.filtered([stored], f) == [stored]) is hit


def test_history_points_are_bounded_and_one_name_at_a_time() -> None:
    assert query.history_points(None, None, 600) == 600
    assert query.history_points(5, None, 600) == query.history_points(None, 5, 600) == query.history_points(5, 5, 600)
    assert query.history_points(0, None, 600) == 0
    assert query.history_points(1440, None, 600) == 1440
    for bad in (-1, 1441, 10**9):
        with pytest.raises(query.BadRequest, match="between 0 and 1440"):
            query.history_points(bad, None, 600)
    with pytest.raises(query.BadRequest, match="not both"):
        query.history_points(3, 4, 600)


def test_formats_timeframes_and_unknown_parameters() -> None:
    assert query.output_format(None) == "rows"
    assert query.output_format("COMPACT") == "compact"
    with pytest.raises(query.BadRequest, match="format must be one of"):
        query.output_format("xml")
    assert query.timeframe("5m") == "5m"
    assert query.timeframe(None) is None
    for bad in ("", "7x", "5M "):
        with pytest.raises(query.BadRequest, match="timeframe must be one of"):
            query.timeframe(bad)
    query.unknown_parameters(["tier"], {"tier", "exchange"})
    with pytest.raises(query.BadRequest, match="unknown query parameter volregime"):
        query.unknown_parameters(["volregime", "tier"], {"tier", "vol_regime"})


def test_compact_history_holds_the_same_values_as_rows() -> None:
    snap = json.dumps(new_snapshot(KEY, "CORE"))
    base = {"ts": 1, "close": 2.5, "vol": "low", "ratio": 0.4, "hmm": None, "p": None, "nav": 0.02, "idle": 0.4}
    later = {**base, "ts": 2, "hmm": "BULLISH", "p": [0.1, 0.2, 0.7], "score": -0.25}
    points = [json.dumps({**base, "score": 0.1}), json.dumps(later)]
    trans = [json.dumps({"kind": "hmm", "ts": 2, "from": "RANGING", "to": "BULLISH", "confidence": 0.3})]
    rows = core.detail(snap, points, trans, "{}")
    compact = core.detail(snap, points, trans, "{}", compact=True)
    assert rows is not None
    assert compact is not None
    r, c = json.loads(rows.data), json.loads(compact.data)
    assert c["snapshot"] == r["snapshot"]
    assert c["transitions"] == r["transitions"] == [
        {"kind": "hmm", "ts": 2, "from": "ranging", "to": "bullish", "ratio": None, "confidence": 0.3, "close": None}
    ]
    assert c["history"] == {f: [p[f] for p in r["history"]] for f in HistoryColumns.model_fields}
    assert c["history"]["hmm"] == [None, "bullish"]
    # The reference path (what the models reject goes through FastAPI) makes the same document.
    reference = core.COMPACT.validate_python(core.detail_dict(snap, points, trans, {}, compact=True))
    assert core.dump(core.COMPACT, reference) == compact.data


# --------------------------------------------------------------------------- readiness


def _snap(key: SeriesKey, last_ts: int | None, pipeline: dict[str, Any] | None = None) -> str:
    snap = new_snapshot(key, "CORE")
    if last_ts is not None:
        snap["price"] = {"close": 1.0, "ts": last_ts}
    snap["hmm_data_pipeline"] = pipeline
    return json.dumps(snap)


def test_readiness_covers_the_universe_and_reports_the_rest_apart() -> None:
    now = 1_800_000_000_000
    fresh, old = SeriesKey("x", "A/USD", "1m"), SeriesKey("x", "B/USD", "1m")
    imported, silent = SeriesKey("x", "IMP/USD", "1m"), SeriesKey("x", "NEW/USD", "1m")
    known = [
        readiness.freshness(_snap(fresh, now - 120_000)),  # closed 60 s ago
        readiness.freshness(_snap(old, now - 13 * 60_000)),
        readiness.freshness(_snap(imported, now - 13 * 60_000)),  # the 13 minutes /readyz used to miss
    ]
    universe = [old.id, fresh.id, silent.id]  # silent: in the universe, nothing stored yet
    result = readiness.stale([k for k in known if k], universe, now)
    assert result.universe == [old.id, silent.id]
    assert result.other == [imported.id]


def test_a_pipeline_report_ages_from_when_it_was_made() -> None:
    """A stored freshness_ok stays true for good once ingest stops reporting; the age keeps growing here."""
    now = 1_800_000_000_000
    key = SeriesKey("x", "A/USD", "1m")
    report = {"last_ts": now - 10_000_000, "freshness_sec": 30.0, "freshness_limit_sec": 180.0, "reported_at": now}
    f = readiness.freshness(_snap(key, now - 10_000_000, report))  # the demo: candles dated behind the wall clock
    assert f is not None
    assert f.age_sec(now) == 30.0
    assert not f.stale(now + 100_000)
    assert f.stale(now + 200_000)  # 230 s since the close, no report since


@pytest.mark.parametrize(("timeframe", "limit"), [("1m", 180.0), ("5m", 900.0), ("1h", 10_800.0)])
def test_without_a_report_the_limit_is_ingests(timeframe: str, limit: float) -> None:
    f = readiness.freshness(_snap(SeriesKey("x", "A/USD", timeframe), 1))
    assert f is not None
    assert f.limit_sec == limit


@pytest.mark.parametrize("raw", ["{not json", "[]", '{"series": "x"}', json.dumps({"series": "a", "timeframe": "7x"})])
def test_an_unreadable_snapshot_is_left_out(raw: str) -> None:
    assert readiness.freshness(raw) is None


# --------------------------------------------------------------------------- the live fan-out


async def test_one_notice_reaches_every_client_and_the_cap_holds() -> None:
    counts: list[int] = []
    fanout = Fanout(3, counts.append)
    clients = [fanout.join() for _ in range(3)]
    assert fanout.join() is None
    assert all(c is not None for c in clients)
    fanout.publish('{"series": ["a"]}')
    for c in clients:
        assert c is not None
        assert await c.next(1) == ("change", '{"series": ["a"]}')
        assert await c.next(0.01) is None
    first = clients[0]
    assert first is not None
    fanout.leave(first)
    assert fanout.join() is not None
    assert counts == [1, 2, 3, 2, 3]


async def test_a_client_that_falls_behind_is_told_to_refetch_instead_of_growing() -> None:
    fanout = Fanout(1)
    client = fanout.join()
    assert client is not None
    for i in range(QUEUE_MAX * 3):
        fanout.publish(str(i))
    got = [await client.next(0.01) for _ in range(QUEUE_MAX + 1)]
    assert HELLO in got
    assert got[-1] is None  # nothing kept beyond the queue
    fanout.close_all()
    assert await client.next(1) == ("", "")


# --------------------------------------------------------------------------- headers, token, bodies


def test_every_response_gets_the_security_headers_and_docs_their_own_policy() -> None:
    page = dict(edge.security_headers("/", {"/docs"}))
    assert page[b"x-frame-options"] == b"DENY"
    assert page[b"x-content-type-options"] == b"nosniff"
    assert page[b"referrer-policy"] == b"no-referrer"
    csp = page[b"content-security-policy"].decode()
    assert "script-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert "style-src-elem 'self';" in csp
    docs = dict(edge.security_headers("/docs", {"/docs"}))[b"content-security-policy"].decode()
    assert "script-src 'self' 'unsafe-inline';" in docs  # Swagger UI's one inline script, its files served here
    assert "http" not in docs  # no other host
    assert "frame-ancestors 'none'" in docs


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 9110)
        (f"  Bearer   {TOKEN}  ", True),
        (TOKEN, False),  # a bare token
        (f"Bearer{TOKEN}", False),
        (f"Token {TOKEN}", False),
        (f"Basic {TOKEN}", False),
        ("Bearer", False),
        ("Bearer ", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (f"Bearer {TOKEN} {TOKEN}", False),
        ("Bearer ünïcode", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_bearer_token_passes(header: str | None, ok: bool) -> None:
    assert edge.bearer_ok(header, TOKEN) is ok


def test_a_request_is_judged_from_its_headers_before_its_body() -> None:
    ops = {"/api/backfill"}
    good = {"authorization": f"Bearer {TOKEN}"}
    assert edge.admit("/api/backfill", {**good, "content-length": "100"}, TOKEN, 1024, ops) is None
    no_token = edge.admit("/api/backfill", {"content-length": str(100 << 20)}, TOKEN, 1024, ops)
    assert no_token is not None
    assert no_token.status == 401  # the token first: a 100 MB body without it is never read
    assert ("www-authenticate", 'Bearer realm="regimes"') in no_token.headers
    bare = edge.admit("/api/backfill", {"authorization": TOKEN}, TOKEN, 1024, ops)
    assert bare is not None
    assert bare.status == 401
    disabled = edge.admit("/api/backfill", good, None, 1024, ops)
    assert disabled is not None
    assert disabled.status == 403
    big = edge.admit("/api/backfill", {**good, "content-length": "1025"}, TOKEN, 1024, ops)
    assert big is not None
    assert big.status == 413
    assert edge.admit("/api/symbols", {"content-length": "1024"}, TOKEN, 1024, ops) is None
    other = edge.admit("/api/symbols", {"content-length": "1025"}, TOKEN, 1024, ops)
    assert other is not None
    assert other.status == 413
    odd = edge.admit("/api/symbols", {"content-length": "-5"}, TOKEN, 1024, ops)
    assert odd is not None
    assert odd.status == 400


def test_metrics_label_a_request_with_its_route_template_never_its_path() -> None:
    async def endpoint(_request: Any) -> None: ...

    routes = [Route("/api/symbols/{exchange}/{symbol:path}", endpoint), Mount("/static", routes=[])]

    def scope(path: str) -> dict[str, Any]:
        return {"type": "http", "path": path, "method": "GET", "root_path": "", "headers": []}

    assert edge.route_label(scope("/api/symbols/kraken/BTC-USD"), routes) == "/api/symbols/{exchange}/{symbol:path}"
    assert edge.route_label(scope("/static/app.js"), routes) == "/static"
    assert edge.route_label(scope(f"/x{time.time()}"), routes) == edge.UNMATCHED
    routed = {**scope("/whatever"), "route": routes[0]}
    assert edge.route_label(routed, routes) == "/api/symbols/{exchange}/{symbol:path}"


async def nothing_sent(message: Message) -> None:
    raise AssertionError(f"the guard sent {message!r}")


async def nothing_received() -> Message:
    raise AssertionError("the guard read the body")


async def test_a_chunked_body_is_stopped_once_it_passes_the_limit() -> None:
    seen: list[int] = []

    async def app(_scope: Any, receive: Any, _send: Any) -> None:
        while True:
            message = await receive()
            seen.append(len(message["body"]))
            if not message.get("more_body"):
                return

    chunks = iter([b"x" * 600, b"x" * 600, b"x" * 600])

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    guard = edge.BodyGuard(app, TOKEN, 1000)
    with pytest.raises(Exception, match="over 1000 bytes") as caught:
        await guard({"type": "http", "path": "/api/symbols", "headers": []}, receive, nothing_sent)
    assert getattr(caught.value, "status_code", None) == 413
    assert seen == [600]  # the second chunk never reached the app


async def test_behind_a_proxy_prefix_the_operator_path_is_still_guarded() -> None:
    sent: list[Message] = []
    reached: list[str] = []

    async def app(scope: Any, _receive: Any, _send: Any) -> None:
        reached.append(scope["path"])

    async def send(message: Message) -> None:
        sent.append(message)

    guard = edge.BodyGuard(app, TOKEN, 1000)
    scope = {"type": "http", "path": "/regimes/api/backfill", "root_path": "/regimes", "headers": []}
    await guard(scope, nothing_received, send)
    assert reached == []
    assert sent[0]["status"] == 401
