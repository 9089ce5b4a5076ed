// The regime organism ("Bauhaus overlay"): an SVG body whose shape, colour, edge and posture
// follow the HMM verdict.
//   probabilities -> shape and palette, blended (bearish: cool, contracted, drooping;
//                    ranging: neutral, round, breathing; bullish: warm, rising flame)
//   confidence    -> edge sharpness (body blur and outline opacity; wobble grows as it falls)
//   bias_signal   -> lean and drift in the bias' direction, proportional to its size
// Targets are approached continuously (exponential easing), so a change of probabilities morphs
// the body instead of cutting to a new picture. One requestAnimationFrame loop drives every
// organism on the page; it stops by itself when none is on screen or the tab is hidden.
// Probability triples run in the vocabulary's HMM label order; shapes and colours are per label.

import { HMM_LABELS, probKey } from "./vocab.js";

const NS = "http://www.w3.org/2000/svg";
const EASE_SEC = 0.8; // time constant of the morph towards a new verdict
const FRAME_SEC = 1 / 30;
const POINTS = 44;
const PARTICLES = 7;
const R = 24; // base radius in viewBox units (the box is 100 x 100)

// Palettes per label: core and rim colours, RGB. A label without one is drawn grey.
const CORE = { BEARISH: [176, 190, 255], RANGING: [222, 218, 204], BULLISH: [255, 219, 138] };
const RIM = { BEARISH: [84, 72, 220], RANGING: [104, 124, 118], BULLISH: [240, 108, 44] };
const GREY_CORE = [120, 130, 140];
const GREY_RIM = [70, 80, 92];

const reducedMotion = typeof matchMedia === "function" && matchMedia("(prefers-reduced-motion: reduce)").matches;
const alive = new Set();
let frame = 0;
let lastTick = 0;
let lastDraw = 0;
let uid = 0;

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const mix = (cols, w) => cols[0].map((_, i) => cols.reduce((acc, c, j) => acc + c[i] * w[j], 0));
const lerp = (a, b, t) => a.map((v, i) => v + (b[i] - v) * t);
const rgb = (c) => `rgb(${c.map((v) => Math.round(clamp(v, 0, 255))).join(",")})`;
const even = () => HMM_LABELS.map(() => 1 / HMM_LABELS.length);
const palette = (table, grey) => HMM_LABELS.map((l) => table[l] ?? grey);

function closedCurve(pts) {
  const n = pts.length;
  const f = (v) => v.toFixed(2);
  let d = `M${f(pts[0][0])},${f(pts[0][1])}`;
  for (let i = 0; i < n; i++) {
    const p0 = pts[(i - 1 + n) % n];
    const p1 = pts[i];
    const p2 = pts[(i + 1) % n];
    const p3 = pts[(i + 2) % n];
    d += `C${f(p1[0] + (p2[0] - p0[0]) / 6)},${f(p1[1] + (p2[1] - p0[1]) / 6)} ` +
      `${f(p2[0] - (p3[0] - p1[0]) / 6)},${f(p2[1] - (p3[1] - p1[1]) / 6)} ${f(p2[0])},${f(p2[1])}`;
  }
  return d + "Z";
}

/** What the organism of one snapshot shows: null fields become the "no verdict" state. */
export function paramsOf(snap) {
  const h = snap && snap.hmm_regime;
  if (!h) return { status: "none" };
  const p = h.probabilities || {};
  const probs = HMM_LABELS.map((l) => p[probKey(l)]).map((v) => (Number.isFinite(v) ? v : 1 / HMM_LABELS.length));
  if (!h.trained) return { status: "untrained", probs: even(), confidence: 0, bias: 0 };
  return {
    status: "ok",
    regime: h.regime,
    probs,
    confidence: Number.isFinite(h.confidence) ? h.confidence : 0,
    bias: Number.isFinite(h.bias_signal) ? h.bias_signal : 0,
  };
}

/** The whole market as one organism: mean probabilities and bias of the trained series. */
export function marketParams(snaps) {
  const ok = snaps.map(paramsOf).filter((p) => p.status === "ok");
  if (!ok.length) return { status: "none", n: 0 };
  const probs = HMM_LABELS.map((_, i) => ok.reduce((a, p) => a + p.probs[i], 0) / ok.length);
  const sorted = [...probs].sort((a, b) => b - a);
  return {
    status: "ok",
    regime: HMM_LABELS[probs.indexOf(sorted[0])],
    probs,
    confidence: sorted[0] - sorted[1],
    bias: ok.reduce((a, p) => a + p.bias, 0) / ok.length,
    n: ok.length,
  };
}

export class Organism {
  constructor(label = "") {
    this.id = ++uid;
    this.phase = Math.random() * 20;
    this.status = "none";
    this.placed = false; // the first verdict is shown as it is; later ones are morphed to
    // "vis" is how much of the regime shows (0 for no verdict); all five are eased together.
    this.cur = { p: even(), c: 0, b: 0, vis: 0 };
    this.tgt = { p: even(), c: 0, b: 0, vis: 0 };
    this.build(label);
    alive.add(this);
    this.draw(0);
  }

  build(label) {
    const id = this.id;
    const svg = el("svg", { viewBox: "0 0 100 100", class: "organism", role: "img", "data-testid": "organism" });
    svg.setAttribute("aria-label", label || "regime organism");
    const defs = el("defs", {}, svg);
    const grad = el("radialGradient", { id: `og-g${id}`, cx: "50%", cy: "38%", r: "70%" }, defs);
    this.stops = [0, 0.55, 1].map((o) => el("stop", { offset: o }, grad));
    const glow = el("radialGradient", { id: `og-h${id}` }, defs);
    this.glowStops = [0, 1].map((o) => el("stop", { offset: o, "stop-opacity": o ? 0 : 0.45 }, glow));
    const filter = el("filter", { id: `og-f${id}`, x: "-40%", y: "-40%", width: "180%", height: "180%" }, defs);
    this.blur = el("feGaussianBlur", { stdDeviation: 0 }, filter);

    this.halo = el("circle", { cx: 50, cy: 50, r: 48, fill: `url(#og-h${id})`, class: "og-halo" }, svg);
    this.ring = el("g", { class: "og-ring", transform: "rotate(-90 50 50)" }, svg);
    el("circle", { cx: 50, cy: 50, r: 45, class: "og-ring-track", pathLength: 100 }, this.ring);
    this.arcs = HMM_LABELS.map((label) =>
      el("circle", { cx: 50, cy: 50, r: 45, pathLength: 100, class: `og-arc h-${label}`, "data-regime": label }, this.ring),
    );
    this.lean = el("g", { class: "og-lean" }, svg);
    this.axis = el("line", { x1: 50, y1: 14, x2: 50, y2: 90, class: "og-axis" }, this.lean);
    this.body = el("path", { fill: `url(#og-g${id})`, filter: `url(#og-f${id})`, class: "og-body" }, this.lean);
    this.edge = el("path", { fill: "none", class: "og-edge" }, this.lean);
    this.nucleus = el("circle", { cx: 50, cy: 50, r: 4, class: "og-nucleus" }, this.lean);
    // Spores: they rise out of a bullish body, sink out of a bearish one and orbit a ranging one.
    this.spores = Array.from({ length: PARTICLES }, () => el("circle", { r: 1.4, class: "og-spore" }, this.lean));
    this.svg = svg;
  }

  /** New verdict: the body eases towards it from wherever it is now. */
  set(params, label) {
    const status = params.status;
    this.status = status;
    const ok = status === "ok";
    this.tgt = {
      p: ok ? params.probs.slice() : even(),
      c: ok ? clamp(params.confidence, 0, 1) : 0,
      b: ok ? clamp(params.bias, -1, 1) : 0,
      vis: ok ? 1 : 0,
    };
    const ds = this.svg.dataset;
    ds.status = status;
    ds.regime = ok ? params.regime : "";
    ds.confidence = ok ? this.tgt.c.toFixed(3) : "";
    ds.bias = ok ? this.tgt.b.toFixed(3) : "";
    if (label) this.svg.setAttribute("aria-label", label);
    if (reducedMotion || !this.placed) this.cur = structuredClone(this.tgt);
    this.placed = true;
    this.draw(performance.now() / 1000);
    wake();
  }

  step(dt, t) {
    const k = 1 - Math.exp(-dt / EASE_SEC);
    const c = this.cur;
    const g = this.tgt;
    c.p = c.p.map((v, i) => v + (g.p[i] - v) * k);
    c.c += (g.c - c.c) * k;
    c.b += (g.b - c.b) * k;
    c.vis += (g.vis - c.vis) * k;
    this.draw(t);
  }

  draw(t) {
    const { p, c, b, vis } = this.cur;
    const share = (label) => p[HMM_LABELS.indexOf(label)] ?? 0;
    const f = {
      p, b, vis,
      pb: share("BEARISH"), pr: share("RANGING"), pu: share("BULLISH"),
      tt: reducedMotion ? 0 : t + this.phase,
      calm: 1 - vis, // no verdict: a grey, slowly breathing, uncertain shape
      conf: c * vis,
    };
    f.rise = (f.pb - f.pu) * 5 * vis; // bullish floats up, bearish sinks
    this.drawShape(f);
    const core = this.drawColours(f);
    this.drawPosture(f, core);
    this.drawSpores(f, core);
    this.drawRing(f);
  }

  drawShape({ pb, pr, pu, tt, calm, conf, vis, rise }) {
    const wobble = 0.018 + 0.085 * (1 - conf);
    const breathe = 1 + 0.04 * Math.sin(tt * 1.15) * (0.35 + pr + calm);
    const contract = 1 - 0.06 * pb * (0.5 + 0.5 * Math.sin(tt * 0.8));
    const pts = [];
    for (let j = 0; j < POINTS; j++) {
      const th = (2 * Math.PI * j) / POINTS;
      const up = Math.cos(th); // 1 at the top
      const bull = 1 + 0.36 * up - 0.05 * Math.cos(2 * th) + 0.07 * Math.sin(3 * th - tt * 2.4) * (0.55 + 0.45 * up);
      const bear = 0.88 - 0.17 * up + 0.05 * Math.cos(2 * th) + 0.045 * Math.sin(2 * th + tt * 1.2) * (0.6 - 0.4 * up);
      const range = 1 - 0.07 * Math.cos(2 * th) + 0.025 * Math.sin(4 * th + tt * 0.7);
      let r = (pu * bull + pb * bear + pr * range) * vis + range * calm;
      r = r * breathe * contract + wobble * (0.6 * Math.sin(5 * th + tt * 1.7) + 0.4 * Math.sin(7 * th - tt * 2.3));
      pts.push([50 + R * r * Math.sin(th), 50 - R * r * up + rise]);
    }
    const d = closedCurve(pts);
    this.body.setAttribute("d", d);
    this.edge.setAttribute("d", d);
  }

  /** Palette, glow, blur and outline; returns the core colour the nucleus and spores are tinted from. */
  drawColours({ p, calm, conf, vis }) {
    const core = lerp(mix(palette(CORE, GREY_CORE), p), GREY_CORE, calm + 0.12 * (1 - conf) * vis);
    const rim = lerp(mix(palette(RIM, GREY_RIM), p), GREY_RIM, calm + 0.1 * (1 - conf) * vis);
    const mid = lerp(core, rim, 0.5);
    this.stops[0].setAttribute("stop-color", rgb(core));
    this.stops[1].setAttribute("stop-color", rgb(mid));
    this.stops[2].setAttribute("stop-color", rgb(rim));
    this.glowStops[0].setAttribute("stop-color", rgb(rim));
    this.glowStops[1].setAttribute("stop-color", rgb(rim));
    this.halo.setAttribute("opacity", (0.25 + 0.55 * vis * (0.4 + 0.6 * conf)).toFixed(3));
    // An unsure body is blurred, but never past the point where its shape stops reading.
    this.blur.setAttribute("stdDeviation", (0.2 + 4 * (1 - conf)).toFixed(2));
    this.edge.setAttribute("stroke", rgb(lerp(core, [255, 255, 255], 0.35)));
    this.edge.setAttribute("stroke-opacity", Math.max(0.9 * Math.pow(conf, 1.4), 0.5 * vis, 0.45 * calm).toFixed(3));
    this.edge.setAttribute("stroke-dasharray", vis < 0.5 ? "2 2.5" : "none");
    this.body.setAttribute("opacity", (0.45 + 0.55 * vis).toFixed(3));
    return core;
  }

  drawPosture({ pb, pu, tt, conf, vis, b, rise }, core) {
    this.nucleus.setAttribute("r", (2.2 + 5 * conf).toFixed(2));
    this.nucleus.setAttribute("cy", (50 + rise - (pu - pb) * 9 * vis).toFixed(2));
    this.nucleus.setAttribute("fill", rgb(lerp(core, [255, 255, 255], 0.55)));
    this.nucleus.setAttribute("opacity", (0.25 + 0.7 * conf).toFixed(3));
    // Lean about a point below the body, like a stem bending: +1 bias leans 18 degrees right.
    const sway = reducedMotion ? 0 : 1.5 * Math.sin(tt * 0.9) * (1 - conf);
    this.lean.setAttribute("transform", `translate(${(b * 3).toFixed(2)} 0) rotate(${(b * 18 + sway).toFixed(2)} 50 82)`);
    this.axis.setAttribute("stroke-opacity", (0.08 + 0.25 * Math.abs(b)).toFixed(3));
  }

  drawSpores({ pb, pr, pu, tt, conf, vis, rise }, core) {
    const flow = (pu - pb) * vis; // > 0 rises, < 0 sinks
    const a = Math.min(1, Math.abs(flow) * 1.4);
    const sporeFill = rgb(lerp(core, [255, 255, 255], 0.3));
    this.spores.forEach((dot, k) => {
      const u = (((tt * (0.16 + 0.3 * a) + k / PARTICLES) % 1) + 1) % 1;
      const side = Math.sin(k * 2.39 + tt * 0.6);
      const fx = 50 + side * (8 + 10 * u);
      const fy = flow >= 0 ? 46 + rise - u * 44 : 54 + rise + u * 40;
      const ang = 2 * Math.PI * u + k * 0.9;
      const ox = 50 + Math.cos(ang) * 36;
      const oy = 50 + Math.sin(ang) * 36;
      dot.setAttribute("cx", (ox + (fx - ox) * a).toFixed(2));
      dot.setAttribute("cy", (oy + (fy - oy) * a).toFixed(2));
      dot.setAttribute("r", (0.8 + 1.2 * conf * (1 - 0.5 * u)).toFixed(2));
      dot.setAttribute("fill", sporeFill);
      dot.setAttribute("opacity", (Math.sin(Math.PI * u) * vis * (0.15 + 0.7 * Math.max(a, pr * 0.6)) * (0.4 + 0.6 * conf)).toFixed(3));
    });
  }

  /** The ring around the body: one arc per label, its share of the circle its probability. */
  drawRing({ p, vis }) {
    let start = 0;
    this.arcs.forEach((arc, i) => {
      const len = Math.max(0, p[i] * 100 * vis - 0.8);
      arc.setAttribute("stroke-dasharray", `${len.toFixed(2)} ${(100 - len).toFixed(2)}`);
      arc.setAttribute("stroke-dashoffset", (-start).toFixed(2));
      start += p[i] * 100 * vis;
    });
  }

}

function tick(ms) {
  frame = 0;
  const t = ms / 1000;
  const dt = lastTick ? Math.min(0.25, t - lastTick) : FRAME_SEC;
  lastTick = t;
  if (t - lastDraw >= FRAME_SEC * 0.9) {
    const since = lastDraw ? Math.min(0.25, t - lastDraw) : dt;
    lastDraw = t;
    for (const o of alive) if (o.svg.isConnected) o.step(since, t);
  }
  if ([...alive].some((o) => o.svg.isConnected)) frame = requestAnimationFrame(tick);
}

/** Start the loop if it is not running (called when an organism is placed or gets a new verdict). */
export function wake() {
  if (!frame) {
    lastTick = 0;
    lastDraw = 0;
    frame = requestAnimationFrame(tick);
  }
}
