"""The demo market and its clock.

The demo exists so that a fresh stack shows every regime within its start-up
history: these tests pin that promise (all four vol labels within history +
200 live bars, series disagreeing at the end of history), the contract of
every candle, determinism, and a clock that never publishes a bar before it
has closed on the wall clock.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ohlcv_ingest.demo import DemoClock, DemoMarket, start_price
from shared.domain.contracts import Candle
from shared.domain.subjects import SeriesKey
from shared.domain.vol import VolRegimeConfig
from shared.domain.vol_tracker import VolTracker
from tests.factories import T0, TF_MS

SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOGE/USD", "PEPE/USD", "LINK/USD")
SERIES = [SeriesKey("demo", s, "1m") for s in SYMBOLS]
HISTORY = 1500  # bars the ingest publishes at start-up
LIVE = 200  # live bars a first look at the dashboard covers
VOL_LABELS = ("low", "normal", "high", "crisis")


def generate(seed: int, n: int, series: list[SeriesKey] = SERIES) -> list[list[Candle]]:
    """n steps of a market: one list of candles (one per series) per bar."""
    return list(DemoMarket(series, seed, T0).bars(n))


def vol_labels(candles: list[Candle]) -> list[str | None]:
    """The vol regime label after each candle (None while the long window is not yet full)."""
    tracker = VolTracker(VolRegimeConfig())
    out: list[str | None] = []
    for c in candles:
        regime = tracker.push_close(c.close)
        out.append(regime.label if regime is not None and tracker.sufficient else None)
    return out


def labels_by_series(seed: int) -> dict[str, list[str | None]]:
    steps = generate(seed, HISTORY + LIVE)
    return {key.symbol: vol_labels([step[j] for step in steps]) for j, key in enumerate(SERIES)}


@pytest.fixture(scope="module")
def seed7_steps() -> list[list[Candle]]:
    return generate(7, HISTORY + LIVE)


@pytest.fixture(scope="module")
def seed7_labels(seed7_steps: list[list[Candle]]) -> dict[str, list[str | None]]:
    return {key.symbol: vol_labels([step[j] for step in seed7_steps]) for j, key in enumerate(SERIES)}


# --- determinism and contract ------------------------------------------------------


def test_same_seed_gives_identical_candles() -> None:
    assert generate(7, 300) == generate(7, 300)


def test_different_seeds_give_different_markets() -> None:
    a, b = generate(7, 50), generate(8, 50)
    assert [c.close for c in a[-1]] != [c.close for c in b[-1]]


def test_a_series_depends_on_its_id_and_position_not_on_the_other_series() -> None:
    other = SeriesKey("demo", "AVAX/USD", "1m")
    swapped = [*SERIES[:3], other, *SERIES[4:]]
    a, b = generate(7, 200), generate(7, 200, swapped)
    assert [step[5] for step in a] == [step[5] for step in b]
    assert [step[3] for step in a] != [step[3] for step in b]


def test_series_enter_the_volatility_cycle_at_staggered_phases() -> None:
    market = DemoMarket(SERIES, 7, T0)
    first_crash: dict[str, int] = {}
    for i in range(1200):
        market.next_bars()
        for key in SERIES:
            if market.truth(key).vol_state == "crash":
                first_crash.setdefault(key.symbol, i)
    starts = sorted(first_crash.values())
    assert len(starts) == len(SERIES)
    assert min(b - a for a, b in itertools.pairwise(starts)) > 30  # no two series crash together


def test_every_demo_candle_passes_the_contract_check(seed7_steps: list[list[Candle]]) -> None:
    for step in seed7_steps:
        for candle in step:
            candle.check()


def test_timestamps_are_aligned_consecutive_and_shared_by_all_series(seed7_steps: list[list[Candle]]) -> None:
    for i, step in enumerate(seed7_steps):
        assert [c.ts for c in step] == [T0 + i * TF_MS] * len(SERIES)
        assert [c.key for c in step] == SERIES


def test_each_bar_opens_at_the_previous_close(seed7_steps: list[list[Candle]]) -> None:
    for prev, cur in itertools.pairwise(seed7_steps):
        assert [c.open for c in cur] == [c.close for c in prev]


def test_start_prices_are_plausible_and_stable() -> None:
    first = generate(7, 1)[0]
    by_symbol = {c.symbol: c.open for c in first}
    assert by_symbol["BTC/USD"] == 60_000.0
    assert by_symbol["ETH/USD"] == 3_000.0
    assert 0 < by_symbol["PEPE/USD"] < 0.001
    # Unknown symbols get a hashed price: positive, stable, and not the same for every name.
    assert start_price("FOO/USD") == start_price("FOO/USD") > 0
    assert start_price("FOO/USD") != start_price("BAR/USD")


def test_next_ts_and_advance_to_resume_the_same_bars() -> None:
    market = DemoMarket(SERIES, 7, T0)
    market.advance_to(T0 + 100 * TF_MS)
    assert market.next_ts == T0 + 100 * TF_MS
    assert market.next_bars() == generate(7, 101)[100]


@pytest.mark.parametrize(
    ("series", "start"),
    [
        ([], T0),
        ([SERIES[0], SERIES[0]], T0),
        ([SERIES[0], SeriesKey("demo", "ETH/USD", "5m")], T0),
        (SERIES, T0 + 1),
    ],
    ids=["no-series", "duplicate", "mixed-timeframes", "misaligned-start"],
)
def test_market_refuses_bad_setup(series: list[SeriesKey], start: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies per case; the type is the contract
        DemoMarket(series, 7, start)


# --- the point of the demo: regimes ---------------------------------------------------


def test_all_four_vol_regimes_appear_in_demo_history(seed7_labels: dict[str, list[str | None]]) -> None:
    seen = {label for labels in seed7_labels.values() for label in labels if label}
    assert seen == set(VOL_LABELS)


@pytest.mark.parametrize("seed", [1, 42, 2024])
def test_all_four_vol_regimes_appear_for_other_seeds(seed: int) -> None:
    labels = labels_by_series(seed)
    seen = {label for series_labels in labels.values() for label in series_labels if label}
    assert seen == set(VOL_LABELS)
    assert len({series_labels[HISTORY - 1] for series_labels in labels.values()}) > 1


def test_vol_regimes_differ_across_series_at_the_end_of_history(seed7_labels: dict[str, list[str | None]]) -> None:
    at_end = {symbol: labels[HISTORY - 1] for symbol, labels in seed7_labels.items()}
    assert None not in at_end.values()  # the long window is full by then
    assert len(set(at_end.values())) > 1, at_end


def test_crisis_is_a_short_burst_not_a_lasting_state(seed7_labels: dict[str, list[str | None]]) -> None:
    counts = Counter(label for labels in seed7_labels.values() for label in labels if label)
    assert counts["crisis"] < 0.1 * sum(counts.values())
    assert counts["normal"] > counts["crisis"]


def _truth_run(seed: int, n: int, key: SeriesKey) -> Iterator[tuple[Candle, str, str]]:
    market = DemoMarket([key], seed, T0)
    for _ in range(n):
        (candle,) = market.next_bars()
        truth = market.truth(key)
        yield candle, truth.vol_state, truth.drift_state


def test_drift_regimes_produce_up_and_down_trends() -> None:
    key = SERIES[0]
    rows = list(_truth_run(7, 6000, key))
    returns: dict[str, list[float]] = {"bear": [], "range": [], "bull": []}
    for prev, cur in itertools.pairwise(rows):
        returns[cur[2]].append(math.log(cur[0].close / prev[0].close))
    assert all(len(r) > 200 for r in returns.values()), {k: len(v) for k, v in returns.items()}
    mean = {k: float(np.mean(v)) for k, v in returns.items()}
    sem = {k: float(np.std(v) / math.sqrt(len(v))) for k, v in returns.items()}
    assert mean["bull"] > 3 * sem["bull"]
    assert mean["bear"] < -3 * sem["bear"]
    # And the trends are visible on the chart: some 300-bar stretch rises 3%, another falls 3%.
    closes = np.array([row[0].close for row in rows])
    moves = closes[300:] / closes[:-300] - 1
    assert moves.max() > 0.03
    assert moves.min() < -0.03


def test_volume_rises_with_volatility() -> None:
    rows = list(_truth_run(7, 4000, SERIES[1]))
    by_state: dict[str, list[float]] = {}
    for candle, vol_state, _ in rows:
        by_state.setdefault(vol_state, []).append(candle.volume)
    median = {state: float(np.median(v)) for state, v in by_state.items()}
    assert median["calm"] < median["normal"] < median["stormy"] < median["crash"]


def test_prices_stay_plausible_over_a_long_run() -> None:
    closes = np.array([c.close for c, _, _ in _truth_run(11, 12_000, SERIES[6])])
    assert 0.1 < closes.min() / closes[0] <= closes.max() / closes[0] < 10


# --- the clock ---------------------------------------------------------------------

NOW = 1_700_000_012_345  # wall clock at start, deliberately not on a bar boundary


def test_plan_puts_history_and_lead_in_the_past() -> None:
    clock = DemoClock.plan(NOW, TF_MS, bars_per_sec=10, history_bars=HISTORY, lead_seconds=3600)
    assert clock.start_ts % TF_MS == 0
    assert clock.history_end_ts + TF_MS * 36_000 == NOW // TF_MS * TF_MS
    assert clock.lead_bars == 36_000
    # Every history bar has closed on the wall clock.
    assert clock.bar_ts(HISTORY - 1) + TF_MS <= NOW


def test_history_is_due_at_once_and_nothing_more() -> None:
    clock = DemoClock.plan(NOW, TF_MS, 10, HISTORY)
    assert clock.total_due(NOW, 0.0) == HISTORY
    assert clock.due_bars(NOW, 0.0, published=0) == HISTORY
    assert clock.due_bars(NOW, 0.0, published=HISTORY) == 0


def test_accelerated_play_runs_at_bars_per_sec() -> None:
    clock = DemoClock.plan(NOW, TF_MS, 10, HISTORY)
    for elapsed in (0.1, 1.0, 2.5, 60.0):
        now = NOW + round(elapsed * 1000)
        assert clock.total_due(now, elapsed) == HISTORY + math.floor(elapsed * 10 + 1e-9)
    assert clock.seconds_until_next(NOW, 0.0, published=HISTORY) == pytest.approx(0.1)


def test_after_catching_up_one_bar_per_timeframe_each_at_its_close() -> None:
    clock = DemoClock.plan(NOW, TF_MS, 10, HISTORY, lead_seconds=60)  # 600 lead bars, ~61 s of play
    assert 60 < clock.catch_up_s < 62
    later = clock.catch_up_s + 10
    now = NOW + round(later * 1000)
    due = clock.total_due(now, later)
    assert clock.caught_up(now, later)
    assert due == clock.closed_bars(now)
    assert clock.bar_ts(due - 1) + TF_MS <= now < clock.bar_ts(due) + TF_MS
    wait = clock.seconds_until_next(now, later, published=due)
    assert wait == pytest.approx((clock.bar_ts(due) + TF_MS - now) / 1000)
    assert clock.total_due(now + round(wait * 1000), later + wait) == due + 1


def test_play_slower_than_real_time_never_catches_up() -> None:
    clock = DemoClock.plan(NOW, TF_MS, bars_per_sec=0.01, history_bars=10, lead_seconds=1000)
    assert clock.catch_up_s == math.inf


@settings(max_examples=150, deadline=None)
@given(
    bars_per_sec=st.floats(0.05, 50),
    history=st.integers(0, 5000),
    lead_seconds=st.floats(0, 3600),
    tf_ms=st.sampled_from([TF_MS, 5 * TF_MS, 3_600_000]),
    elapsed=st.floats(0, 3 * 86_400),
    clock_skew_ms=st.integers(-5_000, 5_000),
)
def test_clock_never_runs_ahead_of_the_wall_clock(
    bars_per_sec: float, history: int, lead_seconds: float, tf_ms: int, elapsed: float, clock_skew_ms: int
) -> None:
    clock = DemoClock.plan(NOW, tf_ms, bars_per_sec, history, lead_seconds)
    now = NOW + round(elapsed * 1000) + clock_skew_ms  # the wall clock may be stepped against elapsed time
    due = clock.total_due(now, elapsed)
    if due:
        assert clock.bar_ts(due - 1) + tf_ms <= now  # the last due bar has closed
    assert due <= clock.accelerated_bars(elapsed)


def test_a_loop_sleeping_on_the_clock_publishes_every_bar_once_and_in_time() -> None:
    clock = DemoClock.plan(NOW, TF_MS, bars_per_sec=20, history_bars=100, lead_seconds=5)
    elapsed, published, wakes = 0.0, 0, 0
    now = NOW
    while elapsed < clock.catch_up_s + 300:
        now = NOW + math.floor(elapsed * 1000)
        n = clock.due_bars(now, elapsed, published)
        if wakes:  # the loop only wakes when something is due: no busy polling
            assert n >= 1
        published += n
        assert published == clock.total_due(now, elapsed)
        assert clock.bar_ts(published - 1) + TF_MS <= now  # nothing from the future
        elapsed += clock.seconds_until_next(now, elapsed, published) + 1e-6
        wakes += 1
    assert clock.caught_up(now, elapsed)
    assert published == clock.closed_bars(now)  # in real time at the end, up to the last closed bar
    assert wakes < published  # the history came in one wake
