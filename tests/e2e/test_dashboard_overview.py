"""The overview in headless Chromium: badges, summary charts, the table, live updates, an idle page,
recovery after an API restart, and missing data.

The market and how the page is read: ``tests/e2e/market.py``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from shared.domain.subjects import SeriesKey
from shared.domain.vocab import (
    HMM_LABELS,
    VOL_LABELS,
    VolLabel,
)
from tests.e2e.conftest import PHONE, OpenDashboard, api_get, api_up, dashboard_stack, publish_events
from tests.e2e.market import (
    BTC,
    COLOUR,
    ETH,
    FINAL_HMM,
    FINAL_VOL,
    LETTER,
    MARKET,
    colour_name,
    constructed_market,
    events_for,
    expect,
    key,
    vol_pct,
)
from tests.factories import (
    RATIO,
    VOL_LONG,
    candles_from_returns,
    recent_start,
    regime_events,
    regime_returns,
    stretch,
    vol_event,
)
from tests.harness import StackFactory

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------- overview


async def test_badges_show_letter_and_colour_per_regime(
    make_stack: StackFactory, open_dashboard: OpenDashboard
) -> None:
    universe = [("LOW/USD", "CORE"), ("NRM/USD", "CORE"), ("HGH/USD", "SATELLITE"), ("CRI/USD", "SATELLITE")]
    final: dict[SeriesKey, VolLabel] = {
        key("LOW/USD"): "low",
        key("NRM/USD"): "normal",
        key("HGH/USD"): "high",
        key("CRI/USD"): "crisis",
    }
    st = await dashboard_stack(make_stack, universe)
    await publish_events(st, events_for(st.config, {k: stretch(6, "normal") + stretch(4, v) for k, v in final.items()}))
    dash = await open_dashboard(st)

    for k, label in final.items():
        badge = dash.cell(k, "vol").get_by_test_id("vol-badge")
        await expect(badge).to_have_text(LETTER[label])
        await expect(badge).to_have_attribute("data-regime", label)
        background = await badge.evaluate("el => getComputedStyle(el).backgroundColor")
        assert colour_name(background) == COLOUR[label], f"{label} badge is {background}"
        snap = await st.snapshot(k)
        assert snap is not None
        vol = snap["vol"]
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
    vol_counts: dict[str, int] = {label: list(FINAL_VOL.values()).count(label) for label in VOL_LABELS}
    hmm_counts: dict[str, int] = {label: list(FINAL_HMM.values()).count(label) for label in HMM_LABELS}
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
