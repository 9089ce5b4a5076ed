"""Ingest builds the higher timeframes a universe entry names, and they are classified like any other series.

The demo market publishes 1m candles of a series whose entry says
``"aggregate": ["5m", "15m"]``; ingest is stopped mid-bucket and started
again. Whatever it published on the 5m and 15m subjects must be exactly
``aggregate()`` of the 1m candles the stream holds: no bar lost, doubled or
cut short by the restart. And vol_regime, which consumes ``ohlcv.>``, gives
the 5m series verdicts of its own.
"""

from __future__ import annotations

from shared.domain.aggregate import aggregate
from shared.domain.contracts import Candle, CandleBatch, VolRegimeBatch, VolRegimeEvent, candles_in, events_in
from shared.domain.subjects import SeriesKey
from shared.infra.bus import read_subject
from tests.harness import Stack, StackFactory, eventually, small_config

BASE = SeriesKey("demo", "BTC/USD", "1m")
BUILT = {tf: SeriesKey("demo", "BTC/USD", tf) for tf in ("5m", "15m")}
CONFIG = small_config(
    [],
    universe=[{"exchange": "demo", "symbol": "BTC/USD", "timeframe": "1m", "aggregate": ["15m", "5m"]}],
    demo={"seed": 5, "history_bars": 200, "bars_per_sec": 40.0},
    # 40 bars/s over the demo's hour of lead starts it 100 days back: the books must keep that long.
    hmm={"HMM_ENABLED": False, "HMM_OHLCV_RETENTION_DAYS": 365},
)


async def held(st: Stack, key: SeriesKey) -> list[Candle]:
    msgs = await read_subject(st.js, st.names.stream_ohlcv, st.names.ohlcv(key), keep_last=0,
                              decode_as=(Candle, CandleBatch))
    return [c for m in msgs for c in candles_in(m)]


async def test_higher_timeframes_equal_the_aggregate_of_the_held_1m_candles_across_a_restart(
    make_stack: StackFactory,
) -> None:
    st = await make_stack(CONFIG)
    await st.start("vol_regime")
    await st.start("ohlcv_ingest")

    async def base_at_least(n: int) -> list[Candle] | None:
        candles = await held(st, BASE)
        return candles if len(candles) >= n else None

    first = await eventually(lambda: base_at_least(230), timeout=30)
    await st.stop("ohlcv_ingest")  # most likely inside a 5m and a 15m bucket
    await st.start("ohlcv_ingest")
    await eventually(lambda: base_at_least(len(first) + 120), timeout=30)
    await st.stop("ohlcv_ingest")

    base = await held(st, BASE)
    assert [c.ts for c in base] == sorted({c.ts for c in base})
    for tf, key in BUILT.items():
        built = await held(st, key)
        assert built == aggregate(base, tf), tf
        assert len(built) >= len(base) // (5 if tf == "5m" else 15) - 1

    async def classified() -> list[VolRegimeEvent] | None:
        msgs = await read_subject(st.js, st.names.stream_regimes, st.names.vol(BUILT["5m"]), keep_last=0,
                                  decode_as=(VolRegimeEvent, VolRegimeBatch))
        events = [e for m in msgs for e in events_in(m)]
        return events if events and events[-1].ts == (await held(st, BUILT["5m"]))[-1].ts else None

    events = await eventually(classified, timeout=20)
    assert [e.ts for e in events] == [c.ts for c in await held(st, BUILT["5m"])]
