"""Ingest's moving parts: publishing with books, the demo and exchange loops, operator backfill.

``__main__`` wires these to NATS; they take the runtime and the exchange factory as arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from services.ohlcv_ingest.core import SeriesBook
from services.ohlcv_ingest.demo import DemoClock, DemoMarket
from services.ohlcv_ingest.exchange import ExchangeSource, FetchResult
from shared.domain.aggregate import Aggregator
from shared.domain.contracts import (
    Candle,
    CandleBatch,
    ContractError,
    candles_in,
    decode,
    decode_json,
    encode,
    encode_json,
)
from shared.domain.control import BackfillReply, BackfillRequest, BackfillResult
from shared.domain.subjects import SeriesKey, timeframe_ms
from shared.infra.bus import now_ms, publish_candles, read_subject
from shared.infra.service import Runtime

SERVICE = "ohlcv_ingest"
TELEMETRY_INTERVAL_SEC = 2.0
DEMO_BATCH_BARS = 250  # bars per series published before yielding to telemetry and control
log = logging.getLogger(SERVICE)

ExchangeFactory = Callable[[str, Mapping[str, Any]], Any]


class Ingest:
    """Publishing, books, and the operator's backfill, shared by the source loops."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.hmm = rt.config.hmm
        self.books: dict[SeriesKey, SeriesBook] = {}
        self.sources: dict[SeriesKey, ExchangeSource] = {}
        # The higher timeframes a universe entry names ("aggregate"), built from the candles ingest publishes.
        self.aggregators: dict[SeriesKey, list[Aggregator]] = {
            key: [Aggregator(tf) for tf in tfs] for key, tfs in rt.config.aggregates.items()
        }

    def book(self, key: SeriesKey, source: str = "replay", sync: float = 0.0) -> SeriesBook:
        if key not in self.books:
            self.books[key] = SeriesBook(key, source, sync)
        return self.books[key]

    async def load_books(self) -> None:
        """What the stream already holds per series (after a restart, or candles imported earlier)."""
        retention_bars = self.hmm.ohlcv_retention_days * 1440
        sync = self.hmm.ohlcv_sync_interval_sec
        owed: list[Candle] = []
        for spec in self.rt.config.universe:
            key = spec.key
            source = "demo" if key.exchange == "demo" else "exchange"
            for k in (key, *spec.aggregated):
                book = self.book(k, source, sync)
                for candle in await self._held(k, retention_bars):
                    book.add(candle.ts)
                    # Re-prime the bucket in progress from what the stream holds; a bar built but never
                    # published (a crash in between) is owed and goes out now.
                    owed += [bar for agg in self.aggregators.get(k, ()) for bar in agg.push(candle)]
        await self.publish(owed)

    async def _held(self, key: SeriesKey, keep_last: int) -> list[Candle]:
        held = await read_subject(
            self.rt.js, self.rt.names.stream_ohlcv, self.rt.names.ohlcv(key), keep_last=keep_last,
            decode_as=(Candle, CandleBatch),
        )
        return sorted((c for m in held for c in candles_in(m)), key=lambda c: c.ts)

    async def publish(self, candles: Sequence[Candle]) -> int:
        """Publish with ``Nats-Msg-Id``; returns how many were new to the stream.

        Candles the stream already holds are not sent again: the Msg-Id window
        (10 min) would not catch a page re-fetched later than that.
        """
        fresh = [c for c in candles if not self.book(c.key).holds(c.ts)]
        new = await publish_candles(self.rt.bus.acks, self.rt.names, fresh)
        for candle in fresh:
            self.book(candle.key).add(candle.ts)
        if candles:
            self.rt.metrics.published.labels(SERVICE, "candle").inc(len(candles))
        # Bars of the higher timeframes these closed, published after their base candles. Only newer
        # candles feed a bucket: history a deeper backfill adds before them is not re-aggregated.
        built = [
            bar
            for c in sorted(fresh, key=lambda c: c.ts)
            for agg in self.aggregators.get(c.key, ())
            for bar in agg.push(c)
        ]
        if built:
            await self.publish(built)  # not counted in ``new``: that is the caller's candles only
        return new

    def observe(self, msg: Msg) -> None:
        """Candles others publish (``regimes replay``/``import``) for a series ingest serves count in its book.

        Other series are not ingest's: it keeps no book of them and reports no
        telemetry for them (thousands of imported series would otherwise cost
        a report each, every few seconds, forever).
        """
        with contextlib.suppress(ContractError):
            for candle in candles_in(decode(msg.data, (Candle, CandleBatch))):
                book = self.books.get(candle.key)
                if book is not None:
                    book.add(candle.ts)

    async def backfill(self, key: SeriesKey, target: int, max_pages: int) -> BackfillResult:
        """One backfill run toward ``target`` candles: walk back, then fill detected gaps."""
        book = self.book(key)
        source = self.sources.get(key)
        if source is None:
            message = f"{key.id}: source {book.source} has no deeper history to fetch"
            return BackfillResult(key.id, False, 0, message)
        now = now_ms()
        result = await source.backfill(key.symbol, target, max_pages, now, book.oldest_ts)
        rows = await self.publish(result.candles)
        gaps = book.gaps()
        messages = [result.message]
        if gaps and result.ok:
            filled = await source.fill_gaps(key.symbol, gaps, now, max_pages)
            rows += await self.publish(filled.candles)
            messages.append(f"gaps: {filled.message}")
            result = filled if not filled.ok else result
        book.backfill_last_at = now
        book.backfill_last_rows = rows
        book.backfill_last_message = "; ".join(messages)
        book.last_error = result.error
        log.info("backfill %s: %s", key.id, book.backfill_last_message)
        return BackfillResult(key.id, result.ok, rows, book.backfill_last_message)

    async def on_backfill_request(self, msg: Msg) -> None:
        """``control.backfill``: a BackfillRequest (JSON) -> a BackfillReply, once every run is done."""
        try:
            req = decode_json(msg.data or b"{}", BackfillRequest)
            target = int(req.target_candles or self.hmm.training_candles)
            pages = int(req.max_pages or self.hmm.ohlcv_backfill_max_pages)
            wanted = req.series
            keys = [k for k in self.books if wanted in (None, k.id)]
            if not keys:
                raise ValueError(f"unknown series {wanted!r}")
            results = tuple([await self.backfill(k, target, pages) for k in keys])
            reply = BackfillReply(ok=all(r.ok for r in results), results=results)
        except (ValueError, TypeError) as exc:  # a ContractError (a bad request) is a ValueError
            reply = BackfillReply(ok=False, results=(), error=str(exc))
        await msg.respond(encode_json(reply))

    async def report(self) -> None:
        now = now_ms()
        training = self.hmm.training_candles
        retention = self.hmm.ohlcv_retention_days
        for key, book in list(self.books.items()):
            book.expire(now, retention)
            await self.rt.js.publish(self.rt.names.pipeline(key), encode(book.status(now, training)))

    async def telemetry(self) -> None:
        while not self.rt.stop.is_set():
            try:
                await self.report()
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("pipeline report not sent: %s", exc)
            await _pause(self.rt.stop, TELEMETRY_INTERVAL_SEC)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))


async def run_demo(ing: Ingest, keys: list[SeriesKey]) -> None:
    """The demo market for ``keys`` (one timeframe): history at once, then accelerated, never ahead of the clock."""
    rt = ing.rt
    demo = rt.config.demo
    tf = timeframe_ms(keys[0].timeframe)
    plans = await rt.kv("ingest_state")
    plan_key = f"demo.{keys[0].timeframe}"
    ident = {"seed": demo.seed, "series": [k.id for k in keys]}
    clock = None
    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
        saved = msgpack.unpackb((await plans.get(plan_key)).value or b"\x80")
        if saved.get("ident") == ident:
            clock = DemoClock(saved["start_ts"], tf, demo.bars_per_sec, demo.history_bars, saved["started_ms"])
    if clock is None:
        clock = DemoClock.plan(now_ms(), tf, demo.bars_per_sec, demo.history_bars)
        record = {"ident": ident, "start_ts": clock.start_ts, "started_ms": clock.started_ms}
        await plans.put(plan_key, msgpack.packb(record))
    market = DemoMarket(keys, demo.seed, clock.start_ts)
    # Resume after the last bar every series has: the market is deterministic, so replayed bars are identical.
    lasts = [ing.book(k).last_ts for k in keys]
    held = [t for t in lasts if t is not None]
    published = 0 if len(held) < len(lasts) else max(0, (min(held) - clock.start_ts) // tf + 1)
    market.advance_to(clock.bar_ts(published))
    log.info("demo market: %d series, seed %d, resuming at bar %d", len(keys), demo.seed, published)
    while not rt.stop.is_set():
        now = now_ms()
        elapsed = (now - clock.started_ms) / 1000.0
        due = clock.due_bars(now, elapsed, published)
        lag = max(0, now - clock.bar_ts(clock.total_due(now, elapsed)))
        for key in keys:
            ing.book(key).clock_lag_ms = lag
        if due:
            candles: list[Candle] = []
            for _ in range(min(due, DEMO_BATCH_BARS)):
                candles.extend(market.next_bars())
                published += 1
            await ing.publish(candles)
            continue
        await _pause(rt.stop, min(5.0, clock.seconds_until_next(now, elapsed, published)))


async def run_exchange(ing: Ingest, exchange_id: str, keys: list[SeriesKey], factory: ExchangeFactory) -> None:
    """Sync ``keys`` of one exchange: backfill at start (if configured), then every sync interval."""
    rt = ing.rt
    hmm = ing.hmm
    exchange = factory(exchange_id, rt.config.exchange_options.get(exchange_id, {}))
    rt.stack.push_async_callback(exchange.close)
    for key in keys:
        ing.sources[key] = ExchangeSource(exchange, timeframe=key.timeframe)
    if hmm.ohlcv_backfill_on_startup:
        for key in keys:
            if rt.stop.is_set():
                return
            await ing.backfill(key, hmm.training_candles, hmm.ohlcv_backfill_max_pages)
    interval = hmm.ohlcv_sync_interval_sec
    recent = hmm.recent_candles
    pages = hmm.ohlcv_backfill_max_pages
    while not rt.stop.is_set():
        for key in keys:
            book = ing.book(key)
            source = ing.sources[key]
            now = now_ms()
            since = book.last_ts + source.tf_ms if book.last_ts is not None else now - recent * source.tf_ms
            result: FetchResult = await source.fetch_since(key.symbol, since, now, pages)
            await ing.publish(result.candles)
            book.last_error = result.error
            if result.error:
                log.warning("sync %s: %s", key.id, result.error)
        await _pause(rt.stop, interval)


def on_msg(fn: Callable[[Msg], None]) -> Callable[[Msg], Any]:
    """A plain function as a subscription callback."""

    async def cb(msg: Msg) -> None:
        fn(msg)

    return cb
