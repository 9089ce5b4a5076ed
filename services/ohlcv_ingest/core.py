"""Ingest's bookkeeping per series: what the stream holds, how fresh it is, what backfill did. Pure.

It answers the seed's ``hmm_data_pipeline`` questions (003 §2.6, §6): samples,
coverage, freshness against ``max(180 s, 3 x interval)``, gaps, and the last
backfill's time, rows and message.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from shared.domain.contracts import PipelineStatus
from shared.domain.subjects import SeriesKey, timeframe_ms

FRESHNESS_FLOOR_SEC = 180.0


def detect_gaps(timestamps: Iterable[int], tf_ms: int) -> list[tuple[int, int]]:
    """Missing bars between the first and last of ``timestamps`` (bar open times, ms).

    Returns inclusive ranges ``(first_missing_ts, last_missing_ts)``, oldest first; a single
    missing bar is ``(ts, ts)``. Order and duplicates in the input do not matter. Bars before
    the first or after the last timestamp are not gaps (that is backfill's and sync's job).
    """
    if tf_ms <= 0:
        raise ValueError(f"tf_ms must be > 0, got {tf_ms}")
    ordered = sorted(set(timestamps))
    gaps: list[tuple[int, int]] = []
    for prev, cur in pairwise(ordered):
        if cur - prev > tf_ms:
            gaps.append((prev + tf_ms, cur - tf_ms))
    return gaps


def missing_bars(gaps: Iterable[tuple[int, int]], tf_ms: int) -> int:
    """How many bars the inclusive ``gaps`` ranges (ms) cover."""
    return sum((last - first) // tf_ms + 1 for first, last in gaps if last >= first)


def freshness_limit_sec(tf_ms: int) -> float:
    """Seed 003 §6: stale after max(180 s, 3 bars)."""
    return max(FRESHNESS_FLOOR_SEC, 3 * tf_ms / 1000.0)


@dataclass
class SeriesBook:
    """One series as ingest knows it: the candle open times held in stream OHLCV, and run outcomes."""

    key: SeriesKey
    source: str  # "demo", "exchange", "replay"
    sync_interval_sec: float
    timestamps: list[int] = field(default_factory=list)  # sorted, unique, ms
    backfill_last_at: int | None = None
    backfill_last_rows: int | None = None
    backfill_last_message: str | None = None
    last_error: str | None = None
    # The demo plays history faster than real time: its "now" lags the wall clock by this much (ms).
    clock_lag_ms: int = 0

    @property
    def tf_ms(self) -> int:
        return timeframe_ms(self.key.timeframe)

    @property
    def last_ts(self) -> int | None:
        return self.timestamps[-1] if self.timestamps else None

    @property
    def oldest_ts(self) -> int | None:
        return self.timestamps[0] if self.timestamps else None

    def holds(self, ts: int) -> bool:
        i = bisect.bisect_left(self.timestamps, ts)
        return i < len(self.timestamps) and self.timestamps[i] == ts

    def add(self, ts: int) -> bool:
        """Record a published candle; False when the stream already held it."""
        i = bisect.bisect_left(self.timestamps, ts)
        if i < len(self.timestamps) and self.timestamps[i] == ts:
            return False
        self.timestamps.insert(i, ts)
        return True

    def expire(self, now_ms: int, retention_days: int) -> None:
        """Forget what the stream's max_age has dropped (by open time, a close approximation)."""
        cutoff = now_ms - retention_days * 86_400_000
        drop = bisect.bisect_left(self.timestamps, cutoff)
        if drop:
            del self.timestamps[:drop]

    def gaps(self) -> list[tuple[int, int]]:
        """Missing bars inside the held range, as inclusive (first_ts, last_ts) ranges."""
        return detect_gaps(self.timestamps, self.tf_ms)

    def status(self, now_ms: int, training_candles: int) -> PipelineStatus:
        """The series' data-pipeline report. coverage_pct = samples against the HMM training window."""
        tf = self.tf_ms
        now_ms -= self.clock_lag_ms
        samples = len(self.timestamps)
        last = self.last_ts
        freshness = None if last is None else max(0.0, (now_ms - (last + tf)) / 1000.0)
        limit = freshness_limit_sec(tf)
        missing = sum((b - a) // tf + 1 for a, b in self.gaps())
        return PipelineStatus(
            exchange=self.key.exchange,
            symbol=self.key.symbol,
            timeframe=self.key.timeframe,
            source=self.source,
            interval_min=max(1, tf // 60_000),
            sync_interval_sec=self.sync_interval_sec,
            samples=samples,
            coverage_pct=min(100.0, 100.0 * samples / training_candles) if training_candles else 100.0,
            last_ts=last,
            freshness_sec=freshness,
            freshness_limit_sec=limit,
            freshness_ok=freshness is not None and freshness <= limit,
            gaps=missing,
            backfill_last_at=self.backfill_last_at,
            backfill_last_rows=self.backfill_last_rows,
            backfill_last_message=self.backfill_last_message,
            last_error=self.last_error,
            reported_at=now_ms + self.clock_lag_ms,
        )
