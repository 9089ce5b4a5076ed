"""What state_publisher stores in Redis does not move: the JSON recorded before the snapshot contract still comes out.

``snapshot_v1.json`` was recorded from the dict-building publisher (commit 1f84c6e):
the bytes of the snapshot after events of every kind (vol, HMM trained and not,
decisions, pipeline reports with and without data, read back through JSON
halfway as after a restart), every history point and transition, and the summary.
The API parses exactly these bytes, so they are its input format too. Since msgspec writes the
records the text is compact: each is compared in the recording's form (``json.dumps`` of it parsed),
so every key, its order and every number's digits must still come out as recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.state_publisher.core import (
    Update,
    apply_decision,
    apply_hmm,
    apply_pipeline,
    apply_vol,
    new_snapshot,
    summarize,
)
from shared.domain import snapshot
from shared.domain.contracts import HmmRegimeEvent, VolRegimeEvent, decode
from shared.domain.snapshot import HistoryPoint, SeriesSnapshot, Summary, Transition
from shared.domain.subjects import SeriesKey

RECORDED = json.loads((Path(__file__).parent / "snapshot_v1.json").read_text())
KEY = SeriesKey("test", "BTC/USD", "1m")
NOW = RECORDED["now"]


def _replay() -> dict[str, Any]:
    events = [decode(bytes.fromhex(h)) for h in RECORDED["events"]]
    snap = new_snapshot(KEY, "CORE")
    out: dict[str, Any] = {"empty": snapshot.dumps(snap), "after_event": {}, "history": [], "transitions": []}
    for i, ev in enumerate(events):
        if i == len(events) // 2:  # the writer reads its snapshots back from Redis after a restart
            snap = snapshot.loads(snapshot.dumps(snap), SeriesSnapshot)
        now = NOW + i
        if isinstance(ev, VolRegimeEvent):
            up = apply_vol(snap, ev, now)
        elif isinstance(ev, HmmRegimeEvent):
            up = apply_hmm(snap, ev, 0.5, now)
        else:
            up = apply_decision(snap, ev, now)
        if up:
            snap = up.snapshot
            out["history"] += [snapshot.dumps(p) for p in up.history]
            out["transitions"] += [snapshot.dumps(t) for t in up.transitions]
        if str(i) in RECORDED["after_event"]:
            out["after_event"][str(i)] = snapshot.dumps(snap)
    first, second = (decode(bytes.fromhex(h)) for h in RECORDED["pipeline"])
    after_first = _applied(apply_pipeline(snap, first, NOW + 100))
    after_second = _applied(apply_pipeline(after_first, second, NOW + 101))
    out["after_pipeline"] = [snapshot.dumps(after_first), snapshot.dumps(after_second)]
    out["summary"] = snapshot.dumps(summarize([after_second, new_snapshot(KEY, "CORE")], NOW))
    return out


def _applied(update: Update | None) -> SeriesSnapshot:
    assert update is not None
    return update.snapshot


REPLAYED = _replay()
# Fields added since the recording (confirmed regimes and training depth): new keys at the end of their blocks,
# null for events that do not carry them; everything recorded must still come out byte for byte around them.
ADDED = {
    "vol": ("raw_label", "pending_label"),
    "hmm_regime": ("raw_regime", "raw_confidence", "depth_tier", "training_candles", "label_agreement"),
}


def spaced(text: str) -> str:
    """A stored record in the recording's form (``json.dumps``: the same keys in the same order, spaced)."""
    return json.dumps(json.loads(text))


def as_recorded(text: str) -> str:
    """A stored snapshot without the fields added since the recording (their order is kept: JSON as written)."""
    snap = json.loads(text)
    for block, keys in ADDED.items():
        if snap.get(block) is not None:
            assert list(snap[block])[-len(keys) :] == list(keys), f"{block}: added fields at the end"
            for key in keys:
                del snap[block][key]
    return json.dumps(snap)


def test_stored_records_read_back_as_they_were_written() -> None:
    for text in [*RECORDED["after_event"].values(), *RECORDED["after_pipeline"]]:
        assert as_recorded(snapshot.dumps(snapshot.loads(text, SeriesSnapshot))) == text
    for text in RECORDED["transitions"]:
        assert spaced(snapshot.dumps(snapshot.loads(text, Transition))) == text
    for text in RECORDED["history"]:
        assert spaced(snapshot.dumps(snapshot.loads(text, HistoryPoint))) == text
    assert spaced(snapshot.dumps(snapshot.loads(RECORDED["summary"], Summary))) == RECORDED["summary"]


def test_a_new_series_is_stored_as_recorded() -> None:
    assert spaced(REPLAYED["empty"]) == RECORDED["empty"]


def test_the_snapshot_after_each_kind_of_event_is_stored_as_recorded() -> None:
    assert {i: as_recorded(t) for i, t in REPLAYED["after_event"].items()} == RECORDED["after_event"]
    assert [as_recorded(t) for t in REPLAYED["after_pipeline"]] == RECORDED["after_pipeline"]


def test_history_points_and_transitions_are_stored_as_recorded() -> None:
    assert [spaced(t) for t in REPLAYED["history"]] == RECORDED["history"]
    assert [spaced(t) for t in REPLAYED["transitions"]] == RECORDED["transitions"]
    assert any('"kind": "hmm"' in t for t in RECORDED["transitions"])


def test_the_summary_is_stored_as_recorded() -> None:
    assert spaced(REPLAYED["summary"]) == RECORDED["summary"]
