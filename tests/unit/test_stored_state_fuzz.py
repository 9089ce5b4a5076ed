"""A stored series state changed anywhere: the service's load refuses it (the series starts afresh) or the
state it gives goes on applying candles. Never a state that fails on the next candle, which would send
every candle of that series to the dead letters instead.
"""

from __future__ import annotations

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
from shared.infra.kv_state import STATE_LOAD_ERRORS
from tests import factories
from tests.harness import small_config
from tests.mutations import JSON_VALUES, damaged, places

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


@pytest.mark.parametrize("service", ["vol", "hmm", "screener"])
def test_every_place_of_the_dump_is_reached(service: str) -> None:
    assert len(places(DUMPS[service])) > 10


def _load(service: str, raw: dict[str, Any]) -> Any:
    if service == "vol":
        return SeriesVol.load(CONFIG.vol, raw)
    if service == "hmm":
        return SeriesHmm.load(CONFIG.hmm, raw)
    return SeriesScreen.load(raw)


def _go_on(service: str, state: Any) -> None:
    """The next candles (or events) applied to a loaded state: none of them may raise."""
    if service == "vol":
        for c in CANDLES[40:]:
            vol_apply(state, c, CONFIG.vol)
    elif service == "hmm":
        for c in CANDLES[40:]:
            hmm_apply(state, c)
    else:
        _screener_goes_on(state)


@pytest.mark.parametrize("service", sorted(DUMPS))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=JSON_VALUES, drop=st.booleans())
def test_a_state_changed_anywhere_is_refused_or_goes_on(
    service: str, data: st.DataObject, value: Any, drop: bool
) -> None:
    raw = damaged(DUMPS[service], data.draw(st.sampled_from(places(DUMPS[service]))), value, drop)
    try:
        state = _load(service, raw)
    except STATE_LOAD_ERRORS:
        return  # refused: the series starts afresh
    _go_on(service, state)
