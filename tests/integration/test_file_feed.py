"""`regimes import` / `replay` and `regimes backfill` against a real NATS (the CLI's bus side)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from regimes import feed
from services.ohlcv_ingest.__main__ import build_with
from services.ohlcv_ingest.files import write_csv, write_freqtrade
from shared.domain.contracts import Candle, CandleBatch, candles_in
from shared.domain.subjects import SeriesKey
from shared.infra.bus import read_subject
from tests.factories import candles_from_returns
from tests.fakes import RecordedSeries, recorded_factory
from tests.harness import Stack, StackFactory, eventually, point_cli_at, small_config

KEY = SeriesKey("binance", "ETH/USDT", "1m")


def bars(n: int) -> list[Candle]:
    return candles_from_returns(KEY, [0.001 * ((-1) ** i) for i in range(n - 1)])


async def stream_count(st: Stack) -> int:
    """Candles the stream holds for KEY, single or in batches."""
    stored = await read_subject(
        st.js, st.names.stream_ohlcv, st.names.ohlcv(KEY), keep_last=0, decode_as=(Candle, CandleBatch)
    )
    return sum(len(candles_in(m)) for m in stored)


UNIVERSE = {"universe": [{"exchange": "binance", "symbol": "ETH/USDT", "timeframe": "1m"}]}


async def test_import_publishes_a_freqtrade_directory_once(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    st = await make_stack(small_config([("ETH/USDT", "CORE")]))
    point_cli_at(st, monkeypatch, tmp_path, UNIVERSE)
    datadir = tmp_path / "data"
    datadir.mkdir()
    candles = bars(120)
    write_freqtrade(datadir / "ETH_USDT-1m.feather", candles, "feather")
    assert await feed.publish_files([datadir], "binance", None, None, speed=None) == 0
    assert await stream_count(st) == 120
    # Importing again publishes nothing new: the stream deduplicates by candle.
    assert await feed.publish_files([datadir], "binance", None, None, speed=None) == 0
    assert await stream_count(st) == 120


async def test_a_bad_row_names_file_and_row_and_publishes_nothing(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    st = await make_stack(small_config([("ETH/USDT", "CORE")]))
    point_cli_at(st, monkeypatch, tmp_path, UNIVERSE)
    good = tmp_path / "good.csv"
    write_csv(good, bars(50))
    bad = tmp_path / "bad.csv"
    write_csv(bad, bars(50))
    lines = bad.read_text().splitlines()
    cells = lines[31].split(",")
    cells[2], cells[3] = cells[3], cells[2]  # high below low in data row 31
    lines[31] = ",".join(cells)
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(feed.FeedError, match=r"bad\.csv: row 31: .*high"):
        await feed.publish_files([good, bad], "binance", "ETH/USDT", "1m", speed=None)
    assert await stream_count(st) == 0


async def test_replay_paces_candles_at_the_speed_asked(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    st = await make_stack(small_config([("ETH/USDT", "CORE")]))
    point_cli_at(st, monkeypatch, tmp_path, UNIVERSE)
    path = tmp_path / "eth.json"
    write_freqtrade(path, bars(6), "json")
    received: list[float] = []

    async def on_msg(_msg: Any) -> None:
        received.append(time.monotonic())

    await st.nc.subscribe(st.names.ohlcv(KEY), cb=on_msg)
    # 1m bars at 600x real time: one every 0.1 s.
    assert await feed.publish_files([path], "binance", "ETH/USDT", "1m", speed=600.0) == 0
    await eventually(lambda: _n(received, 6))
    assert received[-1] - received[0] >= 0.45


async def _n(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_cli_backfill_asks_ingest_and_reports_rows(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hmm = {
        "HMM_ENABLED": False,
        "HMM_TRAINING_CANDLES": 60,
        "HMM_MIN_TRAIN_SAMPLES": 30,
        "HMM_OHLCV_BACKFILL_MAX_PAGES": 2,
    }
    raw = {**UNIVERSE, "hmm": hmm}
    st = await make_stack(small_config([], hmm=hmm, universe=UNIVERSE["universe"]))
    point_cli_at(st, monkeypatch, tmp_path, raw)
    exchange = RecordedSeries(bars=300)
    await st.start("ohlcv_ingest", build=partial(build_with, recorded_factory(exchange)))
    await eventually(lambda: _has(st, 59))
    assert await feed.backfill(KEY.id, target=200, max_pages=2, timeout=30) == 0
    out = capsys.readouterr()
    assert f"{KEY.id}: " in out.out
    assert "new candles" in out.out
    assert "2/2" not in out.err  # one series: the bar reads 1/1
    assert "1/1" in out.err
    assert await stream_count(st) > 59
    with pytest.raises(feed.FeedError, match="not in the universe"):
        await feed.backfill("kraken:BTC/USD:1m", None, None, timeout=5)


async def _has(st: Stack, n: int) -> bool:
    return await stream_count(st) >= n
