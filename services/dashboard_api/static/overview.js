// The overview: the market organism, symbols per regime, and one filterable, sortable row per series.

import { NA, esc, fmtMult, fmtNum, fmtPct, fmtVol, freshnessOf, isNum, na, titleCase } from "./format.js";
import { marketParams, paramsOf } from "./organism.js";
import {
  biasArrow, depthBadge, freshCell, hmmChip, hmmView, kv, organismFor, organismLabel, placeOrganism, probBar, volBadge, zeroBar,
} from "./pieces.js";
import { S, persist, rows, symbolHref } from "./state.js";
import { HMM_LABELS, TIERS, VOL_LABELS, probKey, volLetter } from "./vocab.js";

const COLUMNS = [
  ["symbol", "Symbol", ""],
  ["tier", "Tier", ""],
  ["vol", "Vol", "c"],
  ["ratio", "Ratio", "num"],
  ["hmm", "HMM regime", ""],
  ["conf", "Conf.", "num"],
  ["bias", "Bias", "num"],
  ["size", "Size", "num"],
  ["nav", "NAV/trade", "num"],
  ["score", "Hybrid", "num"],
  ["fresh", "Fresh", "num"],
];

const SORTS = {
  symbol: (s) => `${s.symbol} ${s.exchange} ${s.timeframe}`,
  tier: (s) => (TIERS.includes(s.tier) ? TIERS.indexOf(s.tier) : 99),
  vol: (s) => (s.vol_regime ? VOL_LABELS.indexOf(s.vol_regime) * 100 + (s.vol?.ratio ?? 0) : null),
  ratio: (s) => s.vol?.ratio,
  hmm: (s) => (hmmView(s).ok ? HMM_LABELS.indexOf(s.hmm_regime.regime) * 10 + s.hmm_regime.confidence : null),
  conf: (s) => (hmmView(s).ok ? s.hmm_regime.confidence : null),
  bias: (s) => (hmmView(s).ok ? s.hmm_regime.bias_signal : null),
  size: (s) => s.screener?.sizing_multiplier,
  nav: (s) => s.screener?.effective_per_trade_nav_pct,
  score: (s) => s.screener?.hybrid_score,
  fresh: (s) => freshnessOf(s, Date.now()),
};

export function overviewSkeleton() {
  const head = COLUMNS.map(([key, title, cls]) =>
    `<th class="${cls}" data-sort="${key}" aria-sort="none"><button type="button">${title}<i class="sort-ind"></i></button></th>`).join("");
  const opts = (items) => items.map(([v, t]) => `<option value="${v}">${t}</option>`).join("");
  const volOpts = [["", "All vol regimes"], ...VOL_LABELS.map((l) => [l, `${volLetter(l)} · ${l}`])];
  const hmmOpts = [["", "All HMM regimes"], ...HMM_LABELS.map((l) => [l, titleCase(l)]), ["untrained", "Untrained"], ["none", "No HMM yet"]];
  return `
  <section class="ov-top">
    <div class="card market-card" data-testid="market-card">
      <div class="card-h"><h2>Market</h2><span class="muted" id="market-n"></span></div>
      <div class="market-body">
        <div class="org-slot lg" id="market-organism" data-testid="market-organism"></div>
        <div class="market-read" id="market-read"></div>
      </div>
    </div>
    <div class="card">
      <div class="card-h"><h2>Volatility regimes</h2><span class="muted">symbols per regime</span></div>
      <div class="bars" id="vol-summary" data-testid="vol-summary-chart"></div>
    </div>
    <div class="card">
      <div class="card-h"><h2>HMM regimes</h2><span class="muted">symbols per regime</span></div>
      <div class="bars" id="hmm-summary" data-testid="hmm-summary-chart"></div>
    </div>
  </section>
  <section class="card table-card">
    <div class="toolbar">
      <input type="search" id="f-q" placeholder="Filter symbol…" data-testid="filter-text" aria-label="Filter by symbol">
      <select id="f-vol" data-testid="filter-vol" aria-label="Volatility regime">${opts(volOpts)}</select>
      <select id="f-hmm" data-testid="filter-hmm" aria-label="HMM regime">${opts(hmmOpts)}</select>
      <select id="f-tier" data-testid="filter-tier" aria-label="Tier"><option value="">All tiers</option></select>
      <button type="button" class="ghost" id="f-clear" hidden>Clear</button>
      <span class="muted count" id="row-count" data-testid="row-count"></span>
    </div>
    <div class="table-wrap">
      <table class="grid phone-cards" data-testid="overview-table">
        <thead><tr>${head}</tr></thead>
        <tbody id="rows"></tbody>
      </table>
    </div>
    <div class="empty" id="empty" hidden></div>
  </section>`;
}

export function bindOverview() {
  const f = S.filter;
  const [q, vol, hmm, tier] = ["f-q", "f-vol", "f-hmm", "f-tier"].map((id) => document.getElementById(id));
  q.value = f.q;
  vol.value = f.vol;
  hmm.value = f.hmm;
  q.addEventListener("input", () => { f.q = q.value.trim(); renderOverview(); });
  vol.addEventListener("change", () => { f.vol = vol.value; renderOverview(); });
  hmm.addEventListener("change", () => { f.hmm = hmm.value; renderOverview(); });
  tier.addEventListener("change", () => { f.tier = tier.value; renderOverview(); });
  document.getElementById("f-clear").addEventListener("click", () => {
    Object.assign(f, { q: "", vol: "", hmm: "", tier: "" });
    q.value = vol.value = hmm.value = tier.value = "";
    renderOverview();
  });
  document.querySelectorAll("th[data-sort]").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.sort;
    S.sort = S.sort.key === key ? { key, dir: -S.sort.dir } : { key, dir: key === "symbol" || key === "tier" ? 1 : -1 };
    persist("sort", S.sort);
    renderOverview();
  }));
  bindSummaryFilter("vol-summary", "vol", vol);
  bindSummaryFilter("hmm-summary", "hmm", hmm);
}

/** Clicking a bar of a summary chart filters by its regime (again: clears that filter). */
function bindSummaryFilter(chartId, key, select) {
  document.getElementById(chartId).addEventListener("click", (ev) => {
    const row = ev.target.closest("[data-regime]");
    if (!row) return;
    S.filter[key] = S.filter[key] === row.dataset.regime ? "" : row.dataset.regime;
    select.value = S.filter[key];
    renderOverview();
  });
}

function matches(s) {
  const f = S.filter;
  if (f.q && !`${s.symbol} ${s.exchange} ${s.timeframe}`.toLowerCase().includes(f.q.toLowerCase())) return false;
  if (f.vol && s.vol_regime !== f.vol) return false;
  if (f.tier && s.tier !== f.tier) return false;
  if (f.hmm) {
    const h = s.hmm_regime;
    if (f.hmm === "none") return !h;
    if (f.hmm === "untrained") return !!h && !h.trained;
    return !!h && h.trained && h.regime === f.hmm;
  }
  return true;
}

function sorted(list) {
  const { key, dir } = S.sort;
  const get = SORTS[key] || SORTS.symbol;
  const absent = (v) => v === null || v === undefined || (typeof v === "number" && !Number.isFinite(v));
  return list
    .map((s) => [get(s), s])
    .sort(([a, sa], [b, sb]) => {
      const na1 = absent(a);
      const nb1 = absent(b);
      if (na1 || nb1) return na1 === nb1 ? sa.series.localeCompare(sb.series) : na1 ? 1 : -1;
      const c = typeof a === "string" ? a.localeCompare(b) : a - b;
      return c ? c * dir : sa.series.localeCompare(sb.series);
    })
    .map(([, s]) => s);
}

function rowHtml(s, now) {
  const { h, ok } = hmmView(s);
  const sc = s.screener;
  const capped = sc && sc.capped ? `<sup class="cap" data-tip="capped by max_per_trade_nav_pct">cap</sup>` : "";
  const cells = [
    `<td class="c-sym" data-label="Symbol"><span class="org-slot sm" data-org></span><a class="sym" href="${symbolHref(s)}" data-testid="symbol-link">${esc(s.symbol)}</a><span class="sub">${esc(s.exchange)} · ${esc(s.timeframe)}</span></td>`,
    `<td data-label="Tier" data-testid="cell-tier">${s.tier ? `<span class="tier">${esc(s.tier)}</span>` : na()}</td>`,
    `<td class="c" data-label="Vol" data-testid="cell-vol">${volBadge(s.vol_regime, s.vol)}</td>`,
    `<td class="num" data-label="Ratio" data-testid="cell-ratio">${s.vol ? fmtNum(s.vol.ratio, 2) : na()}</td>`,
    `<td data-label="HMM regime" data-testid="cell-hmm"><span class="hmm-cell">${hmmChip(h)}${probBar(h)}</span></td>`,
    `<td class="num" data-label="Conf." data-testid="cell-confidence">${ok ? `${fmtPct(h.confidence, 0)} ${depthBadge(h, { compact: true })}` : na()}</td>`,
    `<td class="num" data-label="Bias" data-testid="cell-bias">${ok ? biasArrow(h.bias_signal) : na()}</td>`,
    `<td class="num" data-label="Size" data-testid="cell-sizing">${sc ? fmtMult(sc.sizing_multiplier) : na()}</td>`,
    `<td class="num" data-label="NAV/trade" data-testid="cell-nav">${sc ? fmtPct(sc.effective_per_trade_nav_pct, 2) + capped : na()}</td>`,
    `<td class="num" data-label="Hybrid" data-testid="cell-score">${sc ? zeroBar(sc.hybrid_score) : na()}</td>`,
    `<td class="num" data-label="Fresh" data-testid="cell-fresh">${freshCell(s, now)}</td>`,
  ];
  return cells.join("");
}

export function renderOverview() {
  if (!document.getElementById("f-tier")) return;
  syncTierOptions();
  renderVolBars();
  renderHmmBars();
  renderMarket();
  const list = sorted(S.snaps.filter(matches));
  renderRows(list, Date.now());
  renderSortHeads();
  renderCounts(list);
}

/** The tier filter offers the tiers the series have, in the vocabulary's order. */
function syncTierOptions() {
  const tierSel = document.getElementById("f-tier");
  const tiers = [...new Set(S.snaps.map((s) => s.tier).filter(Boolean))].sort((a, b) => SORTS.tier({ tier: a }) - SORTS.tier({ tier: b }) || a.localeCompare(b));
  const tierOpts = `<option value="">All tiers</option>` + tiers.map((t) => `<option value="${esc(t)}">${esc(t)}</option>`).join("");
  if (tierSel.dataset.opts !== tierOpts) {
    tierSel.innerHTML = tierOpts;
    tierSel.dataset.opts = tierOpts;
  }
  tierSel.value = S.filter.tier;
}

/** Rows are kept per series and updated in place, so organisms keep morphing and a changed row can flash. */
function renderRows(list, now) {
  const body = document.getElementById("rows");
  const seen = new Set();
  list.forEach((s, i) => {
    seen.add(s.series);
    const tr = rowFor(s.series);
    const html = rowHtml(s, now);
    if (tr._html !== html) {
      tr.innerHTML = html;
      tr._html = html;
    }
    const params = paramsOf(s);
    placeOrganism(tr.querySelector("[data-org]"), organismFor(s.series), params, organismLabel(s.symbol, params));
    if (S.flash.has(s.series)) {
      tr.classList.remove("flash");
      void tr.offsetWidth; // restart the highlight animation
      tr.classList.add("flash");
    }
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  for (const [id, tr] of rows) {
    if (!seen.has(id)) {
      tr.remove();
      rows.delete(id);
    }
  }
  S.flash = new Set();
}

function rowFor(series) {
  let tr = rows.get(series);
  if (!tr) {
    tr = document.createElement("tr");
    tr.setAttribute("data-testid", "row");
    tr.dataset.series = series;
    rows.set(series, tr);
  }
  return tr;
}

function renderSortHeads() {
  document.querySelectorAll("th[data-sort]").forEach((th) => {
    const on = th.dataset.sort === S.sort.key;
    th.classList.toggle("sorted", on);
    th.setAttribute("aria-sort", on ? (S.sort.dir > 0 ? "ascending" : "descending") : "none");
  });
}

function renderCounts(list) {
  const f = S.filter;
  const filtered = !!(f.q || f.vol || f.hmm || f.tier);
  document.getElementById("f-clear").hidden = !filtered;
  document.getElementById("row-count").textContent = filtered ? `${list.length} of ${S.snaps.length} series` : `${S.snaps.length} series`;
  const empty = document.getElementById("empty");
  empty.hidden = list.length > 0;
  empty.textContent = !S.loaded ? "Loading…" : S.snaps.length ? "No series match the filters." : "No series yet: waiting for the state publisher.";
}

function renderVolBars() {
  const sum = S.summary || {};
  const vs = sum.vol_regime_summary || {};
  const avg = sum.vol_regime_avg_vol_short || {};
  const volMax = Math.max(1, ...VOL_LABELS.map((l) => vs[l] || 0));
  document.getElementById("vol-summary").innerHTML = VOL_LABELS.map((l) => {
    const n = isNum(vs[l]) ? vs[l] : null;
    const active = S.filter.vol === l ? " active" : "";
    return `<button type="button" class="bar-row${active}" data-testid="vol-summary-bar" data-regime="${l}" data-count="${n ?? ""}" title="Filter: ${l}">
      <span class="badge vb-${l}">${volLetter(l)}</span><span class="bar-name">${l}</span>
      <span class="bar-track"><i class="v-${l}" style="width:${n ? (n / volMax) * 100 : 0}%"></i></span>
      <span class="bar-n" data-testid="bar-count">${n ?? NA}</span><span class="bar-extra">${n ? `σ ${fmtVol(avg[l])}` : ""}</span></button>`;
  }).join("");
}

function renderHmmBars() {
  const sum = S.summary;
  const hs = (sum && sum.hmm_regime_summary) || {};
  const untrained = sum && isNum(sum.hmm_untrained) ? sum.hmm_untrained : null;
  const total = sum && isNum(sum.symbols) ? sum.symbols : null;
  const trained = HMM_LABELS.reduce((a, l) => a + (hs[l] || 0), 0);
  const none = total === null || untrained === null ? null : Math.max(0, total - trained - untrained);
  const items = [...HMM_LABELS.map((l) => [l, titleCase(l), hs[l], `h-${l}`]), ["untrained", "untrained", untrained, "h-untrained"], ["none", "no HMM", none, "h-none"]];
  const hmmMax = Math.max(1, ...items.map((it) => it[2] || 0));
  document.getElementById("hmm-summary").innerHTML = items.map(([key, name, n, cls]) => {
    const count = isNum(n) ? n : null;
    const active = S.filter.hmm === key ? " active" : "";
    const dim = HMM_LABELS.includes(key) ? "" : " dim";
    return `<button type="button" class="bar-row${active}${dim}" data-testid="hmm-summary-bar" data-regime="${key}" data-count="${count ?? ""}" title="Filter: ${name}">
      <span class="dot ${cls}"></span><span class="bar-name">${name}</span>
      <span class="bar-track"><i class="${cls}" style="width:${count ? (count / hmmMax) * 100 : 0}%"></i></span>
      <span class="bar-n" data-testid="bar-count">${count ?? NA}</span><span class="bar-extra"></span></button>`;
  }).join("");
}

function renderMarket() {
  const slot = document.getElementById("market-organism");
  if (!slot) return;
  const params = marketParams(S.snaps);
  placeOrganism(slot, organismFor("__market__"), params, organismLabel("Market", params));
  const read = document.getElementById("market-read");
  document.getElementById("market-n").textContent = `${params.n || 0} of ${S.snaps.length} with a trained HMM`;
  if (params.status !== "ok") {
    read.innerHTML = `<div class="big-state muted" data-testid="market-state">No trained HMM yet</div><p class="muted small">The organism wakes up when the first model reports a verdict.</p>`;
    return;
  }
  // Under the detector's confidence threshold the market has no clear regime, only a lean.
  const clear = params.confidence >= 0.15;
  const state = clear
    ? `<div class="big-state h-text-${params.regime}" data-testid="market-state">${titleCase(params.regime)}</div>`
    : `<div class="big-state" data-testid="market-state">Mixed <span class="lean h-text-${params.regime}">leaning ${params.regime.toLowerCase()}</span></div>`;
  // The vocabulary runs from bearish to bullish; the readout lists bullish on top.
  const shares = HMM_LABELS.map((l, i) => kv(titleCase(l), fmtPct(params.probs[i], 0), `market-${probKey(l)}`)).reverse().join("");
  read.innerHTML = `${state}${shares}
    ${kv("Confidence", fmtPct(params.confidence, 0))}${kv("Mean bias", biasArrow(params.bias))}`;
}
