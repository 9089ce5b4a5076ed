"""What state_publisher stores in Redis does not move: the JSON recorded before the snapshot contract still comes out.

``snapshot_v1.json`` was recorded from the dict-building publisher (commit 1f84c6e):
the bytes of the snapshot after events of every kind (vol, HMM trained and not,
decisions, pipeline reports with and without data, read back through JSON
halfway as after a restart), every history point and transition, and the summary.
The API parses exactly these bytes, so they are its input format too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.state_publisher.core import apply_decision, apply_hmm, apply_pipeline, apply_vol, new_snapshot, summarize
from shared.domain.contracts import HmmRegimeEvent, VolRegimeEvent, decode
from shared.domain.subjects import SeriesKey

RECORDED = json.loads((Path(__file__).parent / "snapshot_v1.json").read_text())
KEY = SeriesKey("test", "BTC/USD", "1m")
NOW = RECORDED["now"]


def _replay() -> dict[str, Any]:
    events = [decode(bytes.fromhex(h)) for h in RECORDED["events"]]
    snap = new_snapshot(KEY, "CORE")
    out: dict[str, Any] = {"empty": json.dumps(snap), "after_event": {}, "history": [], "transitions": []}
    for i, ev in enumerate(events):
        if i == len(events) // 2:
            snap = json.loads(json.dumps(snap))  # the writer reads its snapshots back from Redis after a restart
        now = NOW + i
        if isinstance(ev, VolRegimeEvent):
            up = apply_vol(snap, ev, now)
        elif isinstance(ev, HmmRegimeEvent):
            up = apply_hmm(snap, ev, 0.5, now)
        else:
            up = apply_decision(snap, ev, now)
        if up:
            out["history"] += [json.dumps(p) for p in up.history]
            out["transitions"] += [json.dumps(t) for t in up.transitions]
        if str(i) in RECORDED["after_event"]:
            out["after_event"][str(i)] = json.dumps(snap)
    first, second = (decode(bytes.fromhex(h)) for h in RECORDED["pipeline"])
    apply_pipeline(snap, first, NOW + 100)
    after_first = json.dumps(snap)
    apply_pipeline(snap, second, NOW + 101)
    out["after_pipeline"] = [after_first, json.dumps(snap)]
    out["summary"] = json.dumps(summarize([snap, json.loads(out["empty"])], NOW))
    return out


REPLAYED = _replay()


def test_a_new_series_is_stored_as_recorded() -> None:
    assert REPLAYED["empty"] == RECORDED["empty"]


def test_the_snapshot_after_each_kind_of_event_is_stored_as_recorded() -> None:
    assert REPLAYED["after_event"] == RECORDED["after_event"]
    assert REPLAYED["after_pipeline"] == RECORDED["after_pipeline"]


def test_history_points_and_transitions_are_stored_as_recorded() -> None:
    assert REPLAYED["history"] == RECORDED["history"]
    assert REPLAYED["transitions"] == RECORDED["transitions"]
    assert any('"kind": "hmm"' in t for t in RECORDED["transitions"])


def test_the_summary_is_stored_as_recorded() -> None:
    assert REPLAYED["summary"] == RECORDED["summary"]
