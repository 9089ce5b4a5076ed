"""Per-candle cost of the vol regime: VolTracker.update (O(1)) against the seed's literal recompute.

The seed's approach recomputes both EWMA vols over the last 720 / 168 returns at every candle
(classify_vol_regime on the last long window); the tracker slides running sums instead. Both
are fed the same log returns, and the script checks they agree before it reports.

Each approach runs ``--rounds`` times over all ``--candles`` and the fastest round counts: on a
shared machine the minimum is the cost of the code, the rest is other processes.

    .venv/bin/python bench/bench_vol.py [--candles N] [--rounds R] [--seed S]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from shared.domain.vol import VolInputs, VolRegime, VolRegimeConfig, classify_vol_regime
from shared.domain.vol_tracker import VolTracker


def synthetic_returns(candles: int, seed: int) -> np.ndarray:
    """Fat-tailed log returns whose vol switches between calm and wild every 300 bars."""
    rng = np.random.default_rng(seed)
    scale = np.repeat(rng.choice([0.001, 0.004, 0.02], size=candles // 300 + 1), 300)[:candles]
    return rng.standard_t(4, candles) * scale


def best_us_per_candle(prepare: Callable[[], Callable[[], None]], candles: int, rounds: int) -> float:
    """Fastest of ``rounds`` runs, in µs per candle; ``prepare`` (untimed) returns a run over ``candles``."""
    best = float("inf")
    for _ in range(rounds):
        run = prepare()
        gc.collect()
        gc.disable()  # a collection landing in one loop and not the other would skew the comparison
        try:
            start = time.perf_counter_ns()
            run()
            best = min(best, time.perf_counter_ns() - start)
        finally:
            gc.enable()
    return best / candles / 1000.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; a count below 1 exits with a usage error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=20_000, help="timed candles (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per approach, best counts (default 5)")
    parser.add_argument("--seed", type=int, default=7, help="RNG seed of the synthetic returns")
    args = parser.parse_args(argv)
    if args.candles < 1 or args.rounds < 1:
        parser.error("--candles and --rounds must be >= 1")
    return args


def _agreement(got: list[VolRegime], expected: list[VolRegime]) -> tuple[float, int]:
    """The worst relative difference of either vol (a fraction) and the number of equal labels."""
    worst = max(
        max(abs(a.vol_short - b.vol_short) / b.vol_short, abs(a.vol_long - b.vol_long) / b.vol_long)
        for a, b in zip(got, expected, strict=True)
    )
    same_labels = sum(a.label == b.label for a, b in zip(got, expected, strict=True))
    return worst, same_labels


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)

    cfg = VolRegimeConfig()
    window = cfg.long_window_bars
    warmup = 2 * window  # fills the window and passes a periodic rebuild before timing starts
    returns = synthetic_returns(warmup + args.candles, args.seed)
    as_floats = returns.tolist()
    timed = as_floats[warmup:]
    ends = range(warmup + 1, returns.size + 1)  # returns[:end] is the history after each timed candle

    def fresh_tracker() -> VolTracker:
        tracker = VolTracker(cfg)
        for r in as_floats[:warmup]:
            tracker.update(r)
        return tracker

    def prepare_tracker() -> Callable[[], None]:
        update = fresh_tracker().update  # every round starts from the same warmed-up state

        def run() -> None:
            for r in timed:
                update(r)

        return run

    def prepare_recompute() -> Callable[[], None]:
        for end in list(ends)[:200]:  # warm numpy's code paths
            classify_vol_regime(VolInputs(returns[end - window : end]), cfg)

        def run() -> None:
            # The literal approach keeps a history and reclassifies its last long window each candle.
            for end in ends:
                classify_vol_regime(VolInputs(returns[end - window : end]), cfg)

        return run

    tracker_us = best_us_per_candle(prepare_tracker, args.candles, args.rounds)
    recompute_us = best_us_per_candle(prepare_recompute, args.candles, args.rounds)

    # Agreement, untimed: the tracker must give the seed's answers, not just be fast.
    tracker = fresh_tracker()
    got: list[VolRegime] = [tracker.update(r) for r in timed]
    expected = [classify_vol_regime(VolInputs(returns[end - window : end]), cfg) for end in ends]
    worst, same_labels = _agreement(got, expected)
    state_bytes = len(msgpack.packb(tracker.to_state()))

    print(f"vol regime, {args.candles} candles, windows {cfg.short_window_bars}/{cfg.long_window_bars} bars")
    print(f"  seed's recompute (classify_vol_regime): {recompute_us:9.2f} µs/candle")
    print(f"  VolTracker.update (O(1)):               {tracker_us:9.2f} µs/candle")
    print(f"  speedup:                                {recompute_us / tracker_us:9.1f}x")
    print(f"  tracker state (msgpack):                {state_bytes:9d} bytes")
    print(f"  agreement: max relative vol difference {worst:.1e}, labels equal {same_labels}/{args.candles}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
