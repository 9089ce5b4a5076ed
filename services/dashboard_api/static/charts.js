// Inline-SVG charts of the symbol view. All time charts share one x geometry (same margins, one
// slot per history point), so a cursor on any of them lines up with the others.

import { esc, fmtClock, fmtDateTime, fmtNum, fmtPrice, isNum } from "./format.js";
import { HMM_LABELS } from "./vocab.js";

export const GEO = { left: 8, right: 62 };
let gradientId = 0;

const MIN = 60e3;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
// Round steps for the time axis, finest first; ticks fall on their multiples (UTC).
const TIME_STEPS = [MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY];
const TICK_GAP_PX = 70; // room a time label needs

export function xAxis(n, width) {
  const x0 = GEO.left;
  const x1 = Math.max(x0 + 10, width - GEO.right);
  const step = n > 1 ? (x1 - x0) / (n - 1) : 0;
  return { x0, x1, step, n, at: (i) => (n > 1 ? x0 + step * i : (x0 + x1) / 2), index: (x) => (n > 1 ? Math.round(Math.min(n - 1, Math.max(0, (x - x0) / step))) : 0) };
}

/** Contiguous runs of one label: [{from, to, label}]. */
export function runs(points, get) {
  const out = [];
  let start = 0;
  for (let i = 1; i <= points.length; i++) {
    if (i === points.length || get(points[i]) !== get(points[start])) {
      out.push({ from: start, to: i - 1, label: get(points[start]) });
      start = i;
    }
  }
  return out;
}

function spanRect(X, from, to) {
  const half = X.step / 2 || (X.x1 - X.x0) / 2;
  const a = Math.max(X.x0, X.at(from) - half);
  const b = Math.min(X.x1, X.at(to) + half);
  return [a, Math.max(0.5, b - a)];
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

/** Time labels on round times: the finest step that leaves TICK_GAP_PX between labels. The axis has
 * one slot per point, so a tick goes where its time falls between the two points around it. */
function timeTicks(points, X, y) {
  const n = points.length;
  if (n < 2) return "";
  const first = points[0].ts;
  const last = points[n - 1].ts;
  const msPerPx = (last - first) / Math.max(1, X.x1 - X.x0);
  const step = TIME_STEPS.find((s) => s >= msPerPx * TICK_GAP_PX) ?? TIME_STEPS[TIME_STEPS.length - 1];
  let out = "";
  let i = 0;
  for (let t = Math.ceil(first / step) * step; t <= last; t += step) {
    while (i < n - 1 && points[i + 1].ts <= t) i++;
    const next = points[i + 1];
    const x = next && t > points[i].ts ? X.at(i) + (X.step * (t - points[i].ts)) / (next.ts - points[i].ts) : X.at(i);
    if (x < X.x0 + 16 || x > X.x1 - 16) continue; // a label there would hang over the plot's edge
    const label = step >= DAY || t % DAY === 0 ? new Date(t).toISOString().slice(5, 10) : fmtClock(t);
    out += `<text class="tick" data-ts="${t}" x="${x.toFixed(1)}" y="${y}" text-anchor="middle">${label}</text>`;
  }
  return out;
}

function linePath(points, X, y, get) {
  let d = "";
  let pen = false;
  points.forEach((p, i) => {
    const v = get(p);
    if (!isNum(v)) {
      pen = false;
      return;
    }
    d += `${pen ? "L" : "M"}${X.at(i).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  });
  return d;
}

function frame(width, height, inner) {
  return `<svg class="tchart" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img">${inner}</svg>`;
}

function cursorAndHit(X, top, bottom, height) {
  return `<line class="cursor" x1="0" x2="0" y1="${top}" y2="${bottom}" visibility="hidden"></line>` +
    `<rect class="hit" x="${X.x0}" y="0" width="${X.x1 - X.x0}" height="${height}"></rect>`;
}

/** Price line over the regime history: full-height bands of one labelling behind it, ribbons of both below. */
export function priceChart(points, { width, bands = "vol" }) {
  const H = 280;
  const top = 8;
  const bottom = H - 50;
  const X = xAxis(points.length, width);
  const closes = points.map((p) => p.close).filter(isNum);
  let lo = Math.min(...closes);
  let hi = Math.max(...closes);
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.01 || 1;
  lo -= pad;
  hi += pad;
  const y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);
  const gid = `pg${++gradientId}`;
  let s = `<defs><linearGradient id="${gid}" x1="0" x2="0" y1="0" y2="1"><stop offset="0" stop-color="#cfe0ff" stop-opacity="0.16"/><stop offset="1" stop-color="#cfe0ff" stop-opacity="0"/></linearGradient></defs>`;
  const volRuns = runs(points, (p) => p.vol ?? null);
  const hmmRuns = runs(points, (p) => p.hmm ?? null);
  for (const run of bands === "hmm" ? hmmRuns : volRuns) {
    if (!run.label) continue;
    const [x, w] = spanRect(X, run.from, run.to);
    const cls = bands === "hmm" ? `h-${run.label}` : `v-${run.label}`;
    s += `<rect class="band ${cls}" data-testid="band" data-kind="${bands}" data-regime="${esc(run.label)}" x="${x.toFixed(1)}" y="${top}" width="${w.toFixed(1)}" height="${bottom - top}"></rect>`;
  }
  const lastClose = points.length ? points[points.length - 1].close : null;
  for (const v of niceTicks(lo, hi, 5)) {
    s += `<line class="grid" x1="${X.x0}" x2="${X.x1}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}"></line>`;
    if (isNum(lastClose) && Math.abs(y(v) - y(lastClose)) < 13) continue; // under the last-price tag
    s += `<text class="tick" x="${X.x1 + 6}" y="${(y(v) + 3.5).toFixed(1)}">${fmtPrice(v)}</text>`;
  }
  const line = linePath(points, X, y, (p) => p.close);
  if (line) {
    s += `<path class="area" fill="url(#${gid})" d="${line}L${X.at(points.length - 1).toFixed(1)},${bottom}L${X.at(0).toFixed(1)},${bottom}Z"></path>`;
    s += `<path class="price-line" d="${line}"></path>`;
    const last = points[points.length - 1];
    if (isNum(last.close)) {
      const ly = y(last.close);
      s += `<circle class="last-dot" cx="${X.at(points.length - 1).toFixed(1)}" cy="${ly.toFixed(1)}" r="3"></circle>`;
      s += `<rect class="last-tag" x="${X.x1 + 2}" y="${(ly - 8).toFixed(1)}" width="${GEO.right - 4}" height="16" rx="3"></rect>`;
      s += `<text class="last-text" x="${X.x1 + 6}" y="${(ly + 4).toFixed(1)}">${fmtPrice(last.close)}</text>`;
    }
  }
  const ribbon = (rs, y0, prefix, name, testid) => {
    let out = `<text class="rib-label" x="${X.x1 + 6}" y="${y0 + 6.5}">${name}</text>`;
    for (const run of rs) {
      if (!run.label) continue;
      const [x, w] = spanRect(X, run.from, run.to);
      out += `<rect class="rib ${prefix}-${run.label}" data-testid="${testid}" data-regime="${esc(run.label)}" x="${x.toFixed(1)}" y="${y0}" width="${w.toFixed(1)}" height="7"></rect>`;
    }
    return out;
  };
  s += ribbon(volRuns, bottom + 5, "v", "vol", "vol-ribbon");
  s += ribbon(hmmRuns, bottom + 16, "h", "hmm", "hmm-ribbon");
  s += timeTicks(points, X, H - 6);
  s += cursorAndHit(X, top, bottom + 23, H);
  return frame(width, H, s);
}

/** Vol ratio against the low / normal / high boundaries, the zones tinted in the badge colours. */
export function ratioChart(points, thresholds, { width }) {
  const H = 124;
  const top = 8;
  const bottom = H - 22;
  const X = xAxis(points.length, width);
  const th = thresholds || {};
  const bounds = [th.low, th.normal, th.high].filter(isNum);
  const ratios = points.map((p) => p.ratio).filter(isNum);
  const hi = Math.max(...ratios, ...(bounds.length ? [bounds[bounds.length - 1] * 1.2] : [2])) * 1.06;
  const y = (v) => bottom - (Math.max(0, v) / hi) * (bottom - top);
  let s = "";
  if (isNum(th.low) && isNum(th.normal) && isNum(th.high)) {
    const zones = [["low", 0, th.low], ["normal", th.low, th.normal], ["high", th.normal, th.high], ["crisis", th.high, hi]];
    for (const [label, a, b] of zones) {
      s += `<rect class="zone v-${label}" x="${X.x0}" width="${X.x1 - X.x0}" y="${y(b).toFixed(1)}" height="${(y(a) - y(b)).toFixed(1)}"></rect>`;
    }
    for (const [name, v] of [["low", th.low], ["normal", th.normal], ["high", th.high]]) {
      s += `<line class="threshold" data-testid="threshold" data-name="${name}" data-value="${v}" x1="${X.x0}" x2="${X.x1}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}"></line>`;
      s += `<text class="tick" x="${X.x1 + 6}" y="${(y(v) + 3.5).toFixed(1)}">${fmtNum(v, 2)}</text>`;
    }
  }
  const line = linePath(points, X, y, (p) => p.ratio);
  if (line) s += `<path class="ratio-line" d="${line}"></path>`;
  const last = points[points.length - 1];
  if (last && isNum(last.ratio)) {
    s += `<circle class="last-dot" cx="${X.at(points.length - 1).toFixed(1)}" cy="${y(last.ratio).toFixed(1)}" r="2.6"></circle>`;
  }
  s += timeTicks(points, X, H - 6);
  s += cursorAndHit(X, top, bottom, H);
  return frame(width, H, s);
}

/** HMM probabilities over time as a stacked area, the first label at the bottom. Bars before the
 * model's first training have none: that stretch says so instead of staying blank. */
export function probChart(points, { width }) {
  const H = 112;
  const top = 8;
  const bottom = H - 22;
  const X = xAxis(points.length, width);
  const y = (v) => bottom - v * (bottom - top);
  let s = untrainedSpan(points, X, top, bottom);
  for (const seg of runs(points, (p) => Array.isArray(p.p))) {
    if (seg.label) s += probAreas(points, seg, X, y);
  }
  s += `<line class="grid mid" x1="${X.x0}" x2="${X.x1}" y1="${y(0.5)}" y2="${y(0.5)}"></line>`;
  for (const v of [0, 0.5, 1]) s += `<text class="tick" x="${X.x1 + 6}" y="${(y(v) + 3.5).toFixed(1)}">${v * 100}%</text>`;
  s += timeTicks(points, X, H - 6);
  s += cursorAndHit(X, top, bottom, H);
  return frame(width, H, s);
}

function probAreas(points, seg, X, y) {
  const idx = [];
  for (let i = seg.from; i <= seg.to; i++) idx.push(i);
  const cum = (i, k) => points[i].p.slice(0, k).reduce((a, v) => a + v, 0);
  return HMM_LABELS.map((label, k) => {
    const attrs = `class="parea h-${label}" data-testid="prob-area" data-regime="${label}"`;
    if (idx.length === 1) {
      const [x, w] = spanRect(X, seg.from, seg.to);
      return `<rect ${attrs} x="${x}" width="${w}" y="${y(cum(seg.from, k + 1))}" height="${y(cum(seg.from, k)) - y(cum(seg.from, k + 1))}"></rect>`;
    }
    const upper = idx.map((i) => `${X.at(i).toFixed(1)},${y(cum(i, k + 1)).toFixed(1)}`);
    const lower = idx.slice().reverse().map((i) => `${X.at(i).toFixed(1)},${y(cum(i, k)).toFixed(1)}`);
    return `<polygon ${attrs} points="${upper.join(" ")} ${lower.join(" ")}"></polygon>`;
  }).join("");
}

function untrainedSpan(points, X, top, bottom) {
  const first = points.findIndex((p) => Array.isArray(p.p));
  if (first <= 0) return "";
  const [x, w] = spanRect(X, 0, first - 1);
  const since = points[first].ts;
  const until = points[points.length - 1].ts - points[0].ts > DAY ? fmtDateTime(since) : fmtClock(since);
  const text = w >= 190 ? `HMM not trained until ${until}` : w >= 70 ? "not trained" : "";
  return `<rect class="untrained-span" data-testid="untrained-span" data-until="${since}" x="${x.toFixed(1)}" y="${top}" width="${w.toFixed(1)}" height="${bottom - top}"></rect>` +
    (text ? `<text class="untrained-text" x="${(x + w / 2).toFixed(1)}" y="${((top + bottom) / 2 + 4).toFixed(1)}" text-anchor="middle">${text}</text>` : "");
}

/** Hybrid score (in [-1, 1]) and the blended idle target (a fraction of NAV) on one axis. */
export function scoreChart(points, { width }) {
  const H = 112;
  const top = 8;
  const bottom = H - 22;
  const X = xAxis(points.length, width);
  const y = (v) => bottom - ((v + 1) / 2) * (bottom - top);
  let s = "";
  for (const v of [-1, -0.5, 0, 0.5, 1]) {
    s += `<line class="grid${v === 0 ? " zero" : ""}" x1="${X.x0}" x2="${X.x1}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}"></line>`;
    if (v !== -0.5 && v !== 0.5) s += `<text class="tick" x="${X.x1 + 6}" y="${(y(v) + 3.5).toFixed(1)}">${v > 0 ? "+" : ""}${v}</text>`;
  }
  const idle = linePath(points, X, y, (p) => p.idle);
  if (idle) s += `<path class="idle-line" d="${idle}"></path>`;
  const score = linePath(points, X, y, (p) => p.score);
  if (score) s += `<path class="score-line" d="${score}"></path>`;
  s += timeTicks(points, X, H - 6);
  s += cursorAndHit(X, top, bottom, H);
  return frame(width, H, s);
}

/** One cursor across every chart in ``root``; ``onMove(i | null)`` gets the hovered point. */
export function bindCursor(root, points, width, onMove) {
  const X = xAxis(points.length, width);
  const lines = [...root.querySelectorAll("line.cursor")];
  const show = (i) => {
    for (const l of lines) {
      if (i === null) {
        l.setAttribute("visibility", "hidden");
      } else {
        const x = X.at(i).toFixed(1);
        l.setAttribute("x1", x);
        l.setAttribute("x2", x);
        l.setAttribute("visibility", "visible");
      }
    }
    onMove(i);
  };
  for (const hit of root.querySelectorAll("rect.hit")) {
    hit.addEventListener("pointermove", (ev) => {
      const box = hit.ownerSVGElement.getBoundingClientRect();
      show(X.index(ev.clientX - box.left));
    });
    hit.addEventListener("pointerleave", () => show(null));
  }
}
