"""``regimes backtest``: the stack's pure cores over candles, in one process, with no bus.

The same functions the services run, in the same order per series: the vol
tracker, the HMM detector with training due by candle time (fitted inline
here instead of in a worker pool), and the screener's join. So for the same
candles and config it gives the same events and decisions as the stack,
byte for byte (a test asserts it): validate regimes on history here, then
trust the live stack to behave the same.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from services.hmm_regime.core import SeriesHmm, TrainingResult, adopt, training_due
from services.hmm_regime.core import apply_candle as hmm_apply
from services.screener.core import SeriesScreen, on_hmm, on_peer, on_vol, siblings
from services.vol_regime.core import SeriesVol
from services.vol_regime.core import apply_candle as vol_apply
from shared.domain.config import HmmConfig, StrategyConfig
from shared.domain.contracts import Candle, time_problem, to_plain
from shared.domain.hmm import fit_model
from shared.domain.subjects import SeriesKey


@dataclass
class _Series:
    vol: SeriesVol
    hmm: SeriesHmm
    screen: SeriesScreen = field(default_factory=SeriesScreen)


def backtest(
    candles: Iterable[Candle], config: StrategyConfig, now_ms: int, tolerance_ms: int = 60_000
) -> Iterator[Any]:
    """Every vol event, HMM event and decision the stack would publish for ``candles`` (in stream order)."""
    hmm_cfg = config.hmm
    hmm_on = hmm_cfg.enabled
    series: dict[SeriesKey, _Series] = {}

    def of(key: SeriesKey) -> _Series:
        s = series.get(key)
        if s is None:
            s = series[key] = _Series(SeriesVol.new(config.vol), SeriesHmm.new(hmm_cfg))
        return s

    for candle in candles:
        if time_problem(candle, now_ms, tolerance_ms) is not None:
            continue  # the stack dead-letters it
        s = of(candle.key)
        vol = vol_apply(s.vol, candle, config.vol)
        if vol is None:
            continue
        yield vol
        yield from on_vol(s.screen, vol, config)
        if not hmm_on:
            continue
        if training_due(s.hmm, hmm_cfg):  # before the candle, as the service holds the series for it
            adopt(s.hmm, _train(s.hmm, hmm_cfg))
        hmm = hmm_apply(s.hmm, candle)
        if hmm is not None:
            yield hmm
            yield from on_hmm(s.screen, hmm, config)
            for sibling in siblings(config, candle.key):  # the consensus join (``consensus.screener``)
                yield from on_peer(of(sibling).screen, hmm, config)


def _train(state: SeriesHmm, cfg: HmmConfig) -> TrainingResult:
    rows = tuple(state.history)
    upto = state.last_ts or 0
    previous = state.detector.model if state.detector.trained else None
    try:
        model = fit_model([c for _, c, _ in rows], [v for _, _, v in rows], cfg, previous, upto)
    except Exception:  # the service records a failed fit the same way (see hmm_regime.trainer)
        model = None
    return TrainingResult(model, rows, upto)


def write_jsonl(events: Iterable[Any], out: IO[str]) -> int:
    """One JSON object per event (its wire fields); returns how many."""
    n = 0
    for event in events:
        out.write(json.dumps(to_plain(event), separators=(",", ":")) + "\n")
        n += 1
    return n


def run(candles: list[Candle], config: StrategyConfig, now_ms: int, out_path: Path | None) -> int:
    """The CLI: events as JSON lines to ``out_path`` (stdout when None); a count on stderr."""
    if out_path is None:
        n = write_jsonl(backtest(candles, config, now_ms), sys.stdout)
    else:
        with out_path.open("w") as fh:
            n = write_jsonl(backtest(candles, config, now_ms), fh)
    print(f"backtest: {len(candles)} candles -> {n} events", file=sys.stderr)
    return 0
