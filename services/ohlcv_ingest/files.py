"""Candle files: CSV and freqtrade's data-directory formats, read strictly, written for tests and tools.

Reading validates the whole file before returning anything: a file is either
accepted whole or refused with :class:`CandleFileError`, which names the file
and the 1-based data row (the first row after a CSV header is row 1; the first
element of a JSON list is row 1). Refused: missing or ambiguous columns,
unparsable values, NaN/inf, price <= 0, high < low, open/close outside
[low, high], volume < 0, timestamps that are unsorted, duplicated or not
aligned to the timeframe. Gaps between candles are allowed (exchanges have
them). Timestamps are candle open times, integer ms since the epoch, UTC.

Formats (``fmt``):

* ``csv``     -- header row with ``ts`` (or freqtrade's ``date``), ``open``,
  ``high``, ``low``, ``close``, ``volume`` in any order (extra columns are
  ignored); ts as integer ms or ISO-8601 (an offset is converted to UTC, no
  offset means UTC).
* ``json``    -- freqtrade: a JSON list of ``[ms, open, high, low, close, volume]``.
* ``jsongz``  -- the same, gzip-compressed (``.json.gz``).
* ``feather`` / ``parquet`` -- freqtrade: columns ``date`` (timestamp, any
  unit, or integer ms), ``open``, ``high``, ``low``, ``close``, ``volume``.
  Needs pyarrow (``pip install pyarrow``, or the ``files`` extra).
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from shared.domain.contracts import Candle
from shared.domain.subjects import timeframe_ms
from shared.domain.vocab import TIMEFRAMES_MS

FORMATS: tuple[str, ...] = ("csv", "json", "jsongz", "feather", "parquet")
FREQTRADE_FORMATS: tuple[str, ...] = ("json", "jsongz", "feather", "parquet")
_EXTENSIONS: tuple[tuple[str, str], ...] = (  # longest suffix first, so .json.gz is not read as .gz
    (".json.gz", "jsongz"),
    (".json", "json"),
    (".feather", "feather"),
    (".parquet", "parquet"),
    (".csv", "csv"),
)
_PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
_PYARROW_HINT = "pip install pyarrow (or: pip install 'regime-stack[files]')"
# Sub-second epochs read as ms would be 1970; used only to explain a misaligned ts.
_LOOKS_LIKE_SECONDS = 10**11
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CandleFileError(ValueError):
    """A candle file that cannot be accepted. ``row`` is the 1-based data row, None for the whole file."""

    def __init__(self, path: str | Path, row: int | None, reason: str) -> None:
        where = f"{path}" if row is None else f"{path}: row {row}"
        super().__init__(f"{where}: {reason}")
        self.path = str(path)
        self.row = row
        self.reason = reason


class FreqtradeFile(NamedTuple):
    """An OHLCV file found in a freqtrade data directory."""

    path: Path
    symbol: str  # ccxt form: "BTC/USDT", futures "ETH/USDT:USDT"
    timeframe: str
    fmt: str  # one of FORMATS (freqtrade writes all but csv; a csv named its way is read too)


# --- reading -------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its extension; ValueError for an extension we do not read."""
    name = Path(path).name.lower()
    for suffix, fmt in _EXTENSIONS:
        if name.endswith(suffix):
            return fmt
    raise ValueError(
        f"{path}: cannot tell the format from the name; expected one of .csv .json .json.gz .feather .parquet"
    )


def read_candles(path: str | Path, exchange: str, symbol: str, timeframe: str, fmt: str | None = None) -> list[Candle]:
    """Every candle in ``path``, oldest first, all checked; nothing partial.

    ``fmt`` overrides the format implied by the file name (see :data:`FORMATS`).
    Raises :class:`CandleFileError` for a bad file, ``ContractError`` for an
    exchange / symbol / timeframe the stack cannot carry, ``ImportError`` when
    a feather or parquet file needs pyarrow and it is missing.
    """
    # A probe candle checks the series names once, before the file is even opened.
    Candle(exchange, symbol, timeframe, 0, 1.0, 1.0, 1.0, 1.0, 0.0).check()
    tf_ms = timeframe_ms(timeframe)
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        ts, values = _read_csv(path)
    elif fmt in ("json", "jsongz"):
        ts, values = _read_json(path, gz=fmt == "jsongz")
    elif fmt in ("feather", "parquet"):
        ts, values = _read_arrow(path, fmt)
    else:
        raise ValueError(f"unknown candle file format {fmt!r}; expected one of {list(FORMATS)}")
    _validate(path, ts, values, tf_ms)
    o, h, lo, c, v = (values[:, i].tolist() for i in range(5))
    return [Candle(exchange, symbol, timeframe, t, o[i], h[i], lo[i], c[i], v[i]) for i, t in enumerate(ts.tolist())]


def _read_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CandleFileError(path, None, f"cannot read CSV: {exc}") from None
    if not rows:
        raise CandleFileError(path, None, "empty file: expected a header ts,open,high,low,close,volume")
    header = [h.strip().lower() for h in rows[0]]
    duplicates = sorted({h for h in header if header.count(h) > 1 and h})
    if duplicates:
        raise CandleFileError(path, None, f"duplicate columns {duplicates}")
    if "ts" in header and "date" in header:
        raise CandleFileError(path, None, "both 'ts' and 'date' columns: which is the candle time?")
    time_col = "date" if "date" in header else "ts"
    missing = [c for c in (time_col, *_PRICE_COLUMNS) if c not in header]
    if missing:
        raise CandleFileError(
            path,
            None,
            f"missing columns {missing}; header is {header}, expected ts (or date),open,high,low,close,volume",
        )
    idx = [header.index(c) for c in (time_col, *_PRICE_COLUMNS)]
    data = [r for r in rows[1:] if any(cell.strip() for cell in r)]  # blank lines are not rows
    ts = np.empty(len(data), dtype=np.int64)
    values = np.empty((len(data), 5), dtype=np.float64)
    for n, record in enumerate(data):
        row = n + 1
        if len(record) != len(header):
            raise CandleFileError(path, row, f"{len(record)} fields, header has {len(header)}")
        ts[n] = _parse_ts(path, row, record[idx[0]].strip())
        for j, name in enumerate(_PRICE_COLUMNS):
            values[n, j] = _parse_float(path, row, name, record[idx[j + 1]].strip())
    return ts, values


def _parse_ts(path: str | Path, row: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if math.isfinite(number) and number.is_integer():
            return int(number)
        raise CandleFileError(path, row, f"ts {text!r} is not an integer number of ms")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise CandleFileError(path, row, f"ts {text!r} is neither integer ms nor an ISO-8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Exact integer arithmetic: float seconds would lose the ms on far dates.
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _parse_float(path: str | Path, row: int, name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CandleFileError(path, row, f"{name} {text!r} is not a number") from None


def _read_json(path: str | Path, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        if gz:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                raw = json.load(fh)
        else:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise CandleFileError(path, None, f"cannot read {'gzip ' if gz else ''}JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CandleFileError(path, None, f"not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise CandleFileError(path, None, "expected a JSON list of [ms, open, high, low, close, volume] rows")
    ts = np.empty(len(raw), dtype=np.int64)
    values = np.empty((len(raw), 5), dtype=np.float64)
    for n, item in enumerate(raw):
        row = n + 1
        if not isinstance(item, list) or len(item) != 6:
            raise CandleFileError(path, row, f"expected [ms, open, high, low, close, volume], got {item!r}"[:200])
        stamp = item[0]
        if isinstance(stamp, float) and math.isfinite(stamp) and stamp.is_integer():
            stamp = int(stamp)
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            raise CandleFileError(path, row, f"ts {stamp!r} is not an integer number of ms")
        ts[n] = stamp
        for j, name in enumerate(_PRICE_COLUMNS):
            value = item[j + 1]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CandleFileError(path, row, f"{name} {value!r} is not a number")
            values[n, j] = value
    return ts, values


def _pyarrow() -> Any:
    try:
        import pyarrow  # optional: only feather/parquet need it
        import pyarrow.compute
        import pyarrow.feather
        import pyarrow.parquet
    except ImportError:
        raise ImportError(f"feather and parquet candle files need pyarrow: {_PYARROW_HINT}") from None
    return pyarrow


def _read_arrow(path: str | Path, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    pa = _pyarrow()
    try:
        table = pa.feather.read_table(str(path)) if fmt == "feather" else pa.parquet.read_table(str(path))
    except (OSError, pa.ArrowException) as exc:
        raise CandleFileError(path, None, f"cannot read {fmt}: {exc}") from None
    names = [n.lower() for n in table.column_names]
    missing = [c for c in ("date", *_PRICE_COLUMNS) if c not in names]
    if missing:
        raise CandleFileError(
            path, None, f"missing columns {missing}; has {table.column_names}, expected date,open,high,low,close,volume"
        )
    if len(set(names)) != len(names):
        raise CandleFileError(path, None, f"duplicate columns in {table.column_names}")
    columns = {n: table.column(i) for i, n in enumerate(names)}
    ts = _arrow_ms(path, pa, columns["date"])
    values = np.empty((table.num_rows, 5), dtype=np.float64)
    for j, name in enumerate(_PRICE_COLUMNS):
        col = columns[name]
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise CandleFileError(path, None, f"column {name} is {col.type}, expected numbers")
        # Nulls become NaN so the validator reports them with their row like any other NaN.
        as_float = pa.compute.cast(col, pa.float64()).fill_null(math.nan)
        values[:, j] = as_float.to_numpy()
    return ts, values


def _arrow_ms(path: str | Path, pa: Any, col: Any) -> np.ndarray:
    if col.null_count:
        first = next(i for i, v in enumerate(col.is_null().to_pylist()) if v)
        raise CandleFileError(path, first + 1, "date is empty")
    if pa.types.is_timestamp(col.type):
        # Arrow stores instants as UTC counts whatever the tz label, so the raw ints are UTC.
        raw = pa.compute.cast(col, pa.int64()).to_numpy()
        per_ms = {"s": None, "ms": 1, "us": 1000, "ns": 1_000_000}[col.type.unit]
        if per_ms is None:
            return raw.astype(np.int64) * 1000
        ms, rest = np.divmod(raw.astype(np.int64), per_ms)
        bad = np.flatnonzero(rest)
        if bad.size:
            raise CandleFileError(path, int(bad[0]) + 1, "date has a sub-millisecond part")
        return ms
    if pa.types.is_integer(col.type):
        return pa.compute.cast(col, pa.int64()).to_numpy().astype(np.int64)
    raise CandleFileError(path, None, f"column date is {col.type}, expected a timestamp or integer ms")


def _validate(path: str | Path, ts: np.ndarray, values: np.ndarray, tf_ms: int) -> None:
    """Raise CandleFileError for the earliest bad row (ties: the order of the checks below)."""
    o, h, lo, c, v = (values[:, i] for i in range(5))
    with np.errstate(invalid="ignore"):
        checks: list[tuple[np.ndarray, str]] = [
            (~np.isfinite(values).all(axis=1), "NaN or infinite value"),
            (ts < 0, "ts before 1970"),
            (ts % tf_ms != 0, f"ts not aligned to the timeframe ({tf_ms} ms)"),
            ((np.minimum(np.minimum(o, h), np.minimum(lo, c)) <= 0), "price <= 0"),
            (h < lo, "high < low"),
            ((o < lo) | (o > h), "open outside [low, high]"),
            ((c < lo) | (c > h), "close outside [low, high]"),
            (v < 0, "volume < 0"),
        ]
    step = np.diff(ts)
    checks.append((np.concatenate([[False], step == 0]), "duplicate ts (same as the previous row)"))
    checks.append((np.concatenate([[False], step < 0]), "ts earlier than the previous row (file not sorted)"))
    first: tuple[int, int] | None = None  # (row index, check index)
    for k, (mask, _) in enumerate(checks):
        hits = np.flatnonzero(mask)
        if hits.size and (first is None or hits[0] < first[0]):
            first = (int(hits[0]), k)
    if first is None:
        return
    i, k = first
    reason = checks[k][1]
    if reason.startswith("NaN"):
        bad = [name for name, x in zip(_PRICE_COLUMNS, values[i], strict=True) if not math.isfinite(x)]
        reason = f"{', '.join(bad)} is NaN or infinite"
    elif reason.startswith("ts not aligned"):
        reason = f"ts {int(ts[i])} is not aligned to the timeframe ({tf_ms} ms)"
        if 0 < ts[i] < _LOOKS_LIKE_SECONDS:
            reason += "; it looks like seconds, expected milliseconds"
    elif reason.startswith(("duplicate", "ts earlier")):
        reason = f"{reason}: {int(ts[i])} after {int(ts[i - 1])}"
    else:
        shown = ", ".join(f"{name} {float(x)!r}" for name, x in zip(_PRICE_COLUMNS, values[i], strict=True))
        reason = f"{reason} ({shown})"
    raise CandleFileError(path, i + 1, reason)


# --- freqtrade names -------------------------------------------------------------

# pair-timeframe[-candletype].ext, as freqtrade writes them (timeframe "1M" is "1Mo" on disk). A CSV named
# the same way (`WALK_USD-1m.csv`, what people export from freqtrade's dataframes) is read too; the
# extension is matched in any case, since Windows tools like to write `.CSV`.
_FT_NAME = re.compile(
    r"^(?P<pair>[A-Za-z0-9_-]+?)-(?P<tf>\d+(?:Mo|[a-zA-Z]))(?:-(?P<kind>[A-Za-z_]+))?"
    r"\.(?P<ext>(?i:json\.gz|json|feather|parquet|csv))$"
)
# Candle types that are not the traded price (freqtrade's CandleType values).
_NON_PRICE = frozenset({"mark", "index", "premiumindex", "funding_rate"})


def parse_freqtrade_filename(name: str) -> tuple[str, str, str]:
    """``(symbol, timeframe, fmt)`` of a freqtrade OHLCV file name.

    ``BTC_USDT-1h.feather`` -> ``("BTC/USDT", "1h", "feather")``;
    ``ETH_USDT_USDT-1h-futures.feather`` -> ``("ETH/USDT:USDT", "1h", "feather")``;
    ``BTC_USDT-5m.json.gz`` -> ``("BTC/USDT", "5m", "jsongz")``;
    ``WALK_USD-1m.csv`` -> ``("WALK/USD", "1m", "csv")``.
    The symbol is rebuilt as freqtrade does: the first ``_`` is the ``/``, the
    next one the ``:`` of a settle currency. ValueError for names that are not
    price OHLCV (trades, mark, index, funding rate) or not freqtrade's pattern.
    """
    m = _FT_NAME.match(Path(name).name)
    if not m:
        raise ValueError(f"{name!r} is not a freqtrade OHLCV file name (PAIR-TIMEFRAME[-TYPE].EXT)")
    kind = (m["kind"] or "spot").lower()
    if kind in _NON_PRICE:
        raise ValueError(f"{name!r} holds {kind} candles, not traded prices")
    if kind not in ("spot", "futures"):
        raise ValueError(f"{name!r}: unknown freqtrade candle type {m['kind']!r}")
    pair = m["pair"]
    if "_" not in pair:
        raise ValueError(f"{name!r}: pair {pair!r} has no quote currency")
    symbol = pair.replace("_", "/", 1).replace("_", ":", 1)
    if kind == "futures" and ":" not in symbol:
        raise ValueError(f"{name!r}: a futures file needs BASE_QUOTE_SETTLE, got {pair!r}")
    timeframe = m["tf"].replace("Mo", "M")
    ext = m["ext"].lower()
    fmt = {"json.gz": "jsongz"}.get(ext, ext)
    return symbol, timeframe, fmt


def freqtrade_filename(symbol: str, timeframe: str, fmt: str) -> str:
    """The file name freqtrade uses for ``symbol`` (``ETH/USDT:USDT`` -> ``ETH_USDT_USDT-1h-futures.feather``).

    ``fmt`` may also be ``csv``: the name :func:`parse_freqtrade_filename` reads back.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown candle file format {fmt!r}; expected one of {list(FORMATS)}")
    pair = re.sub(r"[/ .@$+:]", "_", symbol)
    kind = "-futures" if ":" in symbol else ""
    ext = "json.gz" if fmt == "jsongz" else fmt
    return f"{pair}-{timeframe.replace('M', 'Mo')}{kind}.{ext}"


def find_freqtrade_files(datadir: str | Path) -> list[FreqtradeFile]:
    """The price OHLCV files of a freqtrade data directory (e.g. ``user_data/data/binance``), sorted by path.

    Looks in ``datadir`` and its ``futures/`` subdirectory, as freqtrade
    stores them; CSV files named freqtrade's way count too. Files that are not price OHLCV (trades, mark, index, funding
    rate), or whose timeframe the stack does not carry, are left out.
    """
    root = Path(datadir)
    found: list[FreqtradeFile] = []
    for folder in (root, root / "futures"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            try:
                symbol, timeframe, fmt = parse_freqtrade_filename(path.name)
            except ValueError:
                continue
            if timeframe in TIMEFRAMES_MS:
                found.append(FreqtradeFile(path, symbol, timeframe, fmt))
    return sorted(found)


# --- writing ---------------------------------------------------------------------


def _rows(candles: Iterable[Candle]) -> list[list[Any]]:
    return [[c.ts, c.open, c.high, c.low, c.close, c.volume] for c in candles]


def write_freqtrade(path: str | Path, candles: Sequence[Candle], fmt: str) -> None:
    """Write ``candles`` as freqtrade does: json / jsongz rows, or feather / parquet with a UTC ms ``date``.

    Floats are written exactly (JSON uses the shortest round-tripping repr), so
    :func:`read_candles` gives back equal candles.
    """
    if fmt in ("json", "jsongz"):
        text = json.dumps(_rows(candles), separators=(",", ":"), allow_nan=False)
        if fmt == "jsongz":
            with gzip.open(path, "wt", encoding="utf-8") as fh:
                fh.write(text)
        else:
            Path(path).write_text(text, encoding="utf-8")
        return
    if fmt not in ("feather", "parquet"):
        raise ValueError(f"unknown freqtrade format {fmt!r}; expected one of {list(FREQTRADE_FORMATS)}")
    pa = _pyarrow()
    table = pa.table(
        {
            "date": pa.array([c.ts for c in candles], type=pa.timestamp("ms", tz="UTC")),
            **{name: pa.array([getattr(c, name) for c in candles], type=pa.float64()) for name in _PRICE_COLUMNS},
        }
    )
    if fmt == "feather":
        pa.feather.write_feather(table, str(path))
    else:
        pa.parquet.write_table(table, str(path))


def write_csv(path: str | Path, candles: Sequence[Candle], iso: bool = False) -> None:
    """Write ``candles`` as CSV ``ts,open,high,low,close,volume``; ts in ms, or ISO-8601 UTC if ``iso``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["ts", *_PRICE_COLUMNS])
        for c in candles:
            stamp: int | str = c.ts
            if iso:  # integer arithmetic: a float division could round the ms down by one
                when = _EPOCH + timedelta(milliseconds=c.ts)
                stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.writerow([stamp, repr(c.open), repr(c.high), repr(c.low), repr(c.close), repr(c.volume)])


__all__ = [
    "FORMATS",
    "FREQTRADE_FORMATS",
    "CandleFileError",
    "FreqtradeFile",
    "detect_format",
    "find_freqtrade_files",
    "freqtrade_filename",
    "parse_freqtrade_filename",
    "read_candles",
    "write_csv",
    "write_freqtrade",
]
