"""The CLI's bus-side commands: publish candle files (replay/import), ask ingest to backfill, read health.

The CLI builds the settings (the environment, filled in from the running
stack's state file) and passes them in; without them, the environment alone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import nats.errors

from services.ohlcv_ingest.files import CandleFileError, find_freqtrade_files, parse_freqtrade_filename, read_candles
from services.ohlcv_ingest.replay import ReplayPlan, interleave
from shared.domain.aggregate import built_series
from shared.domain.config import StrategyConfig, load_strategy_config
from shared.domain.contracts import Candle, ContractError, candle_count, decode_json, encode_json
from shared.domain.control import BackfillReply, BackfillRequest, Heartbeat
from shared.domain.subjects import Names
from shared.infra.acks import AckPipeline
from shared.infra.bus import (
    PUBLISH_WINDOW,
    candle_messages,
    connect,
    ensure_streams,
    publish_candles,
    publish_messages,
    read_health,
)
from shared.infra.settings import Settings


def progress(done: int, total: int, label: str, started: float) -> None:
    """A one-line progress bar on stderr."""
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(1e-9, time.monotonic() - started)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label} {rate:,.0f}/s ")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")


class FeedError(RuntimeError):
    """A file or a request that cannot be carried out; the message names the file and row, or the series."""


def _targets(paths: list[Path], symbol: str | None, timeframe: str | None) -> list[tuple[Path, str, str]]:
    out: list[tuple[Path, str, str]] = []
    for path in paths:
        if path.is_dir():
            found = find_freqtrade_files(path)
            if not found:
                raise FeedError(f"{path}: no freqtrade candle files found")
            out.extend((f.path, f.symbol, f.timeframe) for f in found)
            continue
        if not path.is_file():
            raise FeedError(f"{path}: no such file")
        sym, tf = symbol, timeframe
        if sym is None or tf is None:
            try:
                parsed_sym, parsed_tf, _fmt = parse_freqtrade_filename(path.name)
            except ValueError:
                raise FeedError(f"{path}: give --symbol and --timeframe (the name is not freqtrade's)") from None
            sym, tf = sym or parsed_sym, tf or parsed_tf
        out.append((path, sym, tf))
    return out


def load_files(paths: list[Path], exchange: str, symbol: str | None, timeframe: str | None) -> list[list[Candle]]:
    """Every file read and validated before anything is published: one bad row publishes nothing."""
    series = []
    for path, sym, tf in _targets(paths, symbol, timeframe):
        try:
            series.append(read_candles(path, exchange, sym, tf))
        except CandleFileError as exc:
            raise FeedError(str(exc)) from None
        except ContractError as exc:
            raise FeedError(f"{path}: {exc.reason}") from None
    return series


def with_built(series: list[list[Candle]], config: StrategyConfig) -> list[list[Candle]]:
    """The files' series plus the higher timeframes the universe's ``aggregate`` builds from them, as ingest
    builds them from live candles, so an import of the 1m file alone feeds every timeframe of its symbol.

    A target timeframe whose own file is given too is taken from that file.
    """
    return series + built_series(series, config.aggregates)


async def publish_files(
    paths: list[Path],
    exchange: str,
    symbol: str | None,
    timeframe: str | None,
    speed: float | None,
    settings: Settings | None = None,
) -> int:
    """Publish the files' candles in time order; ``speed`` x real time, None as fast as possible."""
    settings = settings or Settings.from_env()
    config = load_strategy_config(settings.strategy_config)
    files = load_files(paths, exchange, symbol, timeframe)
    every = with_built(files, config)
    built = [s for s in every[len(files):] if s]
    candles = interleave(*every)
    nc = await connect(settings.nats_url, "regimes-feed", attempts=3, credentials=settings.nats_credentials)
    try:
        js = nc.jetstream()
        names = settings.names
        await ensure_streams(js, names, config.hmm.ohlcv_retention_days, settings.nats_replicas)
        started = time.monotonic()
        if speed is None:
            new = await _import(AckPipeline(nc), names, candles, started)
        else:
            new = await _replay(AckPipeline(nc), names, candles, speed, started)
        print(f"published {len(candles)} candles ({new} new, {len(candles) - new} already in the stream)")
        for bars in built:
            print(f"  of them {len(bars)} bars of {bars[0].key.id}, built by the universe's aggregate")
    finally:
        await nc.drain()
    return 0


async def _import(acks: AckPipeline, names: Names, candles: list[Candle], started: float) -> int:
    """As fast as possible: batches of up to MAX_BATCH_BARS candles per series, pipelined."""
    messages = candle_messages(candles)
    new = done = 0
    for i in range(0, len(messages), PUBLISH_WINDOW):
        window = messages[i : i + PUBLISH_WINDOW]
        new += await publish_messages(acks, names, window)
        done += sum(candle_count(m) for m in window)
        progress(done, len(candles), "candles", started)
    return new


async def _replay(acks: AckPipeline, names: Names, candles: list[Candle], speed: float, started: float) -> int:
    """At ``speed`` x real time, one candle per message, as a live feed would publish them."""
    plan = ReplayPlan(candles, speed, max_delay_s=5.0)
    new = 0
    for i, candle in enumerate(candles):
        wait = plan.seconds_until(i, time.monotonic() - started)
        if wait > 0:
            await asyncio.sleep(wait)
        new += await publish_candles(acks, names, [candle])
        if i % 200 == 0 or i == len(candles) - 1:
            progress(i + 1, len(candles), "candles", started)
    return new


async def backfill(
    series: str | None, target: int | None, max_pages: int | None, timeout: float, settings: Settings | None = None
) -> int:
    """Ask ingest (``control.backfill``) for deeper history, series by series, with a progress bar."""
    settings = settings or Settings.from_env()
    config = load_strategy_config(settings.strategy_config)
    wanted = [s.key.id for s in config.universe if series in (None, s.key.id)]
    if not wanted:
        raise FeedError(f"{series} is not in the universe of {settings.strategy_config}")
    nc = await connect(settings.nats_url, "regimes-backfill", attempts=3, credentials=settings.nats_credentials)
    failures = 0
    started = time.monotonic()
    try:
        for i, sid in enumerate(wanted):
            progress(i, len(wanted), sid, started)
            body = encode_json(BackfillRequest(sid, target, max_pages))
            try:
                reply = await nc.request(settings.names.control("backfill"), body, timeout=timeout)
            except nats.errors.NoRespondersError:
                raise FeedError("no ohlcv_ingest is running to serve the backfill") from None
            except nats.errors.TimeoutError:
                raise FeedError(f"{sid}: no answer within {timeout:.0f}s") from None
            try:
                answer = decode_json(reply.data, BackfillReply)
            except ContractError as exc:
                raise FeedError(f"{sid}: ingest's reply breaks its contract: {exc.reason}") from None
            for result in answer.results:
                print(f"\n{result.series}: {result.rows} new candles; {result.message}")
            if not answer.ok:
                failures += 1
                if answer.error:
                    print(f"\n{sid}: {answer.error}")
        progress(len(wanted), len(wanted), "series", started)
    finally:
        await nc.drain()
    return 1 if failures else 0


async def health(settings: Settings) -> list[Heartbeat]:
    """Every service's latest heartbeat (KV ``health``), for ``regimes status``."""
    nc = await connect(settings.nats_url, "regimes-status", attempts=3, credentials=settings.nats_credentials)
    try:
        return await read_health(nc.jetstream(), settings.names)
    finally:
        await nc.close()
