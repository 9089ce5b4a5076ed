"""A series' stored state that is not a state (a value put by hand into KV, say) starts it afresh.

Before, bytes that were not msgpack failed the batch that read them, and every retry of it: the consumer
never got past the series.
"""

from __future__ import annotations

import msgpack
import pytest

from regimes.backtest import backtest
from shared.domain.contracts import VolRegimeBatch, VolRegimeEvent, encode
from shared.domain.subjects import SeriesKey
from shared.infra.bus import now_ms
from tests.factories import demo_candles
from tests.harness import Collected, StackFactory, eventually, small_config

KEY = SeriesKey("test", "BAD/USD", "1m")


@pytest.mark.parametrize(
    "stored",
    [
        b"\xc1",  # not msgpack
        b"\x01\x02",  # msgpack with bytes after it
        msgpack.packb([1, 2, 3]),  # msgpack, not a map
        msgpack.packb({"tracker": "x", "last_ts": None, "label": None}),  # a map that is not a state
        msgpack.packb({"tracker": {"count": [], "windows": 3}, "last_ts": 0, "label": "low", "confirm": 7}),
    ],
)
async def test_vol_regime_starts_a_series_afresh_over_a_stored_value_that_is_not_its_state(
    make_stack: StackFactory, stored: bytes
) -> None:
    config = small_config([("BAD/USD", "CORE")])
    st = await make_stack(config)
    events = Collected(VolRegimeEvent, VolRegimeBatch)
    await st.nc.subscribe(st.names.vol_all, cb=events.on_msg)
    await st.start("vol_regime")
    kv = await st.js.key_value(st.names.bucket("vol_state"))
    await kv.put(KEY.token, stored)
    candles = demo_candles(60, key=KEY, seed=4)
    await st.publish(candles)

    async def done() -> bool:
        got = events.of(KEY)
        return bool(got) and got[-1].ts == candles[-1].ts

    await eventually(done, timeout=30)
    expected = [encode(e) for e in backtest(candles, config, now_ms()) if isinstance(e, VolRegimeEvent)]
    assert [encode(e) for e in events.of(KEY)] == expected  # as if nothing had been stored
    assert events.differing == []
