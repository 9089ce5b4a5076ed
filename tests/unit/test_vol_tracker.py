"""VolTracker: the O(1)-per-bar tracker gives what the batch classify_vol_regime gives, and resumes from its state."""

from __future__ import annotations

import itertools
import json
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from shared.domain.vol import VolInputs, VolRegime, VolRegimeConfig, classify_vol_regime
from shared.domain.vol_tracker import VolTracker

NORMAL_WITH_ZEROS = VolRegime("normal", 0.0, 0.0, 1.0)
SEED_CFG = VolRegimeConfig()
FAST = settings(max_examples=40, deadline=None)


@st.composite
def small_configs(draw: st.DrawFn) -> VolRegimeConfig:
    """Short windows, so a few dozen bars cross the long window and its periodic rebuild several times."""
    long_window = draw(st.integers(2, 24))
    return VolRegimeConfig(
        short_window_bars=draw(st.integers(1, long_window)),
        long_window_bars=long_window,
        short_halflife_bars=draw(st.integers(1, 40)),
        long_halflife_bars=draw(st.integers(1, 80)),
    )


# Log returns as markets make them: exact zeros (no trade, stale price) are common, and a
# non-zero move is at least a tick; no subnormals, whose squares underflow to nothing.
log_returns = st.one_of(
    st.just(0.0),
    st.floats(min_value=-0.25, max_value=0.25, allow_subnormal=False).map(lambda x: 0.0 if abs(x) < 1e-9 else x),
)
# Runs of identical returns: stale stretches long enough to empty a window of all movement.
runs = st.lists(st.tuples(log_returns, st.integers(1, 30)), min_size=1, max_size=12).map(
    lambda pairs: [x for x, n in pairs for _ in range(n)]
)
series = st.one_of(st.lists(log_returns, min_size=0, max_size=110), runs)


def batch(returns: list[float], cfg: VolRegimeConfig) -> VolRegime:
    return classify_vol_regime(VolInputs(returns=np.array(returns, dtype=np.float64)), cfg)


def near_a_threshold(ratio: float, cfg: VolRegimeConfig, rtol: float) -> bool:
    return any(abs(ratio - t) <= rtol * t for t in (cfg.ratio_low, cfg.ratio_normal, cfg.ratio_high))


def assert_same_regime(got: VolRegime, expected: VolRegime, cfg: VolRegimeConfig, rtol: float) -> None:
    if expected == NORMAL_WITH_ZEROS:
        assert got == NORMAL_WITH_ZEROS
        return
    assert_allclose(
        [got.vol_short, got.vol_long, got.ratio], [expected.vol_short, expected.vol_long, expected.ratio], rtol=rtol
    )
    if not near_a_threshold(expected.ratio, cfg, rtol):
        assert got.label == expected.label


@FAST
@given(cfg=small_configs(), returns=series)
def test_tracker_equals_batch_classification_after_every_bar(cfg: VolRegimeConfig, returns: list[float]) -> None:
    tracker = VolTracker(cfg)

    for i, r in enumerate(returns):
        assert_same_regime(tracker.update(r), batch(returns[: i + 1], cfg), cfg, rtol=1e-10)
        assert tracker.samples == i + 1


def test_tracker_equals_batch_at_the_seed_config_across_windows_and_rebuilds() -> None:
    # 3600 bars: five long windows, so five periodic rebuilds, over changing vol and fat tails.
    rng = np.random.default_rng(20)
    scale = np.repeat(rng.choice([0.002, 0.01, 0.05], size=24), 150)
    returns = (rng.standard_t(3, scale.size) * scale).tolist()
    tracker = VolTracker(SEED_CFG)

    for i, r in enumerate(returns):
        got = tracker.update(r)
        if i + 1 < SEED_CFG.long_window_bars:
            assert got == NORMAL_WITH_ZEROS
        else:
            expected = batch(returns[: i + 1], SEED_CFG)
            assert_allclose(
                [got.vol_short, got.vol_long, got.ratio],
                [expected.vol_short, expected.vol_long, expected.ratio],
                rtol=1e-12,
            )
            assert got.label == expected.label


def test_tracker_gives_normal_with_zeros_until_the_long_window_is_full() -> None:
    cfg = VolRegimeConfig(short_window_bars=3, long_window_bars=10, short_halflife_bars=2, long_halflife_bars=5)
    tracker = VolTracker(cfg)

    early = [tracker.update(0.01 * (-1) ** i * (i + 1)) for i in range(9)]
    tenth = tracker.update(0.05)

    assert early == [NORMAL_WITH_ZEROS] * 9
    assert tenth != NORMAL_WITH_ZEROS
    assert tracker.sufficient


def test_a_stale_market_reads_exactly_zero_vol_like_the_batch() -> None:
    # Lively, then the price stops moving: once the long window holds only zeros there is no
    # vol at all, and rounding residue of the lively bars must not pretend otherwise.
    cfg = VolRegimeConfig(short_window_bars=5, long_window_bars=20, short_halflife_bars=3, long_halflife_bars=10)
    rng = np.random.default_rng(21)
    returns = [*rng.normal(0.0, 0.2, 60).tolist(), *[0.0] * 45]
    tracker = VolTracker(cfg)

    results = [tracker.update(r) for r in returns]

    assert results[-1] == NORMAL_WITH_ZEROS
    quiet_short_window = results[60 + cfg.short_window_bars - 1]
    assert quiet_short_window.vol_short == 0.0
    assert quiet_short_window.label == "low"
    # The long window still holds lively bars: equal to the batch up to summation order (an ulp or so).
    expected = batch(returns[: 60 + cfg.short_window_bars], cfg).vol_long
    assert quiet_short_window.vol_long == pytest.approx(expected, rel=1e-12)


@FAST
@given(cfg=small_configs(), returns=series, data=st.data())
def test_state_round_trip_through_msgpack_resumes_bit_identically(
    cfg: VolRegimeConfig, returns: list[float], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(returns)), label="split")
    uninterrupted = VolTracker(cfg)
    expected = [uninterrupted.update(r) for r in returns]

    first = VolTracker(cfg)
    for r in returns[:split]:
        first.update(r)
    wire = msgpack.packb(first.to_state())
    resumed = VolTracker.from_state(cfg, msgpack.unpackb(wire))

    assert [resumed.update(r) for r in returns[split:]] == expected[split:]
    assert resumed.samples == len(returns)
    assert resumed.to_state() == uninterrupted.to_state()


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (int, float, str)


def test_state_holds_only_plain_values_and_survives_json() -> None:
    rng = np.random.default_rng(22)
    tracker = VolTracker(SEED_CFG)
    tracker.push_close(100.0)
    for close in 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, 1000))):
        tracker.push_close(close)

    state = tracker.to_state()
    resumed = VolTracker.from_state(SEED_CFG, json.loads(json.dumps(state)))

    assert _plain(state)
    assert len(state["returns"]) == SEED_CFG.long_window_bars
    assert resumed.last_close == tracker.last_close
    assert resumed.push_close(101.0) == tracker.push_close(101.0)


def test_state_may_be_resumed_under_other_thresholds() -> None:
    rng = np.random.default_rng(23)
    returns = rng.normal(0.0, 0.01, 800).tolist()
    tracker = VolTracker(SEED_CFG)
    for r in returns:
        tracker.update(r)
    stricter = VolRegimeConfig(ratio_low=0.9, ratio_normal=0.95, ratio_high=1.0)

    resumed = VolTracker.from_state(stricter, tracker.to_state())

    got, before = resumed.update(0.3), tracker.update(0.3)
    assert (got.vol_short, got.vol_long, got.ratio) == (before.vol_short, before.vol_long, before.ratio)
    assert got.label == "crisis"


@pytest.mark.parametrize(
    "other",
    [
        VolRegimeConfig(short_window_bars=100),
        VolRegimeConfig(long_window_bars=721),
        VolRegimeConfig(short_halflife_bars=85),
        VolRegimeConfig(long_halflife_bars=300),
    ],
)
def test_state_made_with_other_windows_is_refused(other: VolRegimeConfig) -> None:
    tracker = VolTracker(SEED_CFG)
    tracker.update(0.01)

    with pytest.raises(ValueError, match="config has"):
        VolTracker.from_state(other, tracker.to_state())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 99),
        ("samples", -1),
        ("samples", 5),  # more samples than stored returns
        ("since_rebuild", 720),
        ("returns", [0.01, "x", 0.02]),
        ("sums", [0.0, 0.0, 0.0]),
        ("shift", float("nan")),
        ("last_close", -5.0),
    ],
)
def test_malformed_state_is_refused(field: str, value: object) -> None:
    tracker = VolTracker(SEED_CFG)
    for r in (0.01, -0.02, 0.03):
        tracker.update(r)
    state = tracker.to_state()
    state[field] = value

    with pytest.raises(ValueError, match="vol tracker state"):
        VolTracker.from_state(SEED_CFG, state)


@FAST
@given(cfg=small_configs(), closes=st.lists(st.floats(min_value=1e-3, max_value=1e6), min_size=1, max_size=80))
def test_push_close_feeds_the_log_returns_of_closes(cfg: VolRegimeConfig, closes: list[float]) -> None:
    by_close, by_return = VolTracker(cfg), VolTracker(cfg)

    first = by_close.push_close(closes[0])
    regimes = [by_close.push_close(c) for c in closes[1:]]

    assert first is None
    assert regimes == [by_return.update(math.log(c / p)) for p, c in itertools.pairwise(closes)]
    assert by_close.samples == len(closes) - 1
    assert by_close.last_close == closes[-1]
    if len(closes) > 1:
        log_returns = np.log(np.array(closes[1:]) / np.array(closes[:-1]))
        last = regimes[-1]
        assert last is not None
        assert_same_regime(last, batch(log_returns.tolist(), cfg), cfg, rtol=1e-9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_return_is_refused_and_changes_nothing(bad: float) -> None:
    tracker = VolTracker(VolRegimeConfig(short_window_bars=2, long_window_bars=4, long_halflife_bars=2))
    for r in (0.01, -0.02, 0.03, 0.01, 0.02):
        tracker.update(r)
    before = tracker.to_state()

    with pytest.raises(ValueError, match="finite"):
        tracker.update(bad)

    assert tracker.to_state() == before


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bad_close_is_refused_and_changes_nothing(bad: float) -> None:
    tracker = VolTracker(SEED_CFG)
    tracker.push_close(100.0)
    tracker.push_close(101.0)
    before = tracker.to_state()

    with pytest.raises(ValueError, match="close"):
        tracker.push_close(bad)

    assert tracker.to_state() == before
