"""The screener on the consensus of a symbol's timeframes, through real NATS: the decisions equal the backtest's.

A universe entry with ``"aggregate": ["5m", "15m"]`` and ``consensus.screener`` on. The 1m candles and the 5m and
15m bars built from them (``aggregate()``, as ingest builds them) are published in a seeded order that runs
each series ahead of the others in turn, with the screener restarted part-way. Every decision of every
timeframe in the REGIMES stream must equal ``regimes backtest`` over the same candles, byte for byte: which
verdict of the other timeframes goes with a bar does not depend on which service answered first.
"""

from __future__ import annotations

import random

import numpy as np

from regimes.backtest import backtest
from shared.domain.aggregate import aggregate
from shared.domain.contracts import MESSAGE_TYPES, Candle, ScreenerDecision, encode, events_in
from shared.domain.subjects import SeriesKey
from shared.infra.bus import now_ms, read_subject
from tests.factories import DAY0, candles_from_returns
from tests.harness import Stack, StackFactory, eventually, small_config

BASE = SeriesKey("test", "AAA/USD", "1m")
CONFIG = small_config(
    [],
    universe=[{"exchange": "test", "symbol": "AAA/USD", "timeframe": "1m", "tier": "CORE", "aggregate": ["5m", "15m"]}],
    consensus={"screener": True, "weights": {"15m": 2.0}},
    hmm={
        "HMM_ENABLED": True,
        "HMM_BLEND_WITH_TREND": 0.5,
        "HMM_TRAINING_CANDLES": 120,
        "HMM_MIN_TRAIN_SAMPLES": 40,
        "HMM_RETRAIN_INTERVAL_SEC": 3600,
        "HMM_N_ITER": 10,
    },
)


def candles(seed: int) -> dict[str, list[Candle]]:
    """Each timeframe's candles: 1m with calm, wild and trending stretches and a 20-bar gap, and the bars built."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(drift, sigma, 60) for sigma, drift in [(0.001, 0.0), (0.02, 0.0), (0.003, 0.002)] * 3]
    base = candles_from_returns(BASE, np.concatenate(parts).tolist(), start_ts=DAY0)
    base = base[:300] + base[320:]
    return {"1m": base, **{tf: aggregate(base, tf) for tf in ("5m", "15m")}}


def shuffled(by_tf: dict[str, list[Candle]], seed: int) -> list[Candle]:
    """Every candle, each series in its own order, the series interleaved at random: in stretches, one runs ahead."""
    rng = random.Random(seed)
    queues = {tf: list(cs) for tf, cs in by_tf.items()}
    out: list[Candle] = []
    while any(queues.values()):
        tf = rng.choice([tf for tf, q in queues.items() if q])
        take = rng.randint(1, 40)
        out += queues[tf][:take]
        del queues[tf][:take]
    return out


async def decisions(st: Stack) -> dict[str, list[bytes]]:
    msgs = await read_subject(
        st.js, st.names.stream_regimes, st.names.screener_all, keep_last=0, decode_as=tuple(MESSAGE_TYPES.values())
    )
    out: dict[str, list[bytes]] = {}
    for msg in msgs:
        for d in events_in(msg):
            out.setdefault(d.key.token, []).append(encode(d))
    return out


async def test_decisions_on_the_consensus_equal_the_backtest_whatever_order_the_timeframes_come_in(
    make_stack: StackFactory,
) -> None:
    stream = shuffled(candles(seed=3), seed=3)
    reference = [e for e in backtest(stream, CONFIG, now_ms()) if isinstance(e, ScreenerDecision)]
    expected: dict[str, list[bytes]] = {}
    for d in reference:
        expected.setdefault(d.key.token, []).append(encode(d))
    assert set(expected) == {BASE.token, "test.AAA-USD.5m", "test.AAA-USD.15m"}
    joined = [d.consensus for d in reference if d.timeframe == "1m" and d.consensus is not None]
    assert any("5m" in c.voting for c in joined), "a trained 5m model took part in 1m decisions"
    assert any(set(c.as_of) == {"1m", "5m", "15m"} for c in joined)
    assert any(c.absent for c in joined), "the gap left a bucket empty"

    st = await make_stack(CONFIG)
    for service in ("vol_regime", "hmm_regime", "screener"):
        await st.start(service)
    half = len(stream) // 2
    for c in stream[:half]:
        await st.js.publish(st.names.ohlcv(c.key), encode(c), headers={"Nats-Msg-Id": c.msg_id})

    async def some_decided() -> bool:
        return sum(map(len, (await decisions(st)).values())) > 50

    await eventually(some_decided, timeout=60)
    await st.stop("screener")  # mid-stream: the join buffers go, the peers' verdicts stay in its state
    for c in stream[half:]:
        await st.js.publish(st.names.ohlcv(c.key), encode(c), headers={"Nats-Msg-Id": c.msg_id})
    await st.start("screener")

    async def all_decided() -> dict[str, list[bytes]] | None:
        got = await decisions(st)
        return got if {k: len(v) for k, v in got.items()} == {k: len(v) for k, v in expected.items()} else None

    got = await eventually(all_decided, timeout=120, interval=0.5)
    assert got == expected
