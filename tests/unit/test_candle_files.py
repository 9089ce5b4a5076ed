"""Candle files: CSV and freqtrade's formats are read exactly, and a bad file is refused whole.

A refusal names the file and the 1-based data row, so an operator can open the
file at the right line; nothing is ever returned from a file that has a bad row.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the venv
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.ohlcv_ingest.files import (
    FREQTRADE_FORMATS,
    CandleFileError,
    FreqtradeFile,
    find_freqtrade_files,
    freqtrade_filename,
    parse_freqtrade_filename,
    read_candles,
    write_csv,
    write_freqtrade,
)
from shared.domain.errors import ContractError
from shared.domain.subjects import SeriesKey
from tests.factories import DAY0, candle, demo_candles

H = 3_600_000
BTC = SeriesKey("binance", "BTC/USDT", "1h")


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


GOOD_ROWS = [
    (DAY0, 100.0, 110.0, 95.0, 105.0, 12.5),
    (DAY0 + H, 105.0, 107.0, 101.0, 102.0, 0.0),
    (DAY0 + 3 * H, 102.0, 102.0, 99.5, 100.25, 7.0),  # a gap is fine
]
EXPECTED = [candle(key=BTC, ts=t, open=o, high=h, low=lo, close=c, volume=v) for t, o, h, lo, c, v in GOOD_ROWS]


# --- CSV --------------------------------------------------------------------------


def test_csv_with_ms_timestamps(tmp_path: Path) -> None:
    lines = ["ts,open,high,low,close,volume", *(",".join(map(str, row)) for row in GOOD_ROWS)]
    path = write_text(tmp_path / "btc.csv", "\n".join(lines) + "\n")
    assert read_candles(path, "binance", "BTC/USDT", "1h") == EXPECTED


def test_csv_with_iso_timestamps_in_any_utc_spelling(tmp_path: Path) -> None:
    text = (
        "ts,open,high,low,close,volume\n"
        "2024-01-01T00:00:00Z,100,110,95,105,12.5\n"
        "2024-01-01 01:00:00+00:00,105,107,101,102,0\n"
        "2024-01-01T05:00:00.000+02:00,102,102,99.5,100.25,7\n"  # an offset is converted to UTC
    )
    path = write_text(tmp_path / "btc.csv", text)
    assert read_candles(path, "binance", "BTC/USDT", "1h") == EXPECTED


def test_csv_iso_without_offset_is_utc(tmp_path: Path) -> None:
    path = write_text(tmp_path / "btc.csv", "ts,open,high,low,close,volume\n2024-01-01T00:00:00,1,1,1,1,1\n")
    assert read_candles(path, "binance", "BTC/USDT", "1h")[0].ts == DAY0


def test_csv_accepts_freqtrade_date_column_any_order_and_extra_columns(tmp_path: Path) -> None:
    text = (
        "\ufeffDate, volume ,close,low,high,open,trades\n"  # BOM, case and spaces as spreadsheets write them
        "2024-01-01 00:00:00+00:00,12.5,105,95,110,100,17\n"
        "2024-01-01 01:00:00+00:00,0,102,101,107,105,0\n"
        "\n"
        "2024-01-01 03:00:00+00:00,7,100.25,99.5,102,102,3\n"
    )
    path = write_text(tmp_path / "btc.csv", text)
    assert read_candles(path, "binance", "BTC/USDT", "1h") == EXPECTED


def test_csv_with_only_a_header_is_an_empty_series(tmp_path: Path) -> None:
    path = write_text(tmp_path / "btc.csv", "ts,open,high,low,close,volume\n")
    assert read_candles(path, "binance", "BTC/USDT", "1h") == []


@pytest.mark.parametrize("iso", [False, True], ids=["ms", "iso"])
def test_csv_writer_round_trips_exactly(tmp_path: Path, iso: bool) -> None:
    candles = demo_candles(300, key=BTC, seed=3, start_ts=DAY0)
    write_csv(tmp_path / "btc.csv", candles, iso=iso)
    assert read_candles(tmp_path / "btc.csv", "binance", "BTC/USDT", "1h") == candles


# --- freqtrade formats ------------------------------------------------------------


@pytest.mark.parametrize("fmt", FREQTRADE_FORMATS)
def test_each_freqtrade_format_reads_back_exactly_what_was_written(tmp_path: Path, fmt: str) -> None:
    candles = demo_candles(300, key=BTC, seed=3, start_ts=DAY0)
    path = tmp_path / freqtrade_filename("BTC/USDT", "1h", fmt)
    write_freqtrade(path, candles, fmt)
    assert read_candles(path, "binance", "BTC/USDT", "1h") == candles


def test_json_is_freqtrade_row_layout(tmp_path: Path) -> None:
    path = tmp_path / "BTC_USDT-1h.json"
    write_freqtrade(path, EXPECTED, "json")
    assert json.loads(path.read_text()) == [list(row) for row in GOOD_ROWS]


@pytest.mark.parametrize("fmt", ["feather", "parquet"])
def test_reads_files_pandas_wrote_with_ns_utc_dates(tmp_path: Path, fmt: str) -> None:
    # What freqtrade's feather/parquet handlers produce: a pandas frame with datetime64[ns, UTC] dates.
    frame = pd.DataFrame(GOOD_ROWS, columns=["date", "open", "high", "low", "close", "volume"])
    frame["date"] = pd.to_datetime(frame["date"], unit="ms", utc=True).astype("datetime64[ns, UTC]")
    path = tmp_path / f"BTC_USDT-1h.{fmt}"
    if fmt == "feather":
        frame.to_feather(path)
    else:
        frame.to_parquet(path)
    assert read_candles(path, "binance", "BTC/USDT", "1h") == EXPECTED


def test_reads_integer_ms_date_column(tmp_path: Path) -> None:
    table = pa.table({name: [row[i] for row in GOOD_ROWS] for i, name in enumerate(["date", *"ohlcv"])})
    table = table.rename_columns(["date", "open", "high", "low", "close", "volume"])
    pq.write_table(table, tmp_path / "x.parquet")
    assert read_candles(tmp_path / "x.parquet", "binance", "BTC/USDT", "1h") == EXPECTED


def test_feather_and_parquet_without_pyarrow_say_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_freqtrade(tmp_path / "x.feather", EXPECTED, "feather")
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    with pytest.raises(ImportError, match=r"pip install pyarrow.*files"):
        read_candles(tmp_path / "x.feather", "binance", "BTC/USDT", "1h")


# --- freqtrade names and data directories -------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BTC_USDT-1h.feather", ("BTC/USDT", "1h", "feather")),
        ("BTC_USDT-5m.json", ("BTC/USDT", "5m", "json")),
        ("BTC_USDT-5m.json.gz", ("BTC/USDT", "5m", "jsongz")),
        ("ETH_USDT_USDT-1h-futures.feather", ("ETH/USDT:USDT", "1h", "feather")),
        ("1000PEPE_USDT_USDT-15m-futures.parquet", ("1000PEPE/USDT:USDT", "15m", "parquet")),
        ("XBT_EUR-1d.parquet", ("XBT/EUR", "1d", "parquet")),
        ("BTC_USDT-1Mo.feather", ("BTC/USDT", "1M", "feather")),
        # CSVs named freqtrade's way, and extensions in capitals
        ("WALK_USD-1m.csv", ("WALK/USD", "1m", "csv")),
        ("BTC_USDT-5m.csv", ("BTC/USDT", "5m", "csv")),
        ("BTC_USDT_USDT-1h-futures.csv", ("BTC/USDT:USDT", "1h", "csv")),
        ("BTC_USDT-1h.CSV", ("BTC/USDT", "1h", "csv")),
        ("BTC_USDT-1h.JSON.GZ", ("BTC/USDT", "1h", "jsongz")),
    ],
)
def test_parse_freqtrade_filename(name: str, expected: tuple[str, str, str]) -> None:
    assert parse_freqtrade_filename(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "BTC_USDT-trades.json",
        "ETH_USDT_USDT-1h-mark.feather",
        "ETH_USDT_USDT-8h-funding_rate.feather",
        "ETH_USDT_USDT-1h-mark.csv",
        "notes.txt",
        "BTC-1h.feather",
        "BTC-1h.csv",  # no quote currency
        "BTC_USDT.csv",  # no timeframe
        "BTC_USDT-1h.csv.bak",
        "BTC_USDT-1h.txt",
    ],
)
def test_parse_freqtrade_filename_refuses_what_is_not_price_ohlcv(name: str) -> None:
    with pytest.raises(ValueError, match=r"freqtrade|candles|quote"):
        parse_freqtrade_filename(name)


@pytest.mark.parametrize(
    ("symbol", "fmt"),
    [("BTC/USDT", "json"), ("ETH/USDT:USDT", "jsongz"), ("SOL/USD", "parquet"), ("WALK/USD", "csv")],
)
def test_freqtrade_filename_is_the_inverse_of_parsing(symbol: str, fmt: str) -> None:
    assert parse_freqtrade_filename(freqtrade_filename(symbol, "4h", fmt)) == (symbol, "4h", fmt)


def test_find_freqtrade_files_lists_spot_and_futures_price_files_only(tmp_path: Path) -> None:
    (tmp_path / "futures").mkdir()
    for name in [
        "BTC_USDT-1h.feather",
        "ETH_USDT-5m.json.gz",
        "WALK_USD-1m.csv",
        "BTC_USDT-trades.json",
        "BTC_USDT-1w.feather",  # a timeframe the stack does not carry
        "README.md",
        "futures/ETH_USDT_USDT-1h-futures.feather",
        "futures/ETH_USDT_USDT-1h-mark.feather",
        "futures/ETH_USDT_USDT-8h-funding_rate.feather",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert find_freqtrade_files(tmp_path) == [
        FreqtradeFile(tmp_path / "BTC_USDT-1h.feather", "BTC/USDT", "1h", "feather"),
        FreqtradeFile(tmp_path / "ETH_USDT-5m.json.gz", "ETH/USDT", "5m", "jsongz"),
        FreqtradeFile(tmp_path / "WALK_USD-1m.csv", "WALK/USD", "1m", "csv"),
        FreqtradeFile(tmp_path / "futures" / "ETH_USDT_USDT-1h-futures.feather", "ETH/USDT:USDT", "1h", "feather"),
    ]


def test_find_freqtrade_files_then_read_them(tmp_path: Path) -> None:
    candles = demo_candles(50, key=SeriesKey("binance", "ETH/USDT:USDT", "1h"), seed=3, start_ts=DAY0)
    (tmp_path / "futures").mkdir()
    write_freqtrade(tmp_path / "futures" / freqtrade_filename("ETH/USDT:USDT", "1h", "parquet"), candles, "parquet")
    (found,) = find_freqtrade_files(tmp_path)
    assert read_candles(found.path, "binance", found.symbol, found.timeframe) == candles


def test_a_csv_named_the_freqtrade_way_needs_no_symbol_or_timeframe(tmp_path: Path) -> None:
    from regimes import feed

    walk = SeriesKey("file", "WALK/USD", "1m")
    candles = [candle(i, 10.5, key=walk, ts=DAY0 + i * 60_000, open=10.0, high=11.0, low=9.0, volume=1.0)
               for i in range(5)]
    write_csv(tmp_path / "WALK_USD-1m.csv", candles)
    assert feed.load_files([tmp_path / "WALK_USD-1m.csv"], "file", None, None) == [candles]
    # the flags still win over the name
    (renamed,) = feed.load_files([tmp_path / "WALK_USD-1m.csv"], "file", "WALK/EUR", None)
    assert {c.symbol for c in renamed} == {"WALK/EUR"}
    write_csv(tmp_path / "walk.csv", candles)
    with pytest.raises(feed.FeedError, match="give --symbol and --timeframe"):
        feed.load_files([tmp_path / "walk.csv"], "file", None, None)


# --- bad files ------------------------------------------------------------------------

HEADER = "ts,open,high,low,close,volume"
GOOD = [f"{DAY0 + i * H},100,110,90,105,1" for i in range(4)]


def csv_with(row_3: str, *, header: str = HEADER) -> str:
    """A CSV whose third data row is ``row_3``; the others are good."""
    rows = [*GOOD[:2], row_3, GOOD[3]]
    return "\n".join([header, *rows]) + "\n"


@pytest.mark.parametrize(
    ("row_3", "reason"),
    [
        (f"{DAY0 + 2 * H},100,110,90,nan,1", "close is NaN"),
        (f"{DAY0 + 2 * H},100,inf,90,105,1", "high is NaN or infinite"),
        (f"{DAY0 + 2 * H},abc,110,90,105,1", "open 'abc' is not a number"),
        (f"{DAY0 + 2 * H},0,110,0,105,1", "price <= 0"),
        (f"{DAY0 + 2 * H},-1,110,-2,105,1", "price <= 0"),
        (f"{DAY0 + 2 * H},100,90,110,105,1", "high < low"),
        (f"{DAY0 + 2 * H},111,110,90,105,1", "open outside"),
        (f"{DAY0 + 2 * H},100,110,90,89,1", "close outside"),
        (f"{DAY0 + 2 * H},100,110,90,105,-0.5", "volume < 0"),
        (f"{DAY0 + 2 * H + 1},100,110,90,105,1", "not aligned"),
        (f"{DAY0 + H},100,110,90,105,1", "duplicate ts"),
        (f"{DAY0},100,110,90,105,1", "not sorted"),
        ("yesterday,100,110,90,105,1", "neither integer ms nor an ISO-8601"),
        (f"{DAY0 + 2 * H}.5,100,110,90,105,1", "not an integer number of ms"),
        (f"{DAY0 + 2 * H},100,110,90,105", "5 fields, header has 6"),
    ],
)
def test_each_kind_of_bad_row_is_refused_naming_file_and_row(tmp_path: Path, row_3: str, reason: str) -> None:
    path = write_text(tmp_path / "bad.csv", csv_with(row_3))
    with pytest.raises(CandleFileError) as info:
        read_candles(path, "binance", "BTC/USDT", "1h")
    err = info.value
    assert (err.path, err.row) == (str(path), 3)
    assert reason in err.reason
    assert f"{path}: row 3: " in str(err)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("ts,open,high,low,close", "missing columns ['volume']"),
        ("time,o,h,l,c,v", "missing columns"),
        ("ts,date,open,high,low,close,volume", "both 'ts' and 'date'"),
        ("ts,open,open,high,low,close,volume", "duplicate columns ['open']"),
    ],
)
def test_wrong_or_missing_columns_are_refused_for_the_whole_file(tmp_path: Path, header: str, reason: str) -> None:
    path = write_text(tmp_path / "bad.csv", header + "\n1,1,1,1,1,1\n")
    with pytest.raises(CandleFileError) as info:
        read_candles(path, "binance", "BTC/USDT", "1h")
    assert info.value.row is None
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CandleFileError, match="empty file"):
        read_candles(write_text(tmp_path / "e.csv", ""), "binance", "BTC/USDT", "1h")


def test_a_bad_last_row_refuses_the_whole_file(tmp_path: Path) -> None:
    rows = [f"{DAY0 + i * H},100,110,90,105,1" for i in range(1000)]
    rows.append(f"{DAY0 + 1000 * H},100,110,90,105,-1")
    path = write_text(tmp_path / "long.csv", "\n".join([HEADER, *rows]))
    with pytest.raises(CandleFileError, match="row 1001"):
        read_candles(path, "binance", "BTC/USDT", "1h")


def test_the_earliest_bad_row_is_reported(tmp_path: Path) -> None:
    text = "\n".join([HEADER, GOOD[0], f"{DAY0 + H},100,110,90,105,-1", f"{DAY0 + H},nan,110,90,105,1"])
    with pytest.raises(CandleFileError) as info:
        read_candles(write_text(tmp_path / "b.csv", text), "binance", "BTC/USDT", "1h")
    assert info.value.row == 2


def test_a_misaligned_ts_that_looks_like_seconds_says_so(tmp_path: Path) -> None:
    path = write_text(tmp_path / "s.csv", f"{HEADER}\n{DAY0 // 1000 + 60},1,1,1,1,1\n")
    with pytest.raises(CandleFileError, match="looks like seconds"):
        read_candles(path, "binance", "BTC/USDT", "1h")


@pytest.mark.parametrize(
    ("rows", "row", "reason"),
    [
        ([[DAY0, 1, 1, 1, 1, 1], [DAY0 + H, 1, 1, 1, 1]], 2, "expected [ms, open, high, low, close, volume]"),
        ([[DAY0, 1, 1, 1, 1, 1], [DAY0 + H, 1, None, 1, 1, 1]], 2, "high None is not a number"),
        ([[DAY0, 1, 1, 1, 1, 1], ["2024-01-01", 1, 1, 1, 1, 1]], 2, "not an integer number of ms"),
        ([[DAY0 + H, 1, 1, 1, 1, 1], [DAY0, 1, 1, 1, 1, 1]], 2, "not sorted"),
        ([[DAY0, 1, 2, 1, 0.5, 1]], 1, "close outside"),
    ],
)
def test_bad_json_rows_are_refused_with_their_row(
    tmp_path: Path, rows: list[list[object]], row: int, reason: str
) -> None:
    path = tmp_path / "BTC_USDT-1h.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(rows, fh)
    with pytest.raises(CandleFileError) as info:
        read_candles(path, "binance", "BTC/USDT", "1h")
    assert info.value.row == row
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not gzip at all", "cannot read gzip JSON"),
        (gzip.compress(b"{"), "not JSON"),
        (gzip.compress(b'{"a": 1}'), "expected a JSON list"),
    ],
)
def test_unreadable_jsongz_files_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "BTC_USDT-1h.json.gz"
    path.write_bytes(content)
    with pytest.raises(CandleFileError, match=reason):
        read_candles(path, "binance", "BTC/USDT", "1h")


def test_parquet_nulls_and_order_are_checked_like_any_other_file(tmp_path: Path) -> None:
    frame = pd.DataFrame(GOOD_ROWS, columns=["date", "open", "high", "low", "close", "volume"])
    frame.loc[1, "volume"] = None
    frame.to_parquet(tmp_path / "n.parquet")
    with pytest.raises(CandleFileError, match=r"row 2: volume is NaN"):
        read_candles(tmp_path / "n.parquet", "binance", "BTC/USDT", "1h")
    shuffled = pd.DataFrame(GOOD_ROWS[::-1], columns=["date", "open", "high", "low", "close", "volume"])
    shuffled.to_parquet(tmp_path / "u.parquet")
    with pytest.raises(CandleFileError, match=r"row 2: ts earlier than the previous row"):
        read_candles(tmp_path / "u.parquet", "binance", "BTC/USDT", "1h")


def test_feather_with_missing_columns_or_garbage_is_refused(tmp_path: Path) -> None:
    pd.DataFrame({"date": [DAY0], "open": [1.0]}).to_feather(tmp_path / "m.feather")
    with pytest.raises(CandleFileError, match="missing columns"):
        read_candles(tmp_path / "m.feather", "binance", "BTC/USDT", "1h")
    (tmp_path / "g.feather").write_bytes(b"garbage")
    with pytest.raises(CandleFileError, match="cannot read feather"):
        read_candles(tmp_path / "g.feather", "binance", "BTC/USDT", "1h")


def test_a_series_the_stack_cannot_carry_is_refused_before_reading(tmp_path: Path) -> None:
    path = write_text(tmp_path / "x.csv", f"{HEADER}\n")
    with pytest.raises(ContractError):
        read_candles(path, "Binance", "BTC/USDT", "1h")
    with pytest.raises(ContractError):
        read_candles(path, "binance", "BTC/USDT", "7m")


def test_an_unknown_extension_needs_an_explicit_format(tmp_path: Path) -> None:
    path = write_text(tmp_path / "candles.txt", f"{HEADER}\n{GOOD[0]}\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_candles(path, "binance", "BTC/USDT", "1h")
    assert len(read_candles(path, "binance", "BTC/USDT", "1h", fmt="csv")) == 1


def test_an_import_of_the_base_file_alone_brings_the_timeframes_the_universe_builds_from_it(tmp_path: Path) -> None:
    from regimes import feed
    from shared.domain.aggregate import aggregate
    from shared.domain.config import parse_strategy_config

    walk = SeriesKey("file", "WALK/USD", "1m")
    candles = [candle(i, 10.0 + 0.01 * i, key=walk, ts=DAY0 + i * 60_000, volume=1.0) for i in range(40)]
    write_csv(tmp_path / "WALK_USD-1m.csv", candles)
    entry = {"exchange": "file", "symbol": "WALK/USD", "timeframe": "1m", "aggregate": ["15m"]}
    cfg = parse_strategy_config({"universe": [entry]}, {})
    files = feed.load_files([tmp_path / "WALK_USD-1m.csv"], "file", None, None)
    assert feed.with_built(files, cfg) == [candles, aggregate(candles, "15m")]
    other = parse_strategy_config({"universe": [{**entry, "exchange": "kraken"}]}, {})
    assert feed.with_built(files, other) == [candles]  # another exchange's entry builds nothing of these
