"""Per-message cost of the codec: decode (with every check) and encode, in µs, for the messages on the hot path.

Decoding is what every consumer pays per message before its handler runs: a
live candle comes alone, bulk work in batches of up to 200 bars (per candle
here means the batch's decode plus ``candles_in``, divided by its bars). Each
case runs ``--rounds`` times and the fastest round counts: on a shared machine
the minimum is the cost of the code, the rest is other processes.

    .venv/bin/python bench/bench_codec.py [--n N] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from shared.domain.contracts import (
    Candle,
    CandleBatch,
    GridBias,
    ScreenerDecision,
    VolRegimeEvent,
    batch_of,
    candles_in,
    decode,
    encode,
    events_in,
)

T = 1_700_000_040_000
BAR_MS = 60_000


def candle(i: int) -> Candle:
    return Candle("kraken", "BTC/USD", "1m", T + i * BAR_MS, 100.0, 101.5, 99.5, 100.5, 12.25)


def vol_event(i: int) -> VolRegimeEvent:
    return VolRegimeEvent("kraken", "BTC/USD", "1m", T + i * BAR_MS, 100.5, "high", 0.0123, 0.0085, 1.45, "normal",
                          True, 900, True)  # fmt: skip


def decision(i: int) -> ScreenerDecision:
    return ScreenerDecision(
        "kraken", "BTC/USD", "1m", T + i * BAR_MS, 100.5, "CORE", "high", 0.0123, 0.0085, 1.45, 0.75, 0.02, 0.015,
        False, {"trend": 0.4, "carry": 0.2, "expectancy": 0.2, "router": 0.2},
        {"trend": 0.5, "carry": 0.0, "expectancy": 0.0, "router": 0.0}, ("carry", "expectancy", "router"), 0.2, 0.5,
        "BULLISH", 0.3, 0.4, 0.5, 0.42, GridBias("long_bias", 1.1, 0.9, None), True, (0.1, 0.2, 0.7),
    )  # fmt: skip


def best_us(run: Callable[[], None], per_round: int, rounds: int) -> float:
    """Fastest of ``rounds`` calls of ``run`` (which does ``per_round`` units), in µs per unit."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            run()
            best = min(best, time.perf_counter_ns() - start)
        finally:
            gc.enable()
    return best / per_round / 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case, best counts (default 7)")
    args = parser.parse_args(argv)
    n, rounds = args.n, args.rounds

    one = encode(candle(0))
    batch = encode(CandleBatch.of([candle(i) for i in range(200)]))
    vol, dec = encode(vol_event(0)), encode(decision(0))
    decisions = encode(batch_of([decision(i) for i in range(64)]))
    expected = (Candle, CandleBatch)
    decision_obj = decision(0)

    def decode_candles() -> None:
        for _ in range(n):
            decode(one, expected)

    def decode_batches() -> None:
        for _ in range(n // 200):
            candles_in(decode(batch, expected))

    def decode_vol() -> None:
        for _ in range(n):
            decode(vol)

    def decode_decisions() -> None:
        for _ in range(n):
            decode(dec)

    def decode_decision_batches() -> None:
        for _ in range(n // 64):
            events_in(decode(decisions))

    def encode_decisions() -> None:
        for _ in range(n):
            encode(decision_obj)

    rows = [
        ("decode a Candle", best_us(decode_candles, n, rounds)),
        ("decode a CandleBatch of 200 + candles_in, per candle", best_us(decode_batches, n // 200 * 200, rounds)),
        ("decode a VolRegimeEvent", best_us(decode_vol, n, rounds)),
        ("decode a ScreenerDecision", best_us(decode_decisions, n, rounds)),
        ("decode a batch of 64 decisions, per decision", best_us(decode_decision_batches, n // 64 * 64, rounds)),
        ("encode a ScreenerDecision", best_us(encode_decisions, n, rounds)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:7.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
