// The symbol view: one series' regimes now and over its history, the screener's decision, its data.

import { bindCursor, priceChart, probChart, ratioChart, scoreChart } from "./charts.js";
import {
  NA, candleAge, esc, fmtAge, fmtCount, fmtDateTime, fmtMult, fmtNum, fmtPct, fmtPrice, fmtSigned, fmtVol, isNum, na,
  titleCase, wallAge,
} from "./format.js";
import { paramsOf } from "./organism.js";
import {
  age, biasArrow, depthBadge, freshCell, hmmChip, hmmLabelChip, hmmView, kv, organismFor, organismLabel, placeOrganism,
  probWords, volBadge, volNamed, zeroBar,
} from "./pieces.js";
import { S, persist } from "./state.js";
import { COMPONENTS, HMM_LABELS, probKey, volLetter } from "./vocab.js";

export function renderSymbol() {
  const root = document.querySelector("[data-testid=symbol-view]");
  if (!root) return;
  if (!S.detail || S.detailKey !== S.route.hash) {
    root.innerHTML = loadingView(S.route);
    return;
  }
  // Other series' changes leave this view alone (and the chart cursor where it is).
  if (root._detail === S.detail && root._bands === S.bands) return;
  root._detail = S.detail;
  root._bands = S.bands;
  const snap = newestSnapshot(S.detail.snapshot);
  root.innerHTML = symbolLayout(snap, S.detail, Date.now());
  const params = paramsOf(snap);
  placeOrganism(root.querySelector("#sym-organism"), organismFor(snap.series), params, organismLabel(snap.symbol, params));
  root.querySelectorAll("[data-bands]").forEach((b) => b.addEventListener("click", () => {
    S.bands = b.dataset.bands;
    persist("bands", S.bands);
    renderSymbol();
  }));
  drawCharts();
}

function loadingView(route) {
  return `<div class="sym-head"><a class="back" href="#/">\u2190 Overview</a><h1>${esc(route.symbol)}</h1></div>
    <div class="card empty">${S.detailError ? `Cannot show this series: ${esc(S.detailError)}` : "Loading…"}</div>`;
}

/** The list's copy of the snapshot when it is newer than the one the detail came with. */
function newestSnapshot(s) {
  const live = S.byId.get(s.series);
  return live && (live.updated_at ?? 0) > (s.updated_at ?? 0) ? live : s;
}

function symbolLayout(snap, detail, now) {
  const { h, ok } = hmmView(snap);
  const card = (title, body, attrs = "") => `<div class="card"${attrs}><div class="card-h"><h2>${title}</h2></div>${body}</div>`;
  return `${symbolHead(snap, now)}
    <div class="sym-grid">
      <div class="main-col">
        <section class="card charts-card">
          <div class="card-h"><h2>Price &amp; regime history</h2><span class="muted">${detail.history.length} bars</span>${bandSwitch(detail.history)}</div>
          <div id="charts">${chartsBlock(snap, detail.history)}</div>
        </section>
        <div class="card-row">
          ${card("Sizing", sizingCard(snap))}
          ${card("Hybrid weights in force", weightsCard(snap.screener), ' data-testid="weights-card"')}
          ${card("Grid bias &amp; idle target", gridCard(snap.screener))}
        </div>
        <section class="card"><div class="card-h"><h2>Transitions</h2><span class="muted">newest first</span></div><div class="table-wrap">${transitionsTable(detail.transitions)}</div></section>
      </div>
      <aside class="side">
        <div class="card organism-card"><div class="card-h"><h2>HMM regime</h2><span class="muted">${ok ? `${h.observation_count ?? NA} candles since training` : ""}</span></div>
          <div class="org-wrap"><div class="org-slot xl" id="sym-organism" data-testid="symbol-organism"></div></div>${hmmCard(snap)}</div>
        ${card("Consensus across timeframes", consensusCard(detail.consensus, snap.timeframe), ' data-testid="consensus-card"')}
        ${card("Volatility", volCard(snap, detail.thresholds))}
        ${card("Data pipeline", pipelineCard(snap, now))}
      </aside>
    </div>`;
}

function symbolHead(snap, now) {
  const price = snap.price ? `${fmtPrice(snap.price.close)} <span class="sub">${fmtDateTime(snap.price.ts)}</span>` : na();
  return `<div class="sym-head">
      <a class="back" href="#/" aria-label="Back to the overview">\u2190<span class="back-text"> Overview</span></a>
      <h1 data-testid="symbol-title">${esc(snap.symbol)}</h1>
      <span class="sub">${esc(snap.exchange)} · ${esc(snap.timeframe)}</span>
      ${snap.tier ? `<span class="tier">${esc(snap.tier)}</span>` : ""}
      <span data-testid="symbol-vol">${volBadge(snap.vol_regime, snap.vol, { big: true })}</span>
      <span data-testid="symbol-hmm">${hmmChip(snap.hmm_regime)}</span>
      <span class="spacer"></span>
      <span class="sym-price">
        <span class="price" data-testid="symbol-price">${price}</span>
        <span data-testid="symbol-fresh">${freshCell(snap, now)}</span>
      </span>
    </div>`;
}

function bandSwitch(history) {
  if (!history.length) return "";
  const seg = (mode, text) => `<button type="button" data-bands="${mode}" aria-pressed="${S.bands === mode}">${text}</button>`;
  return `<span class="seg" role="group" aria-label="Bands behind the price">${seg("vol", "Vol bands")}${seg("hmm", "HMM bands")}</span>`;
}

function chartsBlock(snap, history) {
  if (!history.length) return `<div class="empty" data-testid="no-history">No history yet: points appear with the screener's first decision.</div>`;
  const legend = HMM_LABELS.map((l) => `<i class="h-${l}"></i>${l.toLowerCase()}`).join(" ");
  return `<div class="readout" id="readout" data-testid="chart-readout"></div>
    <div class="chart" id="ch-price" data-testid="price-chart"></div>
    <div class="chart-h">Vol ratio <span class="muted">short / long, against the regime thresholds</span></div>
    <div class="chart" id="ch-ratio" data-testid="ratio-chart"></div>
    <div class="chart-h">HMM probabilities <span class="legend">${legend}</span></div>
    <div class="chart" id="ch-prob" data-testid="prob-chart"></div>
    <div class="chart-h">Hybrid score &amp; idle target <span class="legend"><i class="l-score"></i>hybrid score <i class="l-idle"></i>idle target</span></div>
    <div class="chart" id="ch-score" data-testid="score-chart"></div>`;
}

/** Candles the HMM has against the window it trains on, from ingest's report (else the model's own count). */
function trainingCandles(snap) {
  const h = snap.hmm_regime;
  const have = snap.hmm_data_pipeline?.samples ?? h?.observation_count;
  return { have, need: S.config?.hmm?.HMM_TRAINING_CANDLES, first: S.config?.hmm?.HMM_MIN_TRAIN_SAMPLES };
}

function hmmCard(snap) {
  const h = snap.hmm_regime;
  if (!h) return `<p class="muted" data-testid="hmm-missing">No HMM verdict yet for this series.</p>`;
  if (!h.trained) {
    const { have, need } = trainingCandles(snap);
    return `<p class="muted" data-testid="hmm-missing">Model not trained yet: the verdict is the neutral default.</p>
      ${kv("Training candles", `${fmtCount(have)} / ${fmtCount(need)}`, "hmm-training-candles")}${kv("Candles filtered", h.observation_count ?? NA)}`;
  }
  const probs = HMM_LABELS.map((l) => {
    const v = h.probabilities?.[probKey(l)];
    return `<div class="prob-row"><span>${titleCase(l)}</span><span class="bar-track"><i class="h-${l}" style="width:${isNum(v) ? v * 100 : 0}%"></i></span><span class="num">${fmtPct(v, 1)}</span></div>`;
  }).join("");
  return `${kv("Regime", hmmLabelChip(h.regime))}<div class="probs">${probs}</div>
    ${kv("Confidence", fmtPct(h.confidence, 0), "hmm-confidence")}${kv("Training depth", depthBadge(h), "hmm-depth")}
    ${kv("Bias signal", biasArrow(h.bias_signal))}
    ${kv("In regime since", fmtDateTime(h.since_ts))}${kv("Blend factor", fmtNum(h.blend_factor, 2))}`;
}

/** The symbol's timeframes reduced to one verdict (state_publisher writes it when consensus.enabled). */
function consensusCard(c, timeframe) {
  if (!c) return `<p class="muted" data-testid="consensus-missing">No consensus: off in the config (consensus.enabled) or no HMM verdict yet.</p>`;
  const tfs = (list) => (list.length ? list.map((tf) => (tf === timeframe ? `<b>${esc(tf)}</b>` : esc(tf))).join(", ") : "none");
  const asOf = Object.entries(c.as_of || {}).map(([tf, ts]) => `${esc(tf)} ${fmtDateTime(ts)}`).join(" · ");
  return `${kv("Agreed regime", c.voting.length ? hmmLabelChip(c.regime) : `<span class="muted">no trained timeframe yet</span>`, "consensus-regime")}
    ${kv("Agreement", fmtPct(c.agreement, 0), "consensus-agreement")}${kv("Bias", biasArrow(c.bias), "consensus-bias")}
    ${kv("Dissenting", c.dissenting.length ? `<span class="warn-text">${tfs(c.dissenting)}</span>` : "none", "consensus-dissenting")}
    ${kv("Voting", tfs(c.voting))}${c.untrained.length ? kv("Untrained", tfs(c.untrained)) : ""}
    ${asOf ? `<p class="muted small" data-testid="consensus-as-of">as of ${asOf}</p>` : ""}`;
}

function volCard(snap, thresholds) {
  const vol = snap.vol;
  if (!vol) return `<p class="muted">No volatility verdict yet.</p>${kv("Short vol", na(), "vol-short")}${kv("Long vol", na(), "vol-long")}${kv("Ratio", na(), "vol-ratio")}`;
  return `${kv("Regime", volBadge(snap.vol_regime, vol) + ` <span class="muted">${esc(snap.vol_regime ?? "")}</span>`)}
    ${kv("Short vol", fmtVol(vol.short), "vol-short")}${kv("Long vol", fmtVol(vol.long), "vol-long")}${kv("Ratio", fmtNum(vol.ratio, 2), "vol-ratio")}
    ${kv("Raw label", vol.raw_label ? volNamed(vol.raw_label) : na(), "vol-raw")}${kv("Pending", pendingText(vol), "vol-pending")}
    ${kv("Thresholds", thresholds ? `${fmtNum(thresholds.low)} / ${fmtNum(thresholds.normal)} / ${fmtNum(thresholds.high)}` : NA)}
    ${kv("Samples", `${vol.samples ?? NA}${vol.sufficient === false ? ` <span class="warn-text">warming up</span>` : ""}`)}
    ${kv("In regime since", fmtDateTime(vol.since_ts))}`;
}

/** A label that cleared the hysteresis band and waits to lead confirm_bars bars (from /api/config) in a row. */
function pendingText(vol) {
  if (!vol.pending_label) return `<span class="muted">none</span>`;
  const bars = S.config?.vol_confirmation?.confirm_bars;
  const wait = isNum(bars) ? ` <span class="muted">awaiting confirmation (${bars} bars in a row)</span>` : ` <span class="muted">awaiting confirmation</span>`;
  return volNamed(vol.pending_label) + wait;
}

function sizingCard(snap) {
  const sc = snap.screener;
  const capped = sc && sc.capped ? ` <span class="warn-text">capped</span>` : "";
  return `${kv("Tier", esc(snap.tier) || NA)}${kv("Multiplier", sc ? fmtMult(sc.sizing_multiplier) : na(), "sizing-mult")}
    ${kv("Base NAV/trade", sc ? fmtPct(sc.base_per_trade_nav_pct) : na())}
    ${kv("Effective NAV/trade", sc ? fmtPct(sc.effective_per_trade_nav_pct) + capped : na(), "effective-nav")}`;
}

function weightsCard(sc) {
  if (!sc || !sc.weights) return `<p class="muted">No screener decision yet.</p>${kv("Hybrid score", na(), "hybrid-score")}`;
  const w = sc.weights;
  const scores = sc.scores || {};
  const defaulted = new Set(sc.defaulted || []);
  const comps = COMPONENTS.filter((c) => c in w).concat(Object.keys(w).filter((c) => !COMPONENTS.includes(c)));
  const stack = comps.map((c) => `<i class="w-${esc(c)}" style="width:${(w[c] * 100).toFixed(2)}%" data-tip="${esc(c)} ${fmtPct(w[c], 1)}"></i>`).join("");
  const rowsHtml = comps.map((c) => `<tr><td><span class="dot w-${esc(c)}"></span>${esc(c)}${defaulted.has(c) ? ` <span class="muted small" data-tip="no published score: neutral 0">defaulted</span>` : ""}</td>
      <td class="num">${fmtPct(w[c], 1)}</td><td class="num">${fmtSigned(scores[c])}</td><td class="num">${isNum(w[c]) && isNum(scores[c]) ? fmtSigned(w[c] * scores[c], 3) : NA}</td></tr>`).join("");
  return `<div class="wstack" data-testid="weights-stack">${stack}</div>
    <table class="mini"><thead><tr><th>Component</th><th class="num">Weight</th><th class="num">Score</th><th class="num">w×s</th></tr></thead><tbody>${rowsHtml}</tbody></table>
    ${kv("Hybrid score", zeroBar(sc.hybrid_score), "hybrid-score")}`;
}

const GRID_MODES = { symmetric: "Symmetric", long_bias: "Long bias \u2191", short_bias: "Short bias \u2193" };

function gridCard(sc) {
  const gb = sc && sc.grid_bias;
  const mode = gb ? GRID_MODES[gb.mode] || esc(gb.mode) : null;
  return `${kv("Grid mode", mode ?? na(), "grid-mode")}
    ${kv("Sell-side (A) spacing", gb ? fmtMult(gb.entry_spacing_mult_a) : na())}${kv("Buy-side (B) spacing", gb ? fmtMult(gb.entry_spacing_mult_b) : na())}
    ${kv("Size skew override", gb && isNum(gb.size_skew_override) ? fmtSigned(gb.size_skew_override) : na())}
    ${kv("Blended idle target", sc ? fmtPct(sc.dynamic_idle_target, 1) : na(), "idle-target")}
    ${kv("Trend score", sc ? fmtSigned(sc.trend_score) : na())}${kv("HMM bias used", sc ? fmtSigned(sc.hmm_bias) : na())}
    ${kv("Bias from", sc ? biasSource(sc.consensus) : na(), "bias-source")}
    ${kv("Blend with trend", sc ? fmtNum(sc.blend_factor, 2) : na())}`;
}

// With consensus.screener the decision's HMM inputs are the symbol's consensus as of the bar, not the series' own.
function biasSource(c) {
  if (!c) return "this timeframe";
  const voting = c.voting.length ? c.voting.map(esc).join(" + ") : "no trained timeframe";
  return `consensus of ${voting} (${esc(c.regime)}, agreement ${fmtPct(c.agreement, 0)})`;
}

function pipelineCard(snap, now) {
  const p = snap.hmm_data_pipeline;
  const h = snap.hmm_regime;
  const trainedAt = h && isNum(h.trained_at) ? h.trained_at : null;
  const training = `${kv("Trained", h ? (h.trained ? "yes" : `<span class="warn-text">no</span>`) : na(), "pipeline-trained")}
    ${kv("Since last training", trainedAt ? age(candleAge(snap, trainedAt, now)) : na())}`;
  if (!p) return `<p class="muted">No pipeline report yet.</p>${kv("Freshness", freshCell(snap, now))}${training}`;
  const backfill = p.backfill_last_at ? `${age(wallAge(p.backfill_last_at, now))} ago · ${p.backfill_last_rows ?? NA} rows` : na();
  return `${kv("Source", esc(p.source))}${kv("Freshness", `${freshCell(snap, now)} <span class="muted">limit ${fmtAge(p.freshness_limit_sec)}</span>`)}
    ${kv("Coverage", `${fmtNum(p.coverage_pct, 1)}% <span class="muted">${p.samples ?? NA} bars</span>`)}${kv("Gaps", p.gaps ?? NA)}
    ${kv("Backfill", backfill)}
    ${p.last_error ? kv("Last error", `<span class="bad-text">${esc(p.last_error)}</span>`) : ""}${training}`;
}

function transitionsTable(transitions) {
  if (!transitions.length) return `<div class="empty" data-testid="no-transitions">No regime transitions recorded yet.</div>`;
  const chip = (t, l) => (t.kind === "vol" ? volNamed(l) : hmmLabelChip(l));
  const rowsHtml = transitions.map((t) => {
    const m = t.kind === "vol" ? fmtNum(t.ratio, 2) : isNum(t.confidence) ? fmtPct(t.confidence, 0) : NA;
    return `<tr data-testid="transition" data-kind="${esc(t.kind)}" data-from="${esc(t.from)}" data-to="${esc(t.to)}">
      <td class="t-time" data-label="Time">${fmtDateTime(t.ts)}</td><td class="t-kind" data-label="Kind">${t.kind === "vol" ? "Vol" : "HMM"}</td>
      <td class="t-from" data-label="From">${chip(t, t.from)}</td><td class="t-arrow muted">\u2192</td><td class="t-to" data-label="To">${chip(t, t.to)}</td>
      <td class="num t-m" data-label="${t.kind === "vol" ? "Ratio" : "Conf."}">${m}</td><td class="num t-close" data-label="Close">${fmtPrice(t.close)}</td></tr>`;
  }).join("");
  return `<table class="grid compact phone-cards" data-testid="transitions"><thead><tr><th>Time (UTC)</th><th>Kind</th><th>From</th><th></th><th>To</th><th class="num">Ratio / conf.</th><th class="num">Close</th></tr></thead>
    <tbody>${rowsHtml}</tbody></table>`;
}

// ---------------------------------------------------------------- charts

/** History to draw. A model that was never trained publishes the neutral default, not a belief: hide it. */
function chartPoints(detail) {
  const h = detail.snapshot.hmm_regime;
  const neverTrained = h && !h.trained && !isNum(h.trained_at);
  return neverTrained ? detail.history.map((p) => ({ ...p, hmm: null, p: null })) : detail.history;
}

export function drawCharts() {
  const box = document.getElementById("charts");
  if (!box || !S.detail || !S.detail.history.length) return;
  const points = chartPoints(S.detail);
  const width = Math.max(280, Math.floor(box.clientWidth || 640));
  document.getElementById("ch-price").innerHTML = priceChart(points, { width, bands: S.bands });
  document.getElementById("ch-ratio").innerHTML = ratioChart(points, S.detail.thresholds, { width });
  const hasP = points.some((p) => Array.isArray(p.p));
  document.getElementById("ch-prob").innerHTML = hasP ? probChart(points, { width }) : noProbabilities(newestSnapshot(S.detail.snapshot));
  document.getElementById("ch-score").innerHTML = scoreChart(points, { width });
  box.dataset.width = String(width);
  const show = (i) => readout(points, i);
  bindCursor(box, points, width, show);
  show(null);
}

/** Why the probabilities chart has nothing to draw, and for an untrained model how far it is from training. */
function noProbabilities(snap) {
  const h = snap.hmm_regime;
  let text = "No HMM probabilities recorded for this series.";
  if (!h) text = "No HMM verdict yet for this series.";
  else if (!h.trained) {
    const { have, need, first } = trainingCandles(snap);
    const when = isNum(first) ? `<span class="muted">It first trains once ${fmtCount(first)} bars are usable, each time on up to the last ${fmtCount(need)} candles.</span>` : "";
    text = `<b data-testid="hmm-untrained-progress">HMM not trained yet: ${fmtCount(have)} / ${fmtCount(need)} candles</b> ${when}`;
  }
  return `<div class="empty slim" data-testid="no-probabilities">${text}</div>`;
}

/** The cursor's bar (null: the latest) across all the charts, every figure named. */
function readout(points, i) {
  const p = points[i === null ? points.length - 1 : i];
  const el = document.getElementById("readout");
  if (!p || !el) return;
  const vol = p.vol ? `<span class="badge sm vb-${p.vol}">${volLetter(p.vol)}</span> ${esc(p.vol)}` : NA;
  const probs = Array.isArray(p.p) ? ` <span class="muted" data-testid="readout-probs">${probWords(p.p)}</span>` : "";
  const hmm = p.hmm ? `<b class="h-text-${p.hmm}">${titleCase(p.hmm)}</b>${probs}` : NA;
  el.innerHTML = `<span class="muted">${i === null ? "latest" : "at"}</span> ${fmtDateTime(p.ts)}
    <span>close <b>${fmtPrice(p.close)}</b></span>
    <span>vol ${vol} · ratio <b>${fmtNum(p.ratio, 2)}</b></span>
    <span>HMM ${hmm}</span>
    <span>score <b>${fmtSigned(p.score)}</b></span><span>idle <b>${fmtPct(p.idle, 1)}</b></span><span>NAV <b>${fmtPct(p.nav, 2)}</b></span>`;
}
