"""vol_regime's decisions: one candle in, one regime event out. Pure; no bus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.domain.contracts import VOL_LABELS, Candle, VolRegimeEvent
from shared.domain.stored import optional_int
from shared.domain.vocab import VolLabel
from shared.domain.vol import VolLabelFilter, VolRegime, VolRegimeConfig
from shared.domain.vol_tracker import VolTracker

_NO_DATA = VolRegime("normal", 0.0, 0.0, 1.0)


@dataclass
class SeriesVol:
    """One series' vol state: the incremental tracker, the label filter, and what the last candle left.

    ``label`` is the label in force (confirmed), the one events carry as ``label``.
    """

    tracker: VolTracker
    filter: VolLabelFilter
    last_ts: int | None = None  # open time of the last candle applied, ms
    label: VolLabel | None = None

    @classmethod
    def new(cls, cfg: VolRegimeConfig) -> SeriesVol:
        return cls(VolTracker(cfg), VolLabelFilter(cfg))

    def dump(self) -> dict[str, Any]:
        return {
            "last_ts": self.last_ts,
            "label": self.label,
            "tracker": self.tracker.to_state(),
            "confirm": self.filter.to_state(),
        }

    @classmethod
    def load(cls, cfg: VolRegimeConfig, raw: dict[str, Any]) -> SeriesVol:
        """ValueError when the stored tracker does not fit ``cfg`` (the windows changed), or a part is malformed.

        State stored before the label filter existed resumes with its last label in force.
        """
        label = raw["label"]
        if label is not None and label not in VOL_LABELS:
            raise ValueError(f"stored label must be one of {list(VOL_LABELS)} or None, got {label!r}")
        last_ts = optional_int(raw["last_ts"], "last_ts")
        tracker = VolTracker.from_state(cfg, raw["tracker"])
        if "confirm" in raw:
            label_filter = VolLabelFilter.from_state(cfg, raw["confirm"])
        else:
            label_filter = VolLabelFilter(cfg)
            if tracker.sufficient and label is not None:
                label_filter.update(VolRegime(label, 0.0, 0.0, 1.0))  # in force as it is: nothing to band
        return cls(tracker, label_filter, last_ts, label)


def apply_candle(state: SeriesVol, candle: Candle, cfg: VolRegimeConfig) -> VolRegimeEvent | None:
    """Advance ``state`` by ``candle``; None (state untouched) for a candle not newer than the last.

    ``raw_label`` is the tracker's plain threshold label; ``label`` the one in force after the
    hysteresis band and confirmation (:class:`VolLabelFilter`), fed once the long window is full.
    """
    if state.last_ts is not None and candle.ts <= state.last_ts:
        return None
    regime = state.tracker.push_close(candle.close) or _NO_DATA
    sufficient = state.tracker.sufficient
    label = state.filter.update(regime) if sufficient else regime.label
    prev = state.label
    state.last_ts = candle.ts
    state.label = label
    return VolRegimeEvent(
        exchange=candle.exchange,
        symbol=candle.symbol,
        timeframe=candle.timeframe,
        ts=candle.ts,
        close=candle.close,
        label=label,
        vol_short=regime.vol_short,
        vol_long=regime.vol_long,
        ratio=regime.ratio,
        prev_label=prev,
        changed=prev is not None and prev != label,
        samples=state.tracker.samples,
        sufficient=sufficient,
        raw_label=regime.label,
        pending_label=state.filter.pending if sufficient else None,
    )
