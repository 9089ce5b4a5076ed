"""What the ExchangeSource tests share: a fixed clock, ccxt-format rows, and a source that never sleeps.

The clock is the moment the Kraken fixtures were recorded (12:00:30 UTC on 2025-01-15, so
the 12:00 bar is still open); ``rows`` builds valid 1m ccxt rows, ``SleepRecorder`` stands in
for ``asyncio.sleep`` so no test waits for a backoff, and ``source`` builds an ExchangeSource
with a seeded jitter around an exchange. Used by ``test_exchange_source.py`` and
``test_exchange_source_kraken.py``.
"""

from __future__ import annotations

import random
from typing import Any

from ccxt.async_support.base.exchange import Exchange

from services.ohlcv_ingest.exchange import ExchangeSource, FetchResult

TF = 60_000  # 1m, ms
NOW_MS = 1_736_942_430_000  # 2025-01-15T12:00:30Z, when the Kraken fixtures were "recorded"
OPEN_TS = 1_736_942_400_000  # 12:00, the bar still open at NOW_MS
LAST_CLOSED = OPEN_TS - TF  # 11:59


class SleepRecorder:
    """Stands in for asyncio.sleep: records the delays (s) and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def rows(first_ts: int, n: int, *, base: float = 100.0) -> list[list[Any]]:
    """``n`` valid ccxt OHLCV rows of 1m bars from ``first_ts`` (ms)."""
    out: list[list[Any]] = []
    for i in range(n):
        o = base + i
        out.append([first_ts + i * TF, o, o + 2.0, o - 1.0, o + 1.0, 10.0 + i])
    return out


def ts_list(result: FetchResult) -> list[int]:
    return [c.ts for c in result.candles]


def source(exchange: Exchange, sleep: SleepRecorder, **kwargs: Any) -> ExchangeSource:
    kwargs.setdefault("rng", random.Random(7))
    return ExchangeSource(exchange, timeframe="1m", sleep=sleep, **kwargs)
