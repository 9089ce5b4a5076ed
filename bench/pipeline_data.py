"""The synthetic market bench_pipeline feeds the stack: series, random-walk freqtrade files, live candles, config."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from shared.domain.contracts import Candle
from shared.domain.subjects import SeriesKey

ROOT = Path(__file__).resolve().parents[1]
EXCHANGE = "bench"
BAR_MS = 60_000
DAY_MS = 86_400_000


def series_keys(n: int) -> list[SeriesKey]:
    return [SeriesKey(EXCHANGE, f"S{i:04d}/USD", "1m") for i in range(1, n + 1)]


def last_closed_ts() -> int:
    """The last candle's open time, ms: the current minute floor minus one day (long closed)."""
    return int(time.time() * 1000) // BAR_MS * BAR_MS - DAY_MS


def random_walk(n: int, bars: int, seed: int) -> np.ndarray:
    """(n, bars, 5) open/high/low/close/volume: log returns whose vol switches every 300 bars; OHLC consistent."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.0005, 0.002, 0.006], size=(n, bars // 300 + 1)).repeat(300, axis=1)[:, :bars]
    rets = rng.standard_normal((n, bars)) * scale
    close = rng.uniform(1.0, 1000.0, (n, 1)) * np.exp(np.cumsum(rets, axis=1))
    opens = np.concatenate([close[:, :1] / np.exp(rets[:, :1]), close[:, :-1]], axis=1)
    wick = np.abs(rng.normal(0.0, 0.001, (2, n, bars)))
    high = np.maximum(opens, close) * (1 + wick[0])
    low = np.minimum(opens, close) * (1 - wick[1]) * 0.999999
    return np.stack([opens, high, low, close, rng.lognormal(3.0, 0.5, (n, bars))], axis=2)


def write_files(folder: Path, keys: list[SeriesKey], bars: int, seed: int) -> dict[str, int]:
    """freqtrade JSON files (``S0001_USD-1m.json``); returns each series token's last candle ts."""
    folder.mkdir(parents=True)
    end = last_closed_ts()
    ts = [end - (bars - 1 - i) * BAR_MS for i in range(bars)]
    data = random_walk(len(keys), bars, seed)
    for key, rows in zip(keys, data.tolist(), strict=True):
        body = [[t, *row] for t, row in zip(ts, rows, strict=True)]
        (folder / f"{key.symbol.replace('/', '_')}-1m.json").write_text(json.dumps(body))
    return {k.token: end for k in keys}


def write_config(path: Path, first: SeriesKey) -> Path:
    """The shipped config with a one-series universe (every other series is CORE too), HMM on with defaults."""
    raw = json.loads((ROOT / "config" / "strategy_config.json").read_text())
    raw["universe"] = [{"exchange": first.exchange, "symbol": first.symbol, "timeframe": "1m", "tier": "CORE"}]
    raw["hmm"] = {"HMM_ENABLED": True}
    raw.pop("demo", None)
    path.write_text(json.dumps(raw))
    return path


def candle(key: SeriesKey, ts: int, price: float) -> Candle:
    """A closed bar opening at ``price`` and closing 0.1 % higher (the next bar opens where it closed)."""
    close = price * 1.001
    return Candle(key.exchange, key.symbol, key.timeframe, ts, price, close * 1.001, price * 0.999, close, 10.0)
