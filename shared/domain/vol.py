"""Volatility regime math (seed 000 §2): EWMA realised vol, short/long ratio, low/normal/high/crisis.

Pure functions and one incremental tracker; no I/O. Units throughout:

* returns are log returns of closes, one per bar;
* volatilities are bar-level standard deviations of those returns (a fraction, not %,
  not annualised) — the seed allows either as long as thresholds match, and the
  thresholds only ever see the dimensionless ratio ``vol_short / vol_long``;
* windows and halflives are counted in bars.

The EWMA is the "adjust=True" one: over the last ``n`` returns the newest has weight 1 and
a return ``j`` bars older has weight ``lambda ** j`` with ``lambda = 0.5 ** (1 / halflife)``;
weights are normalised to sum 1 and the variance is taken around the weighted mean, without
bias correction. It equals pandas' ``Series(r).ewm(halflife=h).var(bias=True).iloc[-1] ** 0.5``.

``classify_vol_regime`` is the seed's batch definition and the reference; ``VolTracker`` gives
the same answers in O(1) per bar and is what a service runs per series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from operator import mul
from typing import Any

import numpy as np

from shared.domain.confirm import Confirmation
from shared.domain.errors import ConfigError, check_known
from shared.domain.vocab import VolLabel

__all__ = [
    "STATE_VERSION",
    "VolInputs",
    "VolLabelFilter",
    "VolRegime",
    "VolRegimeConfig",
    "VolTracker",
    "banded_label",
    "classify_vol_regime",
    "compute_ewma_vol",
    "label_for_ratio",
]

_CONFIG_KEY = "vol_regimes.defaults"
_WINDOW_KEYS = ("short_window_bars", "long_window_bars", "short_halflife_bars", "long_halflife_bars")
_RATIO_KEYS = ("low", "normal", "high")
_FILTER_KEYS = ("confirm_bars", "hysteresis")

# Module-level aliases of C functions: a global load instead of a global plus an attribute
# load in the per-bar path. Immutable, so not state.
_isfinite = math.isfinite
_sqrt = math.sqrt
_fsum = math.fsum

STATE_VERSION = 1
"""Version of the dict written by :meth:`VolTracker.to_state`."""

# A running variance that has fallen below this fraction of the largest second moment the
# running sums have held since they were last rebuilt may be mostly rounding residue of the
# large values that left the window (catastrophic cancellation); the tracker then rebuilds
# its sums from the ring buffer. In real data this fires only when a market goes quiet (e.g. a
# stale price), which is exactly when "vol is 0" must come out exactly 0, not as residue.
_RESIDUE_FRACTION = 1e-4


@dataclass
class VolInputs:
    """Input of :func:`classify_vol_regime`."""

    returns: np.ndarray  # 1-D log returns of closes, oldest first, one per bar


@dataclass(slots=True)
class VolRegime:
    """A classification and the numbers behind it."""

    label: VolLabel
    vol_short: float  # EWMA std of log returns over the short window, bar level (fraction)
    vol_long: float  # same over the long window
    ratio: float  # vol_short / vol_long, dimensionless; 1.0 when there is not enough data


def _insufficient() -> VolRegime:
    # The seed's "normal with zeros" (§2 step 3); ratio 1 as §3.1 asks for missing history,
    # so a downstream ratio never reads as "low".
    return VolRegime("normal", 0.0, 0.0, 1.0)


def _is_int(value: object) -> bool:
    # bool is an int subclass, but ``true`` in a config file is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class VolRegimeConfig:
    """``strategy_config["vol_regimes"]["defaults"]``; field defaults are the seed's.

    Windows and halflives are in bars. The ratio thresholds are dimensionless boundaries of
    ``vol_short / vol_long``: ``< ratio_low`` low, ``< ratio_normal`` normal,
    ``< ratio_high`` high, otherwise crisis.

    What the stack acts on is that label through two filters (:class:`VolLabelFilter`):
    ``hysteresis`` (a fraction of each threshold, in [0, 0.5)): leaving the regime in force
    takes crossing its threshold by that fraction (up: ``ratio >= threshold × (1 + h)``; down:
    ``ratio < threshold × (1 − h)``); ``confirm_bars`` (bars, ≥ 1): the new label must then
    lead that many bars in a row. 0 and 1 switch them off (the seed's plain thresholds).
    """

    short_window_bars: int = 168
    long_window_bars: int = 720
    short_halflife_bars: int = 84
    long_halflife_bars: int = 360
    ratio_low: float = 0.6
    ratio_normal: float = 1.2
    ratio_high: float = 1.8
    confirm_bars: int = 3
    hysteresis: float = 0.01

    def __post_init__(self) -> None:
        for name in _WINDOW_KEYS:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"{_CONFIG_KEY}.{name}", f"must be a positive integer, got {value!r}")
        if self.short_window_bars > self.long_window_bars:
            raise ConfigError(
                f"{_CONFIG_KEY}.short_window_bars",
                f"must be <= long_window_bars ({self.long_window_bars}), got {self.short_window_bars}",
            )
        for name, field in (("low", "ratio_low"), ("normal", "ratio_normal"), ("high", "ratio_high")):
            value = getattr(self, field)
            if not _is_real(value):
                raise ConfigError(f"{_CONFIG_KEY}.ratio_low_high.{name}", f"must be a finite number, got {value!r}")
        if self.ratio_low <= 0:
            raise ConfigError(f"{_CONFIG_KEY}.ratio_low_high.low", f"must be > 0, got {self.ratio_low!r}")
        if self.ratio_normal <= self.ratio_low:
            raise ConfigError(
                f"{_CONFIG_KEY}.ratio_low_high.normal",
                f"must be > low ({self.ratio_low!r}), got {self.ratio_normal!r}",
            )
        if self.ratio_high <= self.ratio_normal:
            raise ConfigError(
                f"{_CONFIG_KEY}.ratio_low_high.high",
                f"must be > normal ({self.ratio_normal!r}), got {self.ratio_high!r}",
            )
        if not _is_int(self.confirm_bars) or not 1 <= self.confirm_bars <= 1000:
            raise ConfigError(
                f"{_CONFIG_KEY}.confirm_bars", f"must be an integer in [1, 1000], got {self.confirm_bars!r}"
            )
        if not _is_real(self.hysteresis) or not 0.0 <= self.hysteresis < 0.5:
            raise ConfigError(f"{_CONFIG_KEY}.hysteresis", f"must be a fraction in [0, 0.5), got {self.hysteresis!r}")

    @classmethod
    def from_strategy_config(cls, strategy_config: Mapping[str, Any]) -> VolRegimeConfig:
        """Read ``strategy_config["vol_regimes"]["defaults"]``.

        A missing block or key takes the seed's default; a present key of the wrong type or
        value raises :class:`ConfigError` naming it (e.g. ``vol_regimes.defaults.ratio_low_high.low``).
        """
        block = strategy_config.get("vol_regimes", {})
        if not isinstance(block, Mapping):
            raise ConfigError("vol_regimes", f"must be an object, got {type(block).__name__}")
        defaults = block.get("defaults", {})
        if not isinstance(defaults, Mapping):
            raise ConfigError(_CONFIG_KEY, f"must be an object, got {type(defaults).__name__}")
        check_known(defaults, _CONFIG_KEY, (*_WINDOW_KEYS, "ratio_low_high", *_FILTER_KEYS))
        kwargs: dict[str, Any] = {}
        for name in _WINDOW_KEYS:
            if name in defaults:
                value = defaults[name]
                if not _is_int(value) or value <= 0:
                    raise ConfigError(f"{_CONFIG_KEY}.{name}", f"must be a positive integer, got {value!r}")
                kwargs[name] = value
        ratios = defaults.get("ratio_low_high", {})
        if not isinstance(ratios, Mapping):
            raise ConfigError(f"{_CONFIG_KEY}.ratio_low_high", f"must be an object, got {type(ratios).__name__}")
        check_known(ratios, f"{_CONFIG_KEY}.ratio_low_high", _RATIO_KEYS)
        for name in _RATIO_KEYS:
            if name in ratios:
                value = ratios[name]
                if not _is_real(value):
                    raise ConfigError(f"{_CONFIG_KEY}.ratio_low_high.{name}", f"must be a finite number, got {value!r}")
                kwargs[f"ratio_{name}"] = float(value)
        if "confirm_bars" in defaults:
            kwargs["confirm_bars"] = defaults["confirm_bars"]  # checked by __post_init__, naming the key
        if "hysteresis" in defaults:
            value = defaults["hysteresis"]
            kwargs["hysteresis"] = float(value) if _is_real(value) else value
        return cls(**kwargs)


def label_for_ratio(ratio: float, cfg: VolRegimeConfig) -> VolLabel:
    """The seed's thresholds (§2 step 5) on ``ratio = vol_short / vol_long`` (dimensionless).

    Each boundary belongs to the regime above it: ``ratio == ratio_high`` is crisis.
    """
    if ratio < cfg.ratio_low:
        return "low"
    if ratio < cfg.ratio_normal:
        return "normal"
    if ratio < cfg.ratio_high:
        return "high"
    return "crisis"


_ORDER: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "crisis": 3}
_BY_ORDER: tuple[VolLabel, ...] = ("low", "normal", "high", "crisis")


def banded_label(ratio: float, current: VolLabel | None, cfg: VolRegimeConfig) -> VolLabel:
    """The label of ``ratio`` seen from the regime in force, ``current``, with the hysteresis band.

    Leaving ``current`` upward into a regime takes ``ratio >= its lower threshold × (1 + h)``,
    downward ``ratio < its upper threshold × (1 − h)`` (``h = cfg.hysteresis``); a ratio that
    crosses several thresholds lands in the furthest regime it clears by the band. Without a
    regime in force, or with h = 0, this is :func:`label_for_ratio`.
    """
    plain = label_for_ratio(ratio, cfg)
    if current is None or plain == current or cfg.hysteresis == 0.0:
        return plain
    # Lower threshold of each regime above low, in order: normal, high, crisis.
    lower = (cfg.ratio_low, cfg.ratio_normal, cfg.ratio_high)
    h = cfg.hysteresis
    at = _ORDER[current]
    if _ORDER[plain] > at:
        while at < 3 and ratio >= lower[at] * (1.0 + h):
            at += 1
    else:
        while at > 0 and ratio < lower[at - 1] * (1.0 - h):
            at -= 1
    return _BY_ORDER[at]


class VolLabelFilter:
    """The vol label the stack acts on: :func:`banded_label` then :class:`Confirmation`, bar by bar.

    Fed only once the tracker is ``sufficient``: before that the label is the seed's "normal
    with zeros" default, and the first sufficient bar's label is taken as it is.
    """

    __slots__ = ("_cfg", "_confirm")

    def __init__(self, cfg: VolRegimeConfig) -> None:
        self._cfg = cfg
        self._confirm = Confirmation(cfg.confirm_bars)

    @property
    def label(self) -> VolLabel | None:
        """The label in force; None before the first update."""
        return self._confirm.label  # type: ignore[return-value]

    @property
    def pending(self) -> VolLabel | None:
        """The label that cleared the band and waits for confirmation; None when nothing waits."""
        return self._confirm.candidate  # type: ignore[return-value]

    def reset(self) -> None:
        self._confirm.reset()

    def update(self, regime: VolRegime) -> VolLabel:
        """This bar's classification in, the label in force out."""
        # No ratio to band in a flat market (vol_long 0): the classifier's own default goes in as it is.
        candidate = banded_label(regime.ratio, self.label, self._cfg) if regime.vol_long > 0.0 else regime.label
        return self._confirm.update(candidate)  # type: ignore[return-value]

    def to_state(self) -> dict[str, Any]:
        """Plain values; :meth:`from_state` resumes bit for bit (the band and N come from the config)."""
        return self._confirm.to_state()

    @classmethod
    def from_state(cls, cfg: VolRegimeConfig, state: Mapping[str, Any]) -> VolLabelFilter:
        """ValueError when ``state`` is malformed."""
        out = cls(cfg)
        try:
            out._confirm.load(state, _BY_ORDER)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"vol label filter state is malformed: {exc!r}") from None
        return out


def _as_returns(returns: np.ndarray) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"returns must be 1-D, got shape {r.shape}")
    return r


def compute_ewma_vol(returns: np.ndarray, halflife_bars: int) -> float:
    """EWMA volatility of ``returns`` (1-D log returns, oldest first), bar level (a fraction).

    ``halflife_bars`` > 0 is the age in bars at which a return's weight halves. Fewer than
    two returns give 0.0. NaN or infinity in ``returns`` raises ValueError.
    """
    r = _as_returns(returns)
    if not (isinstance(halflife_bars, int | float) and math.isfinite(halflife_bars) and halflife_bars > 0):
        raise ValueError(f"halflife_bars must be > 0, got {halflife_bars!r}")
    if not np.isfinite(r).all():
        raise ValueError("returns contain NaN or infinity")
    n = r.size
    if n < 2:
        return 0.0
    lam = 0.5 ** (1.0 / halflife_bars)
    weights = lam ** np.arange(n - 1, -1, -1, dtype=np.float64)
    # Centre on the newest return before averaging: a constant window then gives exactly 0
    # (the weighted mean of a constant is not always that constant to the last bit), and the
    # tracker centres its sums the same way, so both agree that a flat market has no vol.
    d = r - r[-1]
    s0 = weights.sum()
    mean = float(weights @ d) / s0
    dev = d - mean
    var = float(weights @ (dev * dev)) / s0
    return math.sqrt(var) if var > 0.0 else 0.0


def classify_vol_regime(vol_inputs: VolInputs, cfg: VolRegimeConfig) -> VolRegime:
    """Classify the newest bar of ``vol_inputs.returns`` (seed §2, batch reference).

    ``vol_short``: EWMA vol of the last ``short_window_bars`` returns, ``short_halflife_bars``;
    ``vol_long``: of the last ``long_window_bars`` returns, ``long_halflife_bars``. With fewer
    returns than ``long_window_bars``, or ``vol_long <= 0``, the result is
    ``VolRegime("normal", 0.0, 0.0, 1.0)``. Non-finite returns in the window raise ValueError.
    """
    r = _as_returns(vol_inputs.returns)
    window = r[-cfg.long_window_bars :]
    if not np.isfinite(window).all():
        raise ValueError("returns contain NaN or infinity")
    if r.size < cfg.long_window_bars:
        return _insufficient()
    vol_short = compute_ewma_vol(window[-cfg.short_window_bars :], cfg.short_halflife_bars)
    vol_long = compute_ewma_vol(window, cfg.long_halflife_bars)
    if vol_long <= 0.0:
        return _insufficient()
    ratio = vol_short / vol_long
    return VolRegime(label_for_ratio(ratio, cfg), vol_short, vol_long, ratio)


@lru_cache(maxsize=64)
def _window_weights(window: int, halflife_bars: float) -> tuple[float, ...]:
    """``lambda ** age`` for ages window-1 .. 0, oldest first (``lambda = 0.5 ** (1 / halflife)``)."""
    lam = 0.5 ** (1.0 / halflife_bars)
    return tuple(lam ** (window - 1 - i) for i in range(window))


class VolTracker:
    """Incremental :func:`classify_vol_regime` for one series: O(1) per bar, exact over the window.

    Keeps a ring buffer of the last ``long_window_bars`` returns and, per horizon, the EWMA
    sums ``S1 = sum w_j d_j`` and ``S2 = sum w_j d_j**2`` over that horizon's window
    (``w_j = lambda ** age``, ``d_j = r_j - shift``). Each bar decays the sums by ``lambda``,
    adds the new return and subtracts the one leaving the window at its decayed weight
    ``lambda ** window``. ``S0 = sum w_j`` is a constant once the window is full, so it is
    computed once. The sums are rebuilt from the buffer every ``long_window_bars`` bars (bounds
    rounding drift; amortised O(1)) and when the variance collapses far below what the sums
    have held (cancellation residue, see ``_RESIDUE_FRACTION``). Results agree with
    :func:`classify_vol_regime` on the same returns to about 1e-12 relative.

    ``shift`` is the newest return at the last rebuild: centring near the data keeps
    ``S2/S0 - (S1/S0)**2`` from cancelling, and makes a constant window exactly 0.
    """

    __slots__ = (
        "_buf",
        "_cfg",
        "_consts",
        "_last_close",
        "_peaks",
        "_pos",
        "_samples",
        "_shift",
        "_since_rebuild",
        "_sums",
        "_w_l",
        "_w_s",
    )

    def __init__(self, cfg: VolRegimeConfig) -> None:
        self._cfg = cfg
        long_n, short_n = cfg.long_window_bars, cfg.short_window_bars
        lam_s = 0.5 ** (1.0 / cfg.short_halflife_bars)
        lam_l = 0.5 ** (1.0 / cfg.long_halflife_bars)
        # Oldest-first weights, for rebuilds; S0 is their sum and never changes once full. Shared by every
        # tracker of these windows (about 28 kB a series otherwise: most of the service's memory at 10,000).
        self._w_s = _window_weights(short_n, cfg.short_halflife_bars)
        self._w_l = _window_weights(long_n, cfg.long_halflife_bars)
        s0_s, s0_l = math.fsum(self._w_s), math.fsum(self._w_l)
        # Right after a rebuild variance / second moment >= 1 / (1 + S0) (the newest return
        # carries weight 1 / S0 and is the centre), so staying under half that bound means a
        # rebuild can never trigger the next one, however long the window.
        residue_s = min(_RESIDUE_FRACTION, 0.5 / (1.0 + s0_s))
        residue_l = min(_RESIDUE_FRACTION, 0.5 / (1.0 + s0_l))
        # What update() needs and never changes, unpacked into locals there in one statement.
        # cut = lambda ** window: the weight a return has when it drops out of the window,
        # after that bar's decay.
        self._consts: tuple[float, float, float, float, float, float, float, float, int, VolRegimeConfig] = (
            lam_s,
            lam_s**short_n,
            lam_l,
            lam_l**long_n,
            1.0 / s0_s,
            1.0 / s0_l,
            residue_s,
            residue_l,
            short_n,
            cfg,
        )
        self._buf = [0.0] * long_n
        self._pos = 0  # next write; once full, also the oldest return
        self._samples = 0
        self._since_rebuild = 0
        self._shift = 0.0
        self._sums = (0.0, 0.0, 0.0, 0.0)  # S1 short, S2 short, S1 long, S2 long (around shift)
        self._peaks = (0.0, 0.0)  # largest S2 / S0 since the last rebuild, short and long
        self._last_close: float | None = None

    @property
    def cfg(self) -> VolRegimeConfig:
        return self._cfg

    @property
    def samples(self) -> int:
        """Log returns seen since the series started (not capped at the window)."""
        return self._samples

    @property
    def sufficient(self) -> bool:
        """Whether the long window is full, i.e. results are not the "normal with zeros" default."""
        return self._samples >= self._cfg.long_window_bars

    @property
    def last_close(self) -> float | None:
        """The last close given to :meth:`push_close` (price units), None before the first."""
        return self._last_close

    def push_close(self, close: float) -> VolRegime | None:
        """Feed a bar's close (price > 0); returns the regime after ``log(close / previous close)``.

        The first close only primes the tracker and returns None.
        """
        close = float(close)
        if not (math.isfinite(close) and close > 0.0):
            raise ValueError(f"close must be a finite price > 0, got {close!r}")
        prev = self._last_close
        if prev is None:
            self._last_close = close
            return None
        regime = self.update(math.log(close / prev))
        self._last_close = close
        return regime

    def update(self, log_return: float) -> VolRegime:
        """Add one bar's log return; returns the regime of the series up to and including it. O(1)."""
        r = log_return if type(log_return) is float else float(log_return)
        if not _isfinite(r):
            raise ValueError(f"log_return must be finite, got {r!r}")
        buf = self._buf
        pos = self._pos
        long_n = len(buf)
        if self._samples < long_n:
            buf[pos] = r
            self._samples += 1
            if self._samples < long_n:
                self._pos = pos + 1
                return _insufficient()
            self._pos = 0
            self._rebuild()
            return self._result()

        # Hot path: plain floats in locals, no numpy (per-call overhead would dwarf the math).
        lam_s, cut_s, lam_l, cut_l, inv_s, inv_l, residue_s, residue_l, short_n, cfg = self._consts
        s1_s, s2_s, s1_l, s2_l = self._sums
        k = self._shift
        d = r - k
        o_l = buf[pos] - k  # leaves the long window now
        o_s = buf[pos - short_n] - k  # leaves the short window; a negative index wraps the ring
        s1_s = lam_s * s1_s + d - cut_s * o_s
        s2_s = lam_s * s2_s + d * d - cut_s * o_s * o_s
        s1_l = lam_l * s1_l + d - cut_l * o_l
        s2_l = lam_l * s2_l + d * d - cut_l * o_l * o_l
        buf[pos] = r
        pos += 1
        self._pos = 0 if pos == long_n else pos
        self._samples += 1
        self._sums = (s1_s, s2_s, s1_l, s2_l)

        m2_s = s2_s * inv_s
        mean = s1_s * inv_s
        var_s = m2_s - mean * mean
        m2_l = s2_l * inv_l
        mean = s1_l * inv_l
        var_l = m2_l - mean * mean
        peak_s, peak_l = self._peaks
        if m2_s > peak_s or m2_l > peak_l:
            self._peaks = (peak_s, peak_l) = (max(peak_s, m2_s), max(peak_l, m2_l))
        since = self._since_rebuild + 1
        self._since_rebuild = since
        if since >= long_n or var_s < residue_s * peak_s or var_l < residue_l * peak_l:
            self._rebuild()
            return self._result()

        if var_l <= 0.0:
            return _insufficient()
        vol_l = _sqrt(var_l)
        vol_s = _sqrt(var_s) if var_s > 0.0 else 0.0
        ratio = vol_s / vol_l
        return VolRegime(label_for_ratio(ratio, cfg), vol_s, vol_l, ratio)

    def _chronological(self) -> list[float]:
        # Returns in the buffer, oldest first.
        n = min(self._samples, len(self._buf))
        if n < len(self._buf):
            return self._buf[:n]
        return self._buf[self._pos :] + self._buf[: self._pos]

    def _rebuild(self) -> None:
        # Recompute the sums from the buffer (window full), re-centred on the newest return.
        window = self._chronological()
        k = window[-1]
        d = [x - k for x in window]
        d2 = [x * x for x in d]
        short_n = len(self._w_s)
        d_s, d2_s = d[-short_n:], d2[-short_n:]
        w_s, w_l = self._w_s, self._w_l
        # fsum is exactly rounded: each rebuild restarts from the best the floats allow, and the
        # same on every machine, so a tracker resumed elsewhere stays bit-identical.
        self._sums = (
            _fsum(map(mul, w_s, d_s)),
            _fsum(map(mul, w_s, d2_s)),
            _fsum(map(mul, w_l, d)),
            _fsum(map(mul, w_l, d2)),
        )
        self._shift = k
        inv_s, inv_l = self._consts[4], self._consts[5]
        self._peaks = (self._sums[1] * inv_s, self._sums[3] * inv_l)
        self._since_rebuild = 0

    def _result(self) -> VolRegime:
        # The regime from the current sums (window full); the cold path of update().
        s1_s, s2_s, s1_l, s2_l = self._sums
        inv_s, inv_l = self._consts[4], self._consts[5]
        mean_s = s1_s * inv_s
        var_s = s2_s * inv_s - mean_s * mean_s
        mean_l = s1_l * inv_l
        var_l = s2_l * inv_l - mean_l * mean_l
        if var_l <= 0.0:
            return _insufficient()
        vol_l = _sqrt(var_l)
        vol_s = _sqrt(var_s) if var_s > 0.0 else 0.0
        ratio = vol_s / vol_l
        return VolRegime(label_for_ratio(ratio, self._cfg), vol_s, vol_l, ratio)

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON/msgpack-safe values (no numpy, no pickle).

        :meth:`from_state` with the same windows and halflives continues with bit-identical results.
        """
        return {
            "v": STATE_VERSION,
            "short_window_bars": self._cfg.short_window_bars,
            "long_window_bars": self._cfg.long_window_bars,
            "short_halflife_bars": self._cfg.short_halflife_bars,
            "long_halflife_bars": self._cfg.long_halflife_bars,
            "samples": self._samples,
            "since_rebuild": self._since_rebuild,
            "returns": self._chronological(),  # oldest first; a new list, of plain floats (update() makes them so)
            "shift": float(self._shift),
            "sums": [float(x) for x in self._sums],  # S1, S2 short; S1, S2 long
            "peaks": [float(x) for x in self._peaks],
            "last_close": self._last_close,
        }

    @classmethod
    def from_state(cls, cfg: VolRegimeConfig, state: Mapping[str, Any]) -> VolTracker:
        """Rebuild a tracker saved by :meth:`to_state`.

        Raises ValueError if the state is malformed or was made with other windows or
        halflives than ``cfg`` (the sums would mean something else). Ratio thresholds may differ.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"vol tracker state must be a mapping, got {type(state).__name__}")
        if state.get("v") != STATE_VERSION:
            raise ValueError(f"vol tracker state version {state.get('v')!r}, expected {STATE_VERSION}")
        for name in _WINDOW_KEYS:
            if state.get(name) != getattr(cfg, name):
                raise ValueError(f"vol tracker state has {name}={state.get(name)!r}, config has {getattr(cfg, name)}")

        def real(value: object, what: str) -> float:
            if not _is_real(value):
                raise ValueError(f"vol tracker state {what} must be a finite number, got {value!r}")
            return float(value)  # type: ignore[arg-type]

        def reals(value: object, what: str, length: int) -> list[float]:
            if not isinstance(value, list | tuple) or len(value) != length:
                raise ValueError(f"vol tracker state {what} must be a list of {length} numbers")
            return [real(x, what) for x in value]

        samples, since = state.get("samples"), state.get("since_rebuild")
        long_n = cfg.long_window_bars
        if not isinstance(samples, int) or not _is_int(samples) or samples < 0:
            raise ValueError(f"vol tracker state samples must be an int >= 0, got {samples!r}")
        if not isinstance(since, int) or not _is_int(since) or not 0 <= since < long_n:
            raise ValueError(f"vol tracker state since_rebuild must be an int in [0, {long_n}), got {since!r}")
        returns = reals(state.get("returns"), "returns", min(samples, long_n))
        s1_s, s2_s, s1_l, s2_l = reals(state.get("sums"), "sums", 4)
        peak_s, peak_l = reals(state.get("peaks"), "peaks", 2)
        shift = real(state.get("shift"), "shift")
        last_close = state.get("last_close")
        if last_close is not None:
            last_close = real(last_close, "last_close")
            if last_close <= 0.0:
                raise ValueError(f"vol tracker state last_close must be > 0, got {last_close!r}")

        tracker = cls(cfg)
        tracker._buf[: len(returns)] = returns
        tracker._pos = len(returns) % long_n  # chronological layout: oldest at 0
        tracker._samples = samples
        tracker._since_rebuild = since
        tracker._shift = shift
        tracker._sums = (s1_s, s2_s, s1_l, s2_l)
        tracker._peaks = (peak_s, peak_l)
        tracker._last_close = last_close
        return tracker
