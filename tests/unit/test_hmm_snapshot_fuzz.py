"""A corrupted detector snapshot (a bit flip in KV, a build that wrote other fields) is refused or works.

restore_from_snapshot must answer True or False, never raise, and a detector it said True for must go
on giving distributions. Any JSON value at any place of a real snapshot, or the place left out.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regimes.synthetic import regime_switching_market
from shared.domain.hmm import RegimeDetector, fit_model, restore_from_snapshot, serialize_for_snapshot
from tests.mutations import JSON_VALUES, damaged, places

MARKET = regime_switching_market(1400, seed=5)
CFG = {"HMM_N_ITER": 10, "HMM_MIN_TRAIN_SAMPLES": 200, "HMM_CONFIRM_BARS": 3}


def _snapshot() -> dict[str, Any]:
    det = RegimeDetector(CFG)
    model = fit_model(MARKET.closes[:1200], MARKET.volumes[:1200], CFG, now_ms=0)
    assert det.install(model, MARKET.closes[:1200], MARKET.volumes[:1200])
    snap: dict[str, Any] = json.loads(json.dumps(serialize_for_snapshot(det)))  # as KV holds it: plain JSON
    return snap


SNAPSHOT = _snapshot()
PATHS = places(SNAPSHOT)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=JSON_VALUES, drop=st.booleans())
def test_a_snapshot_changed_anywhere_is_refused_or_restores_a_working_detector(
    path: tuple[Any, ...], value: Any, drop: bool
) -> None:
    snap = damaged(SNAPSHOT, path, value, drop)
    det = RegimeDetector(CFG)
    if not restore_from_snapshot(det, snap):
        return
    for t in range(1200, 1230):
        state = det.update(float(MARKET.closes[t]), float(MARKET.volumes[t]))
        p = np.array(state.probabilities)
        assert np.all(np.isfinite(p)), (path, value)
        assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-6), (path, value)
        assert 0.0 <= state.confidence <= 1.0 + 1e-12, (path, value)
        assert -1.0 <= state.bias_signal <= 1.0, (path, value)
