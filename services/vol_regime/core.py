"""vol_regime's decisions: one candle in, one regime event out. Pure; no bus."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.domain.contracts import Candle, VolRegimeEvent
from shared.domain.vol import VolRegime, VolRegimeConfig, VolTracker

_NO_DATA = VolRegime("normal", 0.0, 0.0, 1.0)


@dataclass
class SeriesVol:
    """One series' vol state: the incremental tracker plus what the last candle left."""

    tracker: VolTracker
    last_ts: int | None = None  # open time of the last candle applied, ms
    label: str | None = None

    @classmethod
    def new(cls, cfg: VolRegimeConfig) -> SeriesVol:
        return cls(VolTracker(cfg))

    def dump(self) -> dict[str, Any]:
        return {"last_ts": self.last_ts, "label": self.label, "tracker": self.tracker.to_state()}

    @classmethod
    def load(cls, cfg: VolRegimeConfig, raw: dict[str, Any]) -> SeriesVol:
        """ValueError when the stored tracker does not fit ``cfg`` (the windows changed)."""
        return cls(VolTracker.from_state(cfg, raw["tracker"]), raw["last_ts"], raw["label"])


def apply_candle(state: SeriesVol, candle: Candle, cfg: VolRegimeConfig) -> VolRegimeEvent | None:
    """Advance ``state`` by ``candle``; None (state untouched) for a candle not newer than the last."""
    if state.last_ts is not None and candle.ts <= state.last_ts:
        return None
    regime = state.tracker.push_close(candle.close) or _NO_DATA
    prev = state.label
    state.last_ts = candle.ts
    state.label = regime.label
    samples = state.tracker.samples
    return VolRegimeEvent(
        exchange=candle.exchange,
        symbol=candle.symbol,
        timeframe=candle.timeframe,
        ts=candle.ts,
        close=candle.close,
        label=regime.label,
        vol_short=regime.vol_short,
        vol_long=regime.vol_long,
        ratio=regime.ratio,
        prev_label=prev,  # type: ignore[arg-type]
        changed=prev is not None and prev != regime.label,
        samples=samples,
        sufficient=samples >= cfg.long_window_bars,
    )
