"""Replay pacing: which candle is due when, and how several series are merged. Pure arithmetic, no sleeping."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ohlcv_ingest.replay import ReplayPlan, interleave
from shared.domain.contracts import Candle
from shared.domain.subjects import SeriesKey
from tests.factories import DAY0, TF_MS, candle, ts


def series(symbol: str, indices: list[int], timeframe: str = "1m", step: int = TF_MS) -> list[Candle]:
    """Flat bars (price 1, volume 1) of binance's ``symbol``: bar ``i`` opens ``i * step`` ms after DAY0."""
    key = SeriesKey("binance", symbol, timeframe)
    return [candle(close=1.0, key=key, ts=ts(i, step, DAY0), volume=1.0) for i in indices]


# --- interleave ----------------------------------------------------------------------


def test_interleave_orders_by_ts_and_keeps_argument_order_on_ties() -> None:
    btc = series("BTC/USDT", [0, 1, 2, 4])
    eth = series("ETH/USDT", [1, 2, 3])
    merged = interleave(btc, eth)
    assert [(c.symbol, c.ts) for c in merged] == [
        ("BTC/USDT", DAY0),
        ("BTC/USDT", DAY0 + TF_MS),
        ("ETH/USDT", DAY0 + TF_MS),
        ("BTC/USDT", DAY0 + 2 * TF_MS),
        ("ETH/USDT", DAY0 + 2 * TF_MS),
        ("ETH/USDT", DAY0 + 3 * TF_MS),
        ("BTC/USDT", DAY0 + 4 * TF_MS),
    ]
    assert [c.symbol for c in interleave(eth, btc) if c.ts == DAY0 + TF_MS] == ["ETH/USDT", "BTC/USDT"]


def test_interleave_mixes_timeframes_by_close_time_as_live_publishes_them() -> None:
    hourly = series("BTC/USDT", [0, 1], "1h", 60 * TF_MS)
    minutes = series("BTC/USDT", [0, 30, 59, 60])
    assert [(c.timeframe, c.ts - DAY0) for c in interleave(hourly, minutes)] == [
        ("1m", 0),
        ("1m", 30 * TF_MS),
        ("1h", 0),  # closes at 60 min with the 1m bar 59: the arguments' order breaks the tie
        ("1m", 59 * TF_MS),
        ("1m", 60 * TF_MS),
        ("1h", 60 * TF_MS),
    ]
    assert [(c.timeframe, c.ts - DAY0) for c in interleave(minutes, hourly)][2:4] == [("1m", 59 * TF_MS), ("1h", 0)]


def test_a_replay_paces_an_hourly_bar_by_its_close() -> None:
    merged = interleave(series("BTC/USDT", [0, 59]), series("BTC/USDT", [0], "1h", 60 * TF_MS))
    assert ReplayPlan(merged, speed=60).delays() == [0.0, 59.0, 0.0]


def test_interleave_of_nothing_is_empty() -> None:
    assert interleave() == []
    assert interleave([], []) == []


@pytest.mark.parametrize("indices", [[0, 2, 1], [0, 1, 1]], ids=["unsorted", "duplicate"])
def test_interleave_refuses_a_series_out_of_order(indices: list[int]) -> None:
    with pytest.raises(ValueError, match=r"series 1 .* not in increasing ts order"):
        interleave(series("BTC/USDT", [0, 1]), series("ETH/USDT", indices))


@given(st.lists(st.lists(st.integers(0, 50), unique=True, max_size=20), max_size=5))
def test_interleave_is_a_stable_sort_of_the_concatenation(index_lists: list[list[int]]) -> None:
    inputs = [series(f"S{n}/USD", sorted(indices)) for n, indices in enumerate(index_lists)]
    concatenated = [c for candles in inputs for c in candles]
    assert interleave(*inputs) == sorted(concatenated, key=lambda c: c.ts)


# --- ReplayPlan --------------------------------------------------------------------------


def test_as_fast_as_possible_everything_is_due_at_once() -> None:
    plan = ReplayPlan(series("BTC/USDT", list(range(10))), speed=None)
    assert plan.delays() == [0.0] * 10
    assert plan.due_count(0.0) == 10
    assert plan.duration_s == 0.0


def test_speed_60_plays_one_minute_bar_per_second() -> None:
    plan = ReplayPlan(series("BTC/USDT", list(range(5))), speed=60)
    assert plan.delays() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [plan.offset_s(i) for i in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [plan.due_count(t) for t in (0.0, 0.999, 1.0, 3.5, 100.0)] == [1, 1, 2, 4, 5]
    assert plan.seconds_until(3, 1.25) == pytest.approx(1.75)
    assert plan.seconds_until(1, 5.0) == 0.0


def test_candles_of_several_series_with_the_same_ts_go_out_together() -> None:
    merged = interleave(series("BTC/USDT", [0, 1, 2]), series("ETH/USDT", [0, 1, 2]))
    plan = ReplayPlan(merged, speed=120)
    assert plan.delays() == [0.0, 0.0, 0.5, 0.0, 0.5, 0.0]
    assert plan.due_count(0.5) == 4


def test_gaps_in_the_data_take_their_time_unless_capped() -> None:
    candles = series("BTC/USDT", [0, 1, 1441])  # a day missing
    assert ReplayPlan(candles, speed=60).delays() == [0.0, 1.0, 1440.0]
    assert ReplayPlan(candles, speed=60, max_delay_s=5).delays() == [0.0, 1.0, 5.0]


def test_the_schedule_is_anchored_to_the_start_so_slow_publishing_does_not_drift() -> None:
    rng = random.Random(5)
    plan = ReplayPlan(series("BTC/USDT", list(range(100))), speed=600)  # 0.1 s per bar
    elapsed, sent = 0.0, 0
    while sent < len(plan):
        sent = plan.due_count(elapsed)
        # Each publish round costs up to 0.3 s: the loop falls behind, then sends what is due in one go.
        elapsed += plan.seconds_until(min(sent, len(plan) - 1), elapsed) + rng.uniform(0, 0.3)
    assert elapsed < plan.duration_s + 0.31


def test_an_empty_replay_has_nothing_due() -> None:
    plan = ReplayPlan([], speed=60)
    assert len(plan) == 0
    assert plan.due_count(10.0) == 0
    assert plan.duration_s == 0.0


@pytest.mark.parametrize("speed", [0, -1, float("nan"), float("inf")])
def test_speed_must_be_positive_and_finite(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        ReplayPlan(series("BTC/USDT", [0, 1]), speed=speed)


def test_max_delay_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_delay_s"):
        ReplayPlan(series("BTC/USDT", [0, 1]), speed=1, max_delay_s=-1)


def test_a_plan_refuses_candles_out_of_order() -> None:
    with pytest.raises(ValueError, match="interleave the series first"):
        ReplayPlan(series("BTC/USDT", [1, 0]), speed=None)
