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
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from shared.domain.contracts import (
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
    from playwright.async_api import Browser, Locator, Page, ViewportSize

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DESKTOP: ViewportSize = {"width": 1440, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
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

    async def open_(st: Stack, path: str = "/", viewport: ViewportSize = DESKTOP) -> Dashboard:
        phone = viewport["width"] < 600
        ctx = await browser.new_context(
            viewport=viewport, device_scale_factor=2 if phone else 1, is_mobile=phone, has_touch=phone
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
    parts: dict[type[Any], str] = {VolRegimeEvent: "vol", HmmRegimeEvent: "hmm_regime", ScreenerDecision: "screener"}
    for event in events:
        part = parts.get(type(event))
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


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (what a stop must leave behind: none)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            out.append(int(proc.name))
    return out
