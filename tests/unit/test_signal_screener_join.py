"""Seed 000 §5.2 and seed 003: the screener's join of the vol and HMM events of one candle.

A decision comes out once per candle, in ts order, whatever order the two services answered
in; events that can no longer join are dropped, never decided without their partner. Shadow
mode (HMM_BLEND_WITH_TREND 1.0) trades exactly like the HMM disabled, and a series' screen
resumes identically from its stored state. Pure core, shipped config edited per test
(``tests/unit/screener_configs.py``); sizing and weights are in ``test_signal_screener_vol_regimes.py``.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from services.screener.core import NEUTRAL_GRID, SeriesScreen, on_hmm, on_score, on_vol
from shared.domain.config import StrategyConfig
from shared.domain.contracts import ScreenerDecision
from shared.domain.vocab import VolLabel
from tests.factories import hmm_event, score_event, ts, vol_event
from tests.unit.screener_configs import CORE, NO_CAP, make_cfg

BULL = (0.05, 0.1, 0.85)  # (bearish, ranging, bullish) of a confident bullish verdict: bias 0.8, confidence 0.75
TRADING_FIELDS = (
    "sizing_multiplier",
    "base_per_trade_nav_pct",
    "effective_per_trade_nav_pct",
    "capped",
    "weights",
    "scores",
    "hybrid_score",
    "trend_score",
    "dynamic_idle_target",
    "grid_bias",
)
HMM_ON = make_cfg(hmm={"HMM_ENABLED": True})


# --- the join: vol and HMM events of one candle -------------------------------------------------------------


def test_with_hmm_enabled_vol_event_waits_for_its_hmm_event() -> None:
    state = SeriesScreen()
    assert on_vol(state, vol_event(0, key=CORE), HMM_ON) == []
    (d,) = on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    assert d.ts == ts(0)
    assert d.hmm_regime == "BULLISH"
    assert d.hmm_bias == pytest.approx(0.8)


def test_with_hmm_enabled_hmm_event_waits_for_its_vol_event() -> None:
    state = SeriesScreen()
    assert on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON) == []
    (d,) = on_vol(state, vol_event(0, "high", key=CORE), HMM_ON)
    assert (d.ts, d.vol_regime, d.hmm_regime) == (ts(0), "high", "BULLISH")


def test_join_is_independent_of_arrival_order() -> None:
    vol_first, hmm_first = SeriesScreen(), SeriesScreen()
    on_vol(vol_first, vol_event(0, "crisis", key=CORE), HMM_ON)
    (a,) = on_hmm(vol_first, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    on_hmm(hmm_first, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    (b,) = on_vol(hmm_first, vol_event(0, "crisis", key=CORE), HMM_ON)
    assert a == b


def interleavings(n: int, seed: int) -> list[tuple[str, int]]:
    """A random merge of the vol and HMM event streams, each in ts order (as each service publishes)."""
    rng = random.Random(seed)
    vols, hmms = list(range(n)), list(range(n))
    out: list[tuple[str, int]] = []
    while vols or hmms:
        pick_vol = bool(vols) and (not hmms or rng.random() < 0.5)
        out.append(("vol", vols.pop(0)) if pick_vol else ("hmm", hmms.pop(0)))
    return out


LABELS: tuple[VolLabel, ...] = ("low", "normal", "high", "crisis")


def feed(
    order: list[tuple[str, int]], cfg: StrategyConfig, state: SeriesScreen | None = None
) -> list[ScreenerDecision]:
    state = state if state is not None else SeriesScreen()
    out: list[ScreenerDecision] = []
    for kind, i in order:
        if kind == "vol":
            out += on_vol(state, vol_event(i, LABELS[i % 4], close=100.0 + i, key=CORE), cfg)
        else:
            p_bull = 0.5 + 0.4 * ((i * 7) % 10) / 10
            out += on_hmm(state, hmm_event(i, probabilities=(0.05, 0.95 - p_bull, p_bull), key=CORE), cfg)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_decisions_come_out_once_per_candle_in_ts_order(seed: int) -> None:
    n = 40
    decisions = feed(interleavings(n, seed), HMM_ON)
    assert [d.ts for d in decisions] == [ts(i) for i in range(n)]
    for i, d in enumerate(decisions):
        assert d.vol_regime == LABELS[i % 4]
        assert d.hmm_bias == pytest.approx(0.45 + 0.4 * ((i * 7) % 10) / 10)  # its own candle's HMM event


@pytest.mark.parametrize("seed", range(5))
def test_decisions_do_not_depend_on_which_service_answered_first(seed: int) -> None:
    n = 40
    in_order = feed([(k, i) for i in range(n) for k in ("vol", "hmm")], HMM_ON)
    shuffled = feed(interleavings(n, seed), HMM_ON)
    assert shuffled == in_order


def test_stale_events_for_decided_candles_are_ignored() -> None:
    state = SeriesScreen()
    feed([(k, i) for i in range(3) for k in ("vol", "hmm")], HMM_ON, state)
    before = state.dump()
    assert on_vol(state, vol_event(1, "crisis", key=CORE), HMM_ON) == []
    assert on_hmm(state, hmm_event(2, "BEARISH", (0.9, 0.05, 0.05), key=CORE), HMM_ON) == []
    assert on_vol(state, vol_event(2, key=CORE), HMM_ON) == []
    assert state.dump() == before


def test_duplicate_pending_event_keeps_the_first_copy() -> None:
    state = SeriesScreen()
    assert on_vol(state, vol_event(0, "low", key=CORE), HMM_ON) == []
    assert on_vol(state, vol_event(0, "crisis", key=CORE), HMM_ON) == []
    # Not candle 0's: candle 0 can no longer join.
    assert on_hmm(state, hmm_event(1, probabilities=BULL, key=CORE), HMM_ON) == []
    assert on_hmm(state, hmm_event(1, "BEARISH", (0.9, 0.05, 0.05), key=CORE), HMM_ON) == []
    (d1,) = on_vol(state, vol_event(1, "low", key=CORE), HMM_ON)
    assert (d1.ts, d1.hmm_regime) == (ts(1), "BULLISH")


def test_hmm_events_that_can_no_longer_join_are_dropped() -> None:
    state = SeriesScreen()
    # Its vol event never comes (vol skipped that candle).
    on_hmm(state, hmm_event(3, probabilities=BULL, key=CORE), HMM_ON)
    on_vol(state, vol_event(4, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(4, probabilities=BULL, key=CORE), HMM_ON)
    assert d.ts == ts(4)
    assert state.pending_hmm == {}
    assert state.pending_vol == {}
    assert on_vol(state, vol_event(3, key=CORE), HMM_ON) == []  # older than what was decided


def test_with_hmm_enabled_no_candle_is_ever_decided_without_its_hmm_verdict() -> None:
    state = SeriesScreen()
    for i in range(5000):
        assert on_vol(state, vol_event(i, key=CORE), HMM_ON) == []
    assert len(state.pending_vol) == 5000
    (d,) = on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    assert (d.ts, d.hmm_regime, d.hmm_trained) == (ts(0), "BULLISH", True)


def test_a_candle_whose_hmm_verdict_can_no_longer_come_is_dropped_not_decided_without_it() -> None:
    state = SeriesScreen()
    on_vol(state, vol_event(0, key=CORE), HMM_ON)
    on_vol(state, vol_event(1, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(1, probabilities=BULL, key=CORE), HMM_ON)  # the HMM service skipped candle 0
    assert d.ts == ts(1)
    assert state.pending_vol == {}


def test_the_join_buffer_reports_its_oldest_stream_sequence() -> None:
    state = SeriesScreen()
    assert state.low_water() is None
    on_vol(state, vol_event(0, key=CORE), HMM_ON, seq=7)
    on_vol(state, vol_event(1, key=CORE), HMM_ON, seq=9)
    assert state.low_water() == 7
    on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON, seq=12)
    assert state.low_water() == 9


def test_with_hmm_disabled_the_vol_event_alone_decides() -> None:
    state = SeriesScreen()
    (d,) = on_vol(state, vol_event(0, "high", key=CORE), NO_CAP)
    assert (d.ts, d.vol_regime, d.hmm_regime, d.hmm_bias, d.hmm_confidence) == (ts(0), "high", None, 0.0, 0.0)
    assert d.grid_bias == NEUTRAL_GRID


def test_with_hmm_disabled_stray_hmm_events_change_nothing() -> None:
    with_stray, without = SeriesScreen(), SeriesScreen()
    assert on_hmm(with_stray, hmm_event(0, probabilities=BULL, key=CORE), NO_CAP) == []
    (a,) = on_vol(with_stray, vol_event(0, key=CORE), NO_CAP)
    (b,) = on_vol(without, vol_event(0, key=CORE), NO_CAP)
    assert a == b
    assert a.hmm_regime is None


def test_untrained_hmm_gives_zero_bias_and_neutral_grid() -> None:
    state = SeriesScreen()
    on_vol(state, vol_event(0, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(0, "RANGING", (0.0, 1.0, 0.0), trained=False, key=CORE), HMM_ON)
    assert d.hmm_bias == 0.0
    assert d.grid_bias == NEUTRAL_GRID


def test_trained_confident_hmm_biases_the_grid_when_not_in_shadow_mode() -> None:
    state = SeriesScreen()
    on_vol(state, vol_event(0, key=CORE), HMM_ON)
    (d,) = on_hmm(state, hmm_event(0, probabilities=BULL, key=CORE), HMM_ON)
    assert d.grid_bias.mode == "long_bias"


# --- shadow mode: the HMM changes nothing a bot acts on ---------------------------------------------------------


def trending_run(cfg: StrategyConfig, with_hmm: bool, n: int = 120) -> list[ScreenerDecision]:
    """A rising then falling market with all four regimes, published scores, and (optionally) strong HMM verdicts."""
    state = SeriesScreen()
    for comp, score in (("carry", 0.6), ("expectancy", -0.3), ("router", 0.2)):
        on_score(state, score_event(comp, score, key=CORE))
    out: list[ScreenerDecision] = []
    close = 100.0
    for i in range(n):
        close *= 1.004 if i < n * 2 // 3 else 0.994
        out += on_vol(state, vol_event(i, LABELS[(i // 7) % 4], close=close, key=CORE), cfg)
        if with_hmm:
            if i % 2:
                verdict = hmm_event(i, probabilities=BULL, key=CORE)
            else:
                verdict = hmm_event(i, "BEARISH", (0.9, 0.07, 0.03), key=CORE)
            out += on_hmm(state, verdict, cfg)
    assert len(out) == n
    return out


def trading_fields(d: ScreenerDecision) -> dict[str, Any]:
    return {f: getattr(d, f) for f in TRADING_FIELDS}


@pytest.mark.parametrize("disabled_blend", [1.0, 0.5], ids=["disabled-blend-1.0", "disabled-shipped-blend-0.5"])
def test_shadow_mode_trades_exactly_like_hmm_disabled(disabled_blend: float) -> None:
    shadow = make_cfg(hmm={"HMM_ENABLED": True, "HMM_BLEND_WITH_TREND": 1.0})
    disabled = make_cfg(hmm={"HMM_ENABLED": False, "HMM_BLEND_WITH_TREND": disabled_blend})
    with_hmm = trending_run(shadow, with_hmm=True)
    without = trending_run(disabled, with_hmm=False)
    assert any(abs(d.trend_score) > 0.5 for d in without)  # the trend really moves the idle target
    assert any(d.hmm_bias != 0.0 for d in with_hmm)  # and the HMM really has an opinion
    for a, b in zip(with_hmm, without, strict=True):
        assert trading_fields(a) == trading_fields(b), a.ts


def test_outside_shadow_mode_the_hmm_does_move_the_idle_target_and_grid() -> None:
    blended = trending_run(make_cfg(hmm={"HMM_ENABLED": True, "HMM_BLEND_WITH_TREND": 0.5}), with_hmm=True)
    shadow = trending_run(make_cfg(hmm={"HMM_ENABLED": True, "HMM_BLEND_WITH_TREND": 1.0}), with_hmm=True)
    assert any(a.dynamic_idle_target != b.dynamic_idle_target for a, b in zip(blended, shadow, strict=True))
    assert any(d.grid_bias != NEUTRAL_GRID for d in blended)
    assert all(d.grid_bias == NEUTRAL_GRID for d in shadow)


def test_hmm_disabled_idle_target_is_the_trend_only_target() -> None:
    # Seed 003 §5: without the HMM the bot keeps its §15 behaviour, a trend_score-only idle target,
    # whatever HMM_BLEND_WITH_TREND is set to for the day the HMM gets enabled.
    cfg = make_cfg(hmm={"HMM_ENABLED": False, "HMM_BLEND_WITH_TREND": 0.5})
    idle = cfg.idle
    for d in trending_run(cfg, with_hmm=False):
        expected = max(idle.floor, min(idle.ceiling, idle.base_target - idle.sensitivity * d.trend_score))
        assert d.dynamic_idle_target == expected, d.ts


# --- persistence ---------------------------------------------------------------------------------------------------


def test_series_screen_resumes_identically_from_its_stored_state_and_a_replay_of_the_join_buffer() -> None:
    order = interleavings(80, seed=3)
    cut = next(j for j in range(30, len(order)) if order[j][0] == "hmm" and order[j - 1][0] == "vol")
    original = SeriesScreen()
    on_score(original, score_event("carry", 0.4, key=CORE))
    seqs = dict(enumerate(order))
    out: list[ScreenerDecision] = []
    for seq in range(cut):
        out += feed([seqs[seq]], HMM_ON, original)
    assert original.pending_vol or original.pending_hmm  # something is waiting mid-join
    assert original.trend.bars > 0

    # What survives a crash: the stored state, plus the stream from the oldest event still waiting.
    wire = msgpack.packb(original.dump(), use_bin_type=True)
    restored = SeriesScreen.load(msgpack.unpackb(wire, raw=False))
    waiting = [(e.ts, "vol") for e, _ in original.pending_vol.values()]
    waiting += [(e.ts, "hmm") for e, _ in original.pending_hmm.values()]
    replay_from = min(j for j in range(cut) if (ts(seqs[j][1]), seqs[j][0]) in waiting)
    assert feed(order[replay_from:cut], HMM_ON, restored) == []  # nothing decided twice
    rest_a = feed(order[cut:], HMM_ON, original)
    rest_b = feed(order[cut:], HMM_ON, restored)
    assert rest_a
    assert rest_a == rest_b
    assert restored.dump() == original.dump()


def test_fresh_series_screen_round_trips() -> None:
    fresh = SeriesScreen()
    restored = SeriesScreen.load(msgpack.unpackb(msgpack.packb(fresh.dump()), raw=False))
    assert restored == fresh
