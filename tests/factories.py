"""The one place tests build messages and market data: a builder per message type, and the clock they share.

Units: timestamps are integer ms since the epoch, UTC; a bar's ``ts`` is its open time. ``i`` is
a bar index: bar ``i`` of a series opens ``i`` bars of its timeframe after ``T0``. Prices are in
quote units, volumes in base units, volatilities bar-level standard deviations of log returns.

Every builder takes keyword parameters named like the fields of the message it builds and gives
each field a valid value when the test leaves it out. A test whose assertions depend on a value
passes that value: the defaults here are for what a test does not look at. Messages are built
with keyword arguments only, so they follow the contracts whatever their field order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

import numpy as np
import numpy.typing as npt

from services.ohlcv_ingest.demo import DemoMarket
from services.screener.core import SeriesScreen, decide
from shared.domain.config import StrategyConfig
from shared.domain.contracts import (
    Candle,
    GridBias,
    HmmRegimeEvent,
    PipelineStatus,
    ScoreEvent,
    ScreenerDecision,
    VolRegimeEvent,
)
from shared.domain.subjects import SeriesKey, timeframe_ms
from shared.domain.vocab import HMM_LABELS, HmmLabel, VolLabel

T0 = 1_700_000_040_000  # ms UTC, 2023-11-14T22:14:00Z: a multiple of one minute (not of 5m or 1h)
DAY0 = 1_704_067_200_000  # ms UTC, 2024-01-01T00:00:00Z: a multiple of every timeframe up to 1d
TF_MS = 60_000  # ms in one bar of the default timeframe, 1m
KEY = SeriesKey("kraken", "BTC/USD", "1m")  # the series every builder defaults to
PROBABILITIES = (0.1, 0.2, 0.7)  # (bearish, ranging, bullish) of the default HMM verdict


def ts(i: int, tf_ms: int = TF_MS, t0: int = T0) -> int:
    """Open time (ms) of bar ``i`` of a series whose bars are ``tf_ms`` ms long and whose bar 0 opens at ``t0``."""
    return t0 + i * tf_ms


def _series(key: SeriesKey, i: int, at: int | None) -> dict[str, Any]:
    """The fields every message about one series starts with: its key, and the open time (ms) of its bar ``i``."""
    at = T0 + i * timeframe_ms(key.timeframe) if at is None else at
    return {"exchange": key.exchange, "symbol": key.symbol, "timeframe": key.timeframe, "ts": at}


def recent_start(n_bars: int) -> int:
    """Open time (ms) of the first of ``n_bars`` 1m bars whose last closed a moment ago (wall clock)."""
    return (int(time.time() * 1000) // TF_MS - n_bars) * TF_MS


# --- candles -------------------------------------------------------------------------------------------------


def candle(
    i: int = 0,
    close: float = 100.0,
    *,
    key: SeriesKey = KEY,
    ts: int | None = None,
    open: float | None = None,
    high: float | None = None,
    low: float | None = None,
    volume: float = 10.0,
) -> Candle:
    """Bar ``i`` of ``key``, opening ``i`` bars of the key's timeframe after T0 unless ``ts`` (ms) is given.

    ``open`` defaults to ``close``; ``high`` and ``low`` to the larger and the smaller of open and
    close, so a bar given only its close is flat.
    """
    open_ = close if open is None else open
    return Candle(
        **_series(key, i, ts),
        open=open_,
        high=max(open_, close) if high is None else high,
        low=min(open_, close) if low is None else low,
        close=close,
        volume=volume,
    )


def candles_from_returns(
    key: SeriesKey, returns: Sequence[float] | npt.NDArray[np.floating[Any]], start_ts: int = T0, price: float = 100.0
) -> list[Candle]:
    """One candle per log return and one before them, a minute (TF_MS) apart from ``start_ts`` (ms).

    The first closes at ``price``, each next one at the previous close times exp(return); every
    bar opens at the previous close and its high and low lie 0.05% beyond the two. Volume 10.
    """
    out = []
    close = price
    at = start_ts
    for r in [0.0, *returns]:
        prev, close = close, close * float(np.exp(r))
        hi, lo = max(prev, close) * 1.0005, min(prev, close) * 0.9995
        out.append(candle(key=key, ts=at, open=prev, high=hi, low=lo, close=close, volume=10.0))
        at += TF_MS
    return out


def demo_candles(n: int, *, key: SeriesKey = KEY, seed: int = 1, start_ts: int = T0) -> list[Candle]:
    """The first ``n`` bars of ``key`` in the demo market of ``seed``, the first opening at ``start_ts`` (ms).

    Realistic prices with full-precision floats; ``start_ts`` must be a multiple of the key's timeframe.
    """
    return [step[0] for step in DemoMarket([key], seed=seed, start_ts=start_ts).bars(n)]


def regime_returns(kind: str, rng: np.random.Generator, n_calm: int = 40, n_tail: int = 4) -> np.ndarray:
    """Log returns whose last bars put the 32/8-bar config of ``tests.harness.small_config`` in ``kind``
    (crisis, low, normal): ``n_calm`` bars, then ``n_tail`` (crisis) or ``2 * n_tail`` (low) more.

    Alternating signs give each stretch an exact volatility; ``rng`` adds only a
    little texture, so the verdict does not depend on the seed.
    """

    def stretch(sigma: float, n: int) -> np.ndarray:
        signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
        return sigma * signs * (1.0 + 0.05 * rng.standard_normal(n))

    if kind == "crisis":
        return np.concatenate([stretch(0.001, n_calm), stretch(0.04, n_tail)])
    if kind == "low":
        return np.concatenate([stretch(0.02, n_calm), stretch(0.0005, n_tail * 2)])
    return stretch(0.002, n_calm + n_tail)


def three_regime_market(
    seed: int, n: int, *, drift: float = 0.0015, noise: float = 0.004
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded closes and volumes of ``n`` bars: range, bull, bear thirds.

    Log returns are normal with mean 0, then ``+drift``, then ``-drift`` per bar, and std ``noise``;
    closes start near 100; volumes are lognormal(0, 0.5).
    """
    rng = np.random.default_rng(seed)
    third = n // 3
    mu = np.concatenate([np.zeros(third), np.full(third, drift), np.full(n - 2 * third, -drift)])
    closes = 100.0 * np.exp(np.cumsum(rng.normal(mu, noise)))
    return closes, rng.lognormal(0.0, 0.5, n)


# --- regime events -------------------------------------------------------------------------------------------


def vol_event(
    i: int = 0,
    label: VolLabel = "normal",
    prev: VolLabel | None = None,
    *,
    key: SeriesKey = KEY,
    ts: int | None = None,
    close: float = 100.0,
    vol_short: float | None = None,
    vol_long: float = 0.01,
    ratio: float = 1.0,
    changed: bool | None = None,
    samples: int | None = None,
    sufficient: bool = True,
    event_type: type[VolRegimeEvent] = VolRegimeEvent,
    **fields: Any,
) -> VolRegimeEvent:
    """vol_regime's verdict after bar ``i`` of ``key`` (ts: that bar's open time in ms, unless given).

    ``prev`` is the label after the previous bar (None: the first verdict); ``changed`` defaults to
    whether the label differs from it. ``vol_short`` defaults to ``ratio * vol_long``; ``samples``
    (log returns seen) to ``1000 + i``. ``event_type`` builds a subclass, with its own ``fields``.
    """
    return event_type(
        **_series(key, i, ts),
        close=close,
        label=label,
        vol_short=ratio * vol_long if vol_short is None else vol_short,
        vol_long=vol_long,
        ratio=ratio,
        prev_label=prev,
        changed=(prev is not None and prev != label) if changed is None else changed,
        samples=1000 + i if samples is None else samples,
        sufficient=sufficient,
        **fields,
    )


def hmm_event(
    i: int = 0,
    regime: HmmLabel = "BULLISH",
    probabilities: tuple[float, float, float] = PROBABILITIES,
    *,
    key: SeriesKey = KEY,
    ts: int | None = None,
    confidence: float | None = None,
    bias_signal: float | None = None,
    observation_count: int | None = None,
    trained: bool = True,
    trained_at: int | EllipsisType | None = ...,
) -> HmmRegimeEvent:
    """hmm_regime's verdict after bar ``i`` of ``key`` (ts: that bar's open time in ms, unless given).

    ``probabilities`` are (bearish, ranging, bullish). ``confidence`` defaults to the top probability
    minus the second, ``bias_signal`` to p_bullish - p_bearish (gain 1, no confidence threshold),
    ``observation_count`` to ``i``, ``trained_at`` (ms) to T0 when ``trained`` and None when not.
    """
    top, second = sorted(probabilities, reverse=True)[:2]
    return HmmRegimeEvent(
        **_series(key, i, ts),
        regime=regime,
        probabilities=probabilities,
        confidence=top - second if confidence is None else confidence,
        bias_signal=probabilities[2] - probabilities[0] if bias_signal is None else bias_signal,
        observation_count=i if observation_count is None else observation_count,
        trained=trained,
        trained_at=(T0 if trained else None) if isinstance(trained_at, EllipsisType) else trained_at,
    )


def hmm_verdict(
    probs: Sequence[float] | npt.NDArray[np.floating[Any]],
    *,
    key: SeriesKey = KEY,
    ts: int,
    trained: bool = True,
    observation_count: int = 1,
) -> HmmRegimeEvent:
    """The verdict a detector whose filtered probabilities are ``probs`` publishes (gain 1, threshold 0.15).

    ``probs`` are normalised; the regime is the most probable state, the bias 0 under confidence
    0.15, the model trained an hour (3_600_000 ms) before ``ts``. Untrained: the neutral default.
    """
    p = np.asarray(probs, dtype=float)
    p = p / p.sum()
    top, second = sorted(p, reverse=True)[:2]
    confidence = float(top - second)
    bias = float(np.clip(p[2] - p[0], -1.0, 1.0)) if confidence >= 0.15 else 0.0
    if not trained:
        return hmm_event(
            regime="RANGING",
            probabilities=(0.0, 1.0, 0.0),
            key=key,
            ts=ts,
            confidence=0.0,
            bias_signal=0.0,
            observation_count=observation_count,
            trained=False,
        )
    return hmm_event(
        regime=HMM_LABELS[int(np.argmax(p))],
        probabilities=(float(p[0]), float(p[1]), 1.0 - float(p[0]) - float(p[1])),
        key=key,
        ts=ts,
        confidence=confidence,
        bias_signal=bias,
        observation_count=observation_count,
        trained_at=ts - 3_600_000,
    )


def score_event(
    component: str = "carry", score: float = 0.0, i: int = 0, *, key: SeriesKey = KEY, ts: int | None = None
) -> ScoreEvent:
    """A ``component`` score in [-1, 1] for ``key``, stamped at bar ``i``'s open time (ms) unless ``ts`` is given."""
    return ScoreEvent(component=component, **_series(key, i, ts), score=score)


def decision(
    i: int = 0, vol_regime: VolLabel = "normal", hmm_regime: HmmLabel | None = None, *, key: SeriesKey = KEY,
    ts: int | None = None, **fields: Any,
) -> ScreenerDecision:  # fmt: skip
    """The screener's decision on bar ``i`` of ``key`` (ts: that bar's open time in ms, unless given).

    Any other field of ScreenerDecision may be given by name; one left out takes the value below.
    Fractions of NAV are fractions (0.02 = 2%). With an ``hmm_regime`` the joined verdict defaults
    to a trained one with PROBABILITIES; without, to none.
    """
    values: dict[str, Any] = {
        "close": 100.0, "tier": "CORE", "vol_short": 0.01, "vol_long": 0.01, "vol_ratio": 1.0,
        "sizing_multiplier": 1.0, "base_per_trade_nav_pct": 0.02, "effective_per_trade_nav_pct": 0.02,
        "capped": False, "weights": {"trend": 0.4, "carry": 0.25, "expectancy": 0.2, "router": 0.15},
        "scores": {"trend": 0.1, "carry": 0.0, "expectancy": 0.0, "router": 0.0},
        "defaulted": ("carry", "expectancy", "router"), "hybrid_score": 0.04, "trend_score": 0.1,
        "hmm_bias": 0.0, "hmm_confidence": 0.0, "blend_factor": 0.5, "dynamic_idle_target": 0.39,
        "grid_bias": GridBias(mode="symmetric", entry_spacing_mult_a=1.0, entry_spacing_mult_b=1.0,
                              size_skew_override=None),
        "hmm_trained": hmm_regime is not None, "hmm_probabilities": PROBABILITIES if hmm_regime is not None else None,
    }  # fmt: skip
    values.update(fields)
    return ScreenerDecision(**_series(key, i, ts), vol_regime=vol_regime, hmm_regime=hmm_regime, **values)


def pipeline_status(
    samples: int = 500, *, key: SeriesKey = KEY, last_ts: int | None = None, now: int | None = None, **fields: Any
) -> PipelineStatus:
    """ingest's report on ``key`` holding ``samples`` candles, the newest opened at ``last_ts`` (ms; None: none).

    Reported at ``now`` (ms; the wall clock when None) by a replay source, with the freshness (s)
    that follows from ``last_ts``, coverage (%) of a 14-day window, and a backfill of ``samples``
    bars 15 minutes before; ``fields`` override any of these.
    """
    now = int(time.time() * 1000) if now is None else now
    bar_ms = timeframe_ms(key.timeframe)
    limit = max(180.0, 3 * bar_ms / 1000)
    freshness = None if last_ts is None else max(0.0, (now - last_ts - bar_ms) / 1000)
    values: dict[str, Any] = {
        "source": "replay",
        "interval_min": bar_ms // 60_000,
        "sync_interval_sec": 60.0,
        "samples": samples,
        "coverage_pct": 100.0 * samples / (14 * 86_400_000 // bar_ms),
        "last_ts": last_ts,
        "freshness_sec": freshness,
        "freshness_limit_sec": limit,
        "freshness_ok": freshness is not None and freshness <= limit,
        "gaps": 0,
        "backfill_last_at": now - 900_000,
        "backfill_last_rows": samples,
        "backfill_last_message": f"backfilled {samples} bars",
        "last_error": None,
        "reported_at": now,
    }
    values.update(fields)
    return PipelineStatus(exchange=key.exchange, symbol=key.symbol, timeframe=key.timeframe, **values)


# --- constructed regime histories ----------------------------------------------------------------------------

# Vol ratio a constructed bar gets for its label (thresholds of the small_config: 0.6 / 1.2 / 1.8).
RATIO = {"low": 0.45, "normal": 0.95, "high": 1.45, "crisis": 2.3}
VOL_LONG = 0.004  # long-window vol of every constructed bar; its short-window vol is RATIO x this
# The state that takes most of the rest of the mass, after the one a bar is in.
RUNNER_UP = {"BULLISH": "RANGING", "BEARISH": "RANGING", "RANGING": "BULLISH"}


@dataclass(frozen=True)
class Bar:
    """The regimes one constructed bar is in."""

    vol: VolLabel
    hmm: HmmLabel | None = None  # BEARISH / RANGING / BULLISH; None: no HMM verdict for the bar
    confidence: float = 0.6  # of the HMM state the bar heads to
    trained: bool = True


def stretch(
    n: int, vol: VolLabel, hmm: HmmLabel | None = None, confidence: float = 0.6, trained: bool = True
) -> list[Bar]:
    """``n`` bars alike."""
    return [Bar(vol, hmm, confidence, trained)] * n


def _target_probabilities(regime: HmmLabel, confidence: float) -> np.ndarray:
    third = 0.25 * (1.0 - confidence)
    top = (1.0 + confidence - third) / 2.0
    out = np.full(3, third)
    out[HMM_LABELS.index(regime)] = top
    out[HMM_LABELS.index(RUNNER_UP[regime])] = top - confidence
    return out


def regime_events(
    config: StrategyConfig, key: SeriesKey, bars: Sequence[Bar], start_ts: int, price: float = 100.0, seed: int = 0
) -> list[Any]:
    """Per bar (1m apart from ``start_ts``, ms), in publishing order: its vol verdict, its HMM verdict
    (if any) and the decision the real screener core makes of the two. Prices drift with the HMM
    regime; probabilities ease towards each bar's target, so the history looks like a detector's."""
    rng = np.random.default_rng(seed)
    screen = SeriesScreen()
    out: list[Any] = []
    prev: VolLabel | None = None
    close = price
    probs = np.array([0.2, 0.6, 0.2])
    for i, bar in enumerate(bars):
        at = start_ts + i * TF_MS
        ratio = RATIO[bar.vol] * (1.0 + 0.04 * float(rng.standard_normal()))
        sigma = ratio * VOL_LONG
        drift = {"BULLISH": 0.35, "BEARISH": -0.35}.get(bar.hmm or "", 0.0) * sigma
        close *= math.exp(drift + sigma * float(rng.standard_normal()))
        vol = vol_event(
            label=bar.vol, prev=prev, key=key, ts=at, close=close, ratio=ratio, vol_long=VOL_LONG, samples=64 + i
        )
        prev = bar.vol
        hmm = None
        if bar.hmm is not None:
            if bar.trained:
                probs = 0.7 * probs + 0.3 * _target_probabilities(bar.hmm, bar.confidence)
            hmm = hmm_verdict(probs, key=key, ts=at, trained=bar.trained, observation_count=i + 1)
        made = decide(screen, vol, hmm, config)
        screen.last_decided_ts = at
        out.extend(e for e in (vol, hmm, made) if e is not None)
    return out
