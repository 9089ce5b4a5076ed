"""The screener on the consensus of a symbol's timeframes (``consensus.screener``): which verdict of each timeframe
goes with which bar, and that the decisions depend on the events only, never on the order they came in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from services.screener.core import SeriesScreen, last_closed, on_hmm, on_peer, on_vol, siblings
from shared.domain.config import StrategyConfig, parse_strategy_config
from shared.domain.contracts import DecisionConsensus, HmmRegimeEvent, ScreenerDecision, VolRegimeEvent
from shared.domain.subjects import SeriesKey, timeframe_ms
from shared.domain.vocab import HMM_LABELS, HmmLabel
from tests.factories import DAY0, hmm_event, vol_event

FAMILY = ("1m", "15m", "1h")
KEYS = {tf: SeriesKey("kraken", "BTC/USD", tf) for tf in FAMILY}
M1, M15, H1 = (KEYS[tf] for tf in FAMILY)
Event = VolRegimeEvent | HmmRegimeEvent


def config(screener: bool = True, blend: float = 0.5, weights: dict[str, float] | None = None) -> StrategyConfig:
    entry = {"exchange": "kraken", "symbol": "BTC/USD", "timeframe": "1m", "aggregate": ["15m", "1h"]}
    return parse_strategy_config(
        {
            "universe": [entry],
            "hmm": {"HMM_ENABLED": True, "HMM_BLEND_WITH_TREND": blend},
            "consensus": {"screener": screener, "weights": weights or {}},
        },
        env={},
    )


ON = config()
# The 1m bar 23:45, the series' first: the base had candles in the buckets that closed at 00:00 (15m 23:45, 1h 23:00).
PREV = DAY0 - 15 * 60_000


class Screener:
    """The screener's handlers over one symbol's series, wired as its service wires them (no bus)."""

    def __init__(self, cfg: StrategyConfig, states: dict[SeriesKey, SeriesScreen] | None = None) -> None:
        self.cfg = cfg
        self.states = states if states is not None else {k: SeriesScreen() for k in KEYS.values()}
        self.decided: list[ScreenerDecision] = []

    def after(self, start: int) -> Screener:
        """Decided the 1m bar ``start`` (ms) as the series' first (the other timeframes had no bar before), then
        forget the decisions so far."""
        self.feed(bar(M1, start))
        assert len(self.decided) == 1, "a series' first bar has no bucket of another timeframe closed before it"
        self.decided.clear()
        return self

    def take(self, event: Event) -> list[ScreenerDecision]:
        state = self.states[event.key]
        if isinstance(event, VolRegimeEvent):
            out = on_vol(state, event, self.cfg)
        else:
            out = on_hmm(state, event, self.cfg)
            for sibling in siblings(self.cfg, event.key):
                out += on_peer(self.states[sibling], event, self.cfg)
        self.decided += out
        return out

    def of(self, timeframe: str) -> list[ScreenerDecision]:
        return [d for d in self.decided if d.timeframe == timeframe]

    def feed(self, events: list[Event]) -> Screener:
        for e in events:
            self.take(e)
        return self

    def dumped(self) -> dict[SeriesKey, dict[str, Any]]:
        return {k: s.dump() for k, s in self.states.items()}


def bar(
    key: SeriesKey, start: int, regime: HmmLabel = "BULLISH", bias: float = 0.4, trained: bool = True
) -> list[Event]:
    """The vol and HMM events of ``key``'s bar opening at ``start`` (ms), the HMM verdict ``regime`` with ``bias``."""
    confidence = 0.5 if trained else 0.0
    return [
        vol_event(key=key, ts=start),
        hmm_event(key=key, ts=start, regime=regime, bias_signal=bias, confidence=confidence, trained=trained),
    ]


def market(n_minutes: int, seed: int, skip: frozenset[int] = frozenset()) -> dict[SeriesKey, list[Event]]:
    """Each series' events, in its own order, for ``n_minutes`` 1m bars from DAY0 (minutes in ``skip`` missing):
    a bar of 15m or 1h exists where one of its minutes does, as ingest builds them. Random verdicts."""
    rng = np.random.default_rng(seed)
    minutes = [m for m in range(n_minutes) if m not in skip]
    out: dict[SeriesKey, list[Event]] = {}
    for tf, key in KEYS.items():
        per = timeframe_ms(tf) // 60_000
        starts = sorted({m // per * per for m in minutes if tf == "1m" or (m // per + 1) * per <= n_minutes})
        out[key] = [
            e
            for start in starts
            for e in bar(key, DAY0 + start * 60_000, HMM_LABELS[rng.integers(3)], float(rng.uniform(-1, 1)))
        ]
    return out


def interleavings(streams: dict[SeriesKey, list[Event]], seed: int) -> Iterator[list[Event]]:
    """Merges of the streams that keep each series' vol events and HMM events in their order (what the
    services guarantee), and nothing else: any service may run ahead of any other.

    First the extremes, each queue whole in turn (every HMM verdict of every timeframe before any vol event,
    as after a bulk import where vol_regime's output landed last, and the reverse, each in both orders of the
    series), then random merges.
    """
    rng = np.random.default_rng(seed)
    kinds = (VolRegimeEvent, HmmRegimeEvent)
    queues = [[e for e in evs if isinstance(e, kind)] for evs in streams.values() for kind in kinds]
    by_kind = [[q for q in queues if q and isinstance(q[0], kind)] for kind in kinds]
    for first, second in (by_kind, by_kind[::-1]):
        for order in (1, -1):
            yield [e for q in (*first[::order], *second[::order]) for e in q]
    for _ in range(6):
        heads = [0] * len(queues)
        merged: list[Event] = []
        while len(merged) < sum(map(len, queues)):
            live = [i for i, q in enumerate(queues) if heads[i] < len(q)]
            i = live[int(rng.integers(len(live)))]
            merged.append(queues[i][heads[i]])
            heads[i] += 1
        yield merged


def agreed(d: ScreenerDecision) -> DecisionConsensus:
    """The consensus ``d`` was decided on (there is one: the test config joins the symbol's timeframes)."""
    assert d.consensus is not None, f"{d.timeframe} {d.ts} was decided on its own verdict"
    return d.consensus


def in_order(streams: dict[SeriesKey, list[Event]]) -> list[Event]:
    """Every event of the streams by bar close, the base first: as a slow stack would deliver them."""
    return sorted(
        (e for evs in streams.values() for e in evs),
        key=lambda e: (e.ts + timeframe_ms(e.timeframe), timeframe_ms(e.timeframe)),
    )


# --- which verdict goes with which bar ------------------------------------------------------------------


def test_the_last_closed_bar_of_a_timeframe_is_the_one_that_ended_at_or_before_the_close() -> None:
    assert last_closed(DAY0 + 15 * 60_000, "15m") == DAY0  # the 1m bar 00:14 closes the bucket 00:00-00:15
    assert last_closed(DAY0 + 16 * 60_000, "15m") == DAY0
    assert last_closed(DAY0 + 14 * 60_000, "15m") == DAY0 - 15 * 60_000
    assert last_closed(DAY0 + 60 * 60_000, "1h") == DAY0


def test_a_bar_waits_for_each_other_timeframe_and_is_decided_on_their_consensus() -> None:
    s = Screener(ON).after(PREV)
    # The 15m and 1h bars that closed at 00:00 (opened 23:45 and 23:00).
    s.feed(bar(M15, DAY0 - 15 * 60_000, "BULLISH", 0.6))
    assert s.feed(bar(M1, DAY0, "BEARISH", -0.2)).of("1m") == [], "the 1h verdict as of 00:01 has not come"
    s.feed(bar(H1, DAY0 - 60 * 60_000, "BULLISH", 0.8))
    (d,) = s.of("1m")
    assert (d.timeframe, d.ts) == ("1m", DAY0)
    assert d.consensus is not None
    assert d.consensus.regime == "BULLISH"
    assert d.consensus.agreement == pytest.approx(2 / 3)
    assert d.consensus.dissenting == ("1m",)
    assert d.consensus.as_of == {"1m": DAY0, "15m": DAY0 - 15 * 60_000, "1h": DAY0 - 60 * 60_000}
    assert d.hmm_bias == pytest.approx((-0.2 + 0.6 + 0.8) / 3), "the blend takes the consensus bias"
    assert d.hmm_regime == "BEARISH", "the series' own verdict is still reported as its own"
    assert d.consensus.confidence == pytest.approx(2 / 3 * 0.5)
    assert d.grid_bias.mode == "long_bias", "grid advice follows the consensus, not the bearish 1m"


def test_a_newer_verdict_of_another_timeframe_is_not_used_for_an_older_bar() -> None:
    s = Screener(ON).after(PREV)
    s.feed(bar(H1, DAY0 - 60 * 60_000, "RANGING", 0.0))
    s.feed(bar(M15, DAY0 - 15 * 60_000, "BEARISH", -0.5) + bar(M15, DAY0, "BULLISH", 0.9))  # 15m ran ahead
    s.feed(bar(M1, DAY0 + 5 * 60_000))  # 00:05: the 15m bar in force is the one that closed at 00:00
    (d,) = s.of("1m")
    assert agreed(d).as_of["15m"] == DAY0 - 15 * 60_000


def test_the_weights_of_the_consensus_block_weigh_the_timeframes() -> None:
    s = Screener(config(weights={"1h": 4.0})).after(PREV)
    s.feed(bar(M15, DAY0 - 15 * 60_000, "BEARISH", -0.5) + bar(H1, DAY0 - 60 * 60_000, "BULLISH", 0.5))
    (d,) = s.feed(bar(M1, DAY0, "BEARISH", -0.5)).of("1m")
    assert agreed(d).regime == "BULLISH"
    assert d.hmm_bias == pytest.approx((-0.5 - 0.5 + 4 * 0.5) / 6)


def test_untrained_timeframes_do_not_vote_and_with_no_vote_the_hmm_moves_nothing() -> None:
    s = Screener(ON).after(PREV)
    s.feed(bar(M15, DAY0 - 15 * 60_000, trained=False) + bar(H1, DAY0 - 60 * 60_000, trained=False))
    (d,) = s.feed(bar(M1, DAY0, trained=False)).of("1m")
    assert agreed(d).voting == ()
    assert agreed(d).untrained == FAMILY
    assert d.hmm_bias == 0.0
    assert d.grid_bias.mode == "symmetric"


def test_in_shadow_mode_the_consensus_changes_no_grid_spacing() -> None:
    s = Screener(config(blend=1.0)).after(PREV)
    s.feed(bar(M15, DAY0 - 15 * 60_000) + bar(H1, DAY0 - 60 * 60_000))
    (d,) = s.feed(bar(M1, DAY0)).of("1m")
    assert agreed(d).voting == FAMILY
    assert d.grid_bias.mode == "symmetric"


def test_off_by_default_a_bar_is_decided_on_its_own_verdict_without_waiting() -> None:
    s = Screener(config(screener=False))
    (d,) = s.feed(bar(M1, DAY0, "BEARISH", -0.2)).of("1m")
    assert d.consensus is None
    assert d.hmm_bias == -0.2


def test_a_series_outside_any_aggregate_entry_decides_alone() -> None:
    other, state = SeriesKey("kraken", "ETH/USD", "1m"), SeriesScreen()
    assert on_vol(state, vol_event(key=other, ts=DAY0), ON) == [], "with the HMM on, its verdict is waited for"
    (d,) = on_hmm(state, hmm_event(key=other, ts=DAY0), ON)
    assert d.consensus is None


# --- gaps ------------------------------------------------------------------------------------------------


def test_after_a_gap_of_a_whole_bucket_that_timeframe_sits_out_instead_of_waiting() -> None:
    s = Screener(ON).after(DAY0 - 2 * 60_000)
    s.feed(bar(H1, DAY0 - 60 * 60_000))
    s.feed(bar(M15, DAY0 - 15 * 60_000))
    s.feed(bar(M1, DAY0 - 60_000))
    s.feed(bar(M15, DAY0))  # nothing in 00:15-00:30: the base candles skip from 00:14 to 00:31
    s.feed(bar(M1, DAY0 + 14 * 60_000))
    (d,) = s.feed(bar(M1, DAY0 + 31 * 60_000)).of("1m")[-1:]
    assert d.ts == DAY0 + 31 * 60_000
    assert agreed(d).absent == ("15m",)
    assert "15m" not in agreed(d).as_of


def test_a_bar_missing_at_the_end_of_a_finer_timeframe_waits_for_its_next_bar() -> None:
    s = Screener(ON).after(DAY0 - 3 * 60_000)
    s.feed(bar(H1, DAY0 - 60 * 60_000) + bar(M15, DAY0 - 15 * 60_000) + bar(M1, DAY0 - 2 * 60_000))
    s.feed(bar(M15, DAY0))
    assert s.of("15m") == [], "no 1m verdict for 23:59 or later yet: the 15m bar 23:45 waits, and 00:00 after it"
    s.feed(bar(M1, DAY0 + 20 * 60_000))  # 00:20: the 1m history skips 23:59-00:19
    assert [(d.ts, agreed(d).as_of["1m"]) for d in s.of("15m")] == [
        (DAY0 - 15 * 60_000, DAY0 - 2 * 60_000),  # the 1m bar in force at 00:00 opened 23:58
        (DAY0, DAY0 - 2 * 60_000),  # and at 00:15 still
    ]


# --- order independence, restarts, bounded memory -------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_decisions_are_the_same_whatever_order_the_events_come_in(seed: int) -> None:
    # 40-62 missing: the 15m bucket 00:45-01:00 has no bar at all; 89 and 119: a 1m bar that ends a bucket
    streams = market(n_minutes=150, seed=seed, skip=frozenset(range(40, 63)) | {89, 119})
    reference = Screener(ON).feed(in_order(streams))
    assert len(reference.decided) > 120
    assert any(agreed(d).absent == ("15m",) for d in reference.decided if d.timeframe == "1m")
    for merged in interleavings(streams, seed):
        got = Screener(ON).feed(merged)
        assert sorted(got.decided, key=_order) == sorted(reference.decided, key=_order)
        assert got.dumped() == reference.dumped()


@pytest.mark.parametrize("seed", [4, 5])
def test_a_restart_from_the_saved_state_with_events_read_again_decides_the_same(seed: int) -> None:
    streams = market(n_minutes=120, seed=seed)
    reference = Screener(ON).feed(in_order(streams))
    merged = next(interleavings(streams, seed))
    rng = np.random.default_rng(seed)
    for cut in sorted(rng.choice(len(merged), size=4, replace=False)):
        first = Screener(ON).feed(merged[:cut])
        # The saved state; the join buffers are memory only: the stream is read again from before their oldest
        # event, so a replay of everything already seen comes first (a superset of what the buffers held).
        restored = {k: SeriesScreen.load(v) for k, v in first.dumped().items()}
        second = Screener(ON, restored).feed(merged)
        assert sorted(first.decided + second.decided, key=_order) == sorted(reference.decided, key=_order)


def test_only_the_verdict_in_force_and_newer_ones_are_kept() -> None:
    streams = market(n_minutes=600, seed=9)
    s = Screener(ON).feed(in_order(streams))
    for state in s.states.values():
        assert all(len(points) <= 2 for points in state.peers.values()), state.peers


def _order(d: ScreenerDecision) -> tuple[str, int]:
    return d.timeframe, d.ts
