"""The constructed market the browser tests read, and how the page writes what the API says.

Regimes are constructed by publishing verdicts into the REGIMES stream (or,
for the live test, candles through vol_regime and the screener); the page is
then read the way an operator reads it. Screenshots land in artifacts/screenshots/.
Importing this module skips the importing test module where Playwright is missing.
"""

from __future__ import annotations

import colorsys
import re
from typing import Any

import pytest

from shared.domain.subjects import SeriesKey
from shared.domain.vocab import (
    HMM_LABELS,
)
from tests.e2e.conftest import dashboard_stack, publish_events
from tests.factories import (
    Bar,
    pipeline_status,
    recent_start,
    regime_events,
    stretch,
)
from tests.harness import StackFactory

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
    stale: dict[str, Any] = {"freshness_sec": 420.0, "freshness_ok": False, "last_error": "gateway timeout (504)"}
    for i, k in enumerate(MARKET):
        events.append(pipeline_status(4_000 + 500 * i, key=k, last_ts=last_ts, **(stale if k == ADA else {})))
    await publish_events(st, events)
    return st
