"""Which series /readyz calls stale, judged as of the request. Pure.

Covered: the configured universe, the series the stack is set up to keep current. One
of them is stale when it has no candle yet or its newest candle closed longer ago than
its limit (``max(180 s, 3 bars)``, the ingest's own). Every other series Redis holds
(imported, replayed, or left over from an earlier universe) is reported on its own
list by the same rule; nothing keeps those current, so they never count against the
universe's data.

The age is worked out at the request, not taken from the stored ``freshness_ok``: that
flag is only as new as ingest's last report, so a series whose ingest stopped reporting
stayed "fresh" for good. With a pipeline report, the age is the reported one plus the
time since the report (the demo's candles are dated behind the wall clock on purpose,
and the report knows by how much); without one, the wall clock against the close time
of the newest candle any block of the snapshot carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from shared.domain.errors import ContractError
from shared.domain.subjects import timeframe_ms

FRESHNESS_FLOOR_SEC = 180.0  # as ohlcv_ingest: stale after max(180 s, 3 bars)


@dataclass(frozen=True, slots=True)
class Freshness:
    """What a snapshot tells about its series' age: enough to judge it at any later time."""

    series: str
    limit_sec: float
    newest_close_ms: int | None = None  # close time of the newest candle any block carries
    reported_age_sec: float | None = None  # ingest's freshness_sec, as of reported_at
    reported_at_ms: int | None = None

    def age_sec(self, now_ms: int) -> float | None:
        """Seconds since the newest candle closed, as of ``now_ms``; None: no candle yet."""
        if self.reported_age_sec is not None and self.reported_at_ms is not None:
            return self.reported_age_sec + max(0, now_ms - self.reported_at_ms) / 1000.0
        if self.newest_close_ms is None:
            return None
        return max(0, now_ms - self.newest_close_ms) / 1000.0

    def stale(self, now_ms: int) -> bool:
        age = self.age_sec(now_ms)
        return age is None or age > self.limit_sec


class _Ts(BaseModel):
    ts: int


class _Pipeline(BaseModel):
    last_ts: int | None = None
    freshness_sec: float | None = None
    freshness_limit_sec: float | None = None
    reported_at: int | None = None


class _Source(BaseModel):
    """The parts of a snapshot its age needs; the rest is skipped unparsed."""

    series: str
    timeframe: str
    price: _Ts | None = None
    vol: _Ts | None = None
    hmm_regime: _Ts | None = None
    screener: _Ts | None = None
    hmm_data_pipeline: _Pipeline | None = None


def freshness(raw: str) -> Freshness | None:
    """The age facts of one stored snapshot; None when it cannot be read (it is then left out)."""
    try:
        src = _Source.model_validate_json(raw)
        tf = timeframe_ms(src.timeframe)
    except (ValidationError, ContractError):
        return None
    stamps = [b.ts for b in (src.price, src.vol, src.hmm_regime, src.screener) if b is not None]
    pipe = src.hmm_data_pipeline
    if pipe is not None and pipe.last_ts is not None:
        stamps.append(pipe.last_ts)
    limit = max(FRESHNESS_FLOOR_SEC, 3 * tf / 1000.0)
    if pipe is not None and pipe.freshness_limit_sec is not None:
        limit = pipe.freshness_limit_sec
    reported = pipe is not None and pipe.freshness_sec is not None and pipe.reported_at is not None
    return Freshness(
        series=src.series,
        limit_sec=limit,
        newest_close_ms=max(stamps) + tf if stamps else None,
        reported_age_sec=pipe.freshness_sec if reported and pipe is not None else None,
        reported_at_ms=pipe.reported_at if reported and pipe is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Staleness:
    universe: list[str]  # universe series stale or without any candle yet, in universe order
    other: list[str]  # series outside the universe older than their limit, sorted


def stale(known: Iterable[Freshness], universe: Iterable[str], now_ms: int) -> Staleness:
    by_series: Mapping[str, Freshness] = {f.series: f for f in known}
    wanted = list(dict.fromkeys(universe))
    covered = set(wanted)
    mine = [s for s in wanted if s not in by_series or by_series[s].stale(now_ms)]
    other = sorted(s for s, f in by_series.items() if s not in covered and f.stale(now_ms))
    return Staleness(mine, other)
