"""Two replicas of a stateful service split the series between them and change no result."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.domain.subjects import SeriesKey
from tests.harness import StackFactory, candles_from_returns, eventually, regime_returns, small_config

SYMBOLS = [f"S{i}/USD" for i in range(6)]
UNIVERSE = [(s, "CORE") for s in SYMBOLS]
KEYS = [SeriesKey("test", s, "1m") for s in SYMBOLS]


def market() -> dict[SeriesKey, Any]:
    rng = np.random.default_rng(3)
    kinds = ["crisis", "low", "normal"] * 2
    return {key: candles_from_returns(key, regime_returns(kind, rng)) for key, kind in zip(KEYS, kinds, strict=True)}


async def test_two_vol_regime_replicas_give_the_snapshot_one_gives(make_stack: StackFactory) -> None:
    bars = market()
    config = small_config(UNIVERSE)
    single = await make_stack(config)
    scaled = await make_stack(config)
    await single.start("vol_regime")
    await scaled.start("vol_regime", instance="vol_regime#1", replica=0, replicas=2)
    await scaled.start("vol_regime", instance="vol_regime#2", replica=1, replicas=2)
    for st in (single, scaled):
        await st.start("screener")
        await st.start("state_publisher")
        for candles in bars.values():
            await st.publish(candles)

    async def done(st: Any) -> bool:
        for key, candles in bars.items():
            snap = await st.snapshot(key)
            if not snap or not snap["screener"] or snap["screener"]["ts"] != candles[-1].ts:
                return False
        return True

    await eventually(lambda: done(single))
    await eventually(lambda: done(scaled))
    owners = {key: [key.owned_by(r, 2) for r in (0, 1)] for key in KEYS}
    assert all(sum(o) == 1 for o in owners.values())
    assert {o.index(True) for o in owners.values()} == {0, 1}, "both replicas own some series"
    for key in KEYS:
        a, b = await single.snapshot(key), await scaled.snapshot(key)
        assert a is not None
        assert b is not None
        a.pop("updated_at")
        b.pop("updated_at")
        assert a == b
