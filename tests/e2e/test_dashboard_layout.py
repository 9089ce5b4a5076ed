"""One clock for every age, layouts at desktop and phone width, chart ticks, the API docs and the
page's wording, in headless Chromium.

The market and how the page is read: ``tests/e2e/market.py``.
"""

from __future__ import annotations

import itertools
import re
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import numpy as np

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
from tests.e2e.market import (
    MARKET,
    MARKET_UNIVERSE,
    constructed_market,
    events_for,
    expect,
    key,
    signed,
)
from tests.factories import (
    pipeline_status,
    stretch,
)
from tests.harness import StackFactory, eventually, small_config

if TYPE_CHECKING:
    from playwright.async_api import Page


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
