"""The incremental volatility tracker: :func:`~shared.domain.vol.classify_vol_regime` one bar at a time.

Split from :mod:`shared.domain.vol` (the config, labels, label filter and the batch reference): this is
the O(1) hot path every candle of vol_regime goes through, and its persisted state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from operator import mul
from typing import Any

from shared.domain.vol import (
    WINDOW_KEYS,
    VolRegime,
    VolRegimeConfig,
    insufficient_regime,
    is_config_int,
    is_config_real,
    label_for_ratio,
)

__all__ = ["STATE_VERSION", "VolTracker"]

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
                return insufficient_regime()
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
            return insufficient_regime()
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
            return insufficient_regime()
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
        for name in WINDOW_KEYS:
            if state.get(name) != getattr(cfg, name):
                raise ValueError(f"vol tracker state has {name}={state.get(name)!r}, config has {getattr(cfg, name)}")

        def real(value: object, what: str) -> float:
            if not is_config_real(value):
                raise ValueError(f"vol tracker state {what} must be a finite number, got {value!r}")
            return float(value)  # type: ignore[arg-type]

        def reals(value: object, what: str, length: int) -> list[float]:
            if not isinstance(value, list | tuple) or len(value) != length:
                raise ValueError(f"vol tracker state {what} must be a list of {length} numbers")
            return [real(x, what) for x in value]

        samples, since = state.get("samples"), state.get("since_rebuild")
        long_n = cfg.long_window_bars
        if not isinstance(samples, int) or not is_config_int(samples) or samples < 0:
            raise ValueError(f"vol tracker state samples must be an int >= 0, got {samples!r}")
        if not isinstance(since, int) or not is_config_int(since) or not 0 <= since < long_n:
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
