"""The screener on the consensus of a symbol's timeframes, through real NATS: the decisions equal the backtest's.

A universe entry with ``"aggregate": ["5m", "15m"]`` and ``consensus.screener`` on. The 1m candles and the 5m and
15m bars built from them (``aggregate()``, as ingest builds them) are published in a seeded order that runs
each series ahead of the others in turn, with the screener restarted part-way. Every decision of every
timeframe in the REGIMES stream must equal ``regimes backtest`` over the same candles, byte for byte: which
verdict of the other timeframes goes with a bar does not depend on which service answered first.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from regimes import feed
from regimes.backtest import backtest
from services.ohlcv_ingest.files import write_freqtrade
from services.ohlcv_ingest.replay import interleave
from shared.domain.aggregate import aggregate
from shared.domain.config import parse_strategy_config
from shared.domain.contracts import MESSAGE_TYPES, Candle, ScreenerDecision, encode, events_in
from shared.domain.subjects import SeriesKey
from shared.infra.bus import now_ms, read_subject
from tests.factories import DAY0, candles_from_returns
from tests.harness import Stack, StackFactory, eventually, point_cli_at, small_raw

BASE = SeriesKey("test", "AAA/USD", "1m")
RAW = small_raw(
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
CONFIG = parse_strategy_config(RAW, {})


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


def expected_decisions(stream: list[Candle]) -> dict[str, list[bytes]]:
    """Per series, the encoded decisions ``regimes backtest`` gives for ``stream``."""
    expected: dict[str, list[bytes]] = {}
    for d in backtest(stream, CONFIG, now_ms()):
        if isinstance(d, ScreenerDecision):
            expected.setdefault(d.key.token, []).append(encode(d))
    return expected


async def all_decided(st: Stack, expected: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    """The stream's decisions once each series has as many as ``expected`` (bounded wait)."""

    async def done() -> dict[str, list[bytes]] | None:
        got = await decisions(st)
        return got if {k: len(v) for k, v in got.items()} == {k: len(v) for k, v in expected.items()} else None

    got: dict[str, list[bytes]] = await eventually(done, timeout=120, interval=0.5)
    return got


async def test_decisions_on_the_consensus_equal_the_backtest_whatever_order_the_timeframes_come_in(
    make_stack: StackFactory,
) -> None:
    stream = shuffled(candles(seed=3), seed=3)
    reference = [e for e in backtest(stream, CONFIG, now_ms()) if isinstance(e, ScreenerDecision)]
    expected = expected_decisions(stream)
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

    assert await all_decided(st, expected) == expected


async def test_an_import_of_the_1m_file_alone_feeds_every_timeframe_and_decides_as_its_backtest(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``regimes import`` builds the universe's ``aggregate`` timeframes from the file, as ingest builds them live:
    no timeframe is left without bars to hold the symbol's decisions back. In a bulk import one service's output can
    land whole before another's (every HMM verdict before the first vol event): the decisions do not care."""
    base = candles(seed=4)["1m"]
    write_freqtrade(tmp_path / "AAA_USD-1m.feather", base, "feather")
    files = feed.load_files([tmp_path / "AAA_USD-1m.feather"], "test", None, None)
    expected = expected_decisions(interleave(*feed.with_built(files, CONFIG)))
    assert set(expected) == {BASE.token, "test.AAA-USD.5m", "test.AAA-USD.15m"}
    assert len(expected["test.AAA-USD.15m"]) == len(aggregate(base, "15m"))

    st = await make_stack(CONFIG)
    for service in ("vol_regime", "hmm_regime", "screener"):
        await st.start(service)
    point_cli_at(st, monkeypatch, tmp_path, RAW)
    assert await feed.publish_files([tmp_path / "AAA_USD-1m.feather"], "test", None, None, speed=None) == 0
    assert await all_decided(st, expected) == expected
