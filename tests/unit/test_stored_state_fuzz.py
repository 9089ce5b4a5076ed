"""A stored series state changed anywhere: the service's load refuses it (the series starts afresh) or the
state it gives goes on applying candles. Never a state that fails on the next candle, which would send
every candle of that series to the dead letters instead.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.hmm_regime.core import SeriesHmm
from services.hmm_regime.core import apply_candle as hmm_apply
from services.screener.core import SeriesScreen, on_hmm, on_score, on_vol
from services.vol_regime.core import SeriesVol
from services.vol_regime.core import apply_candle as vol_apply
from shared.domain.config import StrategyConfig
from shared.infra.consume import STATE_LOAD_ERRORS
from tests import factories
from tests.harness import small_config

CONFIG: StrategyConfig = small_config([("AAA/USD", "CORE")], hmm={"HMM_ENABLED": True, "HMM_MIN_TRAIN_SAMPLES": 50})
CANDLES = [factories.candle(i, 100.0 + (i % 7) - 3) for i in range(60)]


def _vol_dump() -> dict[str, Any]:
    state = SeriesVol.new(CONFIG.vol)
    for c in CANDLES[:40]:
        vol_apply(state, c, CONFIG.vol)
    dumped: dict[str, Any] = json.loads(json.dumps(state.dump()))
    return dumped


def _hmm_dump() -> dict[str, Any]:
    state = SeriesHmm.new(CONFIG.hmm)
    for c in CANDLES[:40]:
        hmm_apply(state, c)
    dumped: dict[str, Any] = json.loads(json.dumps(state.dump()))
    return dumped


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list) and node:
        for i in sorted({0, len(node) - 1}):  # long lists: their ends suffice
            out += _paths(node[i], (*prefix, i))
    return out


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
def _screener_dump() -> dict[str, Any]:
    state = SeriesScreen()
    key = CONFIG.universe[0].key
    for i in range(5):
        on_score(state, factories.score_event("carry", 0.1 * i, i, key=key))
        on_vol(state, factories.vol_event(i, key=key), CONFIG, i)
        on_hmm(state, factories.hmm_event(i, key=key), CONFIG, i)
    on_score(state, factories.score_event("carry", 0.5, 6, key=key))  # one waiting for its bar
    dumped: dict[str, Any] = json.loads(json.dumps(state.dump()))
    return dumped


def _screener_goes_on(state: SeriesScreen) -> None:
    key = CONFIG.universe[0].key
    for i in range(5, 9):
        on_vol(state, factories.vol_event(i, key=key), CONFIG, i)
        on_hmm(state, factories.hmm_event(i, key=key), CONFIG, i)


DUMPS = {"vol": _vol_dump(), "hmm": _hmm_dump(), "screener": _screener_dump()}


def _changed(dump: dict[str, Any], path: tuple[Any, ...], value: Any, drop: bool) -> dict[str, Any]:
    raw = copy.deepcopy(dump)
    parent: Any = raw
    for step in path[:-1]:
        parent = parent[step]
    if drop and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return raw


@pytest.mark.parametrize("service", ["vol", "hmm", "screener"])
def test_every_place_of_the_dump_is_reached(service: str) -> None:
    assert len(_paths(DUMPS[service])) > 10


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=VALUES, drop=st.booleans())
def test_a_vol_state_changed_anywhere_is_refused_or_goes_on(data: st.DataObject, value: Any, drop: bool) -> None:
    raw = _changed(DUMPS["vol"], data.draw(st.sampled_from(_paths(DUMPS["vol"]))), value, drop)
    try:
        state = SeriesVol.load(CONFIG.vol, raw)
    except STATE_LOAD_ERRORS:
        return
    for c in CANDLES[40:]:
        vol_apply(state, c, CONFIG.vol)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=VALUES, drop=st.booleans())
def test_an_hmm_state_changed_anywhere_is_refused_or_goes_on(data: st.DataObject, value: Any, drop: bool) -> None:
    raw = _changed(DUMPS["hmm"], data.draw(st.sampled_from(_paths(DUMPS["hmm"]))), value, drop)
    try:
        state = SeriesHmm.load(CONFIG.hmm, raw)
    except STATE_LOAD_ERRORS:
        return
    for c in CANDLES[40:]:
        hmm_apply(state, c)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=VALUES, drop=st.booleans())
def test_a_screener_state_changed_anywhere_is_refused_or_goes_on(data: st.DataObject, value: Any, drop: bool) -> None:
    raw = _changed(DUMPS["screener"], data.draw(st.sampled_from(_paths(DUMPS["screener"]))), value, drop)
    try:
        state = SeriesScreen.load(raw)
    except STATE_LOAD_ERRORS:
        return
    _screener_goes_on(state)
