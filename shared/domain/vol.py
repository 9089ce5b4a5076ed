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

``classify_vol_regime`` is the seed's batch definition and the reference; ``VolTracker`` (in
:mod:`shared.domain.vol_tracker`) gives the same answers in O(1) per bar and is what a service
runs per series.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.domain.confirm import Confirmation
from shared.domain.errors import ConfigError, check_known
from shared.domain.vocab import VolLabel

__all__ = [
    "WINDOW_KEYS",
    "VolInputs",
    "VolLabelFilter",
    "VolRegime",
    "VolRegimeConfig",
    "banded_label",
    "classify_vol_regime",
    "compute_ewma_vol",
    "insufficient_regime",
    "is_config_int",
    "is_config_real",
    "label_for_ratio",
]

_CONFIG_KEY = "vol_regimes.defaults"
WINDOW_KEYS = ("short_window_bars", "long_window_bars", "short_halflife_bars", "long_halflife_bars")
_RATIO_KEYS = ("low", "normal", "high")
_FILTER_KEYS = ("confirm_bars", "hysteresis")




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


def insufficient_regime() -> VolRegime:
    # The seed's "normal with zeros" (§2 step 3); ratio 1 as §3.1 asks for missing history,
    # so a downstream ratio never reads as "low".
    return VolRegime("normal", 0.0, 0.0, 1.0)


def is_config_int(value: object) -> bool:
    # bool is an int subclass, but ``true`` in a config file is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def is_config_real(value: object) -> bool:
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
        for name in WINDOW_KEYS:
            value = getattr(self, name)
            if not is_config_int(value) or value <= 0:
                raise ConfigError(f"{_CONFIG_KEY}.{name}", f"must be a positive integer, got {value!r}")
        if self.short_window_bars > self.long_window_bars:
            raise ConfigError(
                f"{_CONFIG_KEY}.short_window_bars",
                f"must be <= long_window_bars ({self.long_window_bars}), got {self.short_window_bars}",
            )
        for name, field in (("low", "ratio_low"), ("normal", "ratio_normal"), ("high", "ratio_high")):
            value = getattr(self, field)
            if not is_config_real(value):
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
        if not is_config_int(self.confirm_bars) or not 1 <= self.confirm_bars <= 1000:
            raise ConfigError(
                f"{_CONFIG_KEY}.confirm_bars", f"must be an integer in [1, 1000], got {self.confirm_bars!r}"
            )
        if not is_config_real(self.hysteresis) or not 0.0 <= self.hysteresis < 0.5:
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
        check_known(defaults, _CONFIG_KEY, (*WINDOW_KEYS, "ratio_low_high", *_FILTER_KEYS))
        kwargs: dict[str, Any] = {}
        for name in WINDOW_KEYS:
            if name in defaults:
                value = defaults[name]
                if not is_config_int(value) or value <= 0:
                    raise ConfigError(f"{_CONFIG_KEY}.{name}", f"must be a positive integer, got {value!r}")
                kwargs[name] = value
        ratios = defaults.get("ratio_low_high", {})
        if not isinstance(ratios, Mapping):
            raise ConfigError(f"{_CONFIG_KEY}.ratio_low_high", f"must be an object, got {type(ratios).__name__}")
        check_known(ratios, f"{_CONFIG_KEY}.ratio_low_high", _RATIO_KEYS)
        for name in _RATIO_KEYS:
            if name in ratios:
                value = ratios[name]
                if not is_config_real(value):
                    raise ConfigError(f"{_CONFIG_KEY}.ratio_low_high.{name}", f"must be a finite number, got {value!r}")
                kwargs[f"ratio_{name}"] = float(value)
        if "confirm_bars" in defaults:
            kwargs["confirm_bars"] = defaults["confirm_bars"]  # checked by __post_init__, naming the key
        if "hysteresis" in defaults:
            value = defaults["hysteresis"]
            kwargs["hysteresis"] = float(value) if is_config_real(value) else value
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
        return insufficient_regime()
    vol_short = compute_ewma_vol(window[-cfg.short_window_bars :], cfg.short_halflife_bars)
    vol_long = compute_ewma_vol(window, cfg.long_halflife_bars)
    if vol_long <= 0.0:
        return insufficient_regime()
    ratio = vol_short / vol_long
    return VolRegime(label_for_ratio(ratio, cfg), vol_short, vol_long, ratio)
