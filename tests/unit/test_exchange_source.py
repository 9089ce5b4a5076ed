"""ExchangeSource's pure decisions, and its behaviour on ccxt's unified format, with no network.

The exchange is a real ``ccxt.async_support.binance`` instance whose ``fetch_ohlcv``
serves ccxt-format rows (scripted pages, or a small exchange-like series), and whose
``fetch`` fails the test if anything tries to reach the network. Sleeping goes through
an injected recorder: no test waits for a backoff. Kraken's own answers, replayed
through ccxt's real kraken class, are in ``test_exchange_source_kraken.py``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import pytest
from ccxt.async_support.base.exchange import Exchange
from ccxt.base.errors import ExchangeError, ExchangeNotAvailable, RateLimitExceeded, RequestTimeout

from services.ohlcv_ingest.exchange import (
    BackfillPlan,
    backoff_delay,
    closed_candles,
    detect_gaps,
    make_exchange,
    missing_bars,
    plan_backfill,
    rate_limit_delay,
)
from tests.unit.exchange_source_helpers import LAST_CLOSED, NOW_MS, OPEN_TS, TF, SleepRecorder, rows, source, ts_list

# --- helpers -----------------------------------------------------------------


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


# --- fixtures ----------------------------------------------------------------


@pytest.fixture
async def binance() -> AsyncIterator[Exchange]:
    exchange = make_exchange("binance", {})
    exchange.timeout_on_exit = 0
    exchange.fetch = NoNetwork()
    yield exchange
    await exchange.close()


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
