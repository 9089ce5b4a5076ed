"""The summary kept one snapshot at a time equals the summary made over every snapshot, bit for bit."""

from __future__ import annotations

import math

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from services.state_publisher.core import SummaryTally, new_snapshot, summarize
from shared.domain import snapshot
from shared.domain.contracts import HMM_LABELS, VOL_LABELS
from shared.domain.snapshot import HmmBlock, Probabilities, SeriesSnapshot, Summary, VolBlock
from shared.domain.subjects import SeriesKey

NOW = 1_700_000_040_000
KEYS = [SeriesKey("test", f"S{i}/USD", "1m") for i in range(6)]


def reference(snaps: list[SeriesSnapshot], now: int) -> Summary:
    """The summary as it was made before the tally: every snapshot visited, shorts summed by math.fsum."""
    vol = dict.fromkeys(VOL_LABELS, 0)
    hmm = dict.fromkeys(HMM_LABELS, 0)
    shorts: dict[str, list[float]] = {lb: [] for lb in VOL_LABELS}
    untrained = 0
    for snap in snaps:
        if snap.vol_regime is not None:
            vol[snap.vol_regime] += 1
            shorts[snap.vol_regime].append(snap.vol.short if snap.vol is not None else 0.0)
        if snap.hmm_regime is not None:
            if snap.hmm_regime.trained:
                hmm[snap.hmm_regime.regime] += 1
            else:
                untrained += 1
    avg = {lb: (math.fsum(shorts[lb]) / vol[lb] if vol[lb] else None) for lb in VOL_LABELS}
    return Summary(len(snaps), vol, avg, hmm, untrained, now)


@st.composite
def snapshots(draw: st.DrawFn) -> SeriesSnapshot:
    snap = new_snapshot(draw(st.sampled_from(KEYS)), "CORE")
    label = draw(st.sampled_from([None, *VOL_LABELS]))
    if label is not None:
        # Shorts of every magnitude, subnormals and zero included: the sums must be exact, not merely close.
        short = draw(st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_subnormal=True))
        snap = msgspec.structs.replace(snap, vol_regime=label, vol=VolBlock(short, 0.01, 1.0, 900, True, NOW, NOW))
    regime = draw(st.sampled_from([None, *HMM_LABELS]))
    if regime is not None:
        block = HmmBlock(regime, 0.5, 0.0, Probabilities(0.2, 0.3, 0.5), draw(st.booleans()), 40, 0.5, None, NOW, NOW)
        snap = msgspec.structs.replace(snap, hmm_regime=block)
    return snap


@settings(max_examples=300, deadline=None)
@given(st.lists(snapshots(), max_size=40))
def test_a_tally_kept_through_replacements_equals_the_summary_over_the_last_snapshots(
    updates: list[SeriesSnapshot],
) -> None:
    tally = SummaryTally()
    latest: dict[str, SeriesSnapshot] = {}
    for snap in updates:  # each series' snapshot replaced by its next one, as the publisher's handler does
        before = latest.get(snap.series)
        if before is not None:
            tally.remove(before)
        tally.add(snap)
        latest[snap.series] = snap
    want = reference(list(latest.values()), NOW)
    assert snapshot.dumps(tally.summary(NOW)) == snapshot.dumps(want)
    assert snapshot.dumps(summarize(latest.values(), NOW)) == snapshot.dumps(want)


def vol_snapshot(key: SeriesKey, short: float) -> SeriesSnapshot:
    vol = VolBlock(short, 0.01, 1.0, 900, True, NOW, NOW)
    return msgspec.structs.replace(new_snapshot(key, "CORE"), vol_regime="high", vol=vol)


def test_a_series_that_came_and_went_leaves_no_trace() -> None:
    small, huge = vol_snapshot(KEYS[0], 1.0), vol_snapshot(KEYS[1], 1e16)
    tally = SummaryTally([small])
    tally.add(huge)
    tally.remove(huge)  # a float running sum is left at (1 + 1e16) - 1e16 = 0 here
    assert tally.summary(NOW) == SummaryTally([small]).summary(NOW)
    assert tally.summary(NOW).vol_regime_avg_vol_short["high"] == 1.0
