"""Per-candle cost of the HMM detector against the seed's literal inference, plus training time and snapshot size.

Run: ``.venv/bin/python bench/bench_hmm.py``. Figures are the best of several
repeats (least disturbed by other load on the machine), in µs per candle.

- forward filter: ``RegimeDetector.update`` in mode 0 (feature step + one
  O(K²) forward step + verdict), plain-Python fast path and numpy path;
- window mode: ``update`` with HMM_INFERENCE_WINDOW=50 (forward pass over the
  last 50 cached emissions per candle);
- seed literal: at every tick hmmlearn ``predict_proba`` over the last 50
  standardised observations (features already computed: the cheapest reading
  of the seed), and the full literal tick (features recomputed from the last
  HMM_RECENT_CANDLES=100 candles, standardised, ``predict_proba``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.domain.hmm import (
    FeatureExtractor,
    HmmConfig,
    RegimeDetector,
    TrainedModel,
    as_hmmlearn,
    fit_model,
    serialize_for_snapshot,
    usable_rows,
)

TRAIN = 2000  # candles
LIVE = 3000  # candles timed per repeat
WINDOW = 50  # observations, the seed's HMM_INFERENCE_WINDOW
RECENT = 100  # candles, the seed's HMM_RECENT_CANDLES
REPEATS = 5


def market(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded regime-switching market: 300-bar segments of drift −, 0, + (fraction per bar) with noise."""
    rng = np.random.default_rng(seed)
    drifts = rng.choice([-0.0015, 0.0, 0.0015], size=n // 300 + 1)
    mu = np.repeat(drifts, 300)[:n]
    closes = 100.0 * np.exp(np.cumsum(rng.normal(mu, 0.004)))
    return closes, rng.lognormal(0.0, 0.5, n)


def best_of(fn: Callable[[], int], repeats: int = REPEATS) -> float:
    """Minimum over repeats of seconds per item; ``fn`` returns how many items it processed."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def per_candle_update(
    model: TrainedModel, closes: np.ndarray, volumes: np.ndarray, window: int = 0, fast_path: bool = True
) -> float:
    """Best seconds per ``update`` over the live candles, each repeat on a freshly installed detector."""
    live = list(zip(closes[TRAIN:].tolist(), volumes[TRAIN:].tolist(), strict=True))
    best = float("inf")
    for _ in range(REPEATS):
        det = RegimeDetector({"HMM_INFERENCE_WINDOW": window}, fast_path=fast_path)
        assert det.install(model, closes[:TRAIN], volumes[:TRAIN])
        update = det.update
        start = time.perf_counter()
        for c, v in live:
            update(c, v)
        best = min(best, (time.perf_counter() - start) / len(live))
    return best


def main() -> None:
    closes, volumes = market(7, TRAIN + LIVE)
    cfg = {"HMM_TRAINING_CANDLES": TRAIN}

    t_fit = best_of(lambda: (fit_model(closes[:TRAIN], volumes[:TRAIN], cfg, now_ms=0), 1)[1], repeats=3)
    model = fit_model(closes[:TRAIN], volumes[:TRAIN], cfg, now_ms=0)

    fast = per_candle_update(model, closes, volumes)
    numpy_path = per_candle_update(model, closes, volumes, fast_path=False)
    window = per_candle_update(model, closes, volumes, window=WINDOW)

    hmm = as_hmmlearn(model)
    z = model.standardise(FeatureExtractor().batch(closes, volumes))
    ticks = range(usable_rows(TRAIN), usable_rows(TRAIN) + 1000)

    def literal_proba() -> int:
        for t in ticks:
            hmm.predict_proba(z[t + 1 - WINDOW : t + 1])
        return len(ticks)

    def literal_full() -> int:
        for t in range(TRAIN, TRAIN + 1000):
            x = FeatureExtractor().batch(closes[t + 1 - RECENT : t + 1], volumes[t + 1 - RECENT : t + 1])
            hmm.predict_proba(model.standardise(x[-WINDOW:]))
        return 1000

    lit = best_of(literal_proba, repeats=3)
    lit_full = best_of(literal_full, repeats=3)

    det0 = RegimeDetector(cfg)
    det0.install(model, closes, volumes)
    detw = RegimeDetector({**cfg, "HMM_INFERENCE_WINDOW": WINDOW})
    detw.install(model, closes, volumes)
    size0 = len(msgpack.packb(serialize_for_snapshot(det0)))
    sizew = len(msgpack.packb(serialize_for_snapshot(detw)))

    us = 1e6
    print(
        f"model: {model.n_states} states, {model.covariance_type}, {model.n_samples} rows, "
        f"log-likelihood {model.log_likelihood:.1f}"
    )
    print(f"training, {TRAIN} candles (fit_model, n_iter={HmmConfig().n_iter}): {t_fit * 1e3:.1f} ms")
    print("per candle, best of repeats:")
    rows = [
        ("forward filter, mode 0, python fast path", fast),
        ("forward filter, mode 0, numpy path", numpy_path),
        (f"window mode N={WINDOW} (seed semantics, exact)", window),
        (f"seed literal: predict_proba over last {WINDOW}", lit),
        (f"seed literal: features({RECENT}) + predict_proba", lit_full),
    ]
    for label, seconds in rows:
        print(f"  {label:<48}: {seconds * us:8.2f} us")
    print(f"speed-up vs predict_proba({WINDOW}): fast path {lit / fast:5.1f}x, numpy path {lit / numpy_path:5.1f}x")
    print(f"speed-up vs full literal tick: fast path {lit_full / fast:5.1f}x")
    print(f"snapshot (msgpack): mode 0 {size0} bytes, window {WINDOW} {sizew} bytes")


if __name__ == "__main__":
    main()
