"""Signal quality of the regime labels: flips per day raw vs confirmed, confirmation delay, label agreement.

Run: ``.venv/bin/python bench/bench_signal.py`` (about 2-4 minutes on 2 cores;
``--bars 4000`` for a quicker look, ``--sweep`` for the tables the defaults were
chosen from). Everything is seeded: the same arguments print the same figures.

Two markets, each with a known truth:

- the demo market (``services/ohlcv_ingest/demo.py``, the shipped universe of
  8 series, seed 7): the truth of the trend is the drift chain's state
  (bear/range/bull -> BEARISH/RANGING/BULLISH), the truth of the vol regime is
  the label of the *noise-free* short/long ratio of the generator's sigma
  (:func:`regimes.synthetic.true_vol_labels`);
- generated data (:func:`regimes.synthetic.regime_switching_market`, seeds
  0-3): a 3-state chain of drifts and vols, truths as above.

The pipeline per series is the stack's own: ``services.vol_regime.core`` and
``services.hmm_regime.core`` with training due by candle time, as ``regimes
backtest`` runs them, on the shipped config (vol windows 168/720 bars, HMM
window 2,000 candles, first training at 500 rows, retrain every 86,400 s =
1,440 bars of 1m candles).

Figures:

- flips/day: label changes per 1,440 bars, over bars where the label is live
  (vol: long window full; HMM: a model trained), raw vs confirmed;
- delay, per true regime change (the truth enters S at bar t0 and stays until
  t1): bars from t0 until the raw label first says S, and until the confirmed
  label does (changes the raw label never catches before t1 are counted as
  missed); *added* delay is confirmed minus raw, what confirmation costs;
- accuracy: the share of live bars whose label equals the truth, raw and
  confirmed (fewer flips or more agreement bought with lower accuracy is no
  gain: this is the figure that shows it);
- agreement: at every retrain, the share of the new window where the previous
  and the new model's Viterbi labels agree (``TrainedModel.label_agreement``),
  for the warm-started chain the stack runs and for a fresh-start chain
  (``fit_model(..., warm_start=False)``: k-means start, states matched) beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regimes.synthetic import regime_switching_market, true_vol_labels
from services.hmm_regime.core import SeriesHmm, TrainingResult, adopt, training_due
from services.hmm_regime.core import apply_candle as hmm_apply
from services.ohlcv_ingest.demo import DemoMarket
from services.vol_regime.core import SeriesVol
from services.vol_regime.core import apply_candle as vol_apply
from shared.domain.config import HmmConfig, load_strategy_config
from shared.domain.confirm import Confirmation
from shared.domain.contracts import Candle
from shared.domain.hmm import TrainedModel, fit_model
from shared.domain.sizing import Regime
from shared.domain.subjects import SeriesKey
from shared.domain.vol import VolLabelFilter, VolRegime, VolRegimeConfig

ROOT = Path(__file__).resolve().parents[1]
BARS_PER_DAY = 1440  # 1m bars
T0 = 60_000 * 28_000_000  # an aligned candle time, ms
_DRIFT_TRUTH = {"bear": "BEARISH", "range": "RANGING", "bull": "BULLISH"}


@dataclass
class Series:
    """One series of a market: candles and the truth behind every bar."""

    name: str
    candles: list[Candle]
    trend_truth: list[str]  # HMM label per bar
    vol_truth: Sequence[str | None]  # vol label of the noise-free ratio per bar; None before the long window is full


@dataclass
class Run:
    """What the stack's cores said for one series."""

    vol_raw: list[str | None] = field(default_factory=list)  # None while not sufficient
    vol_regimes: list[VolRegime | None] = field(default_factory=list)
    vol_confirmed: list[str | None] = field(default_factory=list)
    hmm_raw: list[str | None] = field(default_factory=list)  # None while untrained
    hmm_confirmed: list[str | None] = field(default_factory=list)
    agreement_warm: list[float] = field(default_factory=list)
    agreement_fresh: list[float] = field(default_factory=list)
    fallbacks: int = 0
    retrains: int = 0
    fit_seconds: float = 0.0


def candles_of(
    key: SeriesKey, closes: Sequence[float] | np.ndarray, volumes: Sequence[float] | np.ndarray
) -> list[Candle]:
    out, prev = [], float(closes[0])
    for i, (c, v) in enumerate(zip(closes, volumes, strict=True)):
        c = float(c)
        ts = T0 + i * 60_000
        out.append(Candle(key.exchange, key.symbol, key.timeframe, ts, prev, max(prev, c), min(prev, c), c, float(v)))
        prev = c
    return out


def demo_series(bars: int, vol_cfg: VolRegimeConfig) -> list[Series]:
    config = load_strategy_config(ROOT / "config" / "strategy_config.json", env={})
    keys = list(config.series)
    market = DemoMarket(keys, seed=config.demo.seed, start_ts=T0)
    candles: dict[SeriesKey, list[Candle]] = {k: [] for k in keys}
    trend: dict[SeriesKey, list[str]] = {k: [] for k in keys}
    sigma: dict[SeriesKey, list[float]] = {k: [] for k in keys}
    for step in market.bars(bars):
        for c in step:
            truth = market.truth(c.key)
            candles[c.key].append(c)
            trend[c.key].append(_DRIFT_TRUTH[truth.drift_state])
            sigma[c.key].append(truth.sigma)
    return [
        Series(f"demo {k.symbol}", candles[k], trend[k], true_vol_labels(np.array(sigma[k]), vol_cfg)) for k in keys
    ]


def generated_series(bars: int, vol_cfg: VolRegimeConfig, seeds: Sequence[int] = (0, 1, 2, 3)) -> list[Series]:
    out = []
    for seed in seeds:
        m = regime_switching_market(bars, seed)
        key = SeriesKey("synthetic", f"GEN{seed}/USD", "1m")
        trend = [Regime(int(s)).name for s in m.truth]
        candles = candles_of(key, m.closes, m.volumes)
        out.append(Series(f"generated {seed}", candles, trend, true_vol_labels(m.sigma, vol_cfg)))
    return out


def run_series(s: Series, vol_cfg: VolRegimeConfig, hmm_cfg: HmmConfig) -> Run:
    """The stack's cores over one series (the backtest's order), with a fresh-start chain fitted beside the HMM's."""
    run = Run()
    vol = SeriesVol.new(vol_cfg)
    hmm = SeriesHmm.new(hmm_cfg)
    fresh_prev: TrainedModel | None = None
    for candle in s.candles:
        ev = vol_apply(vol, candle, vol_cfg)
        assert ev is not None
        tracker_regime = VolRegime(ev.raw_label or "normal", ev.vol_short, ev.vol_long, ev.ratio)
        run.vol_raw.append(ev.raw_label if ev.sufficient else None)
        run.vol_regimes.append(tracker_regime if ev.sufficient else None)
        run.vol_confirmed.append(ev.label if ev.sufficient else None)
        if training_due(hmm, hmm_cfg):
            rows = tuple(hmm.history)
            closes, volumes = [c for _, c, _ in rows], [v for _, _, v in rows]
            previous = hmm.detector.model if hmm.detector.trained else None
            started = time.perf_counter()
            model = fit_model(closes, volumes, hmm_cfg, previous, hmm.last_ts or 0)
            run.fit_seconds += time.perf_counter() - started
            if previous is not None:
                fresh = fit_model(closes, volumes, hmm_cfg, fresh_prev, hmm.last_ts or 0, warm_start=False)
                run.retrains += 1
                run.fallbacks += not model.warm_started
                run.agreement_warm.append(float(model.label_agreement or 0.0))
                run.agreement_fresh.append(float(fresh.label_agreement or 0.0))
                fresh_prev = fresh
            else:
                fresh_prev = model
            adopt(hmm, TrainingResult(model, rows, hmm.last_ts or 0))
        hev = hmm_apply(hmm, candle)
        assert hev is not None
        run.hmm_raw.append(hev.raw_regime if hev.trained else None)
        run.hmm_confirmed.append(hev.regime if hev.trained else None)
    return run


# --------------------------------------------------------------------------- measures


def flips_per_day(labels: Sequence[str | None]) -> float:
    live = [lab for lab in labels if lab is not None]
    flips = sum(1 for a, b in itertools.pairwise(live) if a != b)
    return flips / (len(live) / BARS_PER_DAY) if live else float("nan")


@dataclass
class Delays:
    raw: list[int] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    changes: int = 0
    missed_raw: int = 0
    missed_confirmed: int = 0

    def merge(self, other: Delays) -> None:
        self.raw += other.raw
        self.confirmed += other.confirmed
        self.added += other.added
        self.changes += other.changes
        self.missed_raw += other.missed_raw
        self.missed_confirmed += other.missed_confirmed


def delays(truth: Sequence[str | None], raw: Sequence[str | None], confirmed: Sequence[str | None]) -> Delays:
    """Per true change (truth enters S at t0, stays until t1, labels live at t0): bars until raw / confirmed say S."""
    out = Delays()
    n = len(truth)
    t = 1
    while t < n:
        if truth[t] is None or truth[t] == truth[t - 1] or truth[t - 1] is None or raw[t] is None:
            t += 1
            continue
        target, t0 = truth[t], t
        t1 = t0
        while t1 < n and truth[t1] == target:
            t1 += 1
        out.changes += 1
        hit_raw = next((i for i in range(t0, t1) if raw[i] == target), None)
        hit_conf = next((i for i in range(t0, t1) if confirmed[i] == target), None)
        if hit_raw is None:
            out.missed_raw += 1
        else:
            out.raw.append(hit_raw - t0)
        if hit_conf is None:
            out.missed_confirmed += 1
        else:
            out.confirmed.append(hit_conf - t0)
        if hit_raw is not None and hit_conf is not None:
            out.added.append(max(0, hit_conf - hit_raw))
        t = t1
    return out


def accuracy(truth: Sequence[str | None], labels: Sequence[str | None]) -> float:
    """Fraction (0..1) of the bars with a live label (and a truth) where the label is the truth."""
    pairs = [(t, lab) for t, lab in zip(truth, labels, strict=True) if lab is not None and t is not None]
    return sum(1 for t, lab in pairs if t == lab) / len(pairs) if pairs else float("nan")


def q(values: Sequence[float], p: float) -> float:
    return float(np.quantile(values, p)) if len(values) else float("nan")


# --------------------------------------------------------------------------- the two filters, replayed


def confirm_offline(raw: Sequence[str | None], n: int) -> list[str | None]:
    """HMM confirmation over a raw label sequence (what the detector does, bar by bar, while trained)."""
    c = Confirmation(n)
    return [None if lab is None else c.update(lab) for lab in raw]


def vol_offline(regimes: Sequence[VolRegime | None], cfg: VolRegimeConfig) -> list[str | None]:
    f = VolLabelFilter(cfg)
    return [None if r is None else f.update(r) for r in regimes]


# --------------------------------------------------------------------------- report


@dataclass
class Market:
    name: str
    series: list[Series]
    runs: list[Run]


def summarize(
    market: Market, hmm_filter: Callable[[Run], list[str | None]], vol_filter: Callable[[Run], list[str | None]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, raw_of, conf_of, truth_of in (
        ("hmm", lambda r: r.hmm_raw, hmm_filter, lambda s: s.trend_truth),
        ("vol", lambda r: r.vol_raw, vol_filter, lambda s: s.vol_truth),
    ):
        raw_f, conf_f, truth_f, acc_raw, acc_conf = [], [], [], [], []
        total = Delays()
        for s, r in zip(market.series, market.runs, strict=True):
            raw, conf, truth = raw_of(r), conf_of(r), truth_of(s)
            raw_f.append(flips_per_day(raw))
            conf_f.append(flips_per_day(conf))
            truth_f.append(flips_per_day([t if lab is not None else None for t, lab in zip(truth, raw, strict=True)]))
            total.merge(delays(truth, raw, conf))
            acc_raw.append(accuracy(truth, raw))
            acc_conf.append(accuracy(truth, conf))
        out[kind] = {
            "flips_per_day_truth": float(np.nanmean(truth_f)),
            "flips_per_day_raw": float(np.nanmean(raw_f)),
            "flips_per_day_confirmed": float(np.nanmean(conf_f)),
            "true_changes": total.changes,
            "missed_raw": total.missed_raw,
            "missed_confirmed": total.missed_confirmed,
            "delay_raw_median": q(total.raw, 0.5),
            "delay_raw_p90": q(total.raw, 0.9),
            "delay_confirmed_median": q(total.confirmed, 0.5),
            "delay_confirmed_p90": q(total.confirmed, 0.9),
            "added_delay_median": q(total.added, 0.5),
            "added_delay_p90": q(total.added, 0.9),
            "accuracy_raw": float(np.nanmean(acc_raw)),
            "accuracy_confirmed": float(np.nanmean(acc_conf)),
        }
    return out


def agreement_summary(market: Market) -> dict[str, Any]:
    warm = [a for r in market.runs for a in r.agreement_warm]
    fresh = [a for r in market.runs for a in r.agreement_fresh]
    return {
        "retrains": sum(r.retrains for r in market.runs),
        "warm_fallbacks": sum(r.fallbacks for r in market.runs),
        "warm_mean": float(np.mean(warm)) if warm else float("nan"),
        "warm_median": q(warm, 0.5),
        "warm_p10": q(warm, 0.1),
        "warm_share_ge_90": float(np.mean(np.array(warm) >= 0.9)) if warm else float("nan"),
        "fresh_mean": float(np.mean(fresh)) if fresh else float("nan"),
        "fresh_median": q(fresh, 0.5),
        "fresh_p10": q(fresh, 0.1),
        "fresh_share_ge_90": float(np.mean(np.array(fresh) >= 0.9)) if fresh else float("nan"),
        "ms_per_training": 1000
        * sum(r.fit_seconds for r in market.runs)
        / max(1, sum(r.retrains for r in market.runs) + len(market.runs)),
    }


def shifted_agreement(market: Market, hmm_cfg: HmmConfig, shift: int) -> dict[str, Any]:
    """Successive models on windows of HMM_TRAINING_CANDLES shifted by ``shift`` bars: warm chain vs fresh chain."""
    warm_all: list[float] = []
    fresh_all: list[float] = []
    window = hmm_cfg.training_candles
    for s in market.series:
        closes = [c.close for c in s.candles]
        volumes = [c.volume for c in s.candles]
        warm: TrainedModel | None = None
        fresh: TrainedModel | None = None
        for end in range(window, len(closes) + 1, shift):
            c, v = closes[end - window : end], volumes[end - window : end]
            new_warm = fit_model(c, v, hmm_cfg, warm, end)
            new_fresh = fit_model(c, v, hmm_cfg, fresh, end, warm_start=False) if warm is not None else new_warm
            if warm is not None:
                warm_all.append(float(new_warm.label_agreement or 0.0))
                fresh_all.append(float(new_fresh.label_agreement or 0.0))
            warm, fresh = new_warm, new_fresh
    return {
        "shift": shift,
        "pairs": len(warm_all),
        "warm_mean": float(np.mean(warm_all)),
        "warm_median": q(warm_all, 0.5),
        "warm_p10": q(warm_all, 0.1),
        "fresh_mean": float(np.mean(fresh_all)),
        "fresh_median": q(fresh_all, 0.5),
        "fresh_p10": q(fresh_all, 0.1),
    }


def print_report(market: Market, stats: dict[str, Any], agree: dict[str, Any]) -> None:
    print(f"\n== {market.name}: {len(market.series)} series x {len(market.series[0].candles)} bars")
    for kind in ("hmm", "vol"):
        s = stats[kind]
        print(
            f"  {kind}: flips/day raw {s['flips_per_day_raw']:6.1f} -> confirmed {s['flips_per_day_confirmed']:6.1f}"
            f" ({s['flips_per_day_confirmed'] / s['flips_per_day_raw']:.0%}; truth {s['flips_per_day_truth']:.1f})"
            f" | true changes {s['true_changes']}, missed raw {s['missed_raw']} / confirmed {s['missed_confirmed']}"
        )
        print(
            f"       delay vs truth (bars) raw median {s['delay_raw_median']:.0f} p90 {s['delay_raw_p90']:.0f}"
            f"; confirmed median {s['delay_confirmed_median']:.0f} p90 {s['delay_confirmed_p90']:.0f}"
            f"; added by confirmation median {s['added_delay_median']:.0f} p90 {s['added_delay_p90']:.0f}"
            f"; accuracy raw {s['accuracy_raw']:.3f} confirmed {s['accuracy_confirmed']:.3f}"
        )
    a = agree
    print(
        f"  label agreement over {a['retrains']} retrains: warm start mean {a['warm_mean']:.3f}"
        f" median {a['warm_median']:.3f} p10 {a['warm_p10']:.3f} (>= 0.90 in {a['warm_share_ge_90']:.0%},"
        f" {a['warm_fallbacks']} fell back to fresh) | fresh start mean {a['fresh_mean']:.3f}"
        f" median {a['fresh_median']:.3f} p10 {a['fresh_p10']:.3f} (>= 0.90 in {a['fresh_share_ge_90']:.0%})"
        f" | {a['ms_per_training']:.0f} ms per training"
    )


def _confirmed(r: Run, n: int) -> list[str | None]:
    return confirm_offline(r.hmm_raw, n)


def _vol_confirmed(r: Run) -> list[str | None]:
    return r.vol_confirmed


def _hmm_confirmed(r: Run) -> list[str | None]:
    return r.hmm_confirmed


def _vol_filtered(r: Run, cfg: VolRegimeConfig) -> list[str | None]:
    return vol_offline(r.vol_regimes, cfg)


def sweep_evidence(markets: list[Market], vol_cfg: VolRegimeConfig, hmm_cfg: HmmConfig) -> None:
    """The stack's cores again per HMM_EVIDENCE_WEIGHT: fewer flips against later true changes."""
    print("\n== sweep: HMM_EVIDENCE_WEIGHT (confirmed flips/day, delay after a true change median/p90, accuracy)")
    for w in (1.0, 0.5, 0.3, 0.15):
        cfg = replace(hmm_cfg, evidence_weight=w)
        cells = []
        for m in markets:
            runs = [run_series(s, vol_cfg, cfg) for s in m.series]
            st = summarize(Market(m.name, m.series, runs), _hmm_confirmed, _vol_confirmed)["hmm"]
            cells.append(
                f"{m.name[:9]}: {st['flips_per_day_confirmed']:5.1f}/d (raw {st['flips_per_day_raw']:.1f}),"
                f" {st['delay_confirmed_median']:.0f}/{st['delay_confirmed_p90']:.0f} bars,"
                f" accuracy {st['accuracy_confirmed']:.3f}"
            )
        print(f"  w={w:<4}: " + " | ".join(cells))


def sweep(markets: list[Market], vol_cfg: VolRegimeConfig) -> None:
    print("\n== sweep: HMM_CONFIRM_BARS (flips/day confirmed, added delay median/p90, per market)")
    for n in (1, 2, 3, 4, 5, 8):
        cells = []
        for m in markets:
            s = summarize(m, partial(_confirmed, n=n), _vol_confirmed)["hmm"]
            cells.append(
                f"{m.name[:9]}: {s['flips_per_day_confirmed']:6.1f}/d (raw {s['flips_per_day_raw']:.1f}),"
                f" +{s['added_delay_median']:.0f}/{s['added_delay_p90']:.0f}"
            )
        print(f"  N={n}: " + " | ".join(cells))
    print("\n== sweep: vol confirm_bars x hysteresis (flips/day confirmed, added delay median/p90)")
    for n in (1, 2, 3, 5):
        for h in (0.0, 0.01, 0.02, 0.05):
            cfg = replace(vol_cfg, confirm_bars=n, hysteresis=h)
            cells = []
            for m in markets:
                s = summarize(m, _hmm_confirmed, partial(_vol_filtered, cfg=cfg))["vol"]
                cells.append(
                    f"{m.name[:9]}: {s['flips_per_day_confirmed']:5.1f}/d (raw {s['flips_per_day_raw']:.1f}),"
                    f" +{s['added_delay_median']:.0f}/{s['added_delay_p90']:.0f}"
                )
            print(f"  N={n} h={h:.2f}: " + " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=8000, help="bars per series (default 8000, ~5.5 days of 1m)")
    parser.add_argument("--sweep", action="store_true", help="also print the tables the defaults were chosen from")
    parser.add_argument(
        "--shift", type=int, default=480, help="also: agreement of models on windows shifted by this many bars (0: no)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    config = load_strategy_config(ROOT / "config" / "strategy_config.json", env={})
    vol_cfg, hmm_cfg = config.vol, config.hmm
    print(
        f"config: vol confirm_bars={vol_cfg.confirm_bars} hysteresis={vol_cfg.hysteresis};"
        f" HMM_CONFIRM_BARS={hmm_cfg.confirm_bars} HMM_TRAINING_CANDLES={hmm_cfg.training_candles}"
        f" HMM_RETRAIN_INTERVAL_SEC={hmm_cfg.retrain_interval_sec:.0f} HMM_EVIDENCE_WEIGHT={hmm_cfg.evidence_weight}"
    )
    markets = []
    for name, series in (
        ("demo market", demo_series(args.bars, vol_cfg)),
        ("generated", generated_series(args.bars, vol_cfg)),
    ):
        markets.append(Market(name, series, [run_series(s, vol_cfg, hmm_cfg) for s in series]))
    results: dict[str, Any] = {}
    for m in markets:
        # The stack's own labels; the offline replay of the same filters must give them exactly.
        for r in m.runs:
            assert confirm_offline(r.hmm_raw, hmm_cfg.confirm_bars) == r.hmm_confirmed
            assert vol_offline(r.vol_regimes, vol_cfg) == r.vol_confirmed
        stats = summarize(m, lambda r: r.hmm_confirmed, lambda r: r.vol_confirmed)
        agree = agreement_summary(m)
        print_report(m, stats, agree)
        results[m.name] = {**stats, "agreement": agree}
        if args.shift > 0:
            sh = shifted_agreement(m, hmm_cfg, args.shift)
            print(
                f"  agreement on windows shifted by {sh['shift']} bars ({sh['pairs']} pairs): warm start mean"
                f" {sh['warm_mean']:.3f} median {sh['warm_median']:.3f} p10 {sh['warm_p10']:.3f} | fresh start mean"
                f" {sh['fresh_mean']:.3f} median {sh['fresh_median']:.3f} p10 {sh['fresh_p10']:.3f}"
            )
            results[m.name]["agreement_shifted"] = sh
    if args.sweep:
        sweep(markets, vol_cfg)
        sweep_evidence(markets, vol_cfg, hmm_cfg)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
