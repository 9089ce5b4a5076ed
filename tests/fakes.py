"""Recorded exchange behaviour for tests that run ingest: no network, ever.

A real ccxt exchange class (so ingest's code paths are the production ones)
whose HTTP layer refuses to run and whose ``fetch_ohlcv`` serves a recorded
1m series that honours ``since``/``limit`` like Binance's endpoint does,
reaching up to the bar still open at the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from services.ohlcv_ingest.exchange import make_exchange
from tests.factories import TF_MS


class NoNetwork:
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a test tried to reach the network: {args[:1]}")


class RecordedSeries:
    """``fetch_ohlcv`` over ``bars`` 1m bars ending at the open bar; bars in ``hidden`` are missing.

    ``lag_bars`` > 0 models an exchange whose feed is stuck that many bars behind the wall clock.
    """

    def __init__(self, bars: int, base: float = 100.0, lag_bars: int = 0) -> None:
        now = int(time.time() * 1000)
        self.first_ts = (now // TF_MS - bars + 1) * TF_MS
        self.lag_bars = lag_bars
        self.base = base
        self.hidden: set[int] = set()
        self.calls: list[tuple[int | None, int | None]] = []

    def row(self, ts: int) -> list[Any]:
        i = (ts - self.first_ts) // TF_MS
        o = self.base + (i % 50) * 0.1
        return [ts, o, o + 0.5, o - 0.5, o + 0.1, 10.0 + i % 7]

    async def __call__(
        self, symbol: str, timeframe: str = "1m", since: int | None = None, limit: int | None = None, params: Any = None
    ) -> list[list[Any]]:
        self.calls.append((since, limit))
        now = int(time.time() * 1000)
        last = (now // TF_MS - self.lag_bars) * TF_MS  # the open bar is served too, as exchanges do
        start = max(self.first_ts, since if since is not None else self.first_ts)
        start = (start + TF_MS - 1) // TF_MS * TF_MS
        out = [self.row(ts) for ts in range(start, last + TF_MS, TF_MS) if ts not in self.hidden]
        return out[: limit or 500]


def recorded_factory(series: RecordedSeries) -> Any:
    """An ExchangeFactory for ``services.ohlcv_ingest.__main__.build_with``."""

    def factory(exchange_id: str, options: Mapping[str, Any]) -> Any:
        exchange = make_exchange("binance", dict(options))
        exchange.timeout_on_exit = 0
        exchange.fetch = NoNetwork()
        exchange.fetch_ohlcv = series
        return exchange

    return factory
