"""Confirmed transitions: a new label is reported after it has led N bars; the vol ratio's hysteresis band."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from typing import Any

import msgpack
import numpy as np
import pytest

from services.vol_regime.core import SeriesVol
from services.vol_regime.core import apply_candle as vol_apply
from shared.domain.config import parse_strategy_config
from shared.domain.confirm import Confirmation
from shared.domain.contracts import Candle
from shared.domain.errors import ConfigError
from shared.domain.vocab import VOL_LABELS
from shared.domain.vol import VolLabelFilter, VolRegime, VolRegimeConfig, banded_label, label_for_ratio
from tests import factories
from tests.unit.test_config import SHIPPED

T0 = 1_700_000_040_000


def confirmed(raw: list[str], n: int) -> list[str]:
    c = Confirmation(n)
    return [c.update(label) for label in raw]


# --------------------------------------------------------------------------- Confirmation


def test_one_bar_confirmation_is_the_raw_label() -> None:
    raw = ["a", "b", "b", "a", "c", "c", "a"]
    assert confirmed(raw, 1) == raw


def test_a_clean_change_is_reported_n_minus_one_bars_after_the_raw_label() -> None:
    raw = ["a"] * 5 + ["b"] * 6
    assert confirmed(raw, 3) == ["a"] * 5 + ["a", "a"] + ["b"] * 4
    assert confirmed(raw, 5) == ["a"] * 5 + ["a"] * 4 + ["b"] * 2


def test_a_flicker_shorter_than_n_bars_is_never_reported() -> None:
    raw = ["a", "a", "b", "b", "a", "b", "a", "a", "c", "a"]
    assert confirmed(raw, 3) == ["a"] * len(raw)


def test_a_new_challenger_starts_its_own_run() -> None:
    # b leads twice, then c takes over the challenge: c needs its own three bars.
    raw = ["a", "b", "b", "c", "c", "c", "c"]
    assert confirmed(raw, 3) == ["a", "a", "a", "a", "a", "c", "c"]


def test_the_first_label_is_taken_as_it_is() -> None:
    c = Confirmation(5)
    assert c.update("b") == "b"
    assert not c.pending


def test_reset_forgets_the_label_in_force() -> None:
    c = Confirmation(3)
    c.update("a")
    c.update("b")
    c.reset()
    assert (c.label, c.candidate, c.run) == (None, None, 0)
    assert c.update("b") == "b"


@pytest.mark.parametrize("split", range(1, 12))
def test_a_confirmation_resumed_from_its_state_continues_exactly(split: int) -> None:
    raw = ["a", "b", "b", "a", "b", "b", "b", "c", "c", "a", "c", "c", "c"]
    whole = confirmed(raw, 3)
    first = Confirmation(3)
    head = [first.update(label) for label in raw[:split]]
    second = Confirmation(3)
    second.load(msgpack.unpackb(msgpack.packb(first.to_state())), ("a", "b", "c"))
    assert head + [second.update(label) for label in raw[split:]] == whole


@pytest.mark.parametrize(
    "state",
    [
        {"label": "a", "candidate": "b", "run": 0},
        {"label": "a", "candidate": None, "run": 2},
        {"label": "a", "candidate": "a", "run": 1},
        {"label": None, "candidate": "b", "run": 1},
        {"label": "x", "candidate": None, "run": 0},
        {"label": "a", "candidate": "b", "run": -1},
        {"label": "a", "candidate": "b", "run": True},
    ],
)
def test_a_malformed_confirmation_state_is_refused(state: dict[str, Any]) -> None:
    c = Confirmation(3)
    with pytest.raises(ValueError, match="confirmation"):
        c.load(state, ("a", "b", "c"))
    assert (c.label, c.candidate, c.run) == (None, None, 0)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_confirm_bars_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="confirm_bars"):
        Confirmation(bad)


# --------------------------------------------------------------------------- hysteresis band

BAND = VolRegimeConfig(hysteresis=0.05)  # thresholds 0.6 / 1.2 / 1.8


@pytest.mark.parametrize(
    ("current", "ratio", "expected"),
    [
        ("normal", 1.21, "normal"),  # over 1.2, but not by 5 %
        ("normal", 1.26, "high"),  # 1.2 x 1.05 = 1.26 clears it
        ("normal", 1.95, "crisis"),  # clears 1.26 and 1.89 at once
        ("normal", 1.85, "high"),  # clears 1.26 only: crisis needs 1.89
        ("high", 1.15, "high"),  # under 1.2, but not by 5 % (1.14)
        ("high", 1.13, "normal"),
        ("high", 0.5, "low"),  # under 1.14 and under 0.57
        ("crisis", 1.72, "crisis"),  # 1.8 x 0.95 = 1.71
        ("crisis", 1.70, "high"),
        ("low", 0.62, "low"),  # 0.6 x 1.05 = 0.63
        ("low", 0.63, "normal"),
    ],
)
def test_leaving_a_regime_takes_crossing_its_threshold_by_the_band(current: str, ratio: float, expected: str) -> None:
    assert banded_label(ratio, current, BAND) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("ratio", np.linspace(0.3, 2.4, 43).tolist())
@pytest.mark.parametrize("current", [None, *VOL_LABELS])
def test_no_band_or_no_regime_in_force_is_the_plain_thresholds(ratio: float, current: Any) -> None:
    plain = VolRegimeConfig(hysteresis=0.0)
    assert banded_label(ratio, current, plain) == label_for_ratio(ratio, plain)
    assert banded_label(ratio, None, BAND) == label_for_ratio(ratio, BAND)


@pytest.mark.parametrize("ratio", np.linspace(0.3, 2.4, 43).tolist())
@pytest.mark.parametrize("current", VOL_LABELS)
def test_the_band_only_ever_holds_a_regime_never_skips_past_the_plain_label(ratio: float, current: Any) -> None:
    got, plain = banded_label(ratio, current, BAND), label_for_ratio(ratio, BAND)
    order = {lab: i for i, lab in enumerate(VOL_LABELS)}
    lo, hi = sorted((order[current], order[plain]))
    assert lo <= order[got] <= hi


# --------------------------------------------------------------------------- the vol label filter

FAST = VolRegimeConfig(
    short_window_bars=6, long_window_bars=40, short_halflife_bars=2, long_halflife_bars=20, confirm_bars=3
)


def candle(i: int, close: float) -> Candle:
    """A flat bar ``i`` of the default series (the shared builder)."""
    return factories.candle(i, close)


def closes_with_regimes(seed: int) -> np.ndarray:
    """Calm, a burst, calm again, a longer storm: every vol label, with flickers around the thresholds."""
    rng = np.random.default_rng(seed)
    sigmas = [0.001] * 60 + [0.02] * 4 + [0.0008] * 60 + [0.003] * 40 + [0.001] * 60
    returns = rng.normal(0.0, np.array(sigmas))
    return 100.0 * np.exp(np.cumsum(np.concatenate([[0.0], returns])))


def vol_events(cfg: VolRegimeConfig, closes: np.ndarray) -> list[Any]:
    state = SeriesVol.new(cfg)
    return [vol_apply(state, candle(i, c), cfg) for i, c in enumerate(closes)]


def test_vol_events_carry_the_raw_and_the_confirmed_label() -> None:
    events = vol_events(FAST, closes_with_regimes(1))
    live = [e for e in events if e.sufficient]
    assert live
    assert all(e.raw_label == label_for_ratio(e.ratio, FAST) for e in live)
    # The label in force is the filter run over the raw classifications, bar by bar.
    f = VolLabelFilter(FAST)
    assert [e.label for e in live] == [f.update(VolRegime(e.raw_label, e.vol_short, e.vol_long, e.ratio)) for e in live]
    assert {e.label for e in live} >= {"low", "crisis"}
    assert any(e.raw_label != e.label for e in live)  # confirmation holds some bars back
    for e in events:
        if not e.sufficient:
            assert (e.label, e.raw_label, e.pending_label) == ("normal", "normal", None)


def test_without_band_a_vol_change_is_confirmed_exactly_n_minus_one_bars_later() -> None:
    cfg = dataclasses.replace(FAST, hysteresis=0.0)
    live = [e for e in vol_events(cfg, closes_with_regimes(2)) if e.sufficient]
    raw = [e.raw_label for e in live]
    assert [e.label for e in live] == confirmed(raw, 3)
    lags = 0
    for i in range(1, len(live) - 2):
        # A raw change away from the label in force that then holds three bars: confirmed on the third.
        if raw[i] != raw[i - 1] and raw[i] != live[i - 1].label and raw[i] == raw[i + 1] == raw[i + 2]:
            assert live[i + 1].label != raw[i]
            assert live[i + 2].label == raw[i]
            assert live[i + 2].changed
            lags += 1
    assert lags >= 2
    # While a new label waits for confirmation the event names it.
    waiting = [e for e in live if e.pending_label is not None]
    assert waiting
    assert all(e.pending_label == e.raw_label != e.label for e in waiting)


def test_confirmation_and_band_cut_vol_flips() -> None:
    closes = closes_with_regimes(3)
    plain = dataclasses.replace(FAST, confirm_bars=1, hysteresis=0.0)

    def flips(cfg: VolRegimeConfig) -> int:
        labels = [e.label for e in vol_events(cfg, closes) if e.sufficient]
        return sum(a != b for a, b in itertools.pairwise(labels))

    assert flips(FAST) < flips(plain)


@pytest.mark.parametrize("split", [45, 61, 62, 63, 66, 130, 170, 200])
def test_a_vol_series_resumed_from_its_stored_state_continues_exactly(split: int) -> None:
    closes = closes_with_regimes(4)
    whole = vol_events(FAST, closes)
    a = SeriesVol.new(FAST)
    for i, c in enumerate(closes[:split]):
        vol_apply(a, candle(i, c), FAST)
    stored = json.loads(json.dumps(msgpack.unpackb(msgpack.packb(a.dump()), raw=False)))
    b = SeriesVol.load(FAST, stored)
    assert [vol_apply(b, candle(i, c), FAST) for i, c in enumerate(closes[split:], start=split)] == whole[split:]


def test_the_stored_state_holds_a_pending_label_across_a_restart() -> None:
    closes = closes_with_regimes(4)
    events = vol_events(FAST, closes)
    split = next(i for i, e in enumerate(events) if e.pending_label is not None) + 1
    a = SeriesVol.new(FAST)
    for i, c in enumerate(closes[:split]):
        vol_apply(a, candle(i, c), FAST)
    assert a.dump()["confirm"]["candidate"] is not None
    b = SeriesVol.load(FAST, a.dump())
    assert [vol_apply(b, candle(i, c), FAST) for i, c in enumerate(closes[split:], start=split)] == events[split:]


def test_state_stored_before_the_filter_resumes_with_its_label_in_force() -> None:
    closes = closes_with_regimes(5)
    a = SeriesVol.new(FAST)
    for i, c in enumerate(closes[:100]):
        vol_apply(a, candle(i, c), FAST)
    old = {k: v for k, v in a.dump().items() if k != "confirm"}
    b = SeriesVol.load(FAST, old)
    assert b.filter.label == a.label
    assert b.filter.pending is None


def test_a_malformed_filter_state_is_refused() -> None:
    a = SeriesVol.new(FAST)
    raw = a.dump()
    raw["confirm"] = {"label": "panic", "candidate": None, "run": 0}
    with pytest.raises(ValueError, match="panic"):
        SeriesVol.load(FAST, raw)


# --------------------------------------------------------------------------- config


def test_vol_filter_defaults() -> None:
    cfg = VolRegimeConfig()
    assert (cfg.confirm_bars, cfg.hysteresis) == (3, 0.01)


def test_vol_filter_keys_are_read_from_vol_regimes_defaults() -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["vol_regimes"]["defaults"] |= {"confirm_bars": 5, "hysteresis": 0.1}
    cfg = parse_strategy_config(raw, {})
    assert (cfg.vol.confirm_bars, cfg.vol.hysteresis) == (5, 0.1)
    off = copy.deepcopy(SHIPPED)
    off["vol_regimes"]["defaults"] |= {"confirm_bars": 1, "hysteresis": 0}
    cfg_off = parse_strategy_config(off, {}).vol
    assert (cfg_off.confirm_bars, cfg_off.hysteresis) == (1, 0.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("confirm_bars", 0),
        ("confirm_bars", 2.5),
        ("confirm_bars", True),
        ("confirm_bars", "3"),
        ("hysteresis", -0.01),
        ("hysteresis", 0.5),
        ("hysteresis", "0.1"),
        ("hysteresis", float("nan")),
    ],
)
def test_bad_vol_filter_values_are_named(key: str, value: Any) -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["vol_regimes"]["defaults"][key] = value
    with pytest.raises(ConfigError) as info:
        parse_strategy_config(raw, {})
    assert info.value.key == f"vol_regimes.defaults.{key}"


# --------------------------------------------------------------------------- the snapshot


def test_the_snapshot_shows_the_confirmed_vol_regime_and_the_raw_label_beside_it() -> None:
    from services.dashboard_api.models import SymbolSnapshot
    from services.state_publisher.core import apply_vol, new_snapshot
    from shared.domain.snapshot import dumps
    from shared.domain.subjects import SeriesKey

    events = vol_events(FAST, closes_with_regimes(2))
    waiting = next(e for e in events if e.pending_label is not None)
    snap = new_snapshot(SeriesKey("kraken", "BTC/USD", "1m"), "CORE")
    for e in events[: events.index(waiting) + 1]:
        up = apply_vol(snap, e, 0)
        if up is not None:
            snap = up.snapshot
    assert snap.vol is not None
    assert snap.vol_regime == waiting.label != waiting.raw_label
    assert (snap.vol.raw_label, snap.vol.pending_label) == (waiting.raw_label, waiting.pending_label)
    stored = json.loads(dumps(snap))
    vol = SymbolSnapshot.model_validate(stored).vol
    assert vol is not None
    assert (vol.raw_label, vol.pending_label) == (waiting.raw_label, waiting.pending_label)
    # A snapshot stored before these fields still validates.
    del stored["vol"]["raw_label"], stored["vol"]["pending_label"]
    assert SymbolSnapshot.model_validate(stored).vol.raw_label is None  # type: ignore[union-attr]
