"""What ``regimes evaluate`` costs on 100,000 candles of one series, and where the time goes.

Run: ``.venv/bin/python bench/bench_evaluate.py [candles]`` (default 100,000 1m bars of the demo
market, the shipped config). Prints wall and CPU seconds for: the replay (``regimes.backtest``,
as the command runs it), of which HMM trainings (timed around each fit), the evaluation
(``regimes.evaluation``) and the chart + pages (``regimes.report``). Reading a candle file is
not included (about 1 s per 100k rows of freqtrade JSON).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import regimes.backtest as bt
from regimes import report
from regimes.evaluation import evaluate_series, frames
from services.ohlcv_ingest.demo import DemoMarket
from shared.domain.config import DEFAULT_CONFIG_PATH, load_strategy_config
from shared.domain.subjects import SeriesKey

T0 = 1_700_000_040_000


class Clock:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    key = SeriesKey("file", "BTC/USD", "1m")
    candles = [step[0] for step in DemoMarket([key], seed=7, start_ts=T0).bars(n)]
    config = load_strategy_config(DEFAULT_CONFIG_PATH, env={})

    fits: list[tuple[float, float]] = []  # (wall s, CPU s) per training
    original = bt._train

    def timed(*args: Any) -> Any:
        clock = Clock()
        try:
            return original(*args)
        finally:
            fits.append(clock.lap())

    bt._train = timed  # type: ignore[assignment]
    clock = Clock()
    events = report.replay(candles, config, now_ms=T0 + 10**12)
    replay_wall, replay_cpu = clock.lap()
    bt._train = original

    clock = Clock()
    [frame] = frames(events).values()
    evaluate_series(frame)
    eval_wall, eval_cpu = clock.lap()

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        report.write_series(events, Path(out))
    draw_wall, draw_cpu = clock.lap()

    train, train_cpu = sum(f[0] for f in fits), sum(f[1] for f in fits)
    print(f"{n:,} candles of {key.id}, {len(events):,} events, HMM_TRAINING_CANDLES {config.hmm.training_candles}, "
          f"retrain every {config.hmm.retrain_interval_sec:.0f} s of candle time")
    print(f"replay      {replay_wall:6.1f} s wall {replay_cpu:6.1f} s CPU  ({n / replay_wall:,.0f} candles/s)")
    each = 1000 * train_cpu / max(1, len(fits))
    print(f"  trainings {train:6.1f} s wall {train_cpu:6.1f} s CPU  ({len(fits)} fits, {each:.0f} ms CPU each)")
    rest, rest_cpu = replay_wall - train, replay_cpu - train_cpu
    print(f"  the rest  {rest:6.1f} s wall {rest_cpu:6.1f} s CPU  ({1e6 * rest_cpu / n:.0f} µs CPU per candle: "
          "vol + HMM filter + screener)")
    print(f"evaluation  {eval_wall:6.1f} s wall {eval_cpu:6.1f} s CPU")
    print(f"chart+pages {draw_wall:6.1f} s wall {draw_cpu:6.1f} s CPU  (the report's whole evaluation included)")


if __name__ == "__main__":
    main()
