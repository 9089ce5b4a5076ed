"""state_publisher's per-symbol consensus through real NATS and Redis, and its rebuild after Redis loses it.

A universe entry with ``"aggregate": ["15m"]`` gives the symbol two series (1m
and 15m). HMM verdicts of both are published in a seeded shuffled order, older
bars after newer ones included; the consensus Redis holds must be
``consensus()`` of each timeframe's newest verdict by candle time. Then this
namespace's keys are deleted, as a flush would: the publisher rebuilds from the
streams and writes the same consensus again.
"""

from __future__ import annotations

import json
import random
from typing import Any

from shared.domain.consensus import TimeframeVerdict, consensus
from shared.domain.contracts import HmmRegimeEvent, encode
from shared.domain.subjects import SeriesKey
from shared.domain.vocab import TIMEFRAMES_MS, HmmLabel
from tests.factories import T0, hmm_event
from tests.harness import Stack, StackFactory, eventually, small_config

KEYS = {tf: SeriesKey("demo", "BTC/USD", tf) for tf in ("1m", "15m")}
WEIGHTS = {"15m": 2.0}
CONFIG = small_config(
    [],
    universe=[{"exchange": "demo", "symbol": "BTC/USD", "timeframe": "1m", "tier": "CORE", "aggregate": ["15m"]}],
    consensus={"enabled": True, "weights": WEIGHTS},
)
PROBS: dict[HmmLabel, tuple[float, float, float]] = {
    "BEARISH": (0.7, 0.2, 0.1),
    "RANGING": (0.2, 0.6, 0.2),
    "BULLISH": (0.1, 0.2, 0.7),
}


def verdicts(rng: random.Random) -> list[HmmRegimeEvent]:
    out = []
    for tf, key in KEYS.items():
        for i in range(8):
            regime = rng.choice(tuple(PROBS))
            out.append(hmm_event(i, regime, PROBS[regime], key=key, ts=T0 + i * TIMEFRAMES_MS[tf], trained=i > 0))
    rng.shuffle(out)
    return out


def expected(events: list[HmmRegimeEvent]) -> dict[str, Any]:
    newest = {tf: max((e for e in events if e.timeframe == tf), key=lambda e: e.ts) for tf in KEYS}
    c = consensus({tf: TimeframeVerdict(e.regime, e.bias_signal, e.trained) for tf, e in newest.items()}, WEIGHTS)
    return {
        "exchange": "demo", "symbol": "BTC/USD", "regime": c.regime, "agreement": c.agreement, "bias": c.bias,
        "voting": list(c.voting), "dissenting": list(c.dissenting), "untrained": list(c.untrained),
        "as_of": {tf: newest[tf].ts for tf in sorted(newest, key=TIMEFRAMES_MS.__getitem__)},
    }  # fmt: skip


async def stored(st: Stack) -> dict[str, Any] | None:
    raw = await st.redis.get(st.names.redis_key("consensus", "demo.BTC-USD"))
    return json.loads(raw) if raw else None


async def test_the_stored_consensus_is_that_of_the_newest_verdicts_and_is_rebuilt_after_a_flush(
    make_stack: StackFactory,
) -> None:
    st = await make_stack(CONFIG)
    await st.start("state_publisher")
    events = verdicts(random.Random(7))
    for ev in events:
        await st.js.publish(st.names.hmm(ev.key), encode(ev), headers={"Nats-Msg-Id": f"{ev.key.token}.{ev.ts}.hmm"})
    want = expected(events)

    async def settled() -> dict[str, Any] | None:
        got = await stored(st)
        return got if got is not None and got["as_of"] == want["as_of"] else None

    assert await eventually(settled, timeout=20) == want

    # As a FLUSHDB would, for this namespace only (the Redis server is the session's, shared by other tests).
    keys = [k async for k in st.redis.scan_iter(match=st.names.redis_key("*"))]
    await st.redis.delete(*keys)
    assert await stored(st) is None
    assert await eventually(settled, timeout=20) == want
