"""Seed 000 §5.3 (and seed 003 §2.6, §4): the per-symbol state the publisher builds, and its summaries.

The publisher core re-uses the values it receives (never recomputes a regime), records
transitions only on change, and every ``apply_*`` is idempotent by ts. Snapshots are read
here as Redis stores them (their JSON), which is what the API serves.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import msgspec
import numpy as np
import pytest

from services.state_publisher.core import (
    DAY_MS,
    RegimeStats,
    Update,
    apply_decision,
    apply_hmm,
    apply_pipeline,
    apply_vol,
    new_snapshot,
    summarize,
)
from shared.domain import snapshot
from shared.domain.contracts import (
    HMM_LABELS,
    VOL_LABELS,
    GridBias,
    HmmRegimeEvent,
    PipelineStatus,
    ScreenerDecision,
    VolRegimeEvent,
)
from shared.domain.snapshot import HmmBlock, Probabilities, SeriesSnapshot, Tuning, VolBlock
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import HmmLabel, VolLabel
from tests import factories

KEY = SeriesKey("kraken", "BTC/USD", "1m")
TF_MS = 60_000
T0 = 1_700_000_040_000
NOW = T0 + 10 * DAY_MS


def ts(i: int) -> int:
    return T0 + i * TF_MS


# This file's series data, through the shared builders (tests/factories.py): a high-vol bar by default.
VOL = {"vol_short": 0.0123, "vol_long": 0.0085, "ratio": 1.45, "close": 101.5}
HMM_TRAINED_AT = T0 - DAY_MS


def vol_event(i: int, label: VolLabel = "high", prev: VolLabel | None = "high", **values: Any) -> VolRegimeEvent:
    return factories.vol_event(i, label, prev, key=KEY, ts=ts(i), samples=800 + i, **{**VOL, **values})


def hmm_event(
    i: int,
    regime: HmmLabel = "BULLISH",
    probabilities: tuple[float, float, float] = (0.1, 0.2, 0.7),
    trained: bool = True,
) -> HmmRegimeEvent:
    return factories.hmm_event(
        i, regime, probabilities, key=KEY, ts=ts(i), observation_count=40 + i, trained=trained,
        trained_at=HMM_TRAINED_AT if trained else None,
    )  # fmt: skip


def decision(
    t: int, vol: VolLabel = "normal", hmm: HmmLabel | None = "RANGING", close: float = 100.0, tier: str = "CORE",
    trained: bool = True, probabilities: tuple[float, float, float] = (0.1, 0.2, 0.7),
) -> ScreenerDecision:  # fmt: skip
    return factories.decision(
        0, vol, hmm, key=KEY, ts=t, close=close, tier=tier, vol_short=0.01, vol_long=0.01, vol_ratio=1.0,
        sizing_multiplier=1.0, base_per_trade_nav_pct=0.02, effective_per_trade_nav_pct=0.02, capped=False,
        weights={"trend": 0.4, "carry": 0.25, "expectancy": 0.2, "router": 0.15},
        scores={"trend": 0.1, "carry": 0.0, "expectancy": 0.0, "router": 0.0},
        defaulted=("carry", "expectancy", "router"), hybrid_score=0.04, trend_score=0.1, hmm_bias=0.0,
        hmm_confidence=0.0, blend_factor=0.5, dynamic_idle_target=0.39, grid_bias=GridBias("symmetric", 1.0, 1.0, None),
        hmm_trained=hmm is not None and trained, hmm_probabilities=probabilities if hmm is not None else None,
    )  # fmt: skip


def pipeline(reported_at: int, samples: int = 500) -> PipelineStatus:
    return factories.pipeline_status(
        samples, key=KEY, last_ts=ts(samples), now=reported_at, source="exchange", interval_min=1,
        sync_interval_sec=60.0, coverage_pct=25.0, freshness_sec=12.0, freshness_limit_sec=180.0, freshness_ok=True,
        gaps=0, backfill_last_at=None, backfill_last_rows=None, backfill_last_message=None, last_error=None,
    )  # fmt: skip


def stored(record: msgspec.Struct) -> Any:
    """A record as Redis holds it: its JSON, parsed."""
    return json.loads(snapshot.dumps(record))


class Series:
    """One series' snapshot as the writer keeps it: each update replaces it; ``snap[...]`` reads it as stored."""

    def __init__(self) -> None:
        self.snap: SeriesSnapshot = new_snapshot(KEY, "CORE")

    def vol(self, ev: VolRegimeEvent, now: int) -> Update | None:
        return self._took(apply_vol(self.snap, ev, now))

    def hmm(self, ev: HmmRegimeEvent, blend_factor: float, now: int) -> Update | None:
        return self._took(apply_hmm(self.snap, ev, blend_factor, now))

    def decision(self, d: ScreenerDecision, now: int) -> Update | None:
        return self._took(apply_decision(self.snap, d, now))

    def pipeline(self, p: PipelineStatus, now: int) -> Update | None:
        return self._took(apply_pipeline(self.snap, p, now))

    def _took(self, update: Update | None) -> Update | None:
        if update is not None:
            self.snap = update.snapshot
        return update

    def stored(self) -> dict[str, Any]:
        return stored(self.snap)

    def __getitem__(self, field: str) -> Any:
        return self.stored()[field]


def fresh() -> Series:
    return Series()


# --- §5.3: vol_regime and vol.{short,long,ratio} for a known symbol -----------------------------------------


def test_new_snapshot_has_every_field_present_and_null() -> None:
    snap = fresh()
    assert snap["series"] == "kraken:BTC/USD:1m"
    assert (snap["exchange"], snap["symbol"], snap["timeframe"], snap["tier"]) == ("kraken", "BTC/USD", "1m", "CORE")
    for field in ("price", "vol_regime", "vol", "hmm_regime", "screener", "hmm_data_pipeline", "updated_at"):
        assert field in snap.stored()
        assert snap[field] is None


def test_vol_regime_and_vol_block_appear_for_a_known_symbol() -> None:
    snap = fresh()
    assert snap.vol(vol_event(0), NOW) is not None
    assert snap["vol_regime"] == "high"
    assert snap["vol"]["short"] == 0.0123
    assert snap["vol"]["long"] == 0.0085
    assert snap["vol"]["ratio"] == 1.45
    assert snap["price"] == {"close": 101.5, "ts": ts(0)}
    assert snap["updated_at"] == NOW


def test_vol_values_are_reused_from_the_event_not_recomputed() -> None:
    # 0.0123 / 0.0085 = 1.447..., not the event's 1.45: a publisher that recomputed the ratio would differ.
    ev = vol_event(0, vol_short=0.0123, vol_long=0.0085, ratio=1.45)
    snap = fresh()
    snap.vol(ev, NOW)
    assert snap["vol"]["ratio"] == ev.ratio != ev.vol_short / ev.vol_long
    assert (snap["vol"]["short"], snap["vol"]["long"]) == (ev.vol_short, ev.vol_long)
    assert (snap["vol"]["samples"], snap["vol"]["sufficient"]) == (ev.samples, ev.sufficient)
    # Even a label the ratio thresholds would not give is published as received.
    odd = vol_event(1, label="low", prev="high", ratio=1.45)
    snap.vol(odd, NOW)
    assert snap["vol_regime"] == "low"


def test_vol_since_ts_marks_when_the_current_regime_began() -> None:
    snap = fresh()
    snap.vol(vol_event(0, "normal", None), NOW)
    snap.vol(vol_event(1, "normal", "normal"), NOW)
    assert snap["vol"]["since_ts"] == ts(0)
    snap.vol(vol_event(2, "crisis", "normal"), NOW)
    assert snap["vol"]["since_ts"] == ts(2)
    snap.vol(vol_event(3, "crisis", "crisis"), NOW)
    assert snap["vol"]["since_ts"] == ts(2)


# --- transitions only on change -----------------------------------------------------------------------------


def test_vol_transitions_are_recorded_only_on_change() -> None:
    snap = fresh()
    sequence: list[tuple[VolLabel, VolLabel | None]] = [
        ("normal", None),
        ("normal", "normal"),
        ("high", "normal"),
        ("high", "high"),
        ("crisis", "high"),
    ]
    transitions = []
    for i, (label, prev) in enumerate(sequence):
        up = snap.vol(vol_event(i, label, prev), NOW)
        assert up is not None
        transitions += up.transitions
    seen = [(t["from"], t["to"], t["ts"]) for t in map(stored, transitions)]
    assert seen == [("normal", "high", ts(2)), ("high", "crisis", ts(4))]
    assert all(stored(t)["kind"] == "vol" for t in transitions)


def test_first_vol_event_is_not_a_transition() -> None:
    up = fresh().vol(vol_event(0, "crisis", None), NOW)
    assert up is not None
    assert up.transitions == []


def test_hmm_transitions_are_recorded_only_on_a_trained_change() -> None:
    snap = fresh()
    ups = [
        snap.hmm(hmm_event(0, "RANGING", (0.0, 1.0, 0.0), trained=False), 0.5, NOW),
        snap.hmm(hmm_event(1, "RANGING", (0.0, 1.0, 0.0), trained=False), 0.5, NOW),
        snap.hmm(hmm_event(2, "BULLISH"), 0.5, NOW),
        snap.hmm(hmm_event(3, "BULLISH"), 0.5, NOW),
        snap.hmm(hmm_event(4, "BEARISH", (0.7, 0.2, 0.1)), 0.5, NOW),
    ]
    transitions = [stored(t) for up in ups if up is not None for t in up.transitions]
    assert [(t["from"], t["to"], t["ts"]) for t in transitions] == [
        ("RANGING", "BULLISH", ts(2)),
        ("BULLISH", "BEARISH", ts(4)),
    ]
    assert transitions[1]["confidence"] == pytest.approx(0.5)


# --- the hmm block (seed 003 §2.6) --------------------------------------------------------------------------


def test_hmm_block_has_the_seed_fields() -> None:
    snap = fresh()
    ev = hmm_event(0, "BULLISH", (0.1, 0.2, 0.7))
    snap.hmm(ev, 0.5, NOW)
    block = snap["hmm_regime"]
    assert {"regime", "confidence", "bias_signal", "probabilities", "trained", "observation_count", "blend_factor"} <= (
        set(block)
    )
    assert block["regime"] == "BULLISH"
    assert block["confidence"] == ev.confidence
    assert block["bias_signal"] == ev.bias_signal
    assert block["probabilities"] == {"bearish": 0.1, "ranging": 0.2, "bullish": 0.7}
    assert block["trained"] is True
    assert block["observation_count"] == 40
    assert block["blend_factor"] == 0.5
    assert block["trained_at"] == ev.trained_at
    assert block["ts"] == ts(0)


def test_untrained_hmm_block_says_so() -> None:
    snap = fresh()
    snap.hmm(hmm_event(0, "RANGING", (0.0, 1.0, 0.0), trained=False), 1.0, NOW)
    block = snap["hmm_regime"]
    assert (block["trained"], block["regime"], block["bias_signal"], block["trained_at"]) == (False, "RANGING", 0, None)
    assert block["blend_factor"] == 1.0


# --- idempotency --------------------------------------------------------------------------------------------


def _built() -> Series:
    snap = fresh()
    snap.vol(vol_event(5, "high", "normal"), NOW)
    snap.hmm(hmm_event(5), 0.5, NOW)
    snap.decision(decision(ts(5), "high", "BULLISH"), NOW)
    snap.pipeline(pipeline(NOW), NOW)
    return snap


@pytest.mark.parametrize("age", [0, 1], ids=["same", "older"])
def test_reapplying_a_vol_event_changes_nothing(age: int) -> None:
    snap = _built()
    before = snap.stored()
    assert snap.vol(vol_event(5 - age, "crisis", "high", ratio=3.0), NOW + 1) is None
    assert snap.stored() == before


@pytest.mark.parametrize("age", [0, 1], ids=["same", "older"])
def test_reapplying_an_hmm_event_changes_nothing(age: int) -> None:
    snap = _built()
    before = snap.stored()
    assert snap.hmm(hmm_event(5 - age, "BEARISH", (0.8, 0.1, 0.1)), 0.9, NOW + 1) is None
    assert snap.stored() == before


@pytest.mark.parametrize("age", [0, 1], ids=["same", "older"])
def test_reapplying_a_decision_changes_nothing(age: int) -> None:
    snap = _built()
    before = snap.stored()
    assert snap.decision(decision(ts(5 - age), "crisis", "BEARISH", close=50.0), NOW + 1) is None
    assert snap.stored() == before


@pytest.mark.parametrize("age", [0, 1], ids=["same", "older"])
def test_reapplying_a_pipeline_report_changes_nothing(age: int) -> None:
    snap = _built()
    before = snap.stored()
    assert snap.pipeline(pipeline(NOW - age, samples=1), NOW + 1) is None
    assert snap.stored() == before


def test_redelivered_batch_gives_the_same_snapshot() -> None:
    events: list[tuple[str, Any]] = []
    for i in range(6):
        label = VOL_LABELS[i % 4]
        events += [("vol", vol_event(i, label, VOL_LABELS[(i - 1) % 4] if i else None))]
        events += [("hmm", hmm_event(i, HMM_LABELS[i % 3], ((0.7, 0.2, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.7))[i % 3]))]
        events += [("dec", decision(ts(i), label, HMM_LABELS[i % 3], close=100.0 + i))]

    def run(batch: list[tuple[str, Any]]) -> dict[str, Any]:
        snap = fresh()
        for kind, ev in batch:
            if kind == "vol":
                snap.vol(ev, NOW)
            elif kind == "hmm":
                snap.hmm(ev, 0.5, NOW)
            else:
                snap.decision(ev, NOW)
        return snap.stored()

    assert run(events + events) == run(events)
    assert run(events + events[:9]) == run(events)


def test_newer_events_do_update() -> None:
    snap = _built()
    assert snap.vol(vol_event(6, "crisis", "high", ratio=2.5), NOW) is not None
    assert snap["vol_regime"] == "crisis"
    assert snap.decision(decision(ts(6), "crisis"), NOW) is not None
    assert snap["screener"]["ts"] == ts(6)


# --- the screener block and its history point ---------------------------------------------------------------


def test_decision_publishes_the_screener_block_and_history_point() -> None:
    snap = fresh()
    snap.hmm(hmm_event(0, "BULLISH", (0.1, 0.2, 0.7)), 0.5, NOW)
    d = decision(ts(0), "high", "BULLISH", tier="SATELLITE")
    up = snap.decision(d, NOW)
    assert up is not None
    block = snap["screener"]
    assert block["effective_per_trade_nav_pct"] == d.effective_per_trade_nav_pct
    assert block["weights"] == d.weights
    assert block["defaulted"] == list(d.defaulted)
    assert block["grid_bias"] == {
        "mode": "symmetric",
        "entry_spacing_mult_a": 1.0,
        "entry_spacing_mult_b": 1.0,
        "size_skew_override": None,
    }
    assert snap["tier"] == "SATELLITE"
    (point,) = map(stored, up.history)
    assert point["vol"] == "high"
    assert point["p"] == [0.1, 0.2, 0.7]  # the HMM verdict the decision joined


def test_snapshot_is_plain_data_that_reads_back_as_it_was() -> None:
    snap = _built()
    assert msgpack.unpackb(msgpack.packb(snap.stored(), use_bin_type=True), raw=False) == snap.stored()
    assert snapshot.loads(snapshot.dumps(snap.snap), SeriesSnapshot) == snap.snap


# --- vol_regime_summary -------------------------------------------------------------------------------------


def snapshot_with(
    label: str | None, short: float = 0.01, hmm: str | None = None, trained: bool = True
) -> SeriesSnapshot:
    snap = new_snapshot(KEY, "CORE")
    if label is not None:
        vol = VolBlock(short, 0.01, 1.0, 900, True, T0, T0)
        snap = msgspec.structs.replace(snap, vol_regime=label, vol=vol)
    if hmm is not None:
        block = HmmBlock(hmm, 0.5, 0.0, Probabilities(0.2, 0.3, 0.5), trained, 40, 0.5, None, T0, T0)  # type: ignore[arg-type]
        snap = msgspec.structs.replace(snap, hmm_regime=block)
    return snap


def test_vol_regime_summary_counts_symbols_per_regime() -> None:
    sample = (
        [snapshot_with("low", 0.002) for _ in range(3)]
        + [snapshot_with("normal", 0.01) for _ in range(7)]
        + [snapshot_with("high", 0.02), snapshot_with("high", 0.04)]
        + [snapshot_with(None)]  # a symbol with no verdict yet
    )
    summary = stored(summarize(sample, NOW))
    assert summary["vol_regime_summary"] == {"low": 3, "normal": 7, "high": 2, "crisis": 0}
    assert summary["symbols"] == 13
    assert summary["updated_at"] == NOW
    avg = summary["vol_regime_avg_vol_short"]
    assert avg["low"] == pytest.approx(0.002)
    assert avg["normal"] == pytest.approx(0.01)
    assert avg["high"] == pytest.approx(0.03)
    assert avg["crisis"] is None


def test_the_summary_does_not_depend_on_the_order_the_series_came_in() -> None:
    # Series come into state_publisher's memory in whatever order their first event arrived: a cluster and
    # one server gave 1 ulp apart on the average vol with a running sum.
    rng = np.random.default_rng(7)
    sample = [snapshot_with("normal", float(s)) for s in rng.uniform(0.001, 0.05, 40)]
    first = stored(summarize(sample, NOW))
    for _ in range(20):
        order = rng.permutation(len(sample))
        assert stored(summarize([sample[i] for i in order], NOW)) == first


def test_hmm_summary_counts_trained_regimes_and_untrained_symbols() -> None:
    sample = [
        snapshot_with("normal", hmm="BULLISH"),
        snapshot_with("normal", hmm="BULLISH"),
        snapshot_with("high", hmm="BEARISH"),
        snapshot_with("high", hmm="RANGING", trained=False),
        snapshot_with("low"),
    ]
    summary = stored(summarize(sample, NOW))
    assert summary["hmm_regime_summary"] == {"BEARISH": 1, "RANGING": 0, "BULLISH": 2}
    assert summary["hmm_untrained"] == 1


def test_summary_of_no_symbols_is_all_zero() -> None:
    summary = stored(summarize([], NOW))
    assert summary["symbols"] == 0
    assert summary["vol_regime_summary"] == dict.fromkeys(VOL_LABELS, 0)
    assert summary["vol_regime_avg_vol_short"] == dict.fromkeys(VOL_LABELS)


def test_summary_of_published_snapshots_matches_their_labels() -> None:
    labels: list[VolLabel] = ["crisis", "low", "normal", "normal", "high", "crisis"]
    snaps = []
    for label in labels:
        snap = fresh()
        snap.vol(vol_event(0, label, None), NOW)
        snaps.append(snap.snap)
    assert stored(summarize(snaps, NOW))["vol_regime_summary"] == {"low": 1, "normal": 2, "high": 1, "crisis": 2}


# --- RegimeStats: flips, dwell, forward return --------------------------------------------------------------

H4 = 4 * 3_600_000
# Seven bars four hours apart: one day from first to last.
SEQUENCE: list[tuple[VolLabel, float]] = [
    ("low", 100.0),
    ("low", 110.0),
    ("high", 121.0),
    ("high", 108.9),
    ("high", 108.9),
    ("low", 119.79),
    ("normal", 100.0),
]


def stats_of(sequence: list[tuple[VolLabel, float]]) -> RegimeStats:
    stats = RegimeStats(VOL_LABELS)
    for i, (label, close) in enumerate(sequence):
        stats.add(T0 + i * H4, label, close)
    return stats


def test_regime_stats_on_a_hand_computed_sequence() -> None:
    out = stored(stats_of(SEQUENCE).dump())
    # Flips: low->high at bar 2, high->low at bar 5, low->normal at bar 6, over exactly one day.
    assert out["flips"] == 3
    assert out["span_days"] == pytest.approx(1.0)
    assert out["flips_per_day"] == pytest.approx(3.0)
    # Completed runs: low 8 h (bars 0-1), high 12 h (bars 2-4), low 4 h (bar 5); normal still running.
    dwell = out["mean_dwell_min"]
    assert dwell == {"low": pytest.approx(360.0), "normal": None, "high": pytest.approx(720.0), "crisis": None}
    assert out["bars"] == {"low": 3, "normal": 1, "high": 3, "crisis": 0}
    assert (out["current"], out["current_since_ts"]) == ("normal", T0 + 6 * H4)
    # Forward return of a bar: log(next close / close), credited to the bar's regime.
    low = (math.log(110 / 100) + math.log(121 / 110) + math.log(100 / 119.79)) / 3
    high = (math.log(108.9 / 121) + math.log(108.9 / 108.9) + math.log(119.79 / 108.9)) / 3
    assert out["mean_forward_return"]["low"] == pytest.approx(low, rel=1e-12)
    assert out["mean_forward_return"]["high"] == pytest.approx(high, rel=1e-12)
    assert out["mean_forward_return"]["normal"] is None  # its bar has no next close yet
    assert out["mean_forward_return"]["crisis"] is None


def test_regime_stats_without_span_has_no_flip_rate() -> None:
    out = stored(stats_of(SEQUENCE[:1]).dump())
    assert (out["flips"], out["flips_per_day"], out["span_days"]) == (0, None, 0.0)


def test_regime_stats_ignore_old_and_repeated_bars() -> None:
    stats = stats_of(SEQUENCE)
    before = stats.dump()
    stats.add(T0 + 6 * H4, "crisis", 50.0)
    stats.add(T0, "crisis", 50.0)
    assert stats.dump() == before


def test_regime_stats_resume_identically_after_dump_and_load() -> None:
    whole = stats_of(SEQUENCE).dump()
    part = stats_of(SEQUENCE[:4]).dump()
    wire: Tuning = snapshot.loads(snapshot.dumps(part), Tuning)  # as stored in Redis and read back
    resumed = RegimeStats.load(wire, VOL_LABELS)
    for i, (label, close) in enumerate(SEQUENCE[4:], start=4):
        resumed.add(T0 + i * H4, label, close)
    assert resumed.dump() == whole


def test_decisions_feed_the_tuning_stats() -> None:
    snap = fresh()
    for i, (label, close) in enumerate(SEQUENCE):
        regime: HmmLabel = "BULLISH" if i < 3 else "BEARISH"
        snap.hmm(msgspec.structs.replace(hmm_event(0, regime=regime), ts=T0 + i * H4), 0.5, NOW)
        snap.decision(decision(T0 + i * H4, label, regime, close=close), NOW)
    assert {k: v for k, v in snap["vol_tuning"].items() if k != "_acc"} == {
        k: v for k, v in stored(stats_of(SEQUENCE).dump()).items() if k != "_acc"
    }
    assert snap["hmm_tuning"]["flips"] == 1
    assert snap["hmm_tuning"]["bars"] == {"BEARISH": 4, "RANGING": 0, "BULLISH": 3}


def test_decisions_without_hmm_leave_hmm_tuning_empty() -> None:
    snap = fresh()
    snap.decision(decision(ts(0), "normal", None), NOW)
    assert snap["hmm_tuning"] is None
    assert snap["vol_tuning"]["bars"]["normal"] == 1


def test_the_history_point_comes_from_the_decision_even_when_the_hmm_snapshot_moved_on() -> None:
    snap = fresh()
    snap.hmm(hmm_event(5, "BEARISH", (0.7, 0.2, 0.1)), 0.5, NOW)  # the HMM service ran ahead
    update = snap.decision(decision(ts(0), "normal", "BULLISH", probabilities=(0.1, 0.2, 0.7)), NOW)
    assert update is not None
    (point,) = map(stored, update.history)
    assert (point["hmm"], point["p"]) == ("BULLISH", [0.1, 0.2, 0.7])


def test_untrained_hmm_verdicts_stay_out_of_tuning_and_history() -> None:
    snap = fresh()
    snap.hmm(hmm_event(0, regime="RANGING", trained=False), 0.5, NOW)
    update = snap.decision(decision(ts(0), "normal", "RANGING", trained=False), NOW)
    assert update is not None
    assert snap.stored()["hmm_tuning"] is None
    (point,) = map(stored, update.history)
    assert point["hmm"] is None
    assert point["p"] is None
    snap.hmm(hmm_event(1, regime="BULLISH", trained=True), 0.5, NOW)
    update = snap.decision(decision(ts(1), "normal", "BULLISH"), NOW)
    assert update is not None
    assert update.history[0].hmm == "BULLISH"
    assert snap["hmm_tuning"]["bars"]["BULLISH"] == 1
