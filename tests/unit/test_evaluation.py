"""The evaluation's numbers, each on generated data whose answer is known by construction.

Every series here is built so that the right answer can be written down
before running the code: returns that are positive exactly in one regime, a
bias that is right (or wrong) on every call, labels with runs of chosen
lengths, a size that doubles exactly on the bars that pay.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import pytest

from regimes.evaluation import (
    DAY_MS,
    bias_hit_rates,
    dwell_by_label,
    evaluate_series,
    flips_per_day,
    forward_by_label,
    forward_log_returns,
    frames,
    raw_vs_confirmed,
    runs,
    sizing_vs_flat,
    transitions,
)
from shared.domain.contracts import HmmRegimeEvent, VolRegimeEvent
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import VolLabel
from tests.factories import T0, TF_MS, hmm_event, vol_event

KEY = SeriesKey("test", "GEN/USD", "1m")
Label = TypeVar("Label", bound=str)


def closes_from(returns: np.ndarray, start: float = 100.0) -> np.ndarray:
    """close[0] = start, close[t+1] = close[t] · exp(returns[t]): ``returns[t]`` is the return right after bar t."""
    return start * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))


def two_regime_series(rng: np.random.Generator, n: int, step: float = 0.01) -> tuple[list[str], np.ndarray]:
    """Labels drawn at random; the return after a bar is +step when it is "up", -step when "down"."""
    labels = list(rng.choice(["up", "down"], size=n))
    returns = np.array([step if label == "up" else -step for label in labels[:-1]])
    return labels, closes_from(returns)


# --- forward returns ------------------------------------------------------------------


def test_a_forward_return_is_the_log_return_from_the_bars_close_h_bars_ahead_and_nan_at_the_end() -> None:
    close = closes_from(np.array([0.01, 0.02, -0.03, 0.04]))
    np.testing.assert_allclose(forward_log_returns(close, 1)[:4], [0.01, 0.02, -0.03, 0.04])
    np.testing.assert_allclose(forward_log_returns(close, 2)[:3], [0.03, -0.01, 0.01])
    assert np.isnan(forward_log_returns(close, 2)[3:]).all()
    assert np.isnan(forward_log_returns(close[:2], 5)).all()  # shorter than the horizon: nothing to measure


def test_returns_positive_exactly_in_one_regime_show_as_all_up_there_and_all_down_in_the_other() -> None:
    labels, close = two_regime_series(np.random.default_rng(1), 500)
    fwd = forward_by_label(labels, close, ["up", "down"], horizons=[1])
    n_up = labels[:-1].count("up")  # the last bar has no next bar
    assert fwd["up"][1].count == n_up
    assert fwd["down"][1].count == 499 - n_up
    assert fwd["up"][1].mean == pytest.approx(0.01)
    assert fwd["up"][1].median == pytest.approx(0.01)
    assert fwd["up"][1].positive == 1.0
    assert fwd["down"][1].mean == pytest.approx(-0.01)
    assert fwd["down"][1].positive == 0.0


def test_a_longer_horizon_sums_the_next_h_returns_and_counts_h_fewer_bars() -> None:
    rng = np.random.default_rng(2)
    returns = rng.normal(0, 0.01, 300)
    close = closes_from(returns)
    labels = ["a"] * close.size
    fwd = forward_by_label(labels, close, ["a"], horizons=[20])["a"][20]
    expected = np.array([returns[t : t + 20].sum() for t in range(close.size - 20)])
    assert fwd.count == close.size - 20
    assert fwd.mean == pytest.approx(expected.mean())
    assert fwd.median == pytest.approx(np.median(expected))


def test_bars_without_a_verdict_and_labels_never_seen_are_left_out() -> None:
    close = closes_from(np.full(9, 0.01))
    labels = [None, None, "a", "a", "a", None, "a", "b", "b", "b"]
    fwd = forward_by_label(labels, close, ["a", "b", "c"], horizons=[1])
    assert fwd["a"][1].count == 4
    assert fwd["b"][1].count == 2
    assert fwd["c"][1].count == 0
    assert math.isnan(fwd["c"][1].mean)


# --- bias hit rate ------------------------------------------------------------------------


def test_a_bias_that_always_points_the_way_of_the_next_bar_hits_every_time_and_its_opposite_never() -> None:
    rng = np.random.default_rng(3)
    returns = rng.choice([-0.01, 0.01], size=400)
    close = closes_from(returns)
    right = np.append(np.sign(returns) * rng.uniform(0.2, 1.0, returns.size), 0.5)
    [h1] = bias_hit_rates(right, close, horizons=[1])
    assert (h1.count, h1.hits, h1.rate) == (400, 400, 1.0)
    assert h1.long_count == int((returns > 0).sum())
    assert h1.long_rate == 1.0
    assert h1.short_rate == 1.0
    [wrong] = bias_hit_rates(-right, close, horizons=[1])
    assert wrong.count == 400
    assert wrong.rate == 0.0


def test_a_zero_or_missing_bias_and_a_zero_return_are_no_call() -> None:
    close = closes_from(np.array([0.01, -0.01, 0.0, 0.01, 0.01]))
    bias = np.array([0.5, 0.0, 0.7, np.nan, -0.3, 0.9])
    [h1] = bias_hit_rates(bias, close, horizons=[1])
    # bar 0: +0.5 vs +: hit; bar 1: no bias; bar 2: zero return; bar 3: NaN; bar 4: -0.3 vs +: miss; bar 5: no future.
    assert (h1.count, h1.hits, h1.long_count, h1.short_count) == (2, 1, 1, 1)
    assert h1.rate == 0.5
    assert h1.long_rate == 1.0
    assert h1.short_rate == 0.0


def test_a_coin_flip_bias_hits_about_half_the_time() -> None:
    rng = np.random.default_rng(4)
    close = closes_from(rng.normal(0, 0.01, 20_000))
    bias = rng.choice([-1.0, 1.0], size=close.size)
    for h in bias_hit_rates(bias, close):
        assert abs(h.rate - 0.5) < 0.02, h


# --- runs, flips, dwell ----------------------------------------------------------------------


def test_runs_are_the_maximal_stretches_of_one_label() -> None:
    labels = ["a", "a", "a", "b", "b", "b", "b", "b", "a", "c", "c"]
    assert [(r.label, r.start, r.length) for r in runs(labels)] == [
        ("a", 0, 3), ("b", 3, 5), ("a", 8, 1), ("c", 9, 2)
    ]
    assert runs([]) == []


def test_dwell_is_the_mean_and_median_run_length_per_label_with_its_share_of_bars() -> None:
    labels = ["a"] * 3 + ["b"] * 5 + ["a"] * 1 + ["b"] * 1 + ["a"] * 8 + [None] * 4
    dwell = dwell_by_label(labels, ["a", "b", "c"])
    assert (dwell["a"].runs, dwell["a"].bars, dwell["a"].mean, dwell["a"].median) == (3, 12, 4.0, 3.0)
    assert (dwell["b"].runs, dwell["b"].mean, dwell["b"].median) == (2, 3.0, 3.0)
    assert dwell["a"].share == pytest.approx(12 / 18)  # of the labelled bars: the four None bars do not count
    assert dwell["c"].runs == 0
    assert math.isnan(dwell["c"].mean)


def test_transitions_skip_bars_without_a_verdict_and_carry_the_new_labels_bar_and_time() -> None:
    labels = [None, "a", "a", None, "a", "b", None, None, "c"]
    ts = [T0 + i * TF_MS for i in range(len(labels))]
    got = [(t.index, t.ts, t.before, t.after) for t in transitions(labels, ts)]
    assert got == [(5, ts[5], "a", "b"), (8, ts[8], "b", "c")]


def test_flips_per_day_divide_by_the_candle_time_the_bars_span() -> None:
    assert flips_per_day(3, 1440, TF_MS) == pytest.approx(3.0)  # one day of 1m bars
    assert flips_per_day(3, 720, TF_MS) == pytest.approx(6.0)
    assert flips_per_day(1, 24, 3_600_000) == pytest.approx(1.0)
    assert math.isnan(flips_per_day(0, 0, TF_MS))
    assert DAY_MS == 1440 * TF_MS


# --- raw vs confirmed ---------------------------------------------------------------------------


def confirm(raw: list[Label], bars: int) -> list[Label]:
    """A hysteresis with a known effect: a new raw label is confirmed once it has held ``bars`` bars."""
    out, current, streak = [], raw[0], 0
    for i, label in enumerate(raw):
        streak = streak + 1 if i and label == raw[i - 1] else 1
        if label != current and streak >= bars:
            current = label
        out.append(current)
    return out


def test_confirmation_suppresses_the_short_blips_and_confirms_the_rest_a_fixed_number_of_bars_late() -> None:
    # Three lasting changes (a→b, b→a, a→c: runs of 30) and two one-bar blips (two raw flips each).
    raw = ["a"] * 30 + ["b"] + ["a"] * 30 + ["b"] * 30 + ["a"] + ["b"] * 30 + ["a"] * 30 + ["c"] * 30
    confirmed = confirm(raw, bars=3)
    rc = raw_vs_confirmed(raw, confirmed, TF_MS)
    assert rc.raw_flips == 7
    assert rc.confirmed_flips == 3
    assert rc.suppressed == pytest.approx(4 / 7)
    assert rc.mean_lag == 2.0
    assert rc.median_lag == 2.0
    n = len(raw)
    assert rc.raw_per_day == pytest.approx(7 / (n / 1440))
    assert rc.confirmed_per_day == pytest.approx(3 / (n / 1440))


def test_without_confirmation_nothing_is_suppressed_and_there_is_no_lag() -> None:
    raw = ["a"] * 5 + ["b"] * 5 + ["a"] * 5
    rc = raw_vs_confirmed(raw, raw, TF_MS)
    assert (rc.raw_flips, rc.confirmed_flips, rc.suppressed, rc.mean_lag) == (2, 2, 0.0, 0.0)


# --- sizing vs flat ------------------------------------------------------------------------------


def test_a_size_that_doubles_exactly_on_the_bars_that_pay_beats_flat_by_a_known_amount() -> None:
    rng = np.random.default_rng(5)
    returns = rng.permutation(np.array([0.01] * 500 + [-0.01] * 500))  # flat earns exactly 0
    close = closes_from(returns)
    size = np.append(np.where(returns > 0, 0.04, 0.02), 0.02)  # the size in force after bar t, for r_{t+1}
    edge = sizing_vs_flat(size, close)
    # sum(size · r) / sum(|size|) = (500·0.04·0.01 − 500·0.02·0.01) / (500·0.04 + 500·0.02) = 0.01 / 3
    assert edge.bars == 1000
    assert edge.flat == pytest.approx(0.0, abs=1e-15)
    assert edge.sized == pytest.approx(0.01 / 3)
    assert edge.edge == pytest.approx(0.01 / 3)
    assert edge.mean_size == pytest.approx(0.03)  # over the 1000 bars measured


def test_a_constant_size_is_flat_sizing_and_bars_without_a_decision_are_left_out_of_both() -> None:
    rng = np.random.default_rng(6)
    close = closes_from(rng.normal(0.0002, 0.01, 300))
    const = sizing_vs_flat(np.full(close.size, 0.02), close)
    assert const.sized == pytest.approx(const.flat)
    assert const.edge == pytest.approx(0.0, abs=1e-15)
    size = np.full(close.size, 0.02)
    size[:100] = np.nan
    part = sizing_vs_flat(size, close)
    assert part.bars == 200
    assert part.flat == pytest.approx(np.log(close[-1] / close[100]) / 200)


# --- from events ----------------------------------------------------------------------------------


class ConfirmedVolEvent(VolRegimeEvent, frozen=True):
    """A vol event as the confirmed-labels work may carry it: the label in force plus the raw one."""

    raw_label: VolLabel | None = None


def test_a_frame_aligns_hmm_verdicts_to_the_vol_timeline_and_leaves_untrained_bars_unlabelled() -> None:
    events: list[VolRegimeEvent | HmmRegimeEvent] = [vol_event(i, "normal", key=KEY, close=100.0 + i) for i in range(4)]
    events += [
        hmm_event(0, "RANGING", key=KEY, bias_signal=0.0, trained=False),
        hmm_event(2, "BULLISH", key=KEY, bias_signal=0.4),
        hmm_event(3, "BEARISH", key=KEY, bias_signal=-0.4),
    ]
    [frame] = frames(events).values()
    assert frame.hmm_on
    assert frame.hmm_label == [None, None, "BULLISH", "BEARISH"]
    np.testing.assert_array_equal(frame.hmm_bias, [0.0, np.nan, 0.4, -0.4])
    assert frame.vol_raw is None
    assert frame.hmm_raw is None
    assert np.isnan(frame.size).all()  # no decision came


def test_a_raw_label_on_the_events_is_picked_up_and_compared_with_the_label_in_force() -> None:
    normal: list[VolLabel] = ["normal"]
    high: list[VolLabel] = ["high"]
    raw = normal * 10 + high + normal * 10 + high * 10
    confirmed = confirm(raw, bars=3)
    events = [
        vol_event(i, c, key=KEY, close=100.0, event_type=ConfirmedVolEvent, raw_label=r)
        for i, (c, r) in enumerate(zip(confirmed, raw, strict=True))
    ]
    [frame] = frames(events).values()
    assert frame.vol_raw == raw
    assert frame.vol_label == confirmed
    rc = evaluate_series(frame).vol.raw_vs_confirmed
    assert rc is not None
    assert (rc.raw_flips, rc.confirmed_flips, rc.median_lag) == (3, 1, 2.0)


def test_a_series_evaluation_holds_every_block_of_the_report() -> None:
    labels, close = two_regime_series(np.random.default_rng(7), 300)
    vol_label: list[VolLabel] = ["high" if x == "up" else "low" for x in labels]
    events: list[VolRegimeEvent | HmmRegimeEvent] = [
        vol_event(i, v, key=KEY, close=float(c)) for i, (c, v) in enumerate(zip(close, vol_label, strict=True))
    ]
    events += [hmm_event(i, "BULLISH" if x == "up" else "BEARISH", key=KEY, bias_signal=0.5 if x == "up" else -0.5)
               for i, x in enumerate(labels)]
    ev = evaluate_series(frames(events)[KEY])
    assert ev.bars == 300
    assert ev.bar_ms == TF_MS
    assert ev.vol.forward["high"][1].positive == 1.0
    assert ev.vol.forward["low"][1].positive == 0.0
    assert ev.hmm is not None
    assert ev.hmm.forward["BULLISH"][1].mean == pytest.approx(0.01)
    assert ev.hmm.labelled_bars == 300
    assert ev.vol.flips == ev.hmm.flips == len(runs(labels)) - 1
    assert ev.hit_rates[0].rate == 1.0  # the bias is the sign of the next return by construction
    assert ev.vol.baseline[1].count == 299
