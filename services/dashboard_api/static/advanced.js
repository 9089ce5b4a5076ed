// The advanced tab: per vol regime the series, sizing and weights in force; per series the tuning
// metrics of both labellings and the data pipeline; the services' health.

import { NA, candleAge, esc, fmtAge, fmtBp, fmtMult, fmtNum, fmtPct, fmtVol, isNum, na, wallAge } from "./format.js";
import { age, freshCell, volBadge } from "./pieces.js";
import { S, symbolHref } from "./state.js";
import { COMPONENTS, HMM_LABELS, VOL_LABELS, hmmShort, volLetter } from "./vocab.js";

const mean = (xs) => (xs.length ? xs.reduce((a, v) => a + v, 0) / xs.length : null);
const seriesLink = (s) => `<a href="${symbolHref(s)}">${esc(s.symbol)}</a>`;

export function renderAdvanced() {
  const root = document.querySelector("[data-testid=advanced-view]");
  if (!root) return;
  const now = Date.now();
  const snaps = [...S.snaps].sort((a, b) => a.series.localeCompare(b.series));
  const byLabel = Object.fromEntries(VOL_LABELS.map((l) => [l, snaps.filter((s) => s.vol_regime === l)]));
  const sum = S.summary || {};
  const card = (testid, title, note, body, wide = false) => `<section class="card${wide ? " wide" : ""}" data-testid="${testid}">
      <div class="card-h"><h2>${title}</h2>${note}</div><div class="table-wrap">${body}</div></section>`;
  const weightsNote = `<span class="muted" data-tip="Mean weights in force over the series in each regime.\n×: the modifier the config applies to the component in that regime.">weights in force · × configured modifier</span>`;
  root.innerHTML = `<div class="adv-grid">
    ${card("vol-regimes-block", "Vol Regimes", `<span class="muted">${isNum(sum.symbols) ? sum.symbols : NA} symbols</span>`, volRegimesTable(byLabel, sum))}
    ${card("weights-block", "Hybrid weight modifiers per vol regime", weightsNote, weightsTable(byLabel))}
    ${card("tuning-block", "HMM tuning", `<span class="muted">per series: regime flips, mean time in each regime and mean next-bar return in it</span>`, tuningTable(snaps, "hmm_tuning", HMM_LABELS, hmmTag, "hmm-tuning", now), true)}
    ${card("vol-tuning-block", "Vol regime tuning", `<span class="muted">the same metrics for the volatility labels</span>`, tuningTable(snaps, "vol_tuning", VOL_LABELS, volTag, "vol-tuning", now), true)}
    ${card("pipeline-block", "Data pipeline", `<span class="muted">freshness, coverage, backfill and training per series</span>`, pipelineTable(snaps, now), true)}
    ${card("services-block", "Services", `<span class="muted">${esc(S.status?.namespace || "")}</span>`, servicesTable(now), true)}
  </div>`;
}

function volRegimesTable(byLabel, sum) {
  const counts = sum.vol_regime_summary || {};
  const avgShort = sum.vol_regime_avg_vol_short || {};
  const rowsHtml = VOL_LABELS.map((l) => {
    const members = byLabel[l];
    const longs = members.map((s) => s.vol?.long).filter(isNum);
    const ratios = members.map((s) => s.vol?.ratio).filter(isNum);
    const mults = members.map((s) => s.screener?.sizing_multiplier).filter(isNum);
    const lo = Math.min(...mults);
    const hi = Math.max(...mults);
    const multTxt = mults.length ? (lo === hi ? fmtMult(lo) : `${fmtMult(lo)}–${fmtNum(hi)}`) : NA;
    const names = members.length ? members.map(seriesLink).join(" ") : `<span class="muted">${NA}</span>`;
    return `<tr data-testid="vol-regime-row" data-regime="${l}"><td data-label="Regime">${volBadge(l, null)} <span>${l}</span></td>
      <td class="num" data-label="Symbols" data-testid="vol-regime-count">${isNum(counts[l]) ? counts[l] : NA}</td>
      <td class="num" data-label="Avg short vol" data-testid="vol-regime-avg">${counts[l] ? fmtVol(avgShort[l]) : NA}</td>
      <td class="num" data-label="Avg long vol">${fmtVol(mean(longs))}</td><td class="num" data-label="Avg ratio">${fmtNum(mean(ratios), 2)}</td>
      <td class="num" data-label="Sizing">${multTxt}</td><td class="names" data-label="Series" data-testid="vol-regime-series">${names}</td></tr>`;
  }).join("");
  return `<table class="grid compact wrap-head phone-cards" data-testid="vol-regimes-table"><thead><tr><th>Regime</th><th class="num">Symbols</th><th class="num">Avg short vol</th><th class="num">Avg long vol</th><th class="num">Avg ratio</th><th class="num">Sizing</th><th>Series</th></tr></thead>
    <tbody>${rowsHtml}</tbody></table>`;
}

/** Weights in force per vol regime (mean over the series in it), each with the modifier the config gives it. */
function weightsTable(byLabel) {
  const wMean = Object.fromEntries(VOL_LABELS.map((l) => {
    const ws = byLabel[l].map((s) => s.screener?.weights).filter(Boolean);
    return [l, ws.length ? Object.fromEntries(COMPONENTS.map((c) => [c, mean(ws.map((w) => w[c]).filter(isNum))])) : null];
  }));
  const rowsHtml = VOL_LABELS.map((l) => {
    const w = wMean[l];
    const n = byLabel[l].filter((s) => s.screener?.weights).length;
    const cells = COMPONENTS.map((c) => weightCell(l, c, w)).join("");
    const stack = w ? `<div class="wstack slim">${COMPONENTS.map((c) => `<i class="w-${c}" style="width:${isNum(w[c]) ? w[c] * 100 : 0}%"></i>`).join("")}</div>` : na();
    return `<tr data-testid="weights-row" data-regime="${l}"><td data-label="Regime">${volBadge(l, null)} ${l}</td><td class="num" data-label="n">${n}</td>${cells}<td class="wcell" data-label="Mix">${stack}</td></tr>`;
  }).join("");
  const head = COMPONENTS.map((c) => `<th class="num"><span class="dot w-${c}"></span>${c}</th>`).join("");
  return `<table class="grid compact phone-cards" data-testid="weights-table"><thead><tr><th>Regime</th><th class="num">n</th>${head}<th></th></tr></thead><tbody>${rowsHtml}</tbody></table>`;
}

/** A component's mean weight in the regime and the modifier the config gives it there (none: ×1). */
function weightCell(label, c, w) {
  if (!w || !isNum(w[c])) return `<td class="num" data-label="${c}">${na()}</td>`;
  const configured = S.config.hybrid_weight_modifiers?.default?.[label]?.[c];
  const m = isNum(configured) ? configured : 1;
  const cls = m > 1.0005 ? "up" : m < 0.9995 ? "down" : "";
  return `<td class="num" data-label="${c}">${fmtPct(w[c], 1)} <span class="rel ${cls}" data-testid="modifier">${fmtMult(m)}</span></td>`;
}

const hmmTag = (l, head) => (head ? hmmShort(l) : `<span class="chip h-${esc(l)}">${esc(hmmShort(l))}</span>`);
const volTag = (l) => (VOL_LABELS.includes(l) ? `<span class="badge sm vb-${l}">${volLetter(l)}</span>` : esc(l));

function tuningTable(snaps, key, labels, tag, testid, now) {
  const rowsHtml = snaps.map((s) => tuningRow(s, s[key], labels, tag, testid, now)).join("");
  const lh = labels.map((l) => `<th class="num">${tag(l, true)}</th>`).join("");
  return `<table class="grid compact phone-cards" data-testid="${testid}"><thead>
    <tr><th rowspan="2">Series</th><th rowspan="2" class="num">Flips/day</th><th rowspan="2" class="num">Flips</th><th rowspan="2">Current</th>
    <th colspan="${labels.length}" class="grp">Mean dwell</th><th colspan="${labels.length}" class="grp">Fwd return / bar</th></tr>
    <tr>${lh}${lh}</tr></thead><tbody>${rowsHtml || `<tr><td colspan="${4 + labels.length * 2}">${na()}</td></tr>`}</tbody></table>`;
}

function tuningRow(s, t, labels, tag, testid, now) {
  const series = `<td data-label="Series">${seriesLink(s)} <span class="sub">${esc(s.timeframe)}</span></td>`;
  if (!t) return `<tr data-testid="${testid}-row">${series}<td class="num" colspan="${3 + labels.length * 2}">${na()}</td></tr>`;
  const since = isNum(t.current_since_ts) ? `<span class="sub">${age(candleAge(s, t.current_since_ts, now))}</span>` : "";
  const dwell = labels.map((l) => `<td class="num" data-label="Dwell ${esc(caption(l))}">${isNum(t.mean_dwell_min?.[l]) ? fmtAge(t.mean_dwell_min[l] * 60) : NA}</td>`).join("");
  const fwd = labels.map((l) => {
    const v = t.mean_forward_return?.[l];
    return `<td class="num ${isNum(v) ? (v > 0 ? "pos-text" : v < 0 ? "neg-text" : "") : ""}" data-label="Fwd ${esc(caption(l))}">${fmtBp(v)}</td>`;
  }).join("");
  return `<tr data-testid="${testid}-row">${series}
    <td class="num" data-label="Flips/day">${isNum(t.flips_per_day) ? fmtNum(t.flips_per_day, 1) : NA}</td><td class="num" data-label="Flips">${t.flips ?? NA}</td>
    <td data-label="Current" data-testid="tuning-current"><span class="named">${t.current ? tag(t.current) : NA} ${since}</span></td>${dwell}${fwd}</tr>`;
}

/** A label's short name in a phone card's caption: HMM labels by their short name, vol labels as they are. */
const caption = (l) => (HMM_LABELS.includes(l) ? hmmShort(l) : l);

function pipelineTable(snaps, now) {
  const rowsHtml = snaps.map((s) => {
    const p = s.hmm_data_pipeline;
    const h = s.hmm_regime;
    const trained = h ? (h.trained ? `<span class="ok-text">yes</span>` : `<span class="warn-text">no</span>`) : na();
    const since = h && isNum(h.trained_at) ? age(candleAge(s, h.trained_at, now)) : NA;
    const backfill = p && p.backfill_last_at ? `${age(wallAge(p.backfill_last_at, now))} ago · ${p.backfill_last_rows ?? NA} rows` : NA;
    return `<tr data-testid="pipeline-row" data-series="${esc(s.series)}"><td data-label="Series">${seriesLink(s)} <span class="sub">${esc(s.timeframe)}</span></td>
      <td data-label="Source">${p ? esc(p.source) : na()}</td><td class="num" data-label="Freshness">${freshCell(s, now)}</td><td class="num" data-label="Limit">${p ? fmtAge(p.freshness_limit_sec) : NA}</td>
      <td class="num" data-label="Coverage">${p ? `${fmtNum(p.coverage_pct, 1)}%` : NA}</td><td class="num" data-label="Bars">${p?.samples ?? NA}</td><td class="num" data-label="Gaps">${p?.gaps ?? NA}</td>
      <td data-label="Backfill">${backfill}${p?.backfill_last_message ? `<div class="sub">${esc(p.backfill_last_message)}</div>` : ""}</td>
      <td data-label="Last error">${p?.last_error ? `<span class="bad-text">${esc(p.last_error)}</span>` : NA}</td>
      <td data-label="Trained">${trained}</td><td class="num" data-label="Since training">${since}</td><td class="num" data-label="Obs.">${h?.observation_count ?? NA}</td></tr>`;
  }).join("");
  return `<table class="grid compact phone-cards" data-testid="pipeline-table"><thead><tr><th>Series</th><th>Source</th><th class="num">Freshness</th><th class="num">Limit</th><th class="num">Coverage</th><th class="num">Bars</th><th class="num">Gaps</th><th>Backfill</th><th>Last error</th><th>Trained</th><th class="num">Since training</th><th class="num">Obs.</th></tr></thead>
    <tbody>${rowsHtml || `<tr><td colspan="12">${na()}</td></tr>`}</tbody></table>`;
}

function servicesTable(now) {
  const services = S.status?.services || [];
  if (!services.length) return `<div class="empty">No service health reports.</div>`;
  const rowsHtml = services.map((v) => {
    const seen = wallAge(v.last_seen, now);
    return `<tr><td data-label="Service">${esc(v.service)}</td><td data-label="Replica">${esc(v.replica)}</td><td data-label="Host">${esc(v.host)} <span class="sub">pid ${esc(v.pid)}</span></td>
      <td class="num" data-label="Up">${age(wallAge(v.started_at, now))}</td>
      <td class="num" data-label="Last seen"><span class="fresh ${seen < 30 ? "ok" : "stale"}"><i></i>${age(seen)}</span></td><td class="num" data-label="Handled">${v.handled}</td>
      <td class="num" data-label="Skipped">${v.skipped}</td><td class="num ${v.dead_lettered ? "bad-text" : ""}" data-label="Dead-lettered">${v.dead_lettered}</td></tr>`;
  }).join("");
  return `<table class="grid compact phone-cards" data-testid="services"><thead><tr><th>Service</th><th>Replica</th><th>Host</th><th class="num">Up</th><th class="num">Last seen</th><th class="num">Handled</th><th class="num">Skipped</th><th class="num">Dead-lettered</th></tr></thead>
    <tbody>${rowsHtml}</tbody></table>`;
}
