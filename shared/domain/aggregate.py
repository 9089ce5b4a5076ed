"""Higher timeframes from base candles (1m -> 15m, 1h, ...). Pure: candles in, candles out.

A bar of timeframe T covers ``[start, start + T)``, ``start`` a multiple of T
in ms since the epoch (so 1h bars open on the hour, 1d bars at 00:00 UTC):
the same buckets as pandas ``resample(T, label="left", closed="left")`` with
its default origin. Its open is the first base bar's open, high the highest
high, low the lowest low, close the last close, volume the sum: pandas'
``first/max/min/last/sum``, and a test holds the two equal bar for bar
(open, high, low and close exactly; the volume to 1e-12, pandas adding the
same floats in another order).

Only closed bars come out, as everywhere on the bus. A bucket closes when its
last base bar arrives (``ts + base == start + T``), or when a base bar of a
later bucket arrives first: then its missing bars are not coming (candles
arrive in order) and the bucket is emitted from the bars it has, as pandas
builds it from the rows present. A bucket with no bar at all gives no bar
(pandas gives a NaN row; drop it). A base candle not newer than the last one
taken is ignored, the stack's rule everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.domain.contracts import Candle
from shared.domain.errors import ContractError
from shared.domain.subjects import SeriesKey, bar_close, timeframe_ms


def check_aggregate(base: str, target: str) -> None:
    """ContractError unless ``target`` is a longer timeframe than ``base`` and a whole number of its bars."""
    b, t = timeframe_ms(base), timeframe_ms(target)
    if t <= b or t % b:
        raise ContractError(f"{target} is not a whole multiple (> 1) of {base}")


@dataclass
class Aggregator:
    """One series' bucket of ``timeframe`` in progress; :meth:`push` base candles in order, closed bars come out."""

    timeframe: str  # the target, e.g. "15m"
    start: int | None = None  # open time of the bucket in progress, ms
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: float = 0.0
    last_ts: int | None = None  # the last base candle taken, ms
    bars: int = 0  # base bars in the bucket in progress

    def push(self, candle: Candle) -> list[Candle]:
        """Take one base candle; returns the bars it closed (none, the one in progress, or the previous one)."""
        if self.last_ts is not None and candle.ts <= self.last_ts:
            return []
        t_ms = timeframe_ms(self.timeframe)
        start = candle.ts - candle.ts % t_ms
        out: list[Candle] = []
        if self.start is not None and start != self.start:
            out.append(self._bar(candle))  # a later bucket began: the one in progress is complete as it is
            self.start = None
        if self.start is None:
            self.start, self.bars, self.volume = start, 0, 0.0
            self.open, self.high, self.low = candle.open, candle.high, candle.low
        self.high = max(self.high, candle.high)
        self.low = min(self.low, candle.low)
        self.close = candle.close
        self.volume += candle.volume
        self.bars += 1
        self.last_ts = candle.ts
        if bar_close(candle.ts, candle.timeframe) >= start + t_ms:  # its last base bar: closed now
            out.append(self._bar(candle))
            self.start = None
        return out

    def _bar(self, like: Candle) -> Candle:
        assert self.start is not None
        return Candle(like.exchange, like.symbol, self.timeframe, self.start, self.open, self.high, self.low,
                      self.close, self.volume)

    def dump(self) -> dict[str, Any]:
        ohlcv = [self.open, self.high, self.low, self.close, self.volume]
        return {"timeframe": self.timeframe, "start": self.start, "ohlcv": ohlcv, "last_ts": self.last_ts,
                "bars": self.bars}

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> Aggregator:
        o, h, lo, c, v = raw["ohlcv"]
        return cls(raw["timeframe"], raw["start"], o, h, lo, c, v, raw["last_ts"], raw["bars"])


def aggregate(candles: Iterable[Candle], timeframe: str) -> list[Candle]:
    """Every closed ``timeframe`` bar that ``candles`` (one series, in ts order) make; a last bucket only if closed."""
    agg: Aggregator | None = None
    out: list[Candle] = []
    for candle in candles:
        if agg is None:
            check_aggregate(candle.timeframe, timeframe)
            agg = Aggregator(timeframe)
        out.extend(agg.push(candle))
    return out


def built_series(series: Sequence[Sequence[Candle]], targets: Mapping[SeriesKey, Sequence[str]]) -> list[list[Candle]]:
    """The series ingest would build from ``series`` (each one series, in ts order): one per target timeframe of a
    series that ``targets`` names (the universe's ``aggregate``), in ``targets``' order.

    A target given in ``series`` already (its own file) is not built: what the caller has for it stands.
    """
    given = {s[0].key for s in series if s}
    return [
        aggregate(candles, tf)
        for candles in series
        if candles
        for tf in targets.get(candles[0].key, ())
        if SeriesKey(candles[0].exchange, candles[0].symbol, tf) not in given
    ]
