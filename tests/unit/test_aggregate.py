"""Higher-timeframe bars built from 1m candles are the bars pandas ``resample`` builds from the same 1m data.

The 1m series has holes on purpose (seeded): single bars, the last bar of a
bucket, the first, and whole buckets, so "closed by its last bar", "closed by a
later bucket's bar" and "no bar at all" are all exercised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # no pandas-stubs in the venv
import pytest

from shared.domain.aggregate import Aggregator, aggregate, built_series, check_aggregate
from shared.domain.contracts import Candle
from shared.domain.errors import ContractError
from shared.domain.subjects import SeriesKey, timeframe_ms
from tests.factories import DAY0, TF_MS, demo_candles

KEY = SeriesKey("demo", "BTC/USD", "1m")


def minute_bars(days: int, seed: int, holes: float = 0.03) -> list[Candle]:
    """Demo 1m candles over ``days``, a seeded share of them dropped, plus two whole missing hours."""
    bars = demo_candles(days * 1440, key=KEY, seed=seed, start_ts=DAY0)
    rng = np.random.default_rng(seed)
    keep = rng.random(len(bars)) > holes
    keep[600:660] = False  # 10:00-11:00 on day one: a whole hour, four whole 15m buckets
    keep[1440 + 59] = False  # the last minute of an hour
    keep[1440 + 120] = False  # the first minute of an hour
    return [b for b, k in zip(bars, keep, strict=True) if k]


def pandas_bars(candles: list[Candle], timeframe: str) -> pd.DataFrame:
    frame = pd.DataFrame(
        [(c.ts, c.open, c.high, c.low, c.close, c.volume) for c in candles],
        columns=["ts", "open", "high", "low", "close", "volume"],
    )
    frame.index = pd.to_datetime(frame.pop("ts"), unit="ms", utc=True)
    rule = f"{timeframe_ms(timeframe) // TF_MS}min"
    out = frame.resample(rule, label="left", closed="left").agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    )
    return out.dropna(subset=["open"])  # a bucket with no 1m bar is no bar


def as_frame(bars: list[Candle]) -> pd.DataFrame:
    out = pd.DataFrame(
        [(b.ts, b.open, b.high, b.low, b.close, b.volume) for b in bars],
        columns=["ts", "open", "high", "low", "close", "volume"],
    )
    out.index = pd.to_datetime(out.pop("ts"), unit="ms", utc=True)
    return out


@pytest.mark.parametrize("timeframe", ["5m", "15m", "1h", "4h", "1d"])
@pytest.mark.parametrize("seed", [1, 2])
def test_aggregated_bars_equal_pandas_resample_of_the_same_1m_candles(timeframe: str, seed: int) -> None:
    candles = minute_bars(days=3, seed=seed)
    ours = aggregate(candles, timeframe)
    expected = pandas_bars(candles, timeframe)
    # The data ends on a day boundary, so every bucket is closed and pandas' last bucket is ours too,
    # except when the last 1m bar was dropped: then nothing has closed that bucket yet.
    if candles[-1].ts + TF_MS != DAY0 + 3 * 86_400_000:
        expected = expected.iloc[:-1]
    got = as_frame(ours)
    prices = ["open", "high", "low", "close"]
    pd.testing.assert_frame_equal(got[prices], expected[prices], check_freq=False, check_exact=True)
    # The same floats summed in another order: equal to the last bits, not always to the last one.
    pd.testing.assert_series_equal(got["volume"], expected["volume"], check_freq=False, rtol=1e-12, atol=0)
    assert all(b.timeframe == timeframe and b.ts % timeframe_ms(timeframe) == 0 for b in ours)
    for b in ours:
        b.check()  # every bar passes the bus contract


def test_a_bucket_is_emitted_when_its_last_bar_arrives_not_before() -> None:
    agg = Aggregator("15m")
    bars = demo_candles(30, key=KEY, seed=3, start_ts=DAY0)
    emitted = [agg.push(b) for b in bars]
    assert [i for i, out in enumerate(emitted) if out] == [14, 29]  # the 15th and the 30th minute
    [first] = emitted[14]
    assert first.ts == DAY0
    assert first.open == bars[0].open
    assert first.close == bars[14].close
    assert first.volume == pytest.approx(sum(b.volume for b in bars[:15]))


def test_a_bucket_missing_its_last_bars_closes_when_the_next_bucket_begins() -> None:
    bars = demo_candles(30, key=KEY, seed=4, start_ts=DAY0)
    agg = Aggregator("15m")
    assert [agg.push(b) for b in bars[:12]] == [[]] * 12  # minutes 0-11; 12-14 never come
    [closed] = agg.push(bars[16])  # minute 16: the first bucket is complete as it is
    assert closed.ts == DAY0
    assert closed.close == bars[11].close


def test_old_and_duplicate_candles_change_nothing() -> None:
    bars = demo_candles(60, key=KEY, seed=5, start_ts=DAY0)
    shuffled = [*bars[:20], bars[5], bars[19], *bars[20:]]
    assert aggregate(shuffled, "15m") == aggregate(bars, "15m")


def test_an_aggregator_dumped_and_loaded_mid_bucket_goes_on_as_if_never_stopped() -> None:
    bars = minute_bars(days=2, seed=6)
    whole = aggregate(bars, "1h")
    agg = Aggregator("1h")
    out = [bar for b in bars[:700] for bar in agg.push(b)]
    agg = Aggregator.load(agg.dump())  # a restart: the state as ingest would keep it in KV
    out += [bar for b in bars[700:] for bar in agg.push(b)]
    assert out == whole


@pytest.mark.parametrize(("base", "target"), [("1m", "1m"), ("15m", "5m"), ("3m", "5m"), ("1h", "1m")])
def test_a_target_that_is_not_a_longer_whole_multiple_of_the_base_is_refused(base: str, target: str) -> None:
    with pytest.raises(ContractError):
        check_aggregate(base, target)


# --- what a file import builds (the universe's ``aggregate``) ----------------------------


def test_the_series_built_from_files_are_the_aggregates_of_each_named_series() -> None:
    other = SeriesKey("demo", "ETH/USD", "1m")
    btc, eth = minute_bars(2, seed=5), demo_candles(180, key=other, seed=6, start_ts=DAY0)
    built = built_series([btc, eth], {KEY: ("15m", "1h")})
    assert built == [aggregate(btc, "15m"), aggregate(btc, "1h")]  # ETH names no target: nothing built of it


def test_a_target_given_as_a_file_of_its_own_is_taken_from_the_file_not_built() -> None:
    btc = minute_bars(2, seed=5)
    own_hourly = aggregate(btc, "1h")[:3]  # what an exchange's own 1h file holds, however it differs
    assert built_series([btc, own_hourly], {KEY: ("15m", "1h")}) == [aggregate(btc, "15m")]
    assert built_series([[], btc[:0]], {KEY: ("15m",)}) == []
