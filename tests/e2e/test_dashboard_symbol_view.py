"""The symbol view, the advanced tab and the organism in headless Chromium.

The market and how the page is read: ``tests/e2e/market.py``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx
import msgspec
import numpy as np
import pytest

from shared.domain.contracts import DecisionConsensus
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import (
    DEPTH_DEEP_CANDLES,
    DEPTH_MODERATE_CANDLES,
    VOL_LABELS,
)
from tests.e2e.conftest import PHONE, OpenDashboard, api_get, api_up, dashboard_stack, publish_events
from tests.e2e.market import (
    ADA,
    BTC,
    DOGE,
    MARKET,
    constructed_market,
    expect,
    key,
    page_label,
    signed,
)
from tests.factories import (
    VOL_LONG,
    decision,
    hmm_event,
    hmm_verdict,
    recent_start,
    regime_events,
    stretch,
    vol_event,
)
from tests.harness import Stack, StackFactory, small_config

if TYPE_CHECKING:
    pass


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
    vol = vol_event(
        label="low",
        prev="low",
        key=BTC,
        ts=at,
        ratio=0.65,
        vol_long=VOL_LONG,
        raw_label="normal",
        pending_label="normal",
    )
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


async def assert_the_api_serves_the_consensus(st: Stack) -> None:
    """BTC/USD's 1m (bullish, weight 3) and 15m (bearish) verdicts agree on bullish at 75%, on
    /api/consensus and in the 1m series' detail; a symbol without verdicts has no consensus (404)."""
    agreed = await api_get(st, "/api/consensus/test/BTC-USD")
    assert (agreed["regime"], agreed["dissenting"], agreed["voting"]) == ("bullish", ["15m"], ["1m", "15m"])
    assert agreed["agreement"] == pytest.approx(0.75)
    assert agreed["bias"] == pytest.approx(0.3)
    assert (await api_get(st, "/api/symbols/test/BTC-USD?timeframe=1m"))["consensus"] == agreed
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=5) as http:
        missing = await http.get("/api/consensus/test/ETH-USD")
    assert missing.status_code == 404
    assert "no consensus" in missing.json()["detail"]


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
    await assert_the_api_serves_the_consensus(st)

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
        regime="BULLISH",
        agreement=0.75,
        bias=0.3,
        confidence=0.4,
        voting=("1m", "15m"),
        dissenting=("15m",),
        untrained=(),
        absent=(),
        as_of={"1m": start + 180_000, "15m": start},
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
