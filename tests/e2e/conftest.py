"""Browser fixtures: headless Chromium (Debian's ``chromium``) driven by Python Playwright.

The tests skip, saying why, on a machine without Chromium or Playwright. Each
test starts its own stack (``make_stack``) with state_publisher and
dashboard_api, constructs regimes by publishing verdicts straight into the
REGIMES stream (decisions come from the real screener core, so every number
on the page is one the stack could produce) and opens the dashboard in a
fresh browser context that records console errors and page errors.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from services.screener.core import SeriesScreen, decide
from shared.domain.config import StrategyConfig
from shared.domain.contracts import (
    HMM_LABELS,
    HmmRegimeEvent,
    PipelineStatus,
    ScreenerDecision,
    VolRegimeEvent,
    encode,
)
from shared.domain.subjects import SeriesKey
from tests.conftest import ROOT
from tests.harness import Stack, StackFactory, eventually, small_config

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BAR_MS = 60_000
# Vol ratio a constructed bar gets for its label (thresholds of the test config: 0.6 / 1.2 / 1.8).
RATIO = {"low": 0.45, "normal": 0.95, "high": 1.45, "crisis": 2.3}
# The state that takes most of the rest of the mass, after the one a bar is in.
RUNNER_UP = {"BULLISH": "RANGING", "BEARISH": "RANGING", "RANGING": "BULLISH"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("browser tests need headless Chromium: `apt-get install -y chromium` (.ci/run installs it)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need Python Playwright: `pip install -e '.[dev]'` (no `playwright install` needed)")
    return path


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Dashboard:
    """One browser page on a stack's dashboard, with everything its console said."""

    page: Page
    base_url: str
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text) of errors and warnings
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions

    async def goto(self, path: str = "/") -> None:
        await self.page.goto(self.base_url + path)
        await self.page.wait_for_selector("body[data-ready='1']", timeout=15_000)

    def row(self, key: SeriesKey) -> Locator:
        return self.page.locator(f'tr[data-testid="row"][data-series="{key.id}"]')

    def cell(self, key: SeriesKey, name: str) -> Locator:
        return self.row(key).locator(f'[data-testid="cell-{name}"]')

    async def mark_loaded(self) -> None:
        """A flag in the page's window: it survives anything but a reload."""
        await self.page.evaluate("window.__sameDocument = true")

    async def never_reloaded(self) -> bool:
        return bool(await self.page.evaluate("window.__sameDocument === true"))

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_console_clean(self, expected: Callable[[str], bool] = lambda _text: False) -> None:
        """No uncaught exception, and no console error or warning other than ``expected`` ones."""
        assert self.page_errors == [], f"JavaScript errors: {self.page_errors}"
        unexpected = [(kind, text) for kind, text in self.console if not expected(text)]
        assert unexpected == [], f"console messages: {unexpected}"


OpenDashboard = Callable[..., Awaitable[Dashboard]]


@pytest.fixture
async def open_dashboard(browser: Browser, make_stack: StackFactory) -> AsyncIterator[OpenDashboard]:
    """Open a stack's dashboard in a new browser context; contexts close before the stacks stop."""
    contexts = []

    async def open_(st: Stack, path: str = "/", viewport: Mapping[str, int] = DESKTOP) -> Dashboard:
        phone = viewport["width"] < 600
        ctx = await browser.new_context(
            viewport=dict(viewport), device_scale_factor=2 if phone else 1, is_mobile=phone, has_touch=phone
        )
        contexts.append(ctx)
        page = await ctx.new_page()
        dash = Dashboard(page, f"http://127.0.0.1:{st.settings.api_port}")
        page.on("console", lambda m: dash.console.append((m.type, m.text)) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda exc: dash.page_errors.append(str(exc)))
        await dash.goto(path)
        return dash

    yield open_
    for ctx in contexts:
        await ctx.close()


# --------------------------------------------------------------------------- stack


async def api_up(st: Stack) -> None:
    """Wait until dashboard_api answers HTTP (its health report can precede the listening socket)."""
    url = f"http://127.0.0.1:{st.settings.api_port}/healthz"

    async def answers() -> bool:
        async with httpx.AsyncClient(timeout=1) as http:
            try:
                return (await http.get(url)).status_code == 200
            except httpx.HTTPError:
                return False

    await eventually(answers, timeout=15)


async def api_get(st: Stack, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{st.settings.api_port}", timeout=5) as http:
        res = await http.get(path)
        res.raise_for_status()
        return res.json()


async def dashboard_stack(
    make_stack: StackFactory, universe: Sequence[tuple[str, str]], *services: str, hmm: bool = True
) -> Stack:
    """A stack with state_publisher, dashboard_api and ``services``, serving the page."""
    config = small_config(universe, hmm={"HMM_ENABLED": hmm}) if hmm else small_config(universe)
    st = await make_stack(config)
    for service in ("state_publisher", "dashboard_api", *services):
        await st.start(service)
    await api_up(st)
    return st


# --------------------------------------------------------------------------- constructed regimes


@dataclass(frozen=True)
class Bar:
    """The regimes one constructed bar is in."""

    vol: str  # low / normal / high / crisis
    hmm: str | None = None  # BEARISH / RANGING / BULLISH; None: no HMM verdict for the bar
    confidence: float = 0.6  # of the HMM state the bar heads to
    trained: bool = True


def stretch(n: int, vol: str, hmm: str | None = None, confidence: float = 0.6, trained: bool = True) -> list[Bar]:
    return [Bar(vol, hmm, confidence, trained)] * n


def recent_start(n_bars: int) -> int:
    """Open time of the first of ``n_bars`` one-minute bars whose last closed a moment ago."""
    return (int(time.time() * 1000) // BAR_MS - n_bars) * BAR_MS


def _target_probabilities(regime: str, confidence: float) -> np.ndarray:
    third = 0.25 * (1.0 - confidence)
    top = (1.0 + confidence - third) / 2.0
    out = np.full(3, third)
    out[HMM_LABELS.index(regime)] = top
    out[HMM_LABELS.index(RUNNER_UP[regime])] = top - confidence
    return out


def hmm_event(
    key: SeriesKey, ts: int, probs: Sequence[float], *, trained: bool = True, count: int = 1
) -> HmmRegimeEvent:
    """The verdict a detector with these filtered probabilities publishes (gain 1, threshold 0.15)."""
    p = np.asarray(probs, dtype=float)
    p = p / p.sum()
    top, second = sorted(p, reverse=True)[:2]
    confidence = float(top - second)
    bias = float(np.clip(p[2] - p[0], -1.0, 1.0)) if confidence >= 0.15 else 0.0
    return HmmRegimeEvent(
        key.exchange,
        key.symbol,
        key.timeframe,
        ts,
        regime=HMM_LABELS[int(np.argmax(p))] if trained else "RANGING",
        probabilities=(float(p[0]), float(p[1]), 1.0 - float(p[0]) - float(p[1])) if trained else (0.0, 1.0, 0.0),
        confidence=confidence if trained else 0.0,
        bias_signal=bias if trained else 0.0,
        observation_count=count,
        trained=trained,
        trained_at=ts - 3_600_000 if trained else None,
    )


def vol_event(
    key: SeriesKey, ts: int, label: str, close: float, prev: str | None, ratio: float | None = None, samples: int = 64
) -> VolRegimeEvent:
    ratio = RATIO[label] if ratio is None else ratio
    vol_long = 0.004
    return VolRegimeEvent(
        key.exchange,
        key.symbol,
        key.timeframe,
        ts,
        close,
        label,
        vol_short=ratio * vol_long,
        vol_long=vol_long,
        ratio=ratio,
        prev_label=prev,
        changed=prev is not None and prev != label,
        samples=samples,
        sufficient=True,
    )


def regime_events(
    config: StrategyConfig, key: SeriesKey, bars: Sequence[Bar], start_ts: int, price: float = 100.0, seed: int = 0
) -> list[Any]:
    """Per bar, in publishing order: its vol verdict, its HMM verdict (if any) and the decision the
    real screener core makes of the two. Prices drift with the HMM regime; probabilities ease
    towards each bar's target, so the history looks like a detector's."""
    rng = np.random.default_rng(seed)
    screen = SeriesScreen()
    out: list[Any] = []
    prev: str | None = None
    close = price
    probs = np.array([0.2, 0.6, 0.2])
    for i, bar in enumerate(bars):
        ts = start_ts + i * BAR_MS
        ratio = RATIO[bar.vol] * (1.0 + 0.04 * float(rng.standard_normal()))
        sigma = ratio * 0.004
        drift = {"BULLISH": 0.35, "BEARISH": -0.35}.get(bar.hmm or "", 0.0) * sigma
        close *= math.exp(drift + sigma * float(rng.standard_normal()))
        vol = vol_event(key, ts, bar.vol, close, prev, ratio=ratio, samples=64 + i)
        prev = bar.vol
        hmm = None
        if bar.hmm is not None:
            if bar.trained:
                probs = 0.7 * probs + 0.3 * _target_probabilities(bar.hmm, bar.confidence)
            hmm = hmm_event(key, ts, probs, trained=bar.trained, count=i + 1)
        decision = decide(screen, vol, hmm, config)
        screen.last_decided_ts = ts
        out.extend(e for e in (vol, hmm, decision) if e is not None)
    return out


def pipeline_status(key: SeriesKey, last_ts: int | None, samples: int, **changes: Any) -> PipelineStatus:
    now = int(time.time() * 1000)
    freshness = None if last_ts is None else max(0.0, (now - last_ts - BAR_MS) / 1000)
    fields: dict[str, Any] = {
        "source": "replay",
        "interval_min": 1,
        "sync_interval_sec": 60.0,
        "samples": samples,
        "coverage_pct": 100.0 * samples / (14 * 1440),
        "last_ts": last_ts,
        "freshness_sec": freshness,
        "freshness_limit_sec": 180.0,
        "freshness_ok": freshness is not None and freshness <= 180.0,
        "gaps": 0,
        "backfill_last_at": now - 900_000,
        "backfill_last_rows": samples,
        "backfill_last_message": f"backfilled {samples} bars",
        "last_error": None,
        "reported_at": now,
    }
    fields.update(changes)
    return PipelineStatus(key.exchange, key.symbol, key.timeframe, **fields)


def _subject(st: Stack, event: Any) -> tuple[str, str]:
    key = event.key
    if isinstance(event, VolRegimeEvent):
        return st.names.vol(key), f"vol.{key.token}.{event.ts}"
    if isinstance(event, HmmRegimeEvent):
        return st.names.hmm(key), f"hmm.{key.token}.{event.ts}"
    if isinstance(event, ScreenerDecision):
        return st.names.screener(key), f"screener.{key.token}.{event.ts}"
    if isinstance(event, PipelineStatus):
        return st.names.pipeline(key), f"pipeline.{key.token}.{event.reported_at}"
    raise TypeError(f"not a REGIMES event: {event!r}")


async def publish_events(st: Stack, events: Iterable[Any]) -> None:
    """Into the REGIMES stream, in order (acks awaited in chunks), then wait until Redis has them all."""
    events = list(events)
    chunk = 200
    for i in range(0, len(events), chunk):
        sends = []
        for event in events[i : i + chunk]:
            subject, msg_id = _subject(st, event)
            sends.append(st.js.publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id}))
        await asyncio.gather(*sends)
    await _until_written(st, events)


async def _until_written(st: Stack, events: Sequence[Any]) -> None:
    expected: dict[SeriesKey, dict[str, int]] = {}
    for event in events:
        part = {VolRegimeEvent: "vol", HmmRegimeEvent: "hmm_regime", ScreenerDecision: "screener"}.get(type(event))
        if part is not None:
            expected.setdefault(event.key, {})[part] = event.ts
        elif isinstance(event, PipelineStatus):
            expected.setdefault(event.key, {})["hmm_data_pipeline"] = event.reported_at

    async def written() -> bool:
        for key, parts in expected.items():
            snap = await st.snapshot(key)
            if snap is None:
                return False
            for part, ts in parts.items():
                got = snap.get(part) or {}
                if got.get("reported_at" if part == "hmm_data_pipeline" else "ts") != ts:
                    return False
        return True

    await eventually(written, timeout=20)
