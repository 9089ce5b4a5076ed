"""Seed 003's detector: train on history, then filter one candle at a time."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from shared.domain.config import HmmConfig
from shared.domain.confirm import Confirmation
from shared.domain.hmm import fit
from shared.domain.hmm.features import FeatureExtractor, as_series, usable_rows
from shared.domain.hmm.kernel import FilterState, Kernel
from shared.domain.hmm.model import TrainedModel, validate_model
from shared.domain.sizing import Regime, RegimeState

log = logging.getLogger(__name__)


def depth_factor(training_candles: int, cfg: HmmConfig) -> float:
    """How much a model trained on ``training_candles`` candles is trusted, in (0, 1].

    ``sqrt(min(1, training_candles / HMM_TRAINING_CANDLES))``: a model on a full window
    counts in full, one on a quarter of it (500 of 2,000 candles) at half. 1.0 when
    HMM_DEPTH_SCALING is off. Confidence and bias are multiplied by it.
    """
    if not cfg.depth_scaling:
        return 1.0
    return math.sqrt(min(1.0, max(0, training_candles) / cfg.training_candles))


class RegimeDetector:
    """Seed 003's detector: train on history, then filter one candle at a time.

    ``cfg`` is the typed :class:`HmmConfig` (a mapping of HMM_* keys is validated
    into one). ``state`` is the latest :class:`RegimeState`; ``trained`` says
    whether a model is installed; ``model`` is that model. ``fast_path`` False
    forces the numpy kernel (the results agree to rounding; used by tests).

    The shaping keys (HMM_N_STATES, HMM_COVARIANCE_TYPE, HMM_INFERENCE_WINDOW)
    are fixed at construction; gain and thresholds are read from ``cfg`` on
    every candle, so they can be tuned at runtime.

    Each candle's verdict is the filter's, then (see :meth:`_present`):

    - confirmed: ``regime`` changes only once the filter's own top label
      (``raw_regime``) has led for HMM_CONFIRM_BARS bars in a row
      (:class:`Confirmation`; it carries over retrains, and the first trained
      verdict is taken as it is);
    - depth-scaled: ``confidence = raw_confidence × depth_factor`` and
      ``bias = (p_bull − p_bear) × HMM_BIAS_GAIN × depth_factor``, clipped to
      [−1, 1], 0 when the scaled confidence is under HMM_CONFIDENCE_THRESHOLD;
    - and a bias never leans against the confirmed regime (a bearish bias
      while the confirmed regime is BULLISH is 0, and the mirror), so what the
      screener blends follows the confirmed regime.

    With HMM_CONFIRM_BARS = 1 and a full-window model (or HMM_DEPTH_SCALING
    off) this is the filter's verdict unchanged.
    """

    def __init__(self, config: HmmConfig | Mapping[str, Any] | None = None, *, fast_path: bool = True) -> None:
        self.cfg: HmmConfig = fit.as_hmm_config(config)
        self.state: RegimeState = RegimeState()
        self.model: TrainedModel | None = None
        self.features: FeatureExtractor = FeatureExtractor()
        self._fast_path = fast_path
        self._kernel: Kernel | None = None
        self._window = self.cfg.inference_window
        self._filter = self.new_filter()
        self._confirm = Confirmation(self.cfg.confirm_bars)
        self._depth = 1.0

    @property
    def trained(self) -> bool:
        """Whether a model is installed (else every verdict is the neutral RANGING default)."""
        return self._kernel is not None

    @property
    def kernel(self) -> Kernel | None:
        """The installed model's inference constants; None until trained."""
        return self._kernel

    @property
    def filter_state(self) -> FilterState:
        """The forward filter's state after the last observation (read it; change it through :meth:`load`)."""
        return self._filter

    @property
    def fast_path(self) -> bool:
        """Whether small models use the plain-float kernel (False forces numpy; results agree to rounding)."""
        return self._fast_path

    @property
    def confirmation(self) -> Confirmation:
        """The confirmation state of the regime (read it; it is restored with the rest by :meth:`load`)."""
        return self._confirm

    @property
    def depth_factor(self) -> float:
        """The installed model's :func:`depth_factor` (1.0 untrained)."""
        return self._depth

    @property
    def window(self) -> int:
        """HMM_INFERENCE_WINDOW: observations (bars) per inference; 0 = all history."""
        return self._window

    # ---- training

    def train(
        self,
        closes: Sequence[float] | np.ndarray,
        volumes: Sequence[float] | np.ndarray,
        now_ms: int | None = None,
    ) -> bool:
        """Fit on the last ``HMM_TRAINING_CANDLES`` candles and install the model; False (logged) when refused.

        Refused without hmmlearn, on bad input, with fewer than
        ``HMM_MIN_TRAIN_SAMPLES`` feature rows, or when fitting fails; the
        detector then keeps what it had (neutral RANGING if never trained).
        """
        if not fit.HMM_AVAILABLE:  # read at call time: tests switch it off
            log.warning("HMM training skipped: hmmlearn is not installed; regime stays RANGING, bias 0")
            return False
        try:
            c, v = as_series(closes, volumes)
        except ValueError as exc:
            log.warning("HMM training refused: %s", exc)
            return False
        n_train = self.cfg.training_candles
        if 0 < n_train < len(c):
            c, v = c[-n_train:], v[-n_train:]
        rows = usable_rows(len(c))
        needed = self.cfg.min_train_samples
        if rows < needed:
            log.warning("HMM training refused: %d feature rows from %d candles, need %d", rows, len(c), needed)
            return False
        try:
            model = fit.fit_model(c, v, self.cfg, previous=self.model, now_ms=now_ms)
        except Exception:  # a failed fit (sklearn/hmmlearn internals included) must never take the service down
            log.exception("HMM training failed; keeping the previous state")
            return False
        return self.install(model, c, v)

    def install(
        self,
        model: TrainedModel,
        closes: Sequence[float] | np.ndarray,
        volumes: Sequence[float] | np.ndarray,
    ) -> bool:
        """Adopt ``model`` (trained here or elsewhere) and replay ``closes``/``volumes`` through it.

        The history should end at the latest candle: features and filter are
        rebuilt from it, so afterwards the filtered probabilities equal
        ``predict_proba(X)[-1]`` (or over the last N rows in window mode) for the
        features X of that history. False (logged, nothing changed) when the
        model is garbage or does not fit the config, or the history is bad.
        """
        reason = validate_model(model, self.cfg.n_states, self.cfg.covariance_type)
        if reason is not None:
            log.error("HMM model refused: %s", reason)
            return False
        try:
            c, v = as_series(closes, volumes)
            kernel = Kernel(model, self._fast_path, self.cfg.evidence_weight)
            extractor = FeatureExtractor()
            flt = self.new_filter()
            for close, volume in zip(c.tolist(), v.tolist(), strict=True):
                row = extractor.step_values(close, volume)
                if row is not None:
                    self._observe(kernel, flt, row)
            raw = RegimeState() if not has_posterior(flt) else self._verdict(kernel, flt, 0)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            log.error("HMM model refused: replaying history failed: %s", exc)
            return False
        self.load(model, kernel, extractor, flt, raw)
        if has_posterior(flt):
            # The replayed bars were reported under the old model already: shown, not fed to the confirmation.
            self.state = self._present(raw, feed=False)
        log.info(
            "HMM model installed: %d states, %s, %d samples, log-likelihood %.3f, labels %s",
            model.n_states,
            model.covariance_type,
            model.n_samples,
            model.log_likelihood,
            [Regime(lab).name for lab in model.label_order],
        )
        return True

    def needs_retrain(self, now_ms: int | None = None) -> bool:
        """True when untrained or the model is at least HMM_RETRAIN_INTERVAL_SEC old (``now_ms``: ms UTC)."""
        if not self.trained or self.model is None:
            return True
        now = fit.now_ms_utc() if now_ms is None else now_ms
        return now - self.model.trained_at >= self.cfg.retrain_interval_sec * 1000.0

    def note_gap(self, missing_bars: float) -> bool:
        """Tell the detector ``missing_bars`` bars are missing before the next candle; cold-starts stale EMAs.

        Returns whether the features were reset (gap > ``STALE_GAP_BARS``). The
        filter keeps its probabilities; it resumes once the features have warmed up.
        """
        if FeatureExtractor.gap_is_stale(missing_bars):
            log.info("HMM features cold-start after a gap of %s bars", missing_bars)
            self.features.reset()
            return True
        return False

    # ---- inference

    def update(self, close: float, volume: float) -> RegimeState:
        """Take in one closed candle (price, base-asset volume) and return the new state.

        Untrained or warming up: the neutral state, with ``observation_count``
        advancing. A bad candle or a failure inside inference is logged and the
        last valid state is returned unchanged.
        """
        try:
            row = self.features.step_values(close, volume)
        except ValueError as exc:
            log.warning("HMM update skipped a candle: %s", exc)
            return self.state
        count = self.state.observation_count + 1
        kernel = self._kernel
        if kernel is None or row is None:
            self.state = replace(self.state, observation_count=count)
            return self.state
        try:
            flt = self._filter
            if self._window > 0:
                # Work on copies: a failure must leave the window as it was.
                trial = FilterState(None, deque(flt.window, self._window), deque(flt.window_log_e, self._window))
                self._observe(kernel, trial, row)
                raw = self._verdict(kernel, trial, count)
                self._filter = trial
            else:
                z = kernel.standardise(row)
                alpha = kernel.forward(flt.alpha, kernel.log_emission(z))
                raw = kernel.verdict(alpha, self.cfg.bias_gain, self._threshold, count)
                flt.alpha = alpha
        except Exception:  # seed §5: whatever breaks inside inference, the bot keeps the last valid state
            log.exception("HMM inference failed; returning the last valid state")
            return self.state
        self.state = state = self._present(raw, feed=True)
        return state

    # ---- internals

    @property
    def _threshold(self) -> float:
        return self.cfg.confidence_threshold

    def _present(self, raw: RegimeState, feed: bool) -> RegimeState:
        """The filter's verdict as the stack acts on it: confirmed regime, depth-scaled confidence and bias.

        ``feed``: this verdict is a new bar's, so it counts toward confirmation.
        """
        raw_regime = raw.regime
        if feed:
            regime = Regime[self._confirm.update(raw_regime.name)]
        else:
            regime = raw_regime if self._confirm.label is None else Regime[self._confirm.label]
        f = self._depth
        confidence = raw.confidence * f
        bias = 0.0
        if confidence >= self._threshold:
            bear, _, bull = raw.probabilities
            bias = (bull - bear) * self.cfg.bias_gain * f
            bias = 1.0 if bias > 1.0 else (-1.0 if bias < -1.0 else bias)
            # Never lean against the confirmed regime while the filter's own label is still challenging it.
            if (regime is Regime.BULLISH and bias < 0.0) or (regime is Regime.BEARISH and bias > 0.0):
                bias = 0.0
        return RegimeState(
            regime, raw.probabilities, confidence, bias, raw.observation_count, raw_regime, raw.confidence
        )

    def new_filter(self) -> FilterState:
        n = self.window
        return FilterState(None, deque(maxlen=n or None), deque(maxlen=n or None))

    def _observe(self, kernel: Kernel, flt: FilterState, row: Sequence[float]) -> None:
        z = kernel.standardise(row)
        log_e = kernel.log_emission(z)
        if self.window > 0:
            flt.window.append(z)
            flt.window_log_e.append(log_e)
        else:
            flt.alpha = kernel.forward(flt.alpha, log_e)

    def _verdict(self, kernel: Kernel, flt: FilterState, count: int) -> RegimeState:
        if self.window > 0:
            alpha: list[float] | None = None
            for log_e in flt.window_log_e:
                alpha = kernel.forward(alpha, log_e)
            flt.alpha = alpha
        if flt.alpha is None:
            raise FloatingPointError("no observation to filter")
        return kernel.verdict(flt.alpha, self.cfg.bias_gain, self._threshold, count)

    def load(
        self,
        model: TrainedModel | None,
        kernel: Kernel | None,
        extractor: FeatureExtractor,
        flt: FilterState,
        state: RegimeState,
        confirmation: Confirmation | None = None,
    ) -> None:
        """Take over a consistent set of parts, as :meth:`install` or a snapshot restore builds them.

        ``model`` and ``kernel`` None leave the detector untrained (warm features only).
        ``confirmation`` None keeps the detector's own (a retrain does not restart confirmation).
        """
        self.model = model
        self._kernel = kernel if model is not None else None
        self.features = extractor
        self._filter = flt
        self.state = state
        if confirmation is not None:
            self._confirm = confirmation
        self._depth = depth_factor(model.training_candles, self.cfg) if model is not None else 1.0


def has_posterior(flt: FilterState) -> bool:
    return flt.alpha is not None or len(flt.window) > 0
