"""The demo market: endless, deterministic, regime-switching candles, and the clock that paces them.

Pure code (no I/O, no sleeping). ``DemoMarket`` produces closed 1-bar-at-a-time
OHLCV candles for any number of series; ``DemoClock`` is the arithmetic that
tells the ingest loop how many of them are due at a given wall-clock time.

Why the market looks the way it does: the stack exists to label volatility
regimes (short/long EWMA vol ratio, seed 000) and trend regimes (HMM on EMA
spread / MACD / RSI / volume, seed 003). A plain random walk would sit in
"normal" forever, so each series runs two hidden Markov chains:

* a volatility chain over ``calm`` / ``normal`` / ``stormy`` / ``crash``,
  each state with its own bar-level sigma and a dwell time of a few hundred
  bars (a crash lasts a few dozen);
* a drift chain over ``bear`` / ``range`` / ``bull`` with dwells of several
  hundred bars, tilted back toward the starting price so prices stay
  plausible however long the demo runs.

For the first :data:`OPENING_BARS` bars the volatility chain follows one fixed
cycle -- ``normal -> crash -> stormy -> calm -> normal`` -- with dwell times
drawn at random. The series enter the cycle at phases spread evenly around it
(golden-ratio spacing by position, shifted by the seed), so their crashes and
calms take turns rather than coincide. That cycle is what makes every label show up early: a crash after
a long normal stretch is a ``crisis`` (short vol jumps, long vol lags), the
stormy aftermath keeps it ``high``, a long calm after the storm is ``low``, and
the return to normal is ``normal`` again. With 8 series at staggered phases all
four labels appear within the ~1,500 history bars plus a couple of hundred live
bars, and the series disagree at any given bar. After the opening the chain
samples its transition matrix, so the demo does not repeat itself.

Every random draw comes from a per-series generator seeded by a stable hash of
``(seed, series id)`` (not Python's salted ``hash``), so the same seed and
series list give the same candles on every machine and every run. A series'
candles depend on its id and its position in the list (which sets its phase),
not on the other series' ids.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from shared.domain.contracts import Candle
from shared.domain.subjects import SeriesKey, timeframe_ms

VOL_STATES: tuple[str, ...] = ("calm", "normal", "stormy", "crash")
DRIFT_STATES: tuple[str, ...] = ("bear", "range", "bull")

# Bar-level sigma of log returns per volatility state, for a BTC-like asset on
# 1m bars; other symbols scale all four together (see _SIGMA_SCALE), so the
# ratios -- which is all the vol regime sees -- are the same for every symbol.
# crash/normal = 8.5 is what lets a short burst push short/long above 1.8: the
# ratio of EWMA vols cannot get much past sqrt(360/84) ~ 2.07 however hard the shock.
_SIGMA: Mapping[str, float] = MappingProxyType({"calm": 0.0006, "normal": 0.0013, "stormy": 0.004, "crash": 0.011})
# Dwell time ranges in bars, drawn uniformly, inclusive.
_DWELL: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "calm": (300, 480),
        "normal": (260, 420),
        "stormy": (130, 220),
        "crash": (25, 45),
    }
)
_OPENING_CYCLE: Mapping[str, str] = MappingProxyType(
    {"normal": "crash", "crash": "stormy", "stormy": "calm", "calm": "normal"}
)
# Transition probabilities after the opening (rows sum to 1, no self-loops:
# the dwell time already says how long a state lasts).
_VOL_TRANSITIONS: Mapping[str, tuple[tuple[str, float], ...]] = MappingProxyType(
    {
        "calm": (("normal", 0.8), ("stormy", 0.2)),
        "normal": (("crash", 0.4), ("stormy", 0.35), ("calm", 0.25)),
        "crash": (("stormy", 1.0),),
        "stormy": (("calm", 0.6), ("normal", 0.4)),
    }
)
# A crash is a sell-off, not just noise: drift per bar as a fraction of crash sigma.
_CRASH_DRIFT = -0.12
# Trend drift per bar as a fraction of the symbol's normal sigma: over a 400-bar
# dwell that is ~60 sigma of move against ~20 sigma of noise, a trend an EMA sees.
_TREND_DRIFT = 0.15
_DRIFT_DWELL: tuple[int, int] = (240, 600)
_TREND_SIGN: Mapping[str, float] = MappingProxyType({"bear": -1.0, "range": 0.0, "bull": 1.0})
# How hard the drift chain pulls back toward the start price: probability of
# leaving "range" upward is 1 / (1 + exp(_TILT * log(price / start))).
_TILT = 4.0
# Chance that a trend ends in a reversal rather than a range.
_REVERSAL = 0.4

OPENING_BARS = 2400
"""Bars during which the volatility chain follows the fixed opening cycle."""

_PRICE: Mapping[str, float] = MappingProxyType(
    {
        "BTC": 60_000.0,
        "ETH": 3_000.0,
        "SOL": 150.0,
        "XRP": 0.6,
        "ADA": 0.45,
        "DOGE": 0.15,
        "PEPE": 0.000012,
        "LINK": 15.0,
        "BNB": 550.0,
        "AVAX": 35.0,
        "DOT": 7.0,
        "LTC": 80.0,
    }
)
_SIGMA_SCALE: Mapping[str, float] = MappingProxyType(
    {
        "BTC": 1.0,
        "ETH": 1.25,
        "SOL": 1.6,
        "XRP": 1.5,
        "ADA": 1.6,
        "DOGE": 1.9,
        "PEPE": 2.4,
        "LINK": 1.6,
    }
)
_SIG_DIGITS = 8


def _stable_u64(*parts: str) -> int:
    """A 64-bit integer from ``parts`` that is the same on every run (unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _unit(*parts: str) -> float:
    """A stable pseudo-random number in [0, 1) from ``parts``."""
    return _stable_u64(*parts) / 2.0**64


def _round_sig(x: float, digits: int = _SIG_DIGITS) -> float:
    """``x`` to ``digits`` significant digits; monotone, so OHLC ordering survives it."""
    return round(x, digits - 1 - math.floor(math.log10(x)))


def start_price(symbol: str) -> float:
    """Plausible starting price of ``symbol`` in quote units: known bases from a table, others hashed."""
    base = symbol.split("/")[0].split(":")[0].upper()
    if base in _PRICE:
        return _PRICE[base]
    return _round_sig(10.0 ** (-2.0 + 5.0 * _unit("price", base)))  # 0.01 .. 1000


def sigma_scale(symbol: str) -> float:
    """How much more volatile than BTC ``symbol`` is (a multiplier on every state's sigma)."""
    base = symbol.split("/")[0].split(":")[0].upper()
    if base in _SIGMA_SCALE:
        return _SIGMA_SCALE[base]
    return 1.3 + 1.0 * _unit("sigma", base)


_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_CYCLE_ORDER: tuple[str, ...] = ("normal", "crash", "stormy", "calm")


def _opening_position(phase: float) -> tuple[str, int]:
    """Volatility state and bars left in it at ``phase`` (in [0, 1)) of a cycle of mean dwell times."""
    means = [(lo + hi) / 2.0 for lo, hi in (_DWELL[s] for s in _CYCLE_ORDER)]
    at = phase * sum(means)
    for state, mean in zip(_CYCLE_ORDER, means, strict=True):
        if at < mean:
            return state, max(1, round(mean - at))
        at -= mean
    return _CYCLE_ORDER[-1], 1  # phase rounding at the very end of the cycle


@dataclass(frozen=True, slots=True)
class DemoTruth:
    """The hidden state behind a series' latest bar: what a perfect regime detector would say."""

    vol_state: str  # one of VOL_STATES
    drift_state: str  # one of DRIFT_STATES
    sigma: float  # bar-level sigma of log returns used for the latest bar
    drift: float  # bar-level mean log return used for the latest bar
    bars: int  # bars generated so far for this series


class _Series:
    """One series' generator state. Mutable, owned by exactly one DemoMarket."""

    def __init__(self, key: SeriesKey, seed: int, start_ts: int, phase: float) -> None:
        self.key = key
        self.tf_ms = timeframe_ms(key.timeframe)
        self.rng = np.random.default_rng(_stable_u64("demo", str(seed), key.id))
        self.anchor = start_price(key.symbol)
        # Longer bars move more; capped so 1h+ demos do not produce absurd crashes.
        tf_minutes = self.tf_ms / 60_000
        self.scale = sigma_scale(key.symbol) * math.sqrt(min(tf_minutes, 100.0))
        # Base-asset volume of a normal bar: a hashed quote notional per minute, times the bar length.
        notional = 10.0 ** (5.3 + 1.2 * _unit("volume", key.symbol)) * tf_minutes
        self.base_volume = notional / self.anchor
        self.close = self.anchor
        self.ts = start_ts
        self.bars = 0
        self.vol_state, self.vol_left = _opening_position(phase)
        self.drift_state = str(self.rng.choice(list(DRIFT_STATES)))
        self.drift_left = int(self.rng.integers(1, self._drift_dwell() + 1))
        self.sigma = 0.0
        self.drift = 0.0

    def _dwell(self, state: str) -> int:
        lo, hi = _DWELL[state]
        return int(self.rng.integers(lo, hi + 1))

    def _drift_dwell(self) -> int:
        lo, hi = _DRIFT_DWELL
        return int(self.rng.integers(lo, hi + 1))

    def _next_vol_state(self) -> str:
        if self.bars < OPENING_BARS:
            return _OPENING_CYCLE[self.vol_state]
        names, probabilities = zip(*_VOL_TRANSITIONS[self.vol_state], strict=True)
        return str(self.rng.choice(names, p=probabilities))

    def _next_drift_state(self) -> str:
        # Pull toward the start price so an endless demo never wanders off to 0 or infinity.
        p_up = 1.0 / (1.0 + math.exp(_TILT * math.log(self.close / self.anchor)))
        u = float(self.rng.random())
        if self.drift_state == "range":
            return "bull" if u < p_up else "bear"
        if u >= _REVERSAL:
            return "range"
        return "bear" if self.drift_state == "bull" else "bull"

    def step(self) -> Candle:
        if self.vol_left <= 0:
            self.vol_state = self._next_vol_state()
            self.vol_left = self._dwell(self.vol_state)
        if self.drift_left <= 0:
            self.drift_state = self._next_drift_state()
            self.drift_left = self._drift_dwell()
        self.vol_left -= 1
        self.drift_left -= 1

        sigma = _SIGMA[self.vol_state] * self.scale
        trend = _TREND_SIGN[self.drift_state]
        drift = trend * _TREND_DRIFT * _SIGMA["normal"] * self.scale
        if self.vol_state == "crash":
            drift += _CRASH_DRIFT * sigma
        z_ret, z_high, z_low, z_vol = self.rng.standard_normal(4).tolist()  # Python floats: numpy scalars are slow here

        open_ = self.close
        close = _round_sig(open_ * math.exp(drift + sigma * z_ret))
        # Wicks beyond the body, proportional to the bar's sigma.
        high = _round_sig(max(open_, close) * math.exp(0.6 * sigma * abs(z_high)))
        low = _round_sig(min(open_, close) * math.exp(-0.6 * sigma * abs(z_low)))
        # Volume rises with the volatility state and with the size of the bar's move.
        vol_mult = (sigma / (_SIGMA["normal"] * self.scale)) ** 0.8
        volume = self.base_volume * vol_mult * (0.7 + 0.3 * abs(z_ret)) * math.exp(0.35 * z_vol - 0.06)
        candle = Candle(
            exchange=self.key.exchange,
            symbol=self.key.symbol,
            timeframe=self.key.timeframe,
            ts=self.ts,
            open=open_,
            high=high,
            low=low,
            close=close,
            volume=_round_sig(volume),
        )
        self.close = close
        self.ts += self.tf_ms
        self.bars += 1
        self.sigma = sigma
        self.drift = drift
        return candle

    def truth(self) -> DemoTruth:
        return DemoTruth(self.vol_state, self.drift_state, self.sigma, self.drift, self.bars)


class DemoMarket:
    """Endless deterministic candles for ``series``, all starting at ``start_ts``.

    ``start_ts`` is the open time (ms UTC) of the first bar and must be aligned
    to the series' timeframe. All series share one timeframe, so one call to
    :meth:`next_bars` is one bar of time for every series; run one market per
    timeframe if you need several. The candles of a series depend only on
    ``(seed, series id, its position in series, start_ts)``.
    """

    def __init__(self, series: Sequence[SeriesKey], seed: int, start_ts: int) -> None:
        if not series:
            raise ValueError("DemoMarket needs at least one series")
        if len(set(series)) != len(series):
            raise ValueError("DemoMarket series must be distinct")
        timeframes = {key.timeframe for key in series}
        if len(timeframes) != 1:
            raise ValueError(f"DemoMarket series must share one timeframe, got {sorted(timeframes)}")
        tf_ms = timeframe_ms(next(iter(timeframes)))
        if start_ts < 0 or start_ts % tf_ms:
            raise ValueError(f"start_ts {start_ts} is not aligned to {tf_ms} ms")
        # Golden-ratio spacing spreads any number of series evenly over the opening
        # cycle, so their crashes, storms and calms take turns instead of coinciding;
        # the seed shifts the whole pattern and a little jitter keeps it irregular.
        offset = _unit("phase", str(seed))
        self._series = [
            _Series(key, seed, start_ts, (offset + i * _GOLDEN + 0.04 * _unit("jitter", str(seed), key.id)) % 1.0)
            for i, key in enumerate(series)
        ]
        self._by_key = {s.key: s for s in self._series}
        self.seed = seed
        self.start_ts = start_ts
        self.tf_ms = tf_ms

    @property
    def series(self) -> list[SeriesKey]:
        return [s.key for s in self._series]

    @property
    def next_ts(self) -> int:
        """Open time (ms UTC) of the bar the next :meth:`next_bars` call returns."""
        return self._series[0].ts

    @property
    def bars_generated(self) -> int:
        """Bars generated so far per series."""
        return self._series[0].bars

    def next_bars(self) -> list[Candle]:
        """The next closed bar of every series, in the order the series were given."""
        return [s.step() for s in self._series]

    def bars(self, n: int) -> Iterator[list[Candle]]:
        """The next ``n`` steps of :meth:`next_bars`, lazily."""
        for _ in range(n):
            yield self.next_bars()

    def advance_to(self, ts: int) -> None:
        """Generate and drop bars until the next bar opens at ``ts`` (ms UTC).

        A restarted ingest uses this to resume a demo at its cursor: the market is
        deterministic, so the bars it republishes afterwards are the same ones,
        with the same idempotency keys.
        """
        if ts < self.next_ts or (ts - self.next_ts) % self.tf_ms:
            raise ValueError(f"cannot advance from {self.next_ts} to {ts}")
        for _ in range((ts - self.next_ts) // self.tf_ms):
            self.next_bars()

    def truth(self, key: SeriesKey) -> DemoTruth:
        """The hidden regime state behind ``key``'s latest bar (for tests and demo dashboards)."""
        return self._by_key[key].truth()


@dataclass(frozen=True, slots=True)
class DemoClock:
    """Pacing of the demo: a burst of history, then accelerated play that never passes the wall clock.

    Timeline (bar ``i`` opens at ``start_ts + i * tf_ms`` and is closed, hence
    publishable, once the wall clock reaches ``start_ts + (i + 1) * tf_ms``)::

        start_ts            history end              wall clock at start
        |-- history_bars --|------- lead bars ------|----> real time
        published at once    played at bars_per_sec   then one bar per tf_ms

    The lead is what the accelerated play consumes: with one hour of lead at 10
    bars/s on 1m bars the dashboard moves visibly for an hour before the demo
    settles to real time. No bar is ever due before its close time, so nothing
    the demo publishes is from the future.

    Units: ``*_ts`` and ``*_ms`` are ms since the epoch, UTC; ``tf_ms`` is ms
    per bar; ``bars_per_sec`` is bars per second of real (elapsed) time;
    ``elapsed_s`` is seconds since the clock started; counts are bars.
    """

    start_ts: int  # open time of bar 0, ms UTC, aligned to tf_ms
    tf_ms: int  # bar length, ms
    bars_per_sec: float  # accelerated rate, bars per real second
    history_bars: int  # bars published at once at start
    started_ms: int  # wall clock when the demo started, ms UTC

    def __post_init__(self) -> None:
        if self.tf_ms <= 0:
            raise ValueError(f"tf_ms must be > 0, got {self.tf_ms}")
        if not (math.isfinite(self.bars_per_sec) and self.bars_per_sec > 0):
            raise ValueError(f"bars_per_sec must be a positive number, got {self.bars_per_sec}")
        if self.history_bars < 0:
            raise ValueError(f"history_bars must be >= 0, got {self.history_bars}")
        if self.start_ts < 0 or self.start_ts % self.tf_ms:
            raise ValueError(f"start_ts {self.start_ts} is not aligned to {self.tf_ms} ms")
        if self.history_end_ts > self.started_ms:
            raise ValueError("the history would end after the wall clock: start_ts is too late")

    @classmethod
    def plan(
        cls, now_ms: int, tf_ms: int, bars_per_sec: float, history_bars: int, lead_seconds: float = 3600.0
    ) -> DemoClock:
        """The clock for a demo starting at wall-clock ``now_ms`` with ``lead_seconds`` of accelerated play.

        ``start_ts`` is placed ``history_bars + bars_per_sec * lead_seconds``
        bars before the last closed bar boundary, so the history ends in the past
        and the accelerated part has that many bars to play before it meets the
        wall clock (a little more, since the wall clock moves meanwhile).
        """
        lead_bars = max(0, round(bars_per_sec * lead_seconds))
        boundary = (now_ms // tf_ms) * tf_ms
        start_ts = boundary - (history_bars + lead_bars) * tf_ms
        if start_ts < 0:
            raise ValueError("history plus lead reach before the epoch")
        return cls(start_ts, tf_ms, bars_per_sec, history_bars, now_ms)

    @property
    def history_end_ts(self) -> int:
        """Open time of the first bar after the history (ms UTC)."""
        return self.start_ts + self.history_bars * self.tf_ms

    @property
    def lead_bars(self) -> int:
        """Bars already closed at start beyond the history: the accelerated part's head start."""
        return self.closed_bars(self.started_ms) - self.history_bars

    @property
    def catch_up_s(self) -> float:
        """Seconds after start when the accelerated play meets the wall clock (inf if it never does).

        It never does when ``bars_per_sec`` is not faster than real time (``1000 / tf_ms``).
        """
        gain = self.bars_per_sec - 1000.0 / self.tf_ms  # bars per second the play gains on the wall clock
        if gain <= 0:
            return math.inf
        behind = (self.started_ms - self.start_ts) / self.tf_ms - self.history_bars
        return max(0.0, behind / gain)

    def bar_ts(self, index: int) -> int:
        """Open time (ms UTC) of bar ``index`` (0-based)."""
        return self.start_ts + index * self.tf_ms

    def closed_bars(self, now_ms: int) -> int:
        """Bars whose close time is <= ``now_ms``: the most the demo may ever have published."""
        return max(0, (now_ms - self.start_ts) // self.tf_ms)

    def accelerated_bars(self, elapsed_s: float) -> int:
        """Bars the accelerated schedule allows ``elapsed_s`` seconds after start (history included)."""
        # The epsilon absorbs float error so that exactly k / bars_per_sec seconds yields k bars.
        return self.history_bars + math.floor(max(0.0, elapsed_s) * self.bars_per_sec + 1e-9)

    def total_due(self, now_ms: int, elapsed_s: float) -> int:
        """Bars that should have been published in all by wall clock ``now_ms``, ``elapsed_s`` after start.

        The smaller of the accelerated schedule and the closed bars: before the
        play catches up it runs at ``bars_per_sec``; afterwards one bar per
        ``tf_ms`` of wall time, each at its close.
        """
        return min(self.accelerated_bars(elapsed_s), self.closed_bars(now_ms))

    def due_bars(self, now_ms: int, elapsed_s: float, published: int) -> int:
        """How many bars to publish now, given ``published`` already sent (never negative)."""
        return max(0, self.total_due(now_ms, elapsed_s) - published)

    def caught_up(self, now_ms: int, elapsed_s: float) -> bool:
        """Whether the demo is in real time: the wall clock, not the accelerated rate, is the limit."""
        return self.accelerated_bars(elapsed_s) >= self.closed_bars(now_ms)

    def seconds_until_next(self, now_ms: int, elapsed_s: float, published: int) -> float:
        """Seconds to wait before bar number ``published`` (0-based) is due; 0 if it is due now.

        Assumes wall clock and elapsed time advance together, which is what a
        service loop sleeping on this value observes.
        """
        wanted = published + 1
        wait_accel = (wanted - self.history_bars) / self.bars_per_sec - elapsed_s
        wait_wall = (self.start_ts + wanted * self.tf_ms - now_ms) / 1000.0
        return max(0.0, wait_accel, wait_wall)


__all__ = [
    "DRIFT_STATES",
    "OPENING_BARS",
    "VOL_STATES",
    "DemoClock",
    "DemoMarket",
    "DemoTruth",
    "sigma_scale",
    "start_price",
]
