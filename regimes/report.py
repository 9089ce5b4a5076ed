"""``regimes evaluate``: the cores over candle files (``regimes.backtest``), judged (``regimes.evaluation``), drawn.

Writes into one directory, per series, ``{exchange}_{symbol}_{timeframe}.html``
(self-contained: inline CSS, the chart as a PNG data URI, no external asset)
and ``….png`` (the same chart), plus ``index.html`` linking them with one
summary row each. The chart is drawn by matplotlib on its Agg backend (no
display); it is the optional extra ``report``.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from regimes.backtest import backtest
from regimes.evaluation import (
    DAY_MS,
    HORIZONS,
    ModelEvaluation,
    Run,
    SeriesEvaluation,
    SeriesFrame,
    evaluate_series,
    frames,
    runs,
)
from shared.domain.config import StrategyConfig
from shared.domain.contracts import Candle, HmmRegimeEvent
from shared.domain.subjects import SeriesKey, encode_symbol

INSTALL_HINT = "pip install 'regime-stack[report]'  (in this checkout: .venv/bin/pip install matplotlib)"

# The dashboard's colours (services/dashboard_api/static/style.css), so a regime looks the same everywhere.
VOL_COLORS = {"low": "#3b82f6", "normal": "#7d9a88", "high": "#f08c2e", "crisis": "#e5484d"}
HMM_COLORS = {"BEARISH": "#8b7cf6", "RANGING": "#97a1ad", "BULLISH": "#e9b949"}
UNTRAINED_COLOR = "#d6dbe1"
BP = 1e4  # log returns are shown in basis points: 1 bp = 0.0001


class ReportError(RuntimeError):
    """The report cannot be made (a missing dependency, an unusable output directory); the message says what to do."""


def require_matplotlib() -> Any:
    """matplotlib on the Agg backend, or ReportError saying how to install it (checked before any replay)."""
    try:
        import matplotlib
    except ImportError:
        msg = f"regimes evaluate draws its charts with matplotlib, which is not installed: {INSTALL_HINT}"
        raise ReportError(msg) from None
    matplotlib.use("Agg", force=True)  # files only; never look for a display
    return matplotlib


# --- the replay --------------------------------------------------------------------------


def replay(
    candles: Sequence[Candle],
    config: StrategyConfig,
    now_ms: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """``regimes backtest``'s events for ``candles``, unchanged; ``on_progress(done, total)`` as candles go in.

    Progress is reported about 200 times over the run and once at its end, so
    the bar costs nothing against the cores.
    """
    total = len(candles)
    step = max(1, total // 200)

    def counted() -> Iterator[Candle]:
        for i, candle in enumerate(candles):
            if on_progress is not None and i % step == 0:
                on_progress(i, total)
            yield candle

    events = list(backtest(counted(), config, now_ms))
    if on_progress is not None:
        on_progress(total, total)
    return events


def trainings(events: Iterable[Any]) -> int:
    """How many HMM models were adopted (distinct ``trained_at`` per series)."""
    seen = {(e.key, e.trained_at) for e in events if isinstance(e, HmmRegimeEvent) and e.trained_at is not None}
    return len(seen)


# --- the chart ---------------------------------------------------------------------------


def _day_numbers(ts: np.ndarray) -> np.ndarray:
    """ms UTC -> matplotlib date numbers (days since 1970-01-01, its default epoch)."""
    return ts.astype(np.float64) / DAY_MS


def _bands(ax: Any, x: np.ndarray, label_runs: list[Run], colors: dict[str | None, str], alpha: float) -> None:
    """One rectangle per run, full height of ``ax``, x in data units; one collection per colour (fast at 100k bars)."""
    from matplotlib.collections import PolyCollection

    right = np.append(x[1:], x[-1] + (x[-1] - x[-2] if x.size > 1 else 1.0 / 1440))
    by_color: dict[str, list[list[tuple[float, float]]]] = {}
    for run in label_runs:
        color = colors.get(run.label)
        if color is None:
            continue
        x0, x1 = float(x[run.start]), float(right[run.start + run.length - 1])
        by_color.setdefault(color, []).append([(x0, 0.0), (x1, 0.0), (x1, 1.0), (x0, 1.0)])
    for color, verts in by_color.items():
        ax.add_collection(
            PolyCollection(verts, facecolors=color, edgecolors="none", alpha=alpha, transform=ax.get_xaxis_transform())
        )


def chart_png(frame: SeriesFrame, dpi: int = 110) -> bytes:
    """Price over vol-regime bands, the HMM regime strip, and the HMM bias: one PNG."""
    require_matplotlib()
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    x = _day_numbers(frame.ts)
    rows = 3 if frame.hmm_on else 1
    ratios = [6, 0.7, 1.8][:rows]
    fig, axes = plt.subplots(rows, 1, figsize=(13, 6.2 if frame.hmm_on else 4.6), sharex=True, dpi=dpi,
                             gridspec_kw={"height_ratios": ratios, "hspace": 0.08}, squeeze=False)
    ax = axes[0][0]
    vol_colors: dict[str | None, str] = dict(VOL_COLORS.items())
    _bands(ax, x, runs(frame.vol_label), vol_colors, alpha=0.28)
    ax.plot(x, frame.close, color="#1f2933", linewidth=0.8)
    ax.set_ylabel("price")
    ax.set_title(frame.key.id, loc="left", fontsize=11)
    ax.margins(x=0)
    if frame.hmm_on:
        strip, bias_ax = axes[1][0], axes[2][0]
        colors: dict[str | None, str] = {None: UNTRAINED_COLOR}
        colors.update(HMM_COLORS)
        _bands(strip, x, runs(frame.hmm_label), colors, alpha=0.95)
        strip.set_yticks([])
        strip.set_ylabel("HMM", rotation=0, ha="right", va="center", fontsize=9)
        bias = np.nan_to_num(frame.hmm_bias)
        bias_ax.fill_between(x, 0, bias, where=bias > 0, color=HMM_COLORS["BULLISH"], linewidth=0, step="post")
        bias_ax.fill_between(x, 0, bias, where=bias < 0, color=HMM_COLORS["BEARISH"], linewidth=0, step="post")
        bias_ax.axhline(0, color="#5a6a7c", linewidth=0.6)
        bias_ax.set_ylim(-1.05, 1.05)
        bias_ax.set_ylabel("bias")
    handles = [Patch(color=c, alpha=0.5, label=f"vol {k}") for k, c in VOL_COLORS.items()]
    if frame.hmm_on:
        handles += [Patch(color=c, label=k.lower()) for k, c in HMM_COLORS.items()]
        handles.append(Patch(color=UNTRAINED_COLOR, label="untrained"))
    # Above the price, right-aligned: inside the axes it would hide the price it explains.
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles), fontsize=8,
              frameon=False, handlelength=1.2, columnspacing=1.0, borderaxespad=0.2)
    bottom = axes[-1][0]
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    bottom.set_xlim(float(x[0]), float(x[-1]) if x.size > 1 else float(x[0]) + 1.0 / 1440)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# --- HTML ----------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933; margin: 24px auto;
       max-width: 1180px; padding: 0 16px; background: #fbfcfd; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
p.meta, .note { color: #5a6a7c; } .note { font-size: 12.5px; max-width: 900px; }
table { border-collapse: collapse; margin: 6px 0 4px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e8ee; text-align: right; white-space: nowrap; }
th { background: #f0f3f6; font-weight: 600; } th:first-child, td:first-child { text-align: left; }
td.pos { color: #1b7f4b; } td.neg { color: #b4353a; } td.na { color: #9aa5b1; }
i.sw { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; vertical-align: -1px; }
img.chart { width: 100%; max-width: 1180px; border: 1px solid #e3e8ee; background: #fff; }
a { color: #2563eb; } .pair { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
"""

_NA = '<td class="na">—</td>'


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float, fmt: str = "{:.2f}") -> str:
    return _NA if value is None or not math.isfinite(value) else f"<td>{fmt.format(value)}</td>"


def _signed(value: float, scale: float = BP, fmt: str = "{:+.2f}") -> str:
    if value is None or not math.isfinite(value):
        return _NA
    cls = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<td class="{cls}">{fmt.format(value * scale)}</td>'


def _pct(value: float) -> str:
    return _NA if value is None or not math.isfinite(value) else f"<td>{value * 100:.1f}%</td>"


def _swatch(label: str, colors: dict[str, str]) -> str:
    return f'<i class="sw" style="background:{colors.get(label, "#ccc")}"></i>{_esc(label)}'


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _regime_table(model: ModelEvaluation, colors: dict[str, str], horizons: Sequence[int]) -> str:
    """Dwell per regime, then its forward returns per horizon against every labelled bar's."""
    dwell = "".join(
        f"<tr><td>{_swatch(label, colors)}</td>{_pct(d.share)}<td>{d.runs:,}</td>{_num(d.mean, '{:.1f}')}"
        f"{_num(d.median, '{:.1f}')}</tr>"
        for label, d in ((label, model.dwell[label]) for label in model.order)
    )
    head = "".join(f'<th colspan="3">{h} bar{"s" if h > 1 else ""} ahead</th>' for h in horizons)
    sub = "<th>mean bp</th><th>up</th><th>n</th>" * len(horizons)

    def cells(by_h: dict[int, Any]) -> str:
        return "".join(_signed(by_h[h].mean) + _pct(by_h[h].positive) + f"<td>{by_h[h].count:,}</td>" for h in horizons)

    rows = "".join(f"<tr><td>{_swatch(label, colors)}</td>{cells(model.forward[label])}</tr>" for label in model.order)
    rows += f"<tr><td><i>all bars</i></td>{cells(model.baseline)}</tr>"
    return (
        '<div class="pair"><table><tr><th>regime</th><th>share</th><th>runs</th><th>mean dwell</th>'
        f"<th>median dwell</th></tr>{dwell}</table>"
        f'<table><tr><th rowspan="2">forward return</th>{head}</tr><tr>{sub}</tr>{rows}</table></div>'
    )


def _transitions_block(name: str, model: ModelEvaluation, raw_field: str) -> str:
    rc = model.raw_vs_confirmed
    if rc is None:
        intro = (
            f'<p class="note">The {name} events carry no raw label (field <code>{raw_field}</code>), so these are '
            "the transitions of the labels as emitted. Once the events carry the label before confirmation, "
            "this section compares the two.</p>"
        )
        table = (
            "<table><tr><th>labels</th><th>transitions</th><th>per day</th></tr>"
            f"<tr><td>as emitted</td><td>{model.flips:,}</td>{_num(model.flips_per_day)}</tr></table>"
        )
    else:
        intro = (
            '<p class="note">Raw: the label before confirmation; confirmed: the label in force. '
            "Suppressed is the share of raw flips confirmation removed; lag is how many bars the raw label had been "
            "saying the new regime when it was confirmed.</p>"
        )
        table = (
            "<table><tr><th>labels</th><th>transitions</th><th>per day</th><th>suppressed</th>"
            "<th>mean lag (bars)</th><th>median lag (bars)</th></tr>"
            f"<tr><td>raw</td><td>{rc.raw_flips:,}</td>{_num(rc.raw_per_day)}{_NA}{_NA}{_NA}</tr>"
            f"<tr><td>confirmed</td><td>{rc.confirmed_flips:,}</td>{_num(rc.confirmed_per_day)}"
            f"{_pct(rc.suppressed)}{_num(rc.mean_lag, '{:.1f}')}{_num(rc.median_lag, '{:.1f}')}</tr></table>"
        )
    last = model.transitions[-10:][::-1]
    recent = "".join(
        f"<tr><td>{_date(t.ts)}</td><td>{t.index:,}</td><td>{_esc(t.before)}</td><td>{_esc(t.after)}</td></tr>"
        for t in last
    )
    listing = (
        f"<table><tr><th>latest transitions (UTC)</th><th>bar</th><th>from</th><th>to</th></tr>{recent}</table>"
        if last else '<p class="note">No transition.</p>'
    )
    return intro + table + listing


def series_html(ev: SeriesEvaluation, png: bytes, horizons: Sequence[int] = HORIZONS) -> str:
    """One series' report: one self-contained page."""
    days = ev.bars * ev.bar_ms / DAY_MS
    parts = [
        f"<h1>{_esc(ev.key.id)}</h1>",
        f'<p class="meta">{ev.bars:,} bars of {_esc(ev.key.timeframe)} ({days:,.1f} days), '
        f"{_date(ev.first_ts)} → {_date(ev.last_ts)} UTC · <a href=\"index.html\">all series</a></p>",
        f'<img class="chart" alt="price, regimes and bias of {_esc(ev.key.id)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">',
        "<h2>Volatility regimes</h2>",
        _regime_table(ev.vol, VOL_COLORS, horizons),
        f'<p class="note">{ev.vol.flips:,} flips, {_fmt(ev.vol.flips_per_day)} per day. Dwell in bars per run; '
        "forward return = log return from the bar's close to h bars later, in basis points (mean); up = share of "
        "those returns above zero; n = bars counted; all bars = the same over every bar, the line to beat.</p>",
    ]
    if ev.hmm is not None:
        parts += [
            "<h2>HMM regimes</h2>",
            _regime_table(ev.hmm, HMM_COLORS, horizons),
            f'<p class="note">Over the {ev.hmm.labelled_bars:,} bars after the first training (an untrained model '
            f"says RANGING by default and is left out). {ev.hmm.flips:,} flips, "
            f"{_fmt(ev.hmm.flips_per_day)} per day.</p>",
            "<h3>Bias sign vs forward return</h3>",
            _hit_table(ev),
        ]
    parts += ["<h2>Transitions: raw vs confirmed</h2>", "<h3>Volatility</h3>",
              _transitions_block("vol", ev.vol, "raw_label")]
    if ev.hmm is not None:
        parts += ["<h3>HMM</h3>", _transitions_block("HMM", ev.hmm, "raw_regime")]
    parts += ["<h2>Sizing in force vs flat</h2>", _sizing_block(ev)]
    return _page(f"regimes evaluate: {ev.key.id}", "".join(parts))


def _fmt(value: float, fmt: str = "{:.2f}") -> str:
    return "—" if value is None or not math.isfinite(value) else fmt.format(value)


def _hit_table(ev: SeriesEvaluation) -> str:
    rows = "".join(
        f"<tr><td>{h.horizon} bar{'s' if h.horizon > 1 else ''}</td><td>{h.count:,}</td>{_pct(h.rate)}"
        f"<td>{h.long_count:,}</td>{_pct(h.long_rate)}<td>{h.short_count:,}</td>{_pct(h.short_rate)}</tr>"
        for h in ev.hit_rates
    )
    return (
        "<table><tr><th>horizon</th><th>calls</th><th>hit rate</th><th>long calls</th><th>long hits</th>"
        f"<th>short calls</th><th>short hits</th></tr>{rows}</table>"
        '<p class="note">A call is a bar with a non-zero bias (confidence over the threshold) and a non-zero '
        "forward return; a hit, one where their signs agree. 50% is a coin.</p>"
    )


def _sizing_block(ev: SeriesEvaluation) -> str:
    s = ev.sizing
    if s is None or s.bars == 0:
        return '<p class="note">No decision with a next bar to measure.</p>'
    return (
        "<table><tr><th>sizing</th><th>return per unit of exposure per bar (bp)</th><th>bars</th></tr>"
        f"<tr><td>in force (effective NAV per trade, mean {s.mean_size * 100:.3f}%)</td>"
        f"{_signed(s.sized, fmt='{:+.4f}')}"
        f"<td>{s.bars:,}</td></tr>"
        f"<tr><td>flat</td>{_signed(s.flat, fmt='{:+.4f}')}<td>{s.bars:,}</td></tr>"
        f"<tr><td>difference</td>{_signed(s.edge, fmt='{:+.4f}')}<td></td></tr></table>"
        '<p class="note">sum(size<sub>t</sub> × r<sub>t+1</sub>) / sum(|size<sub>t</sub>|) against the plain mean of '
        "r<sub>t+1</sub> over the same bars: a positive difference means the vol-regime sizing put more on the bars "
        "that paid. Long-only exposure, no costs.</p>"
    )


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{body}</body></html>\n"
    )


@dataclass(frozen=True, slots=True)
class RunStats:
    """What the replay cost: shown on the index page and printed."""

    candles: int
    events: int
    trainings: int  # HMM models adopted
    replay_s: float  # seconds in the cores (HMM trainings included)
    report_s: float  # seconds evaluating and drawing


def index_html(evaluations: Sequence[tuple[SeriesEvaluation, str]], stats: RunStats) -> str:
    """The summary: one row per series, linking its page."""
    rows = []
    for ev, name in evaluations:
        hit5 = next((h.rate for h in ev.hit_rates if h.horizon == 5), math.nan)
        s = ev.sizing
        rows.append(
            f'<tr><td><a href="{_esc(name)}.html">{_esc(ev.key.id)}</a></td><td>{ev.bars:,}</td>'
            f"{_num(ev.vol.flips_per_day)}{_num(ev.hmm.flips_per_day) if ev.hmm else _NA}"
            f"{_pct(hit5)}{_signed(s.edge, fmt='{:+.4f}') if s else _NA}</tr>"
        )
    rate = stats.candles / stats.replay_s if stats.replay_s > 0 else math.nan
    body = (
        "<h1>regimes evaluate</h1>"
        f'<p class="meta">{stats.candles:,} candles → {stats.events:,} events, {stats.trainings} HMM trainings; '
        f"replay {stats.replay_s:.1f} s ({_fmt(rate, '{:,.0f}')} candles/s), report {stats.report_s:.1f} s.</p>"
        "<table><tr><th>series</th><th>bars</th><th>vol flips/day</th><th>HMM flips/day</th>"
        "<th>bias hit rate, 5 bars</th><th>sizing − flat (bp/bar)</th></tr>"
        f"{''.join(rows)}</table>"
    )
    return _page("regimes evaluate", body)


def file_stem(key: SeriesKey) -> str:
    """``kraken_BTC-USD_1m``: the series' encoded parts, safe in any file system."""
    return f"{key.exchange}_{encode_symbol(key.symbol)}_{key.timeframe}"


# --- the command -------------------------------------------------------------------------


def write_series(events: Sequence[Any], out_dir: Path) -> list[tuple[SeriesEvaluation, str]]:
    """Evaluate every series of ``events`` and write its page and chart; returns (evaluation, file stem) per series."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[tuple[SeriesEvaluation, str]] = []
    for key, frame in sorted(frames(events).items(), key=lambda kv: kv[0].id):
        ev = evaluate_series(frame)
        png = chart_png(frame)
        stem = file_stem(key)
        (out_dir / f"{stem}.png").write_bytes(png)
        (out_dir / f"{stem}.html").write_text(series_html(ev, png), encoding="utf-8")
        done.append((ev, stem))
    return done


def run(
    candles: Sequence[Candle],
    config: StrategyConfig,
    now_ms: int,
    out_dir: Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunStats:
    """The CLI: replay, evaluate, write the pages, then the index with what it all cost; the cost also on stderr."""
    require_matplotlib()  # before minutes of replay, not after
    started = time.perf_counter()
    events = replay(candles, config, now_ms, on_progress)
    replay_s = time.perf_counter() - started
    done = write_series(events, out_dir)
    stats = RunStats(len(candles), len(events), trainings(events), replay_s, time.perf_counter() - started - replay_s)
    (out_dir / "index.html").write_text(index_html(done, stats), encoding="utf-8")
    print(
        f"evaluate: {stats.candles} candles -> {stats.events} events, {stats.trainings} HMM trainings; "
        f"replay {stats.replay_s:.1f}s, report {stats.report_s:.1f}s -> {out_dir / 'index.html'}",
        file=sys.stderr,
    )
    return stats


def main(candles: Sequence[Candle], config: StrategyConfig, now_ms: int, out_dir: Path) -> int:
    """``regimes evaluate``: exit status 0, or 2 with the reason (and how to fix it) on stderr."""
    from regimes.feed import progress  # the bar `regimes import` draws

    started = time.monotonic()
    try:
        run(candles, config, now_ms, out_dir, lambda done, total: progress(done, total, "candles", started))
    except ReportError as exc:
        print(f"regimes: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"regimes: cannot write the report into {out_dir}: {exc}", file=sys.stderr)
        return 2
    return 0
