"""ExchangeSource and its pure decisions, with no network.

Two kinds of replay:

- Kraken: the real ``ccxt.async_support.kraken`` class, with its low-level HTTP
  call (``fetch``) replaced by :class:`KrakenReplay`, which serves recorded raw
  Kraken bodies from tests/fixtures/kraken/ (markets, OHLC pages, error bodies,
  a 504 page) and records every URL. ccxt's own request building, market
  loading, response parsing, error mapping and rate-limit throttle all run.
- Unified: a real ``ccxt.async_support.binance`` instance whose ``fetch_ohlcv``
  serves ccxt-format rows (scripted pages, or a small exchange-like series), and
  whose ``fetch`` fails the test if anything tries to reach the network.

Sleeping goes through an injected recorder: no test waits for a backoff.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async
import pytest
from ccxt.async_support.base.exchange import Exchange
from ccxt.base.errors import BadSymbol, ExchangeError, ExchangeNotAvailable, RateLimitExceeded, RequestTimeout

from services.ohlcv_ingest.exchange import (
    BackfillPlan,
    ExchangeSource,
    FetchResult,
    backoff_delay,
    closed_candles,
    detect_gaps,
    make_exchange,
    missing_bars,
    plan_backfill,
    rate_limit_delay,
)
from shared.domain.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kraken"
TF = 60_000  # 1m, ms
NOW_MS = 1_736_942_430_000  # 2025-01-15T12:00:30Z, when the Kraken fixtures were "recorded"
OPEN_TS = 1_736_942_400_000  # 12:00, the bar still open at NOW_MS
LAST_CLOSED = OPEN_TS - TF  # 11:59
KRAKEN_OHLC = "https://api.kraken.com/0/public/OHLC?pair=XXBTZUSD&interval=1&since={}"
KRAKEN_MARKET_URLS = ["https://api.kraken.com/0/public/Assets", "https://api.kraken.com/0/public/AssetPairs"]


# --- helpers -----------------------------------------------------------------


class SleepRecorder:
    """Stands in for asyncio.sleep: records the delays (s) and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass(frozen=True)
class Recorded:
    """One recorded Kraken answer: a fixture file served with an HTTP status."""

    file: str
    status: int = 200
    reason: str = "OK"


Step = Recorded | BaseException


class KrakenReplay:
    """Replaces a ccxt exchange's ``fetch`` (its HTTP call) with recorded bodies, per endpoint, in order.

    Does what ccxt's real ``fetch`` does after the network: parse JSON, then the exchange's
    ``handle_errors`` and ``handle_http_status_code``, so Kraken error bodies and HTTP statuses
    become the same ccxt exceptions they would be live. A request with nothing recorded for it
    fails the test.
    """

    def __init__(self, exchange: Exchange, ohlc: Iterable[Step], *, markets: Iterable[Step] | None = None) -> None:
        self.exchange = exchange
        market_steps = list(markets) if markets is not None else [Recorded("assets.json"), Recorded("asset_pairs.json")]
        self.routes: dict[str, deque[Step]] = {
            "/0/public/Assets": deque(s for s in market_steps if not _is_pairs(s)),
            "/0/public/AssetPairs": deque(s for s in market_steps if _is_pairs(s)),
            "/0/public/OHLC": deque(ohlc),
        }
        self.urls: list[str] = []
        exchange.fetch = self  # an instance attribute shadows the class's HTTP method

    async def __call__(
        self, url: str, method: str = "GET", headers: dict[str, str] | None = None, body: str | None = None
    ) -> Any:
        self.urls.append(url)
        queue = self.routes.get(urlsplit(url).path)
        if not queue:
            raise AssertionError(f"no recorded response for {method} {url}")
        step = queue.popleft()
        if isinstance(step, BaseException):
            raise step
        text = (FIXTURES / step.file).read_text()
        parsed = self.exchange.parse_json(text)
        self.exchange.handle_errors(step.status, step.reason, url, method, {}, text, parsed, headers, body)
        self.exchange.handle_http_status_code(step.status, step.reason, url, method, text)
        return parsed

    def assert_all_served(self) -> None:
        left = {path: len(q) for path, q in self.routes.items() if q}
        assert not left, f"recorded responses never requested: {left}"


def _is_pairs(step: Step) -> bool:
    return isinstance(step, Recorded) and step.file.startswith("asset_pairs")


class ThrottleSpy:
    """Wraps ccxt's rate-limit throttle (kept real) to count the requests that went through it."""

    def __init__(self, throttle: Any) -> None:
        self.throttle = throttle
        self.costs: list[float | None] = []

    async def __call__(self, cost: float | None = None) -> Any:
        self.costs.append(cost)
        return await self.throttle(cost)


class NoNetwork:
    """Installed as ``fetch`` on the unified-format exchanges: any HTTP attempt fails the test."""

    async def __call__(self, url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        raise AssertionError(f"test tried to reach the network: {method} {url}")


class ScriptedOhlcv:
    """Replaces ``fetch_ohlcv``: each call takes the next scripted page (ccxt rows) or raises the scripted error."""

    def __init__(self, steps: Iterable[Sequence[Sequence[Any]] | BaseException]) -> None:
        self.steps = deque(steps)
        self.calls: list[tuple[str, str, int | None, int | None]] = []

    async def __call__(
        self, symbol: str, timeframe: str = "1m", since: int | None = None, limit: int | None = None, params: Any = None
    ) -> list[list[Any]]:
        self.calls.append((symbol, timeframe, since, limit))
        if not self.steps:
            raise AssertionError(f"unexpected fetch_ohlcv call since={since}")
        step = self.steps.popleft()
        if isinstance(step, BaseException):
            raise step
        return [list(r) for r in step]

    @property
    def sinces(self) -> list[int | None]:
        return [c[2] for c in self.calls]


class SeriesOhlcv:
    """Replaces ``fetch_ohlcv`` with an exchange that honours ``since`` (Binance-like).

    Serves the ``limit`` oldest bars with ``ts >= since`` from a series that reaches the
    open bar at ``now_ms``; bars in ``hidden`` are missing (an exchange-side hole that
    may later be repaired).
    """

    def __init__(self, first_ts: int, now_ms: int) -> None:
        self.bars = {r[0]: r for r in rows(first_ts, (now_ms // TF * TF - first_ts) // TF + 1)}
        self.hidden: set[int] = set()
        self.calls: list[tuple[int | None, int | None]] = []

    async def __call__(
        self, symbol: str, timeframe: str = "1m", since: int | None = None, limit: int | None = None, params: Any = None
    ) -> list[list[Any]]:
        self.calls.append((since, limit))
        out = [
            list(r) for ts, r in sorted(self.bars.items()) if ts not in self.hidden and (since is None or ts >= since)
        ]
        return out[:limit] if limit is not None else out

    @property
    def sinces(self) -> list[int | None]:
        return [c[0] for c in self.calls]


def rows(first_ts: int, n: int, *, base: float = 100.0) -> list[list[Any]]:
    """``n`` valid ccxt OHLCV rows of 1m bars from ``first_ts`` (ms)."""
    out: list[list[Any]] = []
    for i in range(n):
        o = base + i
        out.append([first_ts + i * TF, o, o + 2.0, o - 1.0, o + 1.0, 10.0 + i])
    return out


def kraken_rows(file: str) -> list[list[Any]]:
    return json.loads((FIXTURES / file).read_text())["result"]["XXBTZUSD"]


def ts_list(result: FetchResult) -> list[int]:
    return [c.ts for c in result.candles]


# --- fixtures ----------------------------------------------------------------


@pytest.fixture
async def kraken() -> AsyncIterator[Exchange]:
    # rateLimit 1 ms keeps ccxt's real throttle in the path without making the tests wait.
    exchange = make_exchange("kraken", {"rateLimit": 1})
    exchange.timeout_on_exit = 0  # close() otherwise sleeps 250 ms for sockets these tests never open
    exchange.throttle = ThrottleSpy(exchange.throttle)
    yield exchange
    await exchange.close()


@pytest.fixture
async def binance() -> AsyncIterator[Exchange]:
    exchange = make_exchange("binance", {})
    exchange.timeout_on_exit = 0
    exchange.fetch = NoNetwork()
    yield exchange
    await exchange.close()


def source(exchange: Exchange, sleep: SleepRecorder, **kwargs: Any) -> ExchangeSource:
    kwargs.setdefault("rng", random.Random(7))
    return ExchangeSource(exchange, timeframe="1m", sleep=sleep, **kwargs)


# --- pure: closed_candles ------------------------------------------------------


def test_closed_candles_drops_the_open_bar_and_rows_not_newer_than_the_cursor() -> None:
    batch = rows(OPEN_TS - 4 * TF, 5)  # 11:56 .. 12:00 (open)
    parsed = closed_candles(batch, "kraken", "BTC/USD", "1m", NOW_MS, after_ts=OPEN_TS - 3 * TF)
    assert [c.ts for c in parsed.candles] == [OPEN_TS - 2 * TF, OPEN_TS - TF]
    assert parsed.rejections == []


def test_a_bar_is_closed_exactly_when_its_end_is_reached() -> None:
    batch = rows(OPEN_TS, 1)
    assert closed_candles(batch, "kraken", "BTC/USD", "1m", OPEN_TS + TF - 1).candles == []
    assert [c.ts for c in closed_candles(batch, "kraken", "BTC/USD", "1m", OPEN_TS + TF).candles] == [OPEN_TS]


def test_closed_candles_sorts_and_keeps_the_latest_duplicate() -> None:
    first = rows(OPEN_TS - 3 * TF, 2)
    revised = [OPEN_TS - 2 * TF, 101.0, 105.0, 100.0, 104.0, 99.0]  # the exchange's later word on 11:58
    parsed = closed_candles([first[1], first[0], revised], "kraken", "BTC/USD", "1m", NOW_MS)
    assert [c.ts for c in parsed.candles] == [OPEN_TS - 3 * TF, OPEN_TS - 2 * TF]
    assert parsed.candles[1].close == 104.0
    assert parsed.candles[1].volume == 99.0


def test_a_later_bad_duplicate_does_not_erase_a_good_row() -> None:
    good = rows(OPEN_TS - 2 * TF, 1)[0]
    bad = [good[0], 100.0, 90.0, 95.0, 96.0, 1.0]  # high < low
    parsed = closed_candles([good, bad], "kraken", "BTC/USD", "1m", NOW_MS)
    assert [c.close for c in parsed.candles] == [good[4]]
    assert len(parsed.rejections) == 1


def test_none_volume_becomes_zero_and_strings_are_numbers() -> None:
    parsed = closed_candles(
        [[OPEN_TS - TF, "97000.5", "97010.0", "96990.1", "97001.0", None]], "kraken", "BTC/USD", "1m", NOW_MS
    )
    (candle,) = parsed.candles
    assert (candle.open, candle.high, candle.low, candle.close) == (97000.5, 97010.0, 96990.1, 97001.0)
    assert candle.volume == 0.0


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ([OPEN_TS - TF, 100.0, 99.0, 101.0, 100.0, 1.0], "high 99.0 < low 101.0"),
        ([OPEN_TS - TF, 100.0, 101.0, 99.0, 102.0, 1.0], "close 102.0 outside"),
        ([OPEN_TS - TF, 0.0, 101.0, 0.0, 100.0, 1.0], "price <= 0"),
        ([OPEN_TS - TF, 100.0, 101.0, 99.0, 100.0, -1.0], "volume -1.0 < 0"),
        ([OPEN_TS - TF, float("nan"), 101.0, 99.0, 100.0, 1.0], "not finite"),
        ([OPEN_TS - TF, None, 101.0, 99.0, 100.0, 1.0], "open is missing"),
        ([OPEN_TS - TF + 1, 100.0, 101.0, 99.0, 100.0, 1.0], "not aligned"),
        (["yesterday", 100.0, 101.0, 99.0, 100.0, 1.0], "not an integer ms timestamp"),
        ([OPEN_TS - TF, 100.0], "row needs"),
    ],
)
def test_bad_rows_are_skipped_and_reported(row: list[Any], reason: str) -> None:
    good = rows(OPEN_TS - 3 * TF, 1)
    parsed = closed_candles([*good, row], "kraken", "BTC/USD", "1m", NOW_MS)
    assert [c.ts for c in parsed.candles] == [OPEN_TS - 3 * TF]
    (rejection,) = parsed.rejections
    assert reason in rejection.reason
    assert rejection.row == tuple(row)


# --- pure: gaps, backoff, backfill plan ----------------------------------------


@pytest.mark.parametrize(
    ("stamps", "gaps"),
    [
        ([], []),
        ([0], []),
        ([0, TF, 2 * TF], []),
        ([0, 2 * TF], [(TF, TF)]),
        ([5 * TF, 0, TF, TF, 9 * TF], [(2 * TF, 4 * TF), (6 * TF, 8 * TF)]),
    ],
)
def test_detect_gaps(stamps: list[int], gaps: list[tuple[int, int]]) -> None:
    assert detect_gaps(stamps, TF) == gaps
    assert missing_bars(gaps, TF) == sum((b - a) // TF + 1 for a, b in gaps)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(60.0, 1.0 * 2**attempt)
        samples = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.5 * ceiling  # it does spread over the whole range
    assert backoff_delay(10_000, 1.0, 60.0, rng) <= 60.0  # no overflow for absurd attempts
    assert backoff_delay(3, 1.0, 60.0, random.Random(5)) == random.Random(5).uniform(0.0, 8.0)


def test_rate_limit_delay_never_retries_at_once() -> None:
    rng = random.Random(2)
    samples = [rate_limit_delay(a, 2.0, 30.0, rng) for a in range(10) for _ in range(50)]
    assert all(2.0 <= s <= 30.0 for s in samples)


def test_plan_backfill() -> None:
    # Nothing held: the window of 100 closed bars ends at 11:59; walk back from the open bar.
    plan = plan_backfill(100, 3, 30, TF, NOW_MS, None)
    assert plan == BackfillPlan(
        start_ms=OPEN_TS - 100 * TF, end_ms=OPEN_TS, bars=100, pages=4, since_ms=OPEN_TS - 90 * TF
    )
    # 40 bars held: 60 missing, two pages of 30 reach the start.
    plan = plan_backfill(100, 3, 30, TF, NOW_MS, OPEN_TS - 40 * TF)
    assert plan is not None
    assert (plan.bars, plan.pages, plan.since_ms) == (60, 2, OPEN_TS - 100 * TF)
    # History already reaches the target, or no budget: nothing to do.
    assert plan_backfill(100, 3, 30, TF, NOW_MS, OPEN_TS - 100 * TF) is None
    assert plan_backfill(100, 0, 30, TF, NOW_MS, None) is None
    assert plan_backfill(0, 3, 30, TF, NOW_MS, None) is None


# --- construction ----------------------------------------------------------------


async def test_make_exchange_turns_the_throttle_on_and_refuses_unknown_ids() -> None:
    exchange = make_exchange("kraken", {"timeout": 5_000})
    try:
        assert isinstance(exchange, ccxt_async.kraken)
        assert exchange.enableRateLimit is True
        assert exchange.timeout == 5_000
    finally:
        exchange.timeout_on_exit = 0
        await exchange.close()
    with pytest.raises(ConfigError) as info:
        make_exchange("krakken", {})
    assert info.value.key == "universe[].exchange"


async def test_source_refuses_a_timeframe_the_exchange_lacks(kraken: Exchange) -> None:
    with pytest.raises(ConfigError, match="no 3m candles"):
        ExchangeSource(kraken, timeframe="3m")  # Kraken has 1, 5, 15, 30, 60, 240, ... minutes
    with pytest.raises(ConfigError, match="unknown timeframe"):
        ExchangeSource(kraken, timeframe="7m")


# --- Kraken, through ccxt's real kraken class ----------------------------------------


async def test_kraken_paginates_forward_over_several_pages(kraken: Exchange) -> None:
    sleep = SleepRecorder()
    replay = KrakenReplay(
        kraken,
        [
            Recorded("ohlc_1m_since_1736940540.json"),
            Recorded("ohlc_1m_since_1736941260.json"),
            Recorded("ohlc_1m_since_1736941980.json"),
        ],
    )
    src = source(kraken, sleep, page_limit=12)

    result = await src.fetch_since("BTC/USD", OPEN_TS - 30 * TF, NOW_MS, max_pages=10)

    # ccxt asks Kraken for one bar before `since` (in seconds) and cuts pages to `limit` itself.
    assert replay.urls == [
        *KRAKEN_MARKET_URLS,
        KRAKEN_OHLC.format(1_736_940_540),
        KRAKEN_OHLC.format(1_736_941_260),
        KRAKEN_OHLC.format(1_736_941_980),
    ]
    replay.assert_all_served()
    assert len(kraken.throttle.costs) == len(replay.urls)  # every request went through ccxt's throttle
    assert (result.stop, result.pages, result.error, result.rejections) == ("caught_up", 3, None, ())
    assert ts_list(result) == [OPEN_TS - 30 * TF + i * TF for i in range(30)]  # 11:30 .. 11:59, no hole, no repeat
    assert sleep.delays == []

    recorded = {r[0] * 1000: r for r in kraken_rows("ohlc_1m_since_1736940540.json")}
    for candle in result.candles:
        _t, o, h, low, c, _vwap, volume, _count = recorded[candle.ts]
        assert (candle.open, candle.high, candle.low, candle.close) == (float(o), float(h), float(low), float(c))
        assert candle.volume == float(volume)  # the volume column, not the vwap one
        assert (candle.exchange, candle.symbol, candle.timeframe) == ("kraken", "BTC/USD", "1m")
    assert result.candles[13].volume == 0.0  # 11:43 had no trades; Kraken still sends the bar


async def test_kraken_open_bar_is_never_returned(kraken: Exchange) -> None:
    replay = KrakenReplay(kraken, [Recorded("ohlc_1m_since_1736942280.json")])
    src = source(kraken, SleepRecorder())
    assert OPEN_TS // 1000 in {r[0] for r in kraken_rows("ohlc_1m_since_1736942280.json")}  # Kraken did send it

    result = await src.fetch_since("BTC/USD", LAST_CLOSED, NOW_MS, max_pages=5)
    assert ts_list(result) == [LAST_CLOSED]
    assert (result.stop, result.pages, result.error) == ("caught_up", 1, None)

    # From the open bar on nothing can be closed yet: no request at all, nothing returned.
    result = await src.fetch_since("BTC/USD", OPEN_TS, NOW_MS, max_pages=5)
    assert (result.candles, result.stop, result.pages) == ((), "caught_up", 0)
    assert replay.urls == [*KRAKEN_MARKET_URLS, KRAKEN_OHLC.format(1_736_942_280)]
    replay.assert_all_served()


async def test_kraken_rate_limit_answer_is_retried_after_a_backoff(kraken: Exchange) -> None:
    sleep = SleepRecorder()
    replay = KrakenReplay(kraken, [Recorded("error_rate_limit.json"), Recorded("ohlc_1m_since_1736942280.json")])
    src = source(kraken, sleep, base_backoff_s=2.0, cap_backoff_s=30.0)

    result = await src.fetch_since("BTC/USD", LAST_CLOSED, NOW_MS, max_pages=5)

    # {"error":["EAPI:Rate limit exceeded"]} is DDoSProtection in ccxt: backed off, then retried.
    assert ts_list(result) == [LAST_CLOSED]
    assert (result.error, result.retries, result.pages) == (None, 1, 1)
    assert len(sleep.delays) == 1
    assert 2.0 <= sleep.delays[0] <= 30.0
    assert result.slept_s == sleep.delays[0]
    assert replay.urls[2:] == [KRAKEN_OHLC.format(1_736_942_280)] * 2
    replay.assert_all_served()


async def test_kraken_gateway_timeout_is_retried(kraken: Exchange) -> None:
    sleep = SleepRecorder()
    replay = KrakenReplay(
        kraken,
        [
            Recorded("gateway_timeout_504.html", status=504, reason="Gateway Time-out"),
            Recorded("ohlc_1m_since_1736942280.json"),
        ],
    )
    result = await source(kraken, sleep).fetch_since("BTC/USD", LAST_CLOSED, NOW_MS, max_pages=5)
    assert ts_list(result) == [LAST_CLOSED]
    assert (result.error, result.retries) == (None, 1)
    assert sleep.delays == [random.Random(7).uniform(0.0, 1.0)]  # attempt 0: full jitter in [0, base]
    replay.assert_all_served()


async def test_kraken_market_load_timeout_is_retried(kraken: Exchange) -> None:
    sleep = SleepRecorder()
    replay = KrakenReplay(
        kraken,
        [Recorded("ohlc_1m_since_1736942280.json")],
        markets=[RequestTimeout("kraken GET https://api.kraken.com/0/public/Assets"), *_markets()],
    )
    result = await source(kraken, sleep).fetch_since("BTC/USD", LAST_CLOSED, NOW_MS, max_pages=5)
    assert ts_list(result) == [LAST_CLOSED]
    assert replay.urls == [KRAKEN_MARKET_URLS[0], *KRAKEN_MARKET_URLS, KRAKEN_OHLC.format(1_736_942_280)]
    assert len(sleep.delays) == 1
    replay.assert_all_served()


def _markets() -> list[Step]:
    return [Recorded("assets.json"), Recorded("asset_pairs.json")]


async def test_kraken_retries_exhausted_is_reported_not_raised(kraken: Exchange) -> None:
    sleep = SleepRecorder()
    timeout = Recorded("gateway_timeout_504.html", status=504, reason="Gateway Time-out")
    replay = KrakenReplay(kraken, [timeout, timeout, timeout])
    src = source(kraken, sleep, max_retries=2, base_backoff_s=1.0, cap_backoff_s=3.0)

    result = await src.fetch_since("BTC/USD", LAST_CLOSED, NOW_MS, max_pages=5)

    assert result.candles == ()
    assert (result.stop, result.pages, result.retries) == ("error", 0, 2)
    assert result.error is not None
    assert result.error.startswith("RequestTimeout: kraken GET https://api.kraken.com/0/public/OHLC")
    assert len(result.error) <= 300
    assert len(sleep.delays) == 2
    assert all(0.0 <= d <= 3.0 for d in sleep.delays)
    assert "error: RequestTimeout" in result.message
    replay.assert_all_served()


async def test_kraken_unknown_pair_is_not_retried(kraken: Exchange) -> None:
    sleep = SleepRecorder()
    replay = KrakenReplay(kraken, [Recorded("error_unknown_pair.json")])
    result = await source(kraken, sleep).fetch_since("BTC/USD", LAST_CLOSED, NOW_MS, max_pages=5)
    assert result.error is not None
    assert result.error.startswith('ExchangeError: kraken {"error":["EQuery:Unknown asset pair"]}')
    assert (sleep.delays, result.retries) == ([], 0)
    replay.assert_all_served()


async def test_kraken_bad_symbol_is_not_retried_and_never_requested(kraken: Exchange) -> None:
    sleep = SleepRecorder()
    replay = KrakenReplay(kraken, [])
    result = await source(kraken, sleep).fetch_since("DOGE/XYZ", LAST_CLOSED, NOW_MS, max_pages=5)
    assert result.error is not None
    assert result.error.startswith(BadSymbol.__name__)
    assert (sleep.delays, result.pages) == ([], 0)
    assert replay.urls == KRAKEN_MARKET_URLS  # markets loaded; no OHLC request for a pair Kraken does not list
    replay.assert_all_served()


async def test_kraken_backfill_stops_where_krakens_720_bars_end(kraken: Exchange) -> None:
    # Kraken keeps only its newest 720 bars, whatever `since` asks for: both pages below get that same answer.
    latest = Recorded("ohlc_1m_latest_720.json")
    replay = KrakenReplay(kraken, [latest, latest])
    src = source(kraken, SleepRecorder(), page_limit=720)
    oldest_held = OPEN_TS - 600 * TF

    result = await src.backfill("BTC/USD", target_candles=2000, max_pages=5, now_ms=NOW_MS, oldest_ts=oldest_held)

    first_since = oldest_held - 720 * TF
    second_since = OPEN_TS - 719 * TF - 720 * TF
    assert replay.urls[2:] == [
        KRAKEN_OHLC.format(first_since // 1000 - 60),
        KRAKEN_OHLC.format(second_since // 1000 - 60),
    ]
    assert ts_list(result) == [OPEN_TS - 719 * TF + i * TF for i in range(119)]  # up to the bar before oldest_held
    assert (result.stop, result.pages, result.error) == ("no_older_history", 2, None)
    replay.assert_all_served()


# --- unified format (ccxt rows), exchange-agnostic behaviour ------------------------------


async def test_pagination_follows_the_newest_bar_of_each_page(binance: Exchange) -> None:
    history = rows(OPEN_TS - 25 * TF, 26)  # 11:35 .. 12:00 (open)
    fake = ScriptedOhlcv([history[0:10], history[10:20], history[20:26]])
    binance.fetch_ohlcv = fake
    result = await source(binance, SleepRecorder(), page_limit=10).fetch_since(
        "BTC/USDT", OPEN_TS - 25 * TF, NOW_MS, max_pages=10
    )
    assert fake.sinces == [OPEN_TS - 25 * TF, OPEN_TS - 15 * TF, OPEN_TS - 5 * TF]
    assert {c[3] for c in fake.calls} == {10}
    assert ts_list(result) == [r[0] for r in history[:-1]]
    assert (result.stop, result.pages) == ("caught_up", 3)
    assert result.candles[0].exchange == "binance"


async def test_duplicates_across_pages_appear_once(binance: Exchange) -> None:
    history = rows(OPEN_TS - 10 * TF, 11)
    revised = [history[4][0], 200.0, 210.0, 190.0, 205.0, 42.0]  # page 2 repeats 11:54 with revised values
    fake = ScriptedOhlcv([history[0:5], [revised, *history[5:11]]])
    binance.fetch_ohlcv = fake
    result = await source(binance, SleepRecorder(), page_limit=5).fetch_since(
        "BTC/USDT", OPEN_TS - 10 * TF, NOW_MS, max_pages=10
    )
    assert ts_list(result) == [r[0] for r in history[:-1]]
    assert result.candles[4].close == 205.0


async def test_an_empty_page_stops_pagination(binance: Exchange) -> None:
    fake = ScriptedOhlcv([rows(OPEN_TS - 30 * TF, 10), []])
    binance.fetch_ohlcv = fake
    result = await source(binance, SleepRecorder(), page_limit=10).fetch_since(
        "BTC/USDT", OPEN_TS - 30 * TF, NOW_MS, max_pages=10
    )
    assert len(fake.calls) == 2
    assert (result.stop, len(result.candles), result.error) == ("empty_page", 10, None)


async def test_a_page_that_does_not_advance_stops_pagination(binance: Exchange) -> None:
    same = rows(OPEN_TS - 30 * TF, 10)
    fake = ScriptedOhlcv([same, same, same])  # an exchange that ignores `since`
    binance.fetch_ohlcv = fake
    result = await source(binance, SleepRecorder(), page_limit=10).fetch_since(
        "BTC/USDT", OPEN_TS - 30 * TF, NOW_MS, max_pages=10
    )
    assert len(fake.calls) == 2
    assert (result.stop, len(result.candles)) == ("no_advance", 10)


async def test_max_pages_bounds_a_run(binance: Exchange) -> None:
    fake = SeriesOhlcv(OPEN_TS - 100 * TF, NOW_MS)
    binance.fetch_ohlcv = fake
    result = await source(binance, SleepRecorder(), page_limit=10).fetch_since(
        "BTC/USDT", OPEN_TS - 100 * TF, NOW_MS, max_pages=3
    )
    assert (result.stop, result.pages, len(result.candles)) == ("max_pages", 3, 30)
    resumed = await source(binance, SleepRecorder(), page_limit=10).fetch_since(
        "BTC/USDT", result.candles[-1].ts + TF, NOW_MS, max_pages=20
    )
    assert (resumed.stop, len(resumed.candles)) == ("caught_up", 70)
    assert resumed.newest_ts == LAST_CLOSED


async def test_rate_limit_then_success_backs_off_through_the_injected_sleep(binance: Exchange) -> None:
    sleep = SleepRecorder()
    fake = ScriptedOhlcv([RateLimitExceeded("binance 429"), RateLimitExceeded("binance 429"), rows(LAST_CLOSED, 2)])
    binance.fetch_ohlcv = fake
    src = source(binance, sleep, base_backoff_s=1.0, cap_backoff_s=60.0, rng=random.Random(11))

    result = await src.fetch_since("BTC/USDT", LAST_CLOSED, NOW_MS, max_pages=5)

    expected_rng = random.Random(11)
    assert sleep.delays == [rate_limit_delay(0, 1.0, 60.0, expected_rng), rate_limit_delay(1, 1.0, 60.0, expected_rng)]
    assert all(d >= 1.0 for d in sleep.delays)
    assert fake.sinces == [LAST_CLOSED] * 3  # the same page is asked again
    assert (ts_list(result), result.retries, result.error) == ([LAST_CLOSED], 2, None)


async def test_timeout_then_success(binance: Exchange) -> None:
    sleep = SleepRecorder()
    fake = ScriptedOhlcv([RequestTimeout("binance GET timed out (10000 ms)"), rows(LAST_CLOSED, 2)])
    binance.fetch_ohlcv = fake
    result = await source(binance, sleep).fetch_since("BTC/USDT", LAST_CLOSED, NOW_MS, max_pages=5)
    assert (ts_list(result), result.retries, len(sleep.delays)) == ([LAST_CLOSED], 1, 1)


async def test_retries_exhausted_keeps_what_came_before(binance: Exchange) -> None:
    sleep = SleepRecorder()
    first = rows(OPEN_TS - 20 * TF, 10)
    down = [ExchangeNotAvailable("binance 503 Service Unavailable") for _ in range(4)]
    fake = ScriptedOhlcv([first, *down])
    binance.fetch_ohlcv = fake
    src = source(binance, sleep, page_limit=10, max_retries=3, base_backoff_s=0.5, cap_backoff_s=2.0)

    result = await src.fetch_since("BTC/USDT", OPEN_TS - 20 * TF, NOW_MS, max_pages=10)

    assert ts_list(result) == [r[0] for r in first]
    assert (result.stop, result.pages, result.retries) == ("error", 1, 3)
    assert result.error == "ExchangeNotAvailable: binance 503 Service Unavailable"
    assert len(sleep.delays) == 3
    assert [min(2.0, 0.5 * 2**a) >= d for a, d in enumerate(sleep.delays)] == [True] * 3
    assert not fake.steps


async def test_other_exchange_errors_are_not_retried(binance: Exchange) -> None:
    sleep = SleepRecorder()
    binance.fetch_ohlcv = ScriptedOhlcv([ExchangeError('binance {"code":-1121,"msg":"Invalid symbol."}')])
    result = await source(binance, sleep).fetch_since("BTC/USDT", LAST_CLOSED, NOW_MS, max_pages=5)
    assert result.error == 'ExchangeError: binance {"code":-1121,"msg":"Invalid symbol."}'
    assert (sleep.delays, result.stop) == ([], "error")


async def test_bad_rows_from_the_exchange_are_reported(binance: Exchange) -> None:
    page = rows(OPEN_TS - 5 * TF, 6)
    page[2] = [page[2][0], 100.0, 90.0, 95.0, 96.0, 1.0]  # high < low
    binance.fetch_ohlcv = ScriptedOhlcv([page])
    result = await source(binance, SleepRecorder()).fetch_since("BTC/USDT", OPEN_TS - 5 * TF, NOW_MS, max_pages=5)
    assert ts_list(result) == [page[i][0] for i in (0, 1, 3, 4)]
    (rejection,) = result.rejections
    assert (rejection.ts, rejection.reason) == (page[2][0], "high 90.0 < low 95.0")
    assert "1 rows rejected" in result.message


async def test_gap_is_detected_and_filled(binance: Exchange) -> None:
    fake = SeriesOhlcv(OPEN_TS - 30 * TF, NOW_MS)
    missing = OPEN_TS - 12 * TF
    fake.hidden = {missing}  # the exchange lost 11:48 on the first answer
    binance.fetch_ohlcv = fake
    src = source(binance, SleepRecorder(), page_limit=50)

    synced = await src.fetch_since("BTC/USDT", OPEN_TS - 30 * TF, NOW_MS, max_pages=5)
    gaps = detect_gaps(ts_list(synced), TF)
    assert gaps == [(missing, missing)]

    fake.hidden = set()
    filled = await src.fill_gaps("BTC/USDT", gaps, NOW_MS)
    assert ts_list(filled) == [missing]
    assert (filled.stop, filled.pages, filled.error) == ("caught_up", 1, None)
    assert fake.sinces[-1] == missing
    assert detect_gaps([*ts_list(synced), *ts_list(filled)], TF) == []


async def test_fill_gaps_pages_long_gaps_within_the_budget(binance: Exchange) -> None:
    fake = SeriesOhlcv(OPEN_TS - 200 * TF, NOW_MS)
    binance.fetch_ohlcv = fake
    src = source(binance, SleepRecorder(), page_limit=10)
    gaps = [(OPEN_TS - 190 * TF, OPEN_TS - 166 * TF), (OPEN_TS - 100 * TF, OPEN_TS - 100 * TF)]

    result = await src.fill_gaps("BTC/USDT", gaps, NOW_MS)
    assert ts_list(result) == [OPEN_TS - (190 - i) * TF for i in range(25)] + [OPEN_TS - 100 * TF]
    assert result.pages == 4  # 25 bars in pages of 10, then the single bar

    bounded = await src.fill_gaps("BTC/USDT", gaps, NOW_MS, max_pages=2)
    assert (bounded.stop, bounded.pages, len(bounded.candles)) == ("max_pages", 2, 20)
    partly = await src.fill_gaps("BTC/USDT", gaps[:1], NOW_MS, max_pages=1)
    assert (partly.stop, partly.pages, len(partly.candles)) == ("max_pages", 1, 10)


async def test_backfill_walks_back_toward_the_target_within_max_pages(binance: Exchange) -> None:
    fake = SeriesOhlcv(OPEN_TS - 500 * TF, NOW_MS)
    binance.fetch_ohlcv = fake
    src = source(binance, SleepRecorder(), page_limit=15)
    oldest_held = OPEN_TS - 20 * TF

    first = await src.backfill("BTC/USDT", target_candles=60, max_pages=2, now_ms=NOW_MS, oldest_ts=oldest_held)
    assert fake.sinces == [oldest_held - 15 * TF, oldest_held - 30 * TF]
    assert ts_list(first) == [oldest_held - (30 - i) * TF for i in range(30)]
    assert (first.stop, first.pages) == ("max_pages", 2)

    second = await src.backfill("BTC/USDT", target_candles=60, max_pages=5, now_ms=NOW_MS, oldest_ts=first.oldest_ts)
    assert ts_list(second) == [OPEN_TS - (60 - i) * TF for i in range(10)]  # the last page is cut at the target
    assert fake.sinces[2:] == [OPEN_TS - 60 * TF]
    assert (second.stop, second.pages) == ("target_reached", 1)

    done = await src.backfill("BTC/USDT", target_candles=60, max_pages=5, now_ms=NOW_MS, oldest_ts=second.oldest_ts)
    assert (done.stop, done.pages, done.candles) == ("target_reached", 0, ())
    assert len(fake.calls) == 3


async def test_backfill_with_nothing_held_starts_from_now_without_the_open_bar(binance: Exchange) -> None:
    fake = SeriesOhlcv(OPEN_TS - 500 * TF, NOW_MS)
    binance.fetch_ohlcv = fake
    result = await source(binance, SleepRecorder(), page_limit=50).backfill(
        "BTC/USDT", target_candles=120, max_pages=10, now_ms=NOW_MS, oldest_ts=None
    )
    assert fake.sinces == [OPEN_TS - 50 * TF, OPEN_TS - 100 * TF, OPEN_TS - 120 * TF]
    assert ts_list(result) == [OPEN_TS - (120 - i) * TF for i in range(120)]
    assert result.newest_ts == LAST_CLOSED
    assert result.stop == "target_reached"


async def test_backfill_stops_when_the_exchange_has_no_older_bars(binance: Exchange) -> None:
    fake = SeriesOhlcv(OPEN_TS - 40 * TF, NOW_MS)  # the listing is 40 minutes old
    binance.fetch_ohlcv = fake
    result = await source(binance, SleepRecorder(), page_limit=30).backfill(
        "BTC/USDT", target_candles=2000, max_pages=10, now_ms=NOW_MS, oldest_ts=None
    )
    assert ts_list(result) == [OPEN_TS - (40 - i) * TF for i in range(40)]
    assert result.stop == "no_older_history"
    assert len(fake.calls) == 3
    assert math.isclose(result.slept_s, 0.0)
