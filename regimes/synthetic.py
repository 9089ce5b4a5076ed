"""A regime-switching market with a known truth: what the label tests and ``bench/bench_signal.py`` measure against.

A 3-state chain over BEARISH / RANGING / BULLISH; each state has its own drift
and volatility of log returns (per bar), and a dwell time drawn uniformly from
``dwell_bars`` before the chain jumps to one of the two other states (equally
likely). Volume follows the state too (trends trade more than ranges), with
log-normal noise. Everything comes from one seeded ``numpy`` generator: the
same arguments give the same market on every machine.

``truth`` is the state behind every bar; ``sigma`` its volatility, from which
:func:`true_vol_labels` derives the volatility label a noise-free classifier
would give (the vol regime is relative, short against long, so the truth of it
is the label of the *expected* short/long ratio, not of the state itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.domain.sizing import Regime
from shared.domain.vocab import VolLabel
from shared.domain.vol import VolRegimeConfig, label_for_ratio

# Per state: (drift, sigma) of log returns per bar, and the volume multiplier.
STATE_DRIFT: dict[Regime, float] = {Regime.BEARISH: -0.001, Regime.RANGING: 0.0, Regime.BULLISH: 0.0008}
STATE_SIGMA: dict[Regime, float] = {Regime.BEARISH: 0.0035, Regime.RANGING: 0.0015, Regime.BULLISH: 0.0025}
STATE_VOLUME: dict[Regime, float] = {Regime.BEARISH: 1.5, Regime.RANGING: 0.8, Regime.BULLISH: 1.2}


@dataclass(frozen=True)
class SyntheticMarket:
    """``n`` bars: closes (price), volumes (base units), the state behind each bar and its sigma (fraction)."""

    closes: np.ndarray
    volumes: np.ndarray
    truth: np.ndarray  # Regime value per bar
    sigma: np.ndarray  # per-bar volatility of log returns


def regime_switching_market(
    n_bars: int, seed: int, dwell_bars: tuple[int, int] = (150, 450), start_price: float = 100.0
) -> SyntheticMarket:
    """A seeded market of ``n_bars`` bars whose hidden state is known (see the module docstring)."""
    rng = np.random.default_rng(seed)
    truth = np.empty(n_bars, dtype=np.int64)
    state = Regime(int(rng.integers(3)))
    i = 0
    while i < n_bars:
        dwell = int(rng.integers(dwell_bars[0], dwell_bars[1] + 1))
        truth[i : i + dwell] = int(state)
        i += dwell
        others = [r for r in Regime if r != state]
        state = others[int(rng.integers(2))]
    drift = np.array([STATE_DRIFT[Regime(int(s))] for s in truth])
    sigma = np.array([STATE_SIGMA[Regime(int(s))] for s in truth])
    returns = drift + sigma * rng.standard_normal(n_bars)
    closes = start_price * np.exp(np.cumsum(returns))
    volume_level = np.array([STATE_VOLUME[Regime(int(s))] for s in truth])
    volumes = 1000.0 * volume_level * rng.lognormal(0.0, 0.3, n_bars)
    return SyntheticMarket(closes, volumes, truth, sigma)


def true_vol_labels(sigma: np.ndarray, cfg: VolRegimeConfig) -> list[VolLabel | None]:
    """Per bar, the label of the noise-free ratio: EWMA of sigma² over each window, short against long.

    The same windows, halflives and thresholds as the classifier, applied to
    the expected squared returns instead of the realised ones; None until the
    long window is full (where the classifier says "normal" for want of data).
    """
    var = np.asarray(sigma, dtype=np.float64) ** 2
    out: list[VolLabel | None] = []
    lam_s = 0.5 ** (1.0 / cfg.short_halflife_bars)
    lam_l = 0.5 ** (1.0 / cfg.long_halflife_bars)
    w_s = lam_s ** np.arange(cfg.short_window_bars - 1, -1, -1, dtype=np.float64)
    w_l = lam_l ** np.arange(cfg.long_window_bars - 1, -1, -1, dtype=np.float64)
    for t in range(len(var)):
        # Bar t's return is the log return into bar t, so its window ends at t (the first bar has no return).
        if t < cfg.long_window_bars:
            out.append(None)
            continue
        short = float(w_s @ var[t + 1 - cfg.short_window_bars : t + 1]) / float(w_s.sum())
        long = float(w_l @ var[t + 1 - cfg.long_window_bars : t + 1]) / float(w_l.sum())
        out.append(label_for_ratio(math.sqrt(short / long), cfg))
    return out
