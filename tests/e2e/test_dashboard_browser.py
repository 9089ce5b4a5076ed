"""The dashboard in headless Chromium, against the real API over a stack each test starts.

Regimes are constructed by publishing verdicts into the REGIMES stream (or,
for the live test, candles through vol_regime and the screener); the page is
then read the way an operator reads it. Screenshots of every view, at desktop
and phone width, land in artifacts/screenshots/.
"""

from __future__ import annotations

import colorsys
import itertools
import re
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import msgspec
import numpy as np
import pytest

from shared.domain.contracts import DecisionConsensus
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import (
    DEPTH_DEEP_CANDLES,
    DEPTH_MODERATE_CANDLES,
    DEPTH_TIERS,
    HMM_LABELS,
    HYBRID_COMPONENTS,
    TIERS,
    VOL_LABELS,
)
from tests.e2e.conftest import DESKTOP, PHONE, OpenDashboard, api_get, api_up, dashboard_stack, publish_events
from tests.factories import (
    RATIO,
    VOL_LONG,
    Bar,
    candles_from_returns,
    decision,
    hmm_event,
    hmm_verdict,
    pipeline_status,
    recent_start,
    regime_events,
    regime_returns,
    stretch,
    vol_event,
)
from tests.harness import StackFactory, eventually, small_config

if TYPE_CHECKING:
    from playwright.async_api import Page

pw = pytest.importorskip(
    "playwright.async_api", reason="browser tests need Python Playwright (pip install -e '.[dev]')"
)
expect = pw.expect
expect.set_options(timeout=10_000)

LETTER = {"low": "L", "normal": "N", "high": "H", "crisis": "C"}
COLOUR = {"low": "blue", "normal": "grey-green", "high": "orange", "crisis": "red"}


def key(symbol: str) -> SeriesKey:
    return SeriesKey("test", symbol, "1m")


def colour_name(css: str) -> str:
    """Name a CSS rgb()/rgba() colour the way the seed does: blue, grey-green, orange, red."""
    r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    hue, _light, sat = colorsys.rgb_to_hls(r, g, b)
    deg = hue * 360
    if sat < 0.06:
        return "grey"
    if deg < 15 or deg >= 345:
        return "red"
    if deg < 45:
        return "orange"
    if 75 <= deg < 170:
        return "grey-green" if sat < 0.4 else "green"
    if 190 <= deg < 250:
        return "blue"
    return f"other ({deg:.0f} deg)"


def vol_pct(v: float) -> str:
    """Volatility as the page writes it: a percentage with three significant digits."""
    x = abs(v * 100)
    digits = 2 if x == 0 else 1 if x >= 10 else 2 if x >= 1 else 3 if x >= 0.1 else 4
    return f"{v * 100:.{digits}f}%"


def signed(v: float, digits: int = 2) -> str:
    text = f"{abs(v):.{digits}f}"
    return text if float(text) == 0 else ("+" if v > 0 else "\u2212") + text


def page_label(api_label: str) -> str:
    """The API writes every label in lower case; the page keeps the HMM ones in upper case (static/labels.js)."""
    return api_label.upper() if api_label.upper() in HMM_LABELS else api_label


def events_for(config: Any, scenario: dict[SeriesKey, list[Bar]], seed: int = 1) -> list[Any]:
    start = recent_start(max(len(bars) for bars in scenario.values()))
    events: list[Any] = []
    for i, (k, bars) in enumerate(scenario.items()):
        events += regime_events(config, k, bars, start, price=100.0 * (i + 1), seed=seed + i)
    return events


# --------------------------------------------------------------------------- a constructed market

BTC, ETH, SOL, XRP, ADA, DOGE = (key(s) for s in ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOGE/USD"))
MARKET_UNIVERSE = [
    ("BTC/USD", "CORE"),
    ("ETH/USD", "CORE"),
    ("SOL/USD", "SATELLITE"),
    ("XRP/USD", "SATELLITE"),
    ("ADA/USD", "TACTICAL"),
    ("DOGE/USD", "TACTICAL"),
]
# Each series ends in a known pair of regimes; BTC has a history with every vol regime in it.
BTC_BARS = [
    *stretch(40, "normal", "RANGING", 0.3),
    *stretch(30, "low", "BULLISH", 0.7),
    *stretch(25, "high", "BULLISH", 0.5),
    *stretch(25, "crisis", "BEARISH", 0.8),
    *stretch(30, "normal", "RANGING", 0.35),
    *stretch(30, "low", "BULLISH", 0.8),
]
MARKET = {
    BTC: BTC_BARS,
    ETH: [
        *stretch(60, "normal", "BULLISH", 0.4),
        *stretch(40, "high", "BEARISH", 0.6),
        *stretch(20, "crisis", "BEARISH"),
    ],
    SOL: [*stretch(80, "normal", "RANGING", 0.5), *stretch(40, "crisis", "BEARISH", 0.5)],
    XRP: [*stretch(70, "low", "RANGING", 0.3), *stretch(50, "normal", "BULLISH", 0.55)],
    ADA: [*stretch(90, "normal", "BEARISH", 0.3), *stretch(30, "high", "RANGING", 0.45)],
    DOGE: stretch(120, "normal", "RANGING", 0.0, trained=False),
}
FINAL_VOL = {BTC: "low", ETH: "crisis", SOL: "crisis", XRP: "normal", ADA: "high", DOGE: "normal"}
FINAL_HMM = {BTC: "BULLISH", ETH: "BEARISH", SOL: "BEARISH", XRP: "BULLISH", ADA: "RANGING", DOGE: None}


async def constructed_market(make_stack: StackFactory) -> Any:
    st = await dashboard_stack(make_stack, MARKET_UNIVERSE)
    events = events_for(st.config, MARKET)
    last_ts = max(e.ts for e in events)
    stale = {"freshness_sec": 420.0, "freshness_ok": False, "last_error": "gateway timeout (504)"}
    for i, k in enumerate(MARKET):
        events.append(pipeline_status(4_000 + 500 * i, key=k, last_ts=last_ts, **(stale if k == ADA else {})))
    await publish_events(st, events)
    return st


# --------------------------------------------------------------------------- overview


async def test_badges_show_letter_and_colour_per_regime(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    universe = [("LOW/USD", "CORE"), ("NRM/USD", "CORE"), ("HGH/USD", "SATELLITE"), ("CRI/USD", "SATELLITE")]
    final = {key("LOW/USD"): "low", key("NRM/USD"): "normal", key("HGH/USD"): "high", key("CRI/USD"): "crisis"}
    st = await dashboard_stack(make_stack, universe)
    await publish_events(st, events_for(st.config, {k: stretch(6, "normal") + stretch(4, v) for k, v in final.items()}))
    dash = await open_dashboard(st)

    for k, label in final.items():
        badge = dash.cell(k, "vol").get_by_test_id("vol-badge")
        await expect(badge).to_have_text(LETTER[label])
        await expect(badge).to_have_attribute("data-regime", label)
        background = await badge.evaluate("el => getComputedStyle(el).backgroundColor")
        assert colour_name(background) == COLOUR[label], f"{label} badge is {background}"
        vol = (await st.snapshot(k))["vol"]
        tip = await badge.get_attribute("data-tip") or ""
        assert f"ratio {vol['ratio']:.2f}" in tip
        assert f"short {vol_pct(vol['short'])}" in tip
        assert f"long {vol_pct(vol['long'])}" in tip

    crisis = dash.cell(key("CRI/USD"), "vol").get_by_test_id("vol-badge")
    await crisis.hover()
    await expect(dash.page.locator("#tip")).to_be_visible()
    await expect(dash.page.locator("#tip")).to_contain_text("ratio")
    await dash.screenshot("badges-desktop")
    dash.assert_console_clean()


async def test_summary_charts_count_symbols_per_regime(make_stack: StackFactory, open_dashboard: OpenDashboard) -> None:
    st = await constructed_market(make_stack)
    dash = await open_dashboard(st)
    summary = await api_get(st, "/api/summary")
    vol_counts = {label: list(FINAL_VOL.values()).count(label) for label in VOL_LABELS}
    hmm_counts = {label: list(FINAL_HMM.values()).count(label) for label in HMM_LABELS}
    assert summary["vol_regime_summary"] == vol_counts
    assert summary["hmm_regime_summary"] == {label.lower(): n for label, n in hmm_counts.items()}  # the API's case

    for label, n in vol_counts.items():
        bar = dash.page.locator(f'[data-testid="vol-summary-bar"][data-regime="{label}"]')
        await expect(bar).to_have_attribute("data-count", str(n))
        await expect(bar.get_by_test_id("bar-count")).to_have_text(str(n))
    for label, n in {**hmm_counts, "untrained": 1, "none": 0}.items():
        bar = dash.page.locator(f'[data-testid="hmm-summary-bar"][data-regime="{label}"]')
        await expect(bar).to_have_attribute("data-count", str(n))
    await dash.screenshot("overview-desktop")

    phone = await open_dashboard(st, viewport=PHONE)
    await expect(phone.page.locator('[data-testid="vol-summary-bar"][data-regime="crisis"]')).to_have_attribute(
        "data-count", str(vol_counts["crisis"])
    )
    columns = await phone.page.evaluate(
        "() => [...document.querySelectorAll('.ov-top > .card')].map(c => Math.round(c.getBoundingClientRect().left))"
    )
    assert len(set(columns)) == 1, f"phone width should stack the overview in one column, lefts: {columns}"
    width = await phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "nothing on the phone overview may scroll sideways"
    await phone.screenshot("overview-phone")
    dash.assert_console_clean()
    phone.assert_console_clean()


async def test_table_filters_by_regime_and_tier_and_sorts(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    dash = await open_dashboard(st)
    rows = dash.page.get_by_test_id("row")
    await expect(rows).to_have_count(len(MARKET))

    await dash.page.get_by_test_id("filter-vol").select_option("crisis")
    await expect(rows).to_have_count(2)
    await expect(rows.get_by_test_id("vol-badge")).to_have_text(["C", "C"])
    await dash.page.get_by_test_id("filter-hmm").select_option("BEARISH")
    await expect(rows).to_have_count(2)
    await dash.page.get_by_test_id("filter-tier").select_option("CORE")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-series", ETH.id)
    await dash.page.locator("#f-clear").click()
    await expect(rows).to_have_count(len(MARKET))

    # Clicking a bar of the summary chart filters by that regime.
    await dash.page.locator('[data-testid="hmm-summary-bar"][data-regime="untrained"]').click()
    await expect(rows).to_have_count(1)
    await expect(rows.first.get_by_test_id("hmm-status")).to_have_text("untrained")
    await dash.page.locator("#f-clear").click()

    await dash.page.locator('th[data-sort="vol"] button').click()  # most volatile first
    by_id = {k.id: k for k in MARKET}
    order = [await r.get_attribute("data-series") for r in await rows.all()]
    ranks = [VOL_LABELS.index(FINAL_VOL[by_id[s or ""]]) for s in order]
    assert ranks == sorted(ranks, reverse=True), order
    await dash.page.locator('th[data-sort="vol"] button').click()
    first = await rows.first.get_attribute("data-series")
    assert first == BTC.id, "ascending: the one low-vol series first"
    dash.assert_console_clean()


# --------------------------------------------------------------------------- live


async def test_a_new_candle_that_changes_the_regime_updates_the_page_without_reload(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    live, calm = key("LIV/USD"), key("CLM/USD")
    st = await dashboard_stack(
        make_stack, [("LIV/USD", "CORE"), ("CLM/USD", "CORE")], "vol_regime", "screener", hmm=False
    )
    rng = np.random.default_rng(3)
    returns = regime_returns("crisis", rng)  # 40 calm returns, then 4 wild ones
    candles = candles_from_returns(live, returns, start_ts=recent_start(len(returns) + 1))
    quiet, storm = candles[:-4], candles[-4:]
    await st.publish(quiet)
    await st.publish(candles_from_returns(calm, regime_returns("normal", rng), start_ts=recent_start(45)))

    overview = await open_dashboard(st)
    symbol = await open_dashboard(st, "/#/symbol/test/LIV-USD/1m")
    overview_badge = overview.cell(live, "vol").get_by_test_id("vol-badge")
    symbol_badge = symbol.page.get_by_test_id("symbol-vol").get_by_test_id("vol-badge")
    await expect(overview_badge).to_have_text("N")
    await expect(symbol_badge).to_have_text("N")
    await expect(symbol.page.get_by_test_id("price-chart")).to_be_visible()
    for dash in (overview, symbol):
        await dash.mark_loaded()

    await st.publish(storm)

    await expect(overview_badge).to_have_text("C")
    await expect(overview.cell(live, "sizing")).to_have_text("×0.50")
    await expect(overview.cell(live, "nav")).to_have_text("1.00%")
    await expect(symbol_badge).to_have_text("C")
    transition = symbol.page.locator('[data-testid="transition"][data-kind="vol"]').first
    await expect(transition).to_have_attribute("data-to", "crisis")
    await expect(symbol.page.locator('[data-testid="band"][data-regime="crisis"]')).to_have_count(1)
    await expect(overview.page.locator('[data-testid="vol-summary-bar"][data-regime="crisis"]')).to_have_attribute(
        "data-count", "1"
    )
    for dash in (overview, symbol):
        assert await dash.never_reloaded(), "the page must update in place, not reload"
        await expect(dash.page.get_by_test_id("live-status")).to_have_attribute("data-state", "live")
        dash.assert_console_clean()


async def test_an_idle_page_sends_no_requests_while_its_clock_moves_on(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    k = key("IDL/USD")
    st = await dashboard_stack(make_stack, [("IDL/USD", "CORE")])
    await publish_events(st, events_for(st.config, {k: stretch(5, "normal")}))
    dash = await open_dashboard(st)
    fresh = dash.cell(k, "fresh")
    await expect(fresh).not_to_have_text("—")
    await expect(dash.page.get_by_test_id("live-status")).to_have_attribute("data-state", "live")
    sent: list[str] = []
    dash.page.on("request", lambda request: sent.append(request.url))
    # The header's "updated … ago" counts from the publisher's write a moment ago, so it moves each
    # second; the Fresh cell counts from the bar's close, which may be a minute old on a slow run
    # and then moves only once a minute. Both are the page's own clock.
    updated = dash.page.get_by_test_id("last-update").locator("[data-age]")
    for _ in range(2):  # two ticks of the page's own clock
        await expect(updated).not_to_have_text(await updated.inner_text())
    await expect(fresh).to_have_text(re.compile(r"\d+ (s|min)"))
    assert sent == [], f"nothing changed, so nothing may be fetched: {sent}"
    dash.assert_console_clean()


async def test_page_recovers_by_itself_after_the_api_restarts(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    k = key("RST/USD")
    st = await dashboard_stack(make_stack, [("RST/USD", "CORE")])
    await publish_events(st, events_for(st.config, {k: stretch(10, "normal", "RANGING")}))
    dash = await open_dashboard(st)
    badge = dash.cell(k, "vol").get_by_test_id("vol-badge")
    await expect(badge).to_have_text("N")
    await dash.mark_loaded()
    status = dash.page.get_by_test_id("live-status")

    assert await st.stop("dashboard_api") == 0
    await expect(status).to_have_attribute("data-state", "reconnecting")
    await st.start("dashboard_api")
    await api_up(st)
    await expect(status).to_have_attribute("data-state", "live", timeout=15_000)

    snap = await st.snapshot(k)
    assert snap is not None
    at, ratio = snap["vol"]["ts"] + 60_000, RATIO["crisis"]
    crisis = vol_event(label="crisis", prev="normal", key=k, ts=at, close=101.0, ratio=ratio, vol_long=VOL_LONG)
    await publish_events(st, [crisis])
    await expect(badge).to_have_text("C")
    assert await dash.never_reloaded()
    # While the API was down the browser logged its failed reconnects (and the page a refresh that
    # could not reach the API, if one was due); nothing else may appear.
    dash.assert_console_clean(
        expected=lambda text: bool(re.search(r"ERR_CONNECTION_REFUSED|api/stream|refresh failed", text))
    )


# --------------------------------------------------------------------------- missing data


async def test_missing_fields_render_a_dash_and_missing_hmm_says_so(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    empty, vol_only, untrained = key("NIL/USD"), key("VOL/USD"), key("UNT/USD")
    universe = [("NIL/USD", "CORE"), ("VOL/USD", "SATELLITE"), ("UNT/USD", "CORE")]
    st = await dashboard_stack(make_stack, universe)
    start = recent_start(8)
    # A vol verdict and nothing else.
    events = [vol_event(label="high", key=vol_only, ts=start, close=50.0, ratio=RATIO["high"], vol_long=VOL_LONG)]
    events += regime_events(st.config, untrained, stretch(8, "normal", "RANGING", trained=False), start)
    await publish_events(st, events)
    dash = await open_dashboard(st)

    for name in ("vol", "ratio", "confidence", "bias", "sizing", "nav", "score", "fresh"):
        await expect(dash.cell(empty, name)).to_have_text("—")
    await expect(dash.cell(empty, "hmm").get_by_test_id("hmm-status")).to_have_text("no HMM yet")
    await expect(dash.cell(vol_only, "vol").get_by_test_id("vol-badge")).to_have_text("H")
    for name in ("confidence", "bias", "sizing", "nav", "score"):
        await expect(dash.cell(vol_only, name)).to_have_text("—")
    await expect(dash.cell(untrained, "hmm").get_by_test_id("hmm-status")).to_have_text("untrained")
    await expect(dash.cell(untrained, "confidence")).to_have_text("—")
    await expect(dash.cell(untrained, "nav")).to_have_text("2.00%")
    await expect(dash.cell(untrained, "hmm").get_by_test_id("prob-bar")).to_have_count(0)
    await expect(dash.page.locator('[data-testid="hmm-summary-bar"][data-regime="untrained"]')).to_have_attribute(
        "data-count", "1"
    )
    await expect(dash.page.get_by_test_id("market-state")).to_have_text("No trained HMM yet")
    await dash.screenshot("missing-overview-desktop")

    await dash.mark_loaded()
    await dash.row(empty).get_by_test_id("symbol-link").click()
    view = dash.page.get_by_test_id("symbol-view")
    await expect(view.get_by_test_id("symbol-title")).to_have_text("NIL/USD")
    await expect(view.get_by_test_id("no-history")).to_be_visible()
    await expect(view.get_by_test_id("hmm-missing")).to_contain_text("No HMM verdict yet")
    for name in ("vol-short", "vol-long", "vol-ratio", "sizing-mult", "effective-nav", "hybrid-score", "grid-mode"):
        await expect(view.get_by_test_id(name).locator(".v")).to_have_text("—")
    await expect(view.get_by_test_id("symbol-price")).to_have_text("—")
    await expect(view.get_by_test_id("symbol-organism").get_by_test_id("organism")).to_have_attribute(
        "data-status", "none"
    )
    await dash.screenshot("missing-symbol-desktop")

    await dash.page.evaluate("location.hash = '#/symbol/test/UNT-USD/1m'")
    await expect(view.get_by_test_id("hmm-missing")).to_contain_text("not trained")
    await expect(view.get_by_test_id("price-chart")).to_be_visible()
    await expect(view.get_by_test_id("no-probabilities")).to_be_visible()

    await dash.page.evaluate("location.hash = '#/advanced'")
    await expect(dash.page.get_by_test_id("pipeline-row")).to_have_count(3)
    source = dash.page.locator(f'[data-testid="pipeline-row"][data-series="{empty.id}"] td').nth(1)
    await expect(source).to_have_text("—")
    assert await dash.never_reloaded()
    dash.assert_console_clean()


# --------------------------------------------------------------------------- symbol view, advanced, organism


async def test_symbol_view_draws_regime_history_probabilities_and_transitions(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    detail = await api_get(st, "/api/symbols/test/BTC-USD?timeframe=1m")
    dash = await open_dashboard(st, "/#/symbol/test/BTC-USD/1m")
    view = dash.page.get_by_test_id("symbol-view")
    await expect(view.get_by_test_id("symbol-title")).to_have_text("BTC/USD")
    await expect(view.get_by_test_id("symbol-vol").get_by_test_id("vol-badge")).to_have_text("L")
    await expect(view.get_by_test_id("symbol-hmm")).to_have_text("Bullish")

    history = detail["history"]
    vol_runs = [p["vol"] for i, p in enumerate(history) if i == 0 or history[i - 1]["vol"] != p["vol"]]
    bands = view.locator('[data-testid="band"][data-kind="vol"]')
    await expect(bands).to_have_count(len(vol_runs))
    assert [await b.get_attribute("data-regime") for b in await bands.all()] == vol_runs
    thresholds = {await b.get_attribute("data-value") for b in await view.get_by_test_id("threshold").all()}
    assert thresholds == {"0.6", "1.2", "1.8"}
    await expect(view.locator('[data-testid="prob-area"][data-regime="BULLISH"]')).to_have_count(1)

    await view.locator('button[data-bands="hmm"]').click()
    hmm_bands = view.locator('[data-testid="band"][data-kind="hmm"]')
    await expect(hmm_bands.last).to_have_attribute("data-regime", page_label(history[-1]["hmm"]))

    transitions = view.get_by_test_id("transition")
    await expect(transitions).to_have_count(len(detail["transitions"]))
    newest = detail["transitions"][0]
    await expect(transitions.first).to_have_attribute("data-to", page_label(newest["to"]))
    await expect(transitions.first).to_have_attribute("data-kind", newest["kind"])

    screener = detail["snapshot"]["screener"]
    widths = (
        await view.get_by_test_id("weights-stack")
        .locator("i")
        .evaluate_all("els => els.map(e => parseFloat(e.style.width))")
    )
    assert sum(widths) == pytest.approx(100.0, abs=0.1)
    idle = f"{screener['dynamic_idle_target'] * 100:.1f}%"
    await expect(view.get_by_test_id("idle-target").locator(".v")).to_have_text(idle)
    await expect(view.get_by_test_id("hybrid-score")).to_contain_text(signed(screener["hybrid_score"]))
    await expect(view.get_by_test_id("grid-mode").locator(".v")).to_contain_text(
        {"symmetric": "Symmetric", "long_bias": "Long bias", "short_bias": "Short bias"}[screener["grid_bias"]["mode"]]
    )

    # The cursor on one chart reads out that bar across all of them.
    chart = view.get_by_test_id("price-chart").locator("rect.hit")
    box = await chart.bounding_box()
    assert box is not None
    await dash.page.mouse.move(box["x"] + 3, box["y"] + box["height"] / 2)
    await expect(view.get_by_test_id("chart-readout")).to_contain_text("at ")
    await dash.page.mouse.move(0, 0)
    await dash.screenshot("symbol-desktop")

    phone = await open_dashboard(st, "/#/symbol/test/BTC-USD/1m", viewport=PHONE)
    await expect(phone.page.get_by_test_id("price-chart")).to_be_visible()
    width = await phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the symbol view must fit a phone without sideways scrolling"
    await phone.screenshot("symbol-phone")
    dash.assert_console_clean()
    phone.assert_console_clean()


async def test_training_depth_and_a_pending_vol_label_show_on_the_symbol_view_and_in_the_overview(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    before = (await api_get(st, "/api/symbols/test/BTC-USD?timeframe=1m"))["snapshot"]
    at = max(before["vol"]["ts"], before["hmm_regime"]["ts"]) + 60_000
    # A model of moderate depth, and a vol ratio that left "low" but has not led long enough to be the regime.
    hmm = msgspec.structs.replace(
        hmm_verdict([0.1, 0.2, 0.7], key=BTC, ts=at), depth_tier="moderate", training_candles=1500, label_agreement=0.9
    )
    vol = vol_event(label="low", prev="low", key=BTC, ts=at, ratio=0.65, vol_long=VOL_LONG,
                    raw_label="normal", pending_label="normal")
    await publish_events(st, [vol, hmm])
    rule = f"shallow < {DEPTH_MODERATE_CANDLES:,} \u2264 moderate < {DEPTH_DEEP_CANDLES:,} \u2264 deep"

    dash = await open_dashboard(st, "/#/symbol/test/BTC-USD/1m")
    view = dash.page.get_by_test_id("symbol-view")
    depth = view.get_by_test_id("hmm-depth").get_by_test_id("depth-tier")
    await expect(depth).to_have_text("moderate")
    tip = await depth.get_attribute("data-tip") or ""
    assert "1,500 training candles" in tip
    assert rule in tip
    await expect(view.get_by_test_id("vol-raw")).to_contain_text("normal")
    pending = view.get_by_test_id("vol-pending")
    await expect(pending).to_contain_text("normal")
    await expect(pending).to_contain_text(f"awaiting confirmation ({st.config.vol.confirm_bars} bars in a row)")
    await expect(view.get_by_test_id("symbol-vol").get_by_test_id("vol-badge")).to_have_text("L")  # still confirmed low
    await dash.screenshot("symbol-depth-desktop")

    overview = await open_dashboard(st)
    badge = overview.cell(BTC, "confidence").get_by_test_id("depth-tier")
    await expect(badge).to_have_text("M")
    await expect(badge).to_have_attribute("data-tier", "moderate")
    assert rule in (await badge.get_attribute("data-tip") or "")
    await expect(overview.cell(DOGE, "confidence").get_by_test_id("depth-tier")).to_have_count(0)  # untrained
    dash.assert_console_clean()
    overview.assert_console_clean()


async def test_symbol_view_shows_the_consensus_across_timeframes_and_the_api_serves_it(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    universe = [{"exchange": "test", "symbol": "BTC/USD", "timeframe": "1m", "tier": "CORE", "aggregate": ["15m"]}]
    st = await make_stack(small_config([], universe=universe, consensus={"enabled": True, "weights": {"1m": 3}}))
    for service in ("state_publisher", "dashboard_api"):
        await st.start(service)
    await api_up(st)
    start = recent_start(30) // 900_000 * 900_000
    fast, slow = key("BTC/USD"), SeriesKey("test", "BTC/USD", "15m")
    await publish_events(
        st,
        [
            hmm_event(1, "BULLISH", (0.1, 0.2, 0.7), key=fast, ts=start + 60_000),
            hmm_event(1, "BEARISH", (0.7, 0.2, 0.1), key=slow, ts=start),
        ],
    )
    agreed = await api_get(st, "/api/consensus/test/BTC-USD")
    assert (agreed["regime"], agreed["dissenting"], agreed["voting"]) == ("bullish", ["15m"], ["1m", "15m"])
    assert agreed["agreement"] == pytest.approx(0.75)
    assert agreed["bias"] == pytest.approx(0.3)
    assert (await api_get(st, "/api/symbols/test/BTC-USD?timeframe=1m"))["consensus"] == agreed
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=5) as http:
        missing = await http.get("/api/consensus/test/ETH-USD")
    assert missing.status_code == 404
    assert "no consensus" in missing.json()["detail"]

    dash = await open_dashboard(st, "/#/symbol/test/BTC-USD/1m")
    card = dash.page.get_by_test_id("consensus-card")
    await expect(card.get_by_test_id("consensus-regime")).to_contain_text("Bullish")
    await expect(card.get_by_test_id("consensus-agreement").locator(".v")).to_have_text("75%")
    await expect(card.get_by_test_id("consensus-bias")).to_contain_text(signed(0.3))
    await expect(card.get_by_test_id("consensus-dissenting").locator(".v")).to_have_text("15m")
    await dash.screenshot("consensus-desktop")
    await dash.mark_loaded()

    # Only the 15m series changes: the 1m view follows, its consensus being the symbol's.
    await publish_events(st, [hmm_event(2, "BULLISH", (0.1, 0.2, 0.7), key=slow, ts=start + 900_000)])
    await expect(card.get_by_test_id("consensus-dissenting").locator(".v")).to_have_text("none")
    await expect(card.get_by_test_id("consensus-agreement").locator(".v")).to_have_text("100%")

    # A decision made on the consensus (consensus.screener) says so where it shows the bias it used.
    source = dash.page.get_by_test_id("bias-source").locator(".v")
    await publish_events(st, [decision(2, key=fast, ts=start + 120_000, hmm_regime="BULLISH", hmm_bias=0.4)])
    await expect(source).to_have_text("this timeframe")
    agreed_on = DecisionConsensus(
        regime="BULLISH", agreement=0.75, bias=0.3, confidence=0.4, voting=("1m", "15m"), dissenting=("15m",),
        untrained=(), absent=(), as_of={"1m": start + 180_000, "15m": start},
    )
    await publish_events(
        st, [decision(3, key=fast, ts=start + 180_000, hmm_regime="BULLISH", hmm_bias=0.3, consensus=agreed_on)]
    )
    await expect(source).to_have_text("consensus of 1m + 15m (bullish, agreement 75%)")
    served = (await api_get(st, "/api/symbols/test/BTC-USD?timeframe=1m"))["snapshot"]["screener"]["consensus"]
    assert (served["regime"], served["voting"], served["absent"]) == ("bullish", ["1m", "15m"], [])
    assert await dash.never_reloaded()
    dash.assert_console_clean()


async def test_advanced_tab_shows_vol_regimes_weights_tuning_and_pipeline(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    summary = await api_get(st, "/api/summary")
    snaps = await api_get(st, "/api/symbols")
    dash = await open_dashboard(st, "/#/advanced")
    block = dash.page.get_by_test_id("vol-regimes-block")
    await expect(block.locator("h2")).to_have_text("Vol Regimes")
    for label in VOL_LABELS:
        row = block.locator(f'[data-testid="vol-regime-row"][data-regime="{label}"]')
        await expect(row.get_by_test_id("vol-regime-count")).to_have_text(str(summary["vol_regime_summary"][label]))
        avg = summary["vol_regime_avg_vol_short"][label]
        text = await row.get_by_test_id("vol-regime-avg").inner_text()
        if avg is None:
            assert text == "—"
        else:
            assert float(text.rstrip("%")) == pytest.approx(avg * 100, rel=0.01)

    # Weights in force per regime: crisis cuts carry (modifier 0.4) relative to normal.
    crisis_carry = np.mean([s["screener"]["weights"]["carry"] for s in snaps if s["vol_regime"] == "crisis"])
    crisis_row = dash.page.locator('[data-testid="weights-row"][data-regime="crisis"]')
    await expect(crisis_row.locator("td").nth(3)).to_contain_text(f"{crisis_carry * 100:.1f}%")
    rel = await crisis_row.locator("td").nth(3).locator(".rel").inner_text()
    assert float(rel.lstrip("×")) < 1.0

    await expect(dash.page.get_by_test_id("hmm-tuning-row")).to_have_count(len(MARKET))
    await expect(dash.page.get_by_test_id("pipeline-row")).to_have_count(len(MARKET))
    stale = dash.page.locator(f'[data-testid="pipeline-row"][data-series="{ADA.id}"]')
    await expect(stale.locator(".fresh")).to_have_class(re.compile(r"\bstale\b"))
    await expect(stale).to_contain_text("gateway timeout")
    await expect(dash.page.get_by_test_id("services")).to_contain_text("state_publisher")
    await dash.screenshot("advanced-desktop")
    phone = await open_dashboard(st, "/#/advanced", viewport=PHONE)
    await expect(phone.page.get_by_test_id("vol-regimes-block")).to_be_visible()
    await phone.screenshot("advanced-phone")
    dash.assert_console_clean()
    phone.assert_console_clean()


async def test_organism_follows_regime_confidence_and_bias_and_morphs_smoothly(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    bull, bear = key("BUL/USD"), key("BER/USD")
    st = await dashboard_stack(make_stack, [("BUL/USD", "CORE"), ("BER/USD", "CORE")])
    start = recent_start(31)
    events = regime_events(st.config, bull, stretch(30, "normal", "BULLISH", 0.9), start)
    events += regime_events(st.config, bear, stretch(30, "normal", "BEARISH", 0.2), start)
    await publish_events(st, events)
    dash = await open_dashboard(st)
    org = {k: dash.row(k).get_by_test_id("organism") for k in (bull, bear)}
    await expect(org[bull]).to_have_attribute("data-regime", "BULLISH")
    await expect(org[bear]).to_have_attribute("data-regime", "BEARISH")
    assert float(await org[bull].get_attribute("data-bias") or 0) > 0.5
    assert float(await org[bear].get_attribute("data-bias") or 0) < 0
    await expect(dash.page.get_by_test_id("market-organism").get_by_test_id("organism")).to_have_attribute(
        "data-status", "ok"
    )

    blur_of = "el => parseFloat(el.querySelector('feGaussianBlur').getAttribute('stdDeviation'))"
    lean_of = "el => el.querySelector('.og-lean').getAttribute('transform')"
    # Eased in: the confident organism ends sharp, the unsure one blurred; each leans its bias' way.
    await dash.page.wait_for_function(
        f"""() => {{
          const [a, b] = ['{bull.id}', '{bear.id}'].map(id =>
            document.querySelector(`tr[data-series="${{id}}"] [data-testid=organism]`));
          const blur = {blur_of};
          return blur(a) < 1.0 && blur(b) > 3.0;
        }}"""
    )
    leans = {k: float(re.findall(r"rotate\(([-\d.]+)", await org[k].evaluate(lean_of))[0]) for k in (bull, bear)}
    assert leans[bull] > 10, leans
    assert leans[bear] < -2, leans
    path = await org[bull].evaluate("el => el.querySelector('.og-body').getAttribute('d')")
    await dash.page.wait_for_function(
        f"""() => document.querySelector('tr[data-series="{bull.id}"] .og-body').getAttribute('d') !== {path!r}"""
    )  # alive: the body moves by itself

    # A sudden flip to bearish: the bullish share of the ring shrinks through intermediate values.
    await dash.page.evaluate(
        f"""() => {{
          const arc = document.querySelector('tr[data-series="{bull.id}"] .og-arc[data-regime=BULLISH]');
          window.__bullShare = [];
          const sample = () => {{
            window.__bullShare.push(parseFloat(arc.getAttribute('stroke-dasharray')));
            if (window.__bullShare.length < 2000) requestAnimationFrame(sample);
          }};
          requestAnimationFrame(sample);
        }}"""
    )
    await publish_events(st, [hmm_verdict((0.9, 0.08, 0.02), key=bull, ts=start + 30 * 60_000, observation_count=31)])
    await expect(org[bull]).to_have_attribute("data-regime", "BEARISH")
    await dash.page.wait_for_function("() => window.__bullShare.at(-1) < 12")
    shares = await dash.page.evaluate("window.__bullShare")
    between = {round(s) for s in shares if 20 < s < 70}
    assert len(between) >= 5, f"the body should morph through the way, not cut: {sorted(set(map(round, shares)))}"
    dash.assert_console_clean()


# --------------------------------------------------------------------------- one clock, layouts, charts, docs, labels


async def test_every_age_in_the_demo_market_runs_on_the_clock_its_freshness_uses(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    # The demo starts days back and plays its candles faster than real time: a candle-time stamp aged
    # against the wall clock would read "10 d" although every series is fresh.
    universe = [{"exchange": "demo", "symbol": s, "timeframe": "1m", "tier": "CORE"} for s in ("BTC/USD", "ETH/USD")]
    hmm = {"HMM_ENABLED": True, "HMM_MIN_TRAIN_SAMPLES": 120, "HMM_TRAINING_CANDLES": 240}
    config = small_config([], universe=universe, hmm=hmm, demo={"seed": 7, "history_bars": 300, "bars_per_sec": 4})
    st = await make_stack(config)
    for service in ("ohlcv_ingest", "vol_regime", "hmm_regime", "screener", "state_publisher", "dashboard_api"):
        await st.start(service)
    await api_up(st)
    demo = [SeriesKey("demo", s, "1m") for s in ("BTC/USD", "ETH/USD")]

    async def trained_and_fresh() -> bool:
        snaps = [await st.snapshot(k) for k in demo]
        return all(
            s and (s.get("hmm_regime") or {}).get("trained") and (s.get("hmm_data_pipeline") or {}).get("freshness_ok")
            for s in snaps
        )

    await eventually(trained_and_fresh, timeout=90)
    first = await st.snapshot(demo[0])
    assert first is not None
    assert time.time() * 1000 - first["vol"]["since_ts"] > 86_400_000, "the demo's candles should be days old"

    dash = await open_dashboard(st, "/#/advanced")
    await expect(dash.page.get_by_test_id("pipeline-row").locator(".fresh.ok")).to_have_count(len(demo))
    await expect(dash.page.get_by_test_id("tuning-current").locator("[data-age]")).not_to_have_count(0)
    ages = {"advanced": await dash.page.locator("[data-age]").all_inner_texts()}
    await dash.screenshot("ages-advanced-demo")
    await dash.page.evaluate("location.hash = '#/symbol/demo/BTC-USD/1m'")
    await expect(dash.page.get_by_test_id("price-chart")).to_be_visible()
    ages["symbol"] = await dash.page.locator("[data-age]").all_inner_texts()
    await dash.page.evaluate("location.hash = '#/'")
    await expect(dash.page.get_by_test_id("row")).to_have_count(len(demo))
    ages["overview"] = await dash.page.locator("[data-age]").all_inner_texts()
    for view, texts in ages.items():
        assert texts, f"no ages found on the {view} view"
        assert not [t for t in texts if t.endswith(" d")], f"{view}: ages in days while the series are fresh: {texts}"
    dash.assert_console_clean()


async def test_no_table_cell_or_filter_menu_is_cut_at_desktop_or_phone_width(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    for viewport, name in ((DESKTOP, "desktop"), (PHONE, "phone")):
        dash = await open_dashboard(st, "/#/advanced", viewport=viewport)
        await expect(dash.page.get_by_test_id("pipeline-row")).to_have_count(len(MARKET))
        assert await cut_elements(dash.page, "[data-testid=advanced-view]") == [], name
        await dash.screenshot(f"uncut-advanced-{name}")
        await dash.page.evaluate("location.hash = '#/symbol/test/BTC-USD/1m'")
        await expect(dash.page.get_by_test_id("transition").first).to_be_visible()
        assert await cut_elements(dash.page, "[data-testid=symbol-view]") == [], name
        await dash.screenshot(f"uncut-symbol-{name}")
        await dash.page.evaluate("location.hash = '#/'")
        await expect(dash.page.get_by_test_id("row")).to_have_count(len(MARKET))
        assert await cut_elements(dash.page, ".toolbar") == [], name
        assert await cut_menus(dash.page) == [], name
        width = await dash.page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{name}: the page scrolls sideways"
        dash.assert_console_clean()


async def cut_elements(page: Page, root: str) -> list[str]:
    """Visible tables, cells and controls under ``root`` whose content is wider than they are."""
    return list(
        await page.evaluate(
            """(root) => [...document.querySelector(root).querySelectorAll(
                   '.table-wrap, .table-wrap th, .table-wrap td, select, .names')]
                 .filter((el) => el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1)
                 .map((el) => `${el.tagName.toLowerCase()} "${el.innerText.trim().slice(0, 40)}"`
                              + ` ${el.scrollWidth} > ${el.clientWidth}`)""",
            root,
        )
    )


async def cut_menus(page: Page) -> list[str]:
    """Filter menus narrower than their own widest option (a native select clips its text silently)."""
    return list(
        await page.evaluate(
            """() => [...document.querySelectorAll('.toolbar select')].flatMap((sel) => {
                 const free = sel.cloneNode(true);
                 free.style.cssText = 'position:absolute;visibility:hidden;width:auto;min-width:0;flex:none';
                 sel.parentNode.appendChild(free);
                 const need = free.getBoundingClientRect().width;
                 free.remove();
                 const has = sel.getBoundingClientRect().width;
                 return has + 0.5 < need ? [`${sel.id}: ${has.toFixed(0)} px < ${need.toFixed(0)} px`] : [];
               })"""
        )
    )


NICE_STEPS_MIN = {1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440}


async def test_symbol_charts_say_when_the_hmm_trains_tick_round_times_and_name_each_probability(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    late, never = key("LTE/USD"), key("NEW/USD")
    st = await dashboard_stack(make_stack, [("LTE/USD", "CORE"), ("NEW/USD", "CORE")])
    bars = {
        late: [*stretch(50, "normal", "RANGING", trained=False), *stretch(130, "normal", "BULLISH", 0.7)],
        never: stretch(40, "normal", "RANGING", trained=False),
    }
    events = events_for(st.config, bars)
    last_ts = max(e.ts for e in events)
    events += [pipeline_status(4_000, key=late, last_ts=last_ts), pipeline_status(420, key=never, last_ts=last_ts)]
    await publish_events(st, events)
    needed = st.config.hmm.training_candles

    dash = await open_dashboard(st, "/#/symbol/test/NEW-USD/1m")
    progress = dash.page.get_by_test_id("hmm-untrained-progress")
    await expect(progress).to_have_text(f"HMM not trained yet: 420 / {needed:,} candles")
    await expect(dash.page.get_by_test_id("hmm-training-candles").locator(".v")).to_have_text(f"420 / {needed:,}")
    await dash.screenshot("charts-untrained")

    detail = await api_get(st, "/api/symbols/test/LTE-USD?timeframe=1m")
    first_trained = next(p["ts"] for p in detail["history"] if p["p"] is not None)
    await dash.page.evaluate("location.hash = '#/symbol/test/LTE-USD/1m'")
    span = dash.page.get_by_test_id("untrained-span")
    await expect(span).to_have_attribute("data-until", str(first_trained))
    clock = time.strftime("%H:%M", time.gmtime(first_trained / 1000))
    await expect(dash.page.get_by_test_id("prob-chart")).to_contain_text(f"HMM not trained until {clock}")
    probs = detail["history"][-1]["p"]
    words = " · ".join(f"{label.lower()} {round(v * 100)}%" for label, v in zip(HMM_LABELS, probs, strict=True))
    await expect(dash.page.get_by_test_id("readout-probs")).to_have_text(words)
    for chart in ("price-chart", "ratio-chart", "prob-chart", "score-chart"):
        await assert_round_ticks(dash.page, chart)
    await dash.screenshot("charts-trained-late")

    phone = await open_dashboard(st, "/#/symbol/test/LTE-USD/1m", viewport=PHONE)
    await expect(phone.page.get_by_test_id("untrained-span")).to_have_count(1)
    await assert_round_ticks(phone.page, "price-chart")
    dash.assert_console_clean()
    phone.assert_console_clean()


async def assert_round_ticks(page: Page, chart: str) -> None:
    ticks = page.get_by_test_id(chart).locator("text.tick[data-ts]")
    await expect(ticks.first).to_be_attached()
    stamps = [int(await t.get_attribute("data-ts") or 0) for t in await ticks.all()]
    labels = await ticks.all_text_contents()
    assert len(stamps) >= 2, f"{chart}: {labels}"
    steps = {b - a for a, b in itertools.pairwise(stamps)}
    assert len(steps) == 1, f"{chart}: uneven ticks {labels}"
    step = steps.pop()
    assert step % 60_000 == 0, f"{chart}: step of {step} ms"
    assert step // 60_000 in NICE_STEPS_MIN, f"{chart}: step of {step // 60_000} min"
    assert all(ts % step == 0 for ts in stamps), f"{chart}: ticks off the {step // 60_000} min grid: {labels}"
    # A tick at midnight names the day instead.
    expected = [time.strftime("%m-%d" if ts % 86_400_000 == 0 else "%H:%M", time.gmtime(ts / 1000)) for ts in stamps]
    assert labels == expected, labels


async def test_market_organism_and_hybrid_bars_read_at_overview_size(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    dash = await open_dashboard(st)
    organism = dash.page.get_by_test_id("market-organism").get_by_test_id("organism")
    await expect(organism).to_have_attribute("data-status", "ok")
    box = await organism.bounding_box()
    assert box is not None
    assert box["width"] >= 170, f"the market organism is {box['width']:.0f} px wide"
    # Whatever the market's confidence, the body keeps an outline and stands out of its background.
    await dash.page.wait_for_function(
        """() => {
          const org = document.querySelector('[data-testid=market-organism] [data-testid=organism]');
          return parseFloat(org.querySelector('.og-edge').getAttribute('stroke-opacity')) >= 0.45
            && parseFloat(org.querySelector('feGaussianBlur').getAttribute('stdDeviation')) <= 4.2;
        }"""
    )
    png = await dash.page.screenshot(clip=box, animations="disabled")
    assert outline_contrast(png) >= 2.0, "the market organism is a smudge: its body has no visible edge"

    for k in MARKET:
        snap = await st.snapshot(k)
        assert snap is not None
        score = snap["screener"]["hybrid_score"]
        cell = dash.cell(k, "score")
        await expect(cell.locator(".zval")).to_have_text(signed(score))
        await expect(cell.get_by_test_id("zbar")).to_have_class(re.compile(r"\bpos\b" if score >= 0 else r"\bneg\b"))
        bar = await cell.locator(".zbar").bounding_box()
        assert bar is not None
        assert bar["width"] >= 64, f"hybrid bar {bar['width']:.0f} px wide"
        assert bar["height"] >= 10, f"hybrid bar {bar['height']:.0f} px high"
    await dash.screenshot("organism-and-bars")
    dash.assert_console_clean()


def outline_contrast(png: bytes) -> float:
    """How sharply the body of a square organism picture stands out: the 99th percentile of the contrast
    ratio (WCAG) between pixels 2 px apart, where its outline runs. A blurred smudge stays near 1.5."""
    rgb = decode_png(png)[..., :3] / 255.0
    lin = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    lum = lin @ np.array([0.2126, 0.7152, 0.0722])
    h, w = lum.shape
    yy, xx = np.mgrid[0:h, 0:w]
    where = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    where = (where > 0.12) & (where < 0.36)  # the body's edge, inside the ring of probabilities

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (np.maximum(a, b) + 0.05) / (np.minimum(a, b) + 0.05)

    across = ratio(lum[:, 2:], lum[:, :-2])[where[:, 1:-1]]
    down = ratio(lum[2:, :], lum[:-2, :])[where[1:-1, :]]
    return float(np.percentile(np.concatenate([across, down]), 99))


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's screenshots are) as an (h, w, channels) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    w, h, depth, colour = struct.unpack(">IIBB", header[:10])
    assert (depth, header[12]) == (8, 0), "only 8-bit, non-interlaced"
    assert colour in (2, 6), "only RGB or RGBA"
    ch = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8).reshape(h, 1 + w * ch)
    out = np.zeros((h, w * ch), dtype=np.int32)
    for y in range(h):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros(w * ch, dtype=np.int32)
        if kind in (0, 2):
            out[y] = (line + (up if kind == 2 else 0)) % 256
            continue
        row = out[y]
        for x in range(w * ch):
            left = row[x - ch] if x >= ch else 0
            corner = up[x - ch] if x >= ch else 0
            if kind == 1:
                pred = left
            elif kind == 3:
                pred = (left + up[x]) // 2
            else:
                p = left + up[x] - corner
                pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up[x] if pb <= pc else corner
            row[x] = (line[x] + pred) % 256
    return out.reshape(h, w, ch).astype(np.float64)


async def test_api_docs_render_with_every_other_host_unreachable(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await dashboard_stack(make_stack, [("DOC/USD", "CORE")])
    base = f"http://127.0.0.1:{st.settings.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        html = (await http.get("/docs")).text
        assert not re.findall(r"(?:https?:)?//[\w.-]+", html), "/docs names another host"
        assert (await http.get("/redoc")).status_code == 404, "ReDoc is not served: it needs its vendor's CDN"
        openapi = (await http.get("/openapi.json")).json()
    dash = await open_dashboard(st)
    blocked: list[str] = []

    async def offline(route: Any) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort("internetdisconnected")

    await dash.page.route("**/*", offline)
    await dash.page.goto(base + "/docs")
    operations = dash.page.locator(".opblock")
    await expect(operations).to_have_count(sum(len(ops) for ops in openapi["paths"].values()), timeout=15_000)
    await expect(dash.page.locator(".opblock-summary-path", has_text="/api/symbols").first).to_be_visible()
    await dash.screenshot("docs-offline")
    assert blocked == [], f"the docs reached for other hosts: {blocked}"
    assert dash.page_errors == []


async def test_page_text_describes_behaviour_without_seed_references(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    dash = await open_dashboard(st)
    views = {"overview": "row", "advanced": "pipeline-row", "symbol/test/BTC-USD/1m": "transition"}
    for view, testid in views.items():
        await dash.page.evaluate(f"location.hash = '#/{view}'")
        await expect(dash.page.get_by_test_id(testid).first).to_be_visible()
        text = await dash.page.evaluate(
            "() => document.body.innerText + [...document.querySelectorAll('[data-tip],[title],[aria-label]')]"
            ".map(el => el.dataset.tip || el.title || el.getAttribute('aria-label')).join(' ')"
        )
        found = re.findall(r".{0,30}(?:\bseeds?\b|§).{0,30}", text, re.IGNORECASE)
        assert found == [], view
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=5) as http:
        assert "§" not in (await http.get("/openapi.json")).text
    dash.assert_console_clean()


async def test_the_page_takes_its_labels_from_the_api_vocabulary(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    st = await constructed_market(make_stack)
    vocabulary = (await api_get(st, "/api/config"))["vocabulary"]
    assert vocabulary == {
        "vol_labels": list(VOL_LABELS),
        "hmm_labels": [label.lower() for label in HMM_LABELS],  # the JSON API spells labels in lower case
        "tiers": list(TIERS),
        "score_components": list(HYBRID_COMPONENTS),
        "depth_tiers": list(DEPTH_TIERS),
        "depth_candles": {"moderate": DEPTH_MODERATE_CANDLES, "deep": DEPTH_DEEP_CANDLES},
    }
    dash = await open_dashboard(st)
    vol_options = (
        await dash.page.get_by_test_id("filter-vol")
        .locator("option")
        .evaluate_all("els => els.map(e => e.value).filter(Boolean)")
    )
    assert vol_options == list(VOL_LABELS)

    # A vocabulary with one more vol label and the tiers reversed: the page follows it, not a copy of its own.
    async def widened(route: Any) -> None:
        response = await route.fetch()
        config = await response.json()
        config["vocabulary"]["vol_labels"] = [*VOL_LABELS, "extreme"]
        config["vocabulary"]["tiers"] = list(reversed(TIERS))
        await route.fulfill(response=response, json=config)

    await dash.page.route("**/api/config", widened)
    await dash.goto("/")
    await expect(dash.page.locator('[data-testid="vol-summary-bar"][data-regime="extreme"]')).to_have_count(1)
    await expect(dash.page.locator('#f-vol option[value="extreme"]')).to_have_count(1)
    tiers = (
        await dash.page.get_by_test_id("filter-tier")
        .locator("option")
        .evaluate_all("els => els.map(e => e.value).filter(Boolean)")
    )
    assert tiers == [t for t in reversed(TIERS) if t in {tier for _, tier in MARKET_UNIVERSE}]
    dash.assert_console_clean()
