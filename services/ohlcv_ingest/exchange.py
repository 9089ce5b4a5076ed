"""Exchange source for ohlcv_ingest: closed candles from one ccxt exchange, paged, retried, never raising.

Two layers, as everywhere in the stack:

- pure decisions (no I/O, no clock, no randomness of their own): which rows are
  closed, valid, new candles (:func:`closed_candles`), where bars are missing
  (:func:`detect_gaps`), how long to back off (:func:`backoff_delay`), how far a
  backfill should reach (:func:`plan_backfill`);
- :class:`ExchangeSource`, the I/O around one ``ccxt.async_support`` exchange and
  one timeframe: forward pagination (:meth:`ExchangeSource.fetch_since`),
  backward warm-up (:meth:`ExchangeSource.backfill`) and gap repair
  (:meth:`ExchangeSource.fill_gaps`).

Rate limits are handled twice, on purpose: ccxt's own ``enableRateLimit``
throttle spaces requests before they leave, and a ``RateLimitExceeded`` /
``DDoSProtection`` answer (the exchange disagreeing with that spacing, or
another client sharing the IP) is retried after a backoff. Network trouble
(``RequestTimeout``, ``ExchangeNotAvailable``, any other ``NetworkError``) is
retried with exponential backoff and full jitter up to ``max_retries``. Every
other ccxt error (``BadSymbol``, ``ExchangeError``, ...) is not retried. No ccxt
error leaves these methods: it ends the run and is reported in
:attr:`FetchResult.error`, with everything fetched before it, so the service
keeps running and shows the error in its pipeline telemetry.

Units: timestamps are integer ms since the epoch, UTC, and a candle's ``ts`` is
its open time; delays are seconds; counts and page sizes are bars.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import ccxt.async_support as ccxt_async
from ccxt.async_support.base.exchange import Exchange
from ccxt.base.errors import (
    BaseError,
    DDoSProtection,
    ExchangeNotAvailable,
    NetworkError,
    RateLimitExceeded,
    RequestTimeout,
)

from services.ohlcv_ingest.core import detect_gaps, missing_bars
from shared.domain.contracts import Candle
from shared.domain.errors import ConfigError, ContractError
from shared.domain.subjects import timeframe_ms

logger = logging.getLogger(__name__)

StopReason = Literal[
    "caught_up",  # reached the newest closed bar (or the end of the range asked for)
    "empty_page",  # the exchange answered with no rows
    "no_advance",  # a page brought nothing newer than the last: the exchange ignores `since`
    "max_pages",  # the page budget ran out before the range was covered
    "target_reached",  # backfill: history now reaches back to the target (or nothing was missing)
    "no_older_history",  # backfill: the exchange has nothing older (Kraken keeps only 720 bars)
    "error",  # a ccxt error ended the run; see FetchResult.error
]

_ERROR_MAX_CHARS = 300  # ccxt puts whole response bodies (HTML error pages) in messages; telemetry wants a line


# --- pure decisions -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """An exchange row that could not become a :class:`Candle`, kept so it can be counted and shown."""

    ts: int | None  # the row's open time (ms) when it had a usable one
    reason: str
    row: tuple[Any, ...]  # the row as the exchange sent it


class ParsedRows(NamedTuple):
    """What :func:`closed_candles` made of a batch of rows."""

    candles: list[Candle]  # closed, valid, one per ts, oldest first
    rejections: list[Rejection]  # rows that broke the candle contract, with the reason


def row_ts(row: object) -> int | None:
    """Open time (ms) of a ccxt OHLCV row ``[ms, o, h, l, c, v]``; None when it has no usable one."""
    if not isinstance(row, (list, tuple)) or not row:
        return None
    ts = row[0]
    if isinstance(ts, bool):
        return None
    if isinstance(ts, int):
        return ts
    if isinstance(ts, float) and ts.is_integer():
        return int(ts)
    return None


def _price(value: object, name: str) -> float:
    # Exchanges send strings or numbers; bools and non-finite values are refused here because
    # Candle.check compares with <=, which NaN silently passes.
    if value is None:
        raise ContractError(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ContractError(f"{name} {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ContractError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ContractError(f"{name} {number} is not finite")
    return number


def to_candle(row: Sequence[Any], exchange: str, symbol: str, timeframe: str) -> Candle:
    """One ccxt row ``[ms, open, high, low, close, volume]`` -> a checked Candle; ContractError says why not.

    A missing volume (ccxt gives None when the exchange omits it) counts as 0 base units.
    """
    if not isinstance(row, (list, tuple)) or len(row) < 5:
        raise ContractError(f"row needs [ts, open, high, low, close, volume], got {row!r}")
    ts = row_ts(row)
    if ts is None:
        raise ContractError(f"ts {row[0]!r} is not an integer ms timestamp")
    raw_volume = row[5] if len(row) > 5 else None
    candle = Candle(
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        ts=ts,
        open=_price(row[1], "open"),
        high=_price(row[2], "high"),
        low=_price(row[3], "low"),
        close=_price(row[4], "close"),
        volume=0.0 if raw_volume is None else _price(raw_volume, "volume"),
    )
    candle.check()
    return candle


def closed_candles(
    rows: Iterable[Sequence[Any]],
    exchange: str,
    symbol: str,
    timeframe: str,
    now_ms: int,
    *,
    after_ts: int | None = None,
) -> ParsedRows:
    """Closed, valid, new candles from ccxt OHLCV rows (any order, possibly several pages concatenated).

    - A bar is closed when ``ts + timeframe <= now_ms``; the still-open bar is dropped silently
      (it is expected in every answer, not an error).
    - Rows with ``ts <= after_ts`` (ms; the newest candle already published) are dropped silently.
    - Duplicates (same ts, e.g. pages that overlap) give one candle: the latest valid row wins,
      since a later answer carries the exchange's latest word on that bar.
    - Rows that break the candle contract (misaligned ts, price <= 0, high < low, NaN, ...) are
      skipped and returned as rejections with the reason.

    Candles come back sorted by ts, oldest first.
    """
    tf_ms = timeframe_ms(timeframe)
    by_ts: dict[int, Candle] = {}
    rejections: list[Rejection] = []
    for row in rows:
        ts = row_ts(row)
        if ts is not None and ((after_ts is not None and ts <= after_ts) or ts + tf_ms > now_ms):
            continue
        try:
            candle = to_candle(row, exchange, symbol, timeframe)
        except ContractError as exc:
            kept = tuple(row) if isinstance(row, (list, tuple)) else (row,)
            rejections.append(Rejection(ts=ts, reason=exc.reason, row=kept))
            continue
        by_ts[candle.ts] = candle
    return ParsedRows([by_ts[ts] for ts in sorted(by_ts)], rejections)


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt + 1`` (attempt 0 = after the first failure).

    Exponential backoff with full jitter: uniform in ``[0, min(cap_s, base_s * 2**attempt)]``,
    so clients that failed together do not retry together.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    # The exponent is clamped because 2**attempt overflows a float long before it matters:
    # the cap has long been reached by then.
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 64))
    return rng.uniform(0.0, max(0.0, ceiling))


def rate_limit_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait after a rate-limit answer: ``base_s`` plus the full-jitter backoff, at most ``cap_s``.

    Unlike a timeout, a rate-limit answer means "not now": retrying at once (which full jitter
    allows) would only spend more of the budget, hence the floor of ``base_s``.
    """
    return min(cap_s, base_s + backoff_delay(attempt, base_s, cap_s, rng))


def current_open_ts(now_ms: int, tf_ms: int) -> int:
    """Open time (ms) of the bar that is still open at ``now_ms``."""
    return now_ms // tf_ms * tf_ms


def last_closed_ts(now_ms: int, tf_ms: int) -> int:
    """Open time (ms) of the newest bar that is closed at ``now_ms``."""
    return current_open_ts(now_ms, tf_ms) - tf_ms


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """How far back a backfill should reach. All timestamps are bar open times, ms."""

    start_ms: int  # oldest bar of the target window: the target_candles closed bars ending at the newest closed bar
    end_ms: int  # exclusive: the oldest bar already held, or the open bar when nothing is held
    bars: int  # bars missing in [start_ms, end_ms)
    pages: int  # pages needed if the exchange has every bar (may exceed max_pages)
    since_ms: int  # oldest bar this run can reach with max_pages full pages (>= start_ms)


def plan_backfill(
    target_candles: int,
    max_pages: int,
    page_limit: int,
    tf_ms: int,
    now_ms: int,
    oldest_known_ts: int | None,
) -> BackfillPlan | None:
    """Where a backward backfill should go, or None when history already reaches the target.

    ``target_candles`` (bars, e.g. HMM_TRAINING_CANDLES) closed bars ending at the newest closed
    bar form the target window; the backfill walks back from ``oldest_known_ts`` (ms, the oldest
    bar held) or, with nothing held, from the open bar, toward the window's start, at most
    ``max_pages`` pages of ``page_limit`` bars.
    """
    if target_candles <= 0 or max_pages <= 0 or page_limit <= 0:
        return None
    open_ts = current_open_ts(now_ms, tf_ms)
    start = open_ts - target_candles * tf_ms
    end = open_ts if oldest_known_ts is None else min(oldest_known_ts, open_ts)
    if end <= start:
        return None
    bars = (end - start) // tf_ms
    return BackfillPlan(
        start_ms=start,
        end_ms=end,
        bars=bars,
        pages=math.ceil(bars / page_limit),
        since_ms=max(start, end - max_pages * page_limit * tf_ms),
    )


def describe_error(exc: BaseException) -> str:
    """One line for telemetry: the ccxt class name and the start of its message."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _ERROR_MAX_CHARS else text[: _ERROR_MAX_CHARS - 1] + "…"


# --- results -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one fetch_since / backfill / fill_gaps run brought back.

    ``candles`` holds everything valid fetched before the run stopped, also when it stopped on
    an error: partial progress is kept, the caller publishes it (candles are idempotent).
    """

    candles: tuple[Candle, ...]  # closed, valid, deduplicated, oldest first
    pages: int  # fetch_ohlcv calls that answered (retried failures not counted)
    rejections: tuple[Rejection, ...]  # rows refused by the candle contract
    error: str | None  # the ccxt error that ended the run ("RequestTimeout: ..."), None when none did
    stop: StopReason  # why the run stopped
    retries: int = 0  # failed calls that were retried
    slept_s: float = 0.0  # total backoff before those retries, s

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def newest_ts(self) -> int | None:
        """Open time (ms) of the newest candle fetched, None when none was."""
        return self.candles[-1].ts if self.candles else None

    @property
    def oldest_ts(self) -> int | None:
        """Open time (ms) of the oldest candle fetched, None when none was."""
        return self.candles[0].ts if self.candles else None

    @property
    def message(self) -> str:
        """A one-line summary for telemetry (e.g. PipelineStatus.backfill_last_message)."""
        parts = [f"{len(self.candles)} candles in {self.pages} pages", f"stop={self.stop}"]
        if self.retries:
            parts.append(f"{self.retries} retries ({self.slept_s:.1f}s backoff)")
        if self.rejections:
            parts.append(f"{len(self.rejections)} rows rejected")
        if self.error:
            parts.append(f"error: {self.error}")
        return ", ".join(parts)


@dataclass(slots=True)
class _Run:
    """Accumulator for one run; lives only for the duration of one public call."""

    rows: list[Sequence[Any]] = field(default_factory=list)  # raw rows in fetch order
    pages: int = 0
    retries: int = 0
    slept_s: float = 0.0
    error: str | None = None


# --- I/O ---------------------------------------------------------------------

Sleep = Callable[[float], Awaitable[Any]]


def make_exchange(exchange_id: str, options: Mapping[str, Any]) -> Exchange:
    """A ``ccxt.async_support`` exchange by id, with ccxt's rate-limit throttle on.

    ``options`` is ccxt's constructor config (``timeout`` in ms, ``options``, keys...); it may
    override ``enableRateLimit``. Raises ConfigError("universe[].exchange", ...) for an id
    ccxt does not know.
    """
    if exchange_id not in ccxt_async.exchanges:
        raise ConfigError("universe[].exchange", f"{exchange_id!r} is not a ccxt exchange id")
    exchange_class = getattr(ccxt_async, exchange_id)
    return exchange_class({"enableRateLimit": True, **options})


class ExchangeSource:
    """Closed candles of one timeframe from one ccxt async exchange.

    The exchange object is passed in (see :func:`make_exchange`) and owned by the caller, who
    closes it (or calls :meth:`close`). ``page_limit`` is bars per request; ``max_retries`` is
    retries per request after the first failure (so up to ``max_retries + 1`` attempts);
    ``base_backoff_s`` / ``cap_backoff_s`` bound the backoff, s. ``rng`` and ``sleep`` are
    injected so tests neither wait nor depend on chance.
    """

    def __init__(
        self,
        exchange: Exchange,
        *,
        timeframe: str,
        page_limit: int = 720,
        max_retries: int = 5,
        base_backoff_s: float = 1.0,
        cap_backoff_s: float = 60.0,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        try:
            self._tf_ms = timeframe_ms(timeframe)
        except ContractError as exc:
            raise ConfigError("universe[].timeframe", exc.reason) from None
        if not exchange.has.get("fetchOHLCV"):
            raise ConfigError("universe[].exchange", f"{exchange.id} has no OHLCV endpoint in ccxt")
        if exchange.timeframes and timeframe not in exchange.timeframes:
            raise ConfigError(
                "universe[].timeframe",
                f"{exchange.id} has no {timeframe} candles (it has {', '.join(exchange.timeframes)})",
            )
        if page_limit < 1:
            raise ConfigError("page_limit", f"must be >= 1, got {page_limit}")
        if max_retries < 0:
            raise ConfigError("max_retries", f"must be >= 0, got {max_retries}")
        if not 0 <= base_backoff_s <= cap_backoff_s:
            raise ConfigError("backoff", f"need 0 <= base ({base_backoff_s}) <= cap ({cap_backoff_s})")
        if not exchange.enableRateLimit:
            logger.warning("%s: ccxt enableRateLimit is off; only retries will absorb rate limits", exchange.id)
        self._exchange = exchange
        self.timeframe = timeframe
        self.page_limit = page_limit
        self.max_retries = max_retries
        self.base_backoff_s = base_backoff_s
        self.cap_backoff_s = cap_backoff_s
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep

    @property
    def exchange_id(self) -> str:
        """ccxt id, also the ``exchange`` of every candle produced."""
        return str(self._exchange.id)

    @property
    def tf_ms(self) -> int:
        """Bar length, ms."""
        return self._tf_ms

    async def close(self) -> None:
        """Close the underlying exchange (its HTTP session)."""
        await self._exchange.close()

    # --- public runs -----------------------------------------------------

    async def fetch_since(self, symbol: str, since_ms: int, now_ms: int, max_pages: int) -> FetchResult:
        """Closed candles with ``ts >= since_ms`` (ms, usually the last published ts + one bar), paging forward.

        Stops when caught up with the newest closed bar at ``now_ms``, on an empty page, on a page
        that brings nothing newer than the previous one (an exchange answering the same page
        forever), after ``max_pages`` pages, or on an error.
        """
        run = _Run()
        stop = await self._forward(run, symbol, since_ms, last_closed_ts(now_ms, self._tf_ms), max_pages)
        return self._result(run, symbol, now_ms, stop, after_ts=since_ms - 1)

    async def backfill(
        self, symbol: str, target_candles: int, max_pages: int, now_ms: int, oldest_ts: int | None
    ) -> FetchResult:
        """Older closed candles, walking back from ``oldest_ts`` (ms; None: from now) toward ``target_candles`` bars.

        Each page asks for the ``page_limit`` bars just before the oldest bar reached so far and
        keeps only those (bars newer than ``oldest_ts`` are already held). Stops when history
        reaches the target window's start, when the exchange has nothing older (Kraken serves
        only its newest 720 bars), after ``max_pages`` pages, or on an error.
        """
        run = _Run()
        plan = plan_backfill(target_candles, max_pages, self.page_limit, self._tf_ms, now_ms, oldest_ts)
        if plan is None:
            return self._result(run, symbol, now_ms, "target_reached")
        end = plan.end_ms
        stop: StopReason = "max_pages"
        for _ in range(max_pages):
            since = max(plan.start_ms, end - self.page_limit * self._tf_ms)
            page = await self._page(run, symbol, since)
            if page is None:
                stop = "error"
                break
            if not page:
                stop = "empty_page"
                break
            window = [row for row in page if _in_range(row, since, end - self._tf_ms)]
            run.rows.extend(window)
            stamps = [ts for ts in map(row_ts, window) if ts is not None]
            if not stamps:
                stop = "no_older_history"
                break
            # Continue from the oldest bar actually received, not from `since`: an exchange that
            # returns fewer bars than asked (a smaller cap, a hole) must not leave a gap behind.
            end = min(stamps)
            if end <= plan.start_ms:
                stop = "target_reached"
                break
        return self._result(run, symbol, now_ms, stop)

    async def fill_gaps(
        self, symbol: str, gaps: Iterable[tuple[int, int]], now_ms: int, max_pages: int | None = None
    ) -> FetchResult:
        """Candles inside ``gaps`` (inclusive ``(first_ts, last_ts)`` ranges, ms, as :func:`detect_gaps` gives).

        Each gap is paged forward from its first bar; ``max_pages`` bounds the pages of the whole
        call (None: as many as the gaps need if the exchange has every bar). Bars the exchange
        does not have stay missing; the first error ends the call (the exchange is likely down,
        and the remaining gaps are found again next time).
        """
        run = _Run()
        last_closed = last_closed_ts(now_ms, self._tf_ms)
        budget = max_pages
        stop: StopReason = "caught_up"
        for first, last in sorted(gaps):
            last = min(last, last_closed)
            if first > last:
                continue
            need = math.ceil(((last - first) // self._tf_ms + 1) / self.page_limit)
            pages = need if budget is None else min(need, budget)
            if pages <= 0:
                stop = "max_pages"
                break
            before = run.pages
            gap_stop = await self._forward(run, symbol, first, last, pages)
            if budget is not None:
                budget -= run.pages - before
            if gap_stop == "error":
                break
            if gap_stop == "max_pages":
                stop = "max_pages"  # this gap is only partly covered; it is found again next time
        return self._result(run, symbol, now_ms, stop)

    # --- internals -------------------------------------------------------

    async def _forward(self, run: _Run, symbol: str, since_ms: int, until_ts: int, max_pages: int) -> StopReason:
        """Page forward from ``since_ms`` until bar ``until_ts`` (inclusive, ms) is covered; rows go into ``run``."""
        cursor = since_ms
        newest_seen = since_ms - 1
        for _ in range(max_pages):
            if cursor > until_ts:
                return "caught_up"
            page = await self._page(run, symbol, cursor)
            if page is None:
                return "error"
            if not page:
                return "empty_page"
            run.rows.extend(row for row in page if _in_range(row, since_ms, until_ts))
            stamps = [ts for ts in map(row_ts, page) if ts is not None]
            newest = max(stamps, default=newest_seen)
            if newest <= newest_seen:
                return "no_advance"
            newest_seen = newest
            if newest >= until_ts:
                return "caught_up"
            cursor = newest + self._tf_ms
        return "caught_up" if cursor > until_ts else "max_pages"

    async def _page(self, run: _Run, symbol: str, since_ms: int) -> list[Sequence[Any]] | None:
        """One page from ``since_ms`` (ms), retried as the module doc says; None (and run.error) on failure."""
        try:
            rows = await self._fetch_with_retry(run, symbol, since_ms)
        except BaseError as exc:
            run.error = describe_error(exc)
            logger.warning("%s %s %s: giving up: %s", self.exchange_id, symbol, self.timeframe, run.error)
            return None
        run.pages += 1
        return rows

    async def _fetch_with_retry(self, run: _Run, symbol: str, since_ms: int) -> list[Sequence[Any]]:
        attempt = 0
        while True:
            try:
                rows = await self._exchange.fetch_ohlcv(symbol, self.timeframe, since=since_ms, limit=self.page_limit)
            except (RateLimitExceeded, DDoSProtection) as exc:
                # Checked before NetworkError, their base class: rate limits get the floored delay.
                if attempt >= self.max_retries:
                    raise
                delay = rate_limit_delay(attempt, self.base_backoff_s, self.cap_backoff_s, self._rng)
                error = exc
            except (RequestTimeout, ExchangeNotAvailable, NetworkError) as exc:
                if attempt >= self.max_retries:
                    raise
                delay = backoff_delay(attempt, self.base_backoff_s, self.cap_backoff_s, self._rng)
                error = exc
            else:
                return rows if isinstance(rows, list) else []
            logger.info(
                "%s %s %s: retry %d/%d in %.2fs after %s",
                self.exchange_id,
                symbol,
                self.timeframe,
                attempt + 1,
                self.max_retries,
                delay,
                describe_error(error),
            )
            run.retries += 1
            run.slept_s += delay
            await self._sleep(delay)
            attempt += 1

    def _result(
        self, run: _Run, symbol: str, now_ms: int, stop: StopReason, *, after_ts: int | None = None
    ) -> FetchResult:
        parsed = closed_candles(run.rows, self.exchange_id, symbol, self.timeframe, now_ms, after_ts=after_ts)
        return FetchResult(
            candles=tuple(parsed.candles),
            pages=run.pages,
            rejections=tuple(parsed.rejections),
            error=run.error,
            stop="error" if run.error is not None else stop,
            retries=run.retries,
            slept_s=run.slept_s,
        )


def _in_range(row: Sequence[Any], first_ts: int, last_ts: int) -> bool:
    # Rows without a usable ts are kept so that closed_candles reports them as rejections.
    ts = row_ts(row)
    return ts is None or first_ts <= ts <= last_ts


__all__ = [
    "BackfillPlan",
    "ExchangeSource",
    "FetchResult",
    "ParsedRows",
    "Rejection",
    "StopReason",
    "backoff_delay",
    "closed_candles",
    "current_open_ts",
    "describe_error",
    "detect_gaps",
    "last_closed_ts",
    "make_exchange",
    "missing_bars",
    "plan_backfill",
    "rate_limit_delay",
    "row_ts",
    "to_candle",
]
