"""Replicas join and leave while candles flow; the series move between them and no result changes.

In-process replicas (clean starts and stops); SIGKILLed replicas of real
processes are in test_crash_recovery.py.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shared.domain.partitions import partition_of
from shared.domain.subjects import SeriesKey
from tests.factories import candles_from_returns, regime_returns
from tests.harness import StackFactory, eventually, small_config

SYMBOLS = [f"S{i}/USD" for i in range(8)]
UNIVERSE = [(s, "CORE") for s in SYMBOLS]
KEYS = [SeriesKey("test", s, "1m") for s in SYMBOLS]


def market() -> dict[SeriesKey, Any]:
    rng = np.random.default_rng(3)
    kinds = ["crisis", "low", "normal", "normal"] * 2
    return {key: candles_from_returns(key, regime_returns(kind, rng)) for key, kind in zip(KEYS, kinds, strict=True)}


async def decided(st: Any, bars: dict[SeriesKey, Any]) -> bool:
    for key, candles in bars.items():
        snap = await st.snapshot(key)
        if not snap or not snap["screener"] or snap["screener"]["ts"] != candles[-1].ts:
            return False
    return True


async def holders(st: Any, service: str) -> dict[int, str]:
    kv = await st.js.key_value(st.names.bucket("leases"))
    out = {}
    for p in range(16):
        try:
            out[p] = (await kv.get(f"{service}.p{p}")).value.decode()
        except Exception:
            continue
    return out


async def test_one_then_three_then_two_replicas_give_the_snapshots_one_gives(make_stack: StackFactory) -> None:
    bars = market()
    config = small_config(UNIVERSE)
    single = await make_stack(config)
    scaled = await make_stack(config)
    for st in (single, scaled):
        await st.start("vol_regime")
        await st.start("screener")
        await st.start("state_publisher")
    half = {k: len(c) // 2 for k, c in bars.items()}
    for st in (single, scaled):
        for key, candles in bars.items():
            await st.publish(candles[: half[key]])
    await scaled.start("vol_regime", instance="vol_regime#2")
    await scaled.start("vol_regime", instance="vol_regime#3")

    async def spread() -> bool:
        held = await holders(scaled, "vol_regime")
        return len(held) == 16 and set(held.values()) == {"vol_regime", "vol_regime-2", "vol_regime-3"}

    await eventually(spread, timeout=30)
    for st in (single, scaled):
        for key, candles in bars.items():
            await st.publish(candles[half[key] : half[key] + 20])
    await scaled.stop("vol_regime#2")  # a clean stop hands its partitions over at once

    async def two_left() -> bool:
        held = await holders(scaled, "vol_regime")
        return len(held) == 16 and set(held.values()) == {"vol_regime", "vol_regime-3"}

    await eventually(two_left, timeout=30)
    for st in (single, scaled):
        for key, candles in bars.items():
            await st.publish(candles[half[key] + 20 :])
    await eventually(lambda: decided(single, bars), timeout=60)
    await eventually(lambda: decided(scaled, bars), timeout=60)
    assert len({partition_of(k, 16) for k in KEYS}) > 1, "the series sit in several partitions"
    for key in KEYS:
        a, b = await single.snapshot(key), await scaled.snapshot(key)
        assert a is not None
        assert b is not None
        a.pop("updated_at")
        b.pop("updated_at")
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), key.id


async def test_a_second_state_publisher_is_a_standby_that_takes_over(make_stack: StackFactory) -> None:
    bars = market()
    st = await make_stack(small_config(UNIVERSE))
    await st.start("vol_regime")
    await st.start("screener")
    await st.start("state_publisher")
    await st.start("state_publisher", instance="state_publisher#2")
    assert await holders(st, "state_publisher") == {0: "state_publisher"}
    for candles in bars.values():
        await st.publish(candles[:100])
    await st.stop("state_publisher")

    async def standby_holds() -> bool:
        return await holders(st, "state_publisher") == {0: "state_publisher-2"}

    await eventually(standby_holds, timeout=30)
    for candles in bars.values():
        await st.publish(candles[100:])
    await eventually(lambda: decided(st, bars), timeout=60)
