"""A corrupted detector snapshot (a bit flip in KV, a build that wrote other fields) is refused or works.

restore_from_snapshot must answer True or False, never raise, and a detector it said True for must go
on giving distributions. Any JSON value at any place of a real snapshot, or the place left out.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regimes.synthetic import regime_switching_market
from shared.domain.hmm import RegimeDetector, fit_model, restore_from_snapshot, serialize_for_snapshot

MARKET = regime_switching_market(1400, seed=5)
CFG = {"HMM_N_ITER": 10, "HMM_MIN_TRAIN_SAMPLES": 200, "HMM_CONFIRM_BARS": 3}


def _snapshot() -> dict[str, Any]:
    det = RegimeDetector(CFG)
    model = fit_model(MARKET.closes[:1200], MARKET.volumes[:1200], CFG, now_ms=0)
    assert det.install(model, MARKET.closes[:1200], MARKET.volumes[:1200])
    snap: dict[str, Any] = json.loads(json.dumps(serialize_for_snapshot(det)))  # as KV holds it: plain JSON
    return snap


SNAPSHOT = _snapshot()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list) and len(node) <= 8:  # long lists: their first and last places suffice
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    elif isinstance(node, list) and node:
        out += _paths(node[0], (*prefix, 0)) + _paths(node[-1], (*prefix, len(node) - 1))
    return out


PATHS = _paths(SNAPSHOT)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=VALUES, drop=st.booleans())
def test_a_snapshot_changed_anywhere_is_refused_or_restores_a_working_detector(
    path: tuple[Any, ...], value: Any, drop: bool
) -> None:
    snap = copy.deepcopy(SNAPSHOT)
    parent: Any = snap
    for step in path[:-1]:
        parent = parent[step]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
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
