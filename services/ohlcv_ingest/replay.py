"""Pacing for replaying candle files: when each candle is due, as pure arithmetic (no sleeping here).

A replay plays recorded candles in the order they closed (open ts + timeframe:
a bar is published when it closes, as live, so a 1h bar goes out after the 1m
bar that ends its hour, not at its open), either as fast as possible or at
``speed`` times real time: at speed 60 a 1m series plays one bar per second,
and candles of several series closing together go out together.

The schedule is anchored to the start of the replay (candle ``i`` is due
``offset_s(i)`` seconds after it) rather than chained delay after delay, so
time spent publishing does not accumulate into drift; a loop asks
:meth:`ReplayPlan.due_count` how many candles are due after ``elapsed_s``
seconds and :meth:`ReplayPlan.seconds_until` how long to sleep.

Units: ``ts`` and close times in ms UTC; ``speed`` is simulated seconds per real second;
offsets, delays and elapsed times in real seconds.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Sequence

from shared.domain.contracts import Candle
from shared.domain.subjects import bar_close


def _closes_at(candle: Candle) -> int:
    return bar_close(candle.ts, candle.timeframe)


def interleave(*series: Sequence[Candle]) -> list[Candle]:
    """Merge per-series candle lists into one list ordered by close time (:func:`bar_close`).

    Stable: candles closing together keep the order of the arguments (the first
    list's candle first). Each input must already be in strictly increasing ts
    order, as :func:`services.ohlcv_ingest.files.read_candles` returns it;
    ValueError otherwise, since a merge of unsorted input would silently be
    unsorted too.
    """
    for n, candles in enumerate(series):
        for prev, cur in itertools.pairwise(candles):
            if cur.ts <= prev.ts:
                raise ValueError(f"series {n} ({cur.key.id}) is not in increasing ts order: {cur.ts} after {prev.ts}")
    # heapq.merge is stable across its inputs for equal keys.
    return list(heapq.merge(*series, key=_closes_at))


class ReplayPlan:
    """The schedule of a replay of ``candles`` (already in non-decreasing close-time order, as :func:`interleave`).

    ``speed`` None plays as fast as possible (every candle due at once); a
    positive ``speed`` plays ``speed`` times real time. ``max_delay_s`` caps
    the real wait between two consecutive candles, so a gap in the data (an
    exchange outage, a weekend) does not stall the replay; None = no cap.
    """

    def __init__(self, candles: Sequence[Candle], speed: float | None, max_delay_s: float | None = None) -> None:
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number or None, got {speed!r}")
        if max_delay_s is not None and not max_delay_s >= 0:  # also refuses NaN
            raise ValueError(f"max_delay_s must be >= 0 or None, got {max_delay_s!r}")
        for i in range(1, len(candles)):
            if _closes_at(candles[i]) < _closes_at(candles[i - 1]):
                raise ValueError(
                    f"candle {i} closes at {_closes_at(candles[i])}, before {_closes_at(candles[i - 1])}:"
                    " interleave the series first"
                )
        self.candles: tuple[Candle, ...] = tuple(candles)
        self.speed = speed
        self.max_delay_s = max_delay_s
        self._delays: list[float] = [
            self._gap_s(_closes_at(self.candles[i - 1]), _closes_at(self.candles[i])) if i else 0.0
            for i in range(len(self.candles))
        ]
        self._offsets: list[float] = list(itertools.accumulate(self._delays))

    def _gap_s(self, prev_close: int, close: int) -> float:
        if self.speed is None:
            return 0.0
        gap = (close - prev_close) / 1000.0 / self.speed
        return gap if self.max_delay_s is None else min(gap, self.max_delay_s)

    def __len__(self) -> int:
        return len(self.candles)

    @property
    def duration_s(self) -> float:
        """Real seconds from the first candle to the last."""
        return self._offsets[-1] if self._offsets else 0.0

    def offset_s(self, index: int) -> float:
        """Real seconds after the start of the replay at which candle ``index`` is due."""
        return self._offsets[index]

    def delays(self) -> list[float]:
        """Real seconds to wait before each candle, after the previous one (the first: 0)."""
        return list(self._delays)

    def due_count(self, elapsed_s: float) -> int:
        """How many candles (from the first) are due ``elapsed_s`` real seconds after the start."""
        return bisect.bisect_right(self._offsets, elapsed_s)

    def seconds_until(self, index: int, elapsed_s: float) -> float:
        """Real seconds from ``elapsed_s`` until candle ``index`` is due; 0 if it is due already."""
        return max(0.0, self._offsets[index] - elapsed_s)


__all__ = ["ReplayPlan", "interleave"]
