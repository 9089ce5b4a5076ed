"""ExchangeSource against Kraken, replayed from recorded answers with no network; and building exchanges.

The exchange is the real ``ccxt.async_support.kraken`` class, with its low-level HTTP
call (``fetch``) replaced by :class:`KrakenReplay`, which serves recorded raw Kraken
bodies from tests/fixtures/kraken/ (markets, OHLC pages, error bodies, a 504 page) and
records every URL. ccxt's own request building, market loading, response parsing, error
mapping and rate-limit throttle all run. Sleeping goes through an injected recorder.
"""

from __future__ import annotations

import json
import random
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt_async
import pytest
from ccxt.async_support.base.exchange import Exchange
from ccxt.base.errors import BadSymbol, RequestTimeout

from services.ohlcv_ingest.exchange import ExchangeSource, make_exchange
from shared.domain.errors import ConfigError
from tests.unit.exchange_source_helpers import LAST_CLOSED, NOW_MS, OPEN_TS, TF, SleepRecorder, source, ts_list

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kraken"
KRAKEN_OHLC = "https://api.kraken.com/0/public/OHLC?pair=XXBTZUSD&interval=1&since={}"
KRAKEN_MARKET_URLS = ["https://api.kraken.com/0/public/Assets", "https://api.kraken.com/0/public/AssetPairs"]


# --- helpers -----------------------------------------------------------------


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


def kraken_rows(file: str) -> list[list[Any]]:
    return json.loads((FIXTURES / file).read_text())["result"]["XXBTZUSD"]


# --- fixtures ----------------------------------------------------------------


@pytest.fixture
async def kraken() -> AsyncIterator[Exchange]:
    # rateLimit 1 ms keeps ccxt's real throttle in the path without making the tests wait.
    exchange = make_exchange("kraken", {"rateLimit": 1})
    exchange.timeout_on_exit = 0  # close() otherwise sleeps 250 ms for sockets these tests never open
    exchange.throttle = ThrottleSpy(exchange.throttle)
    yield exchange
    await exchange.close()


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
