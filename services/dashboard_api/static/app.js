// regime-stack dashboard: overview, symbol view and advanced tab over the status API.
// Live: one EventSource on /api/stream. A "change" event names the series the state publisher just
// wrote; the page refetches (debounced) what it shows. "hello" (every connect and reconnect)
// refetches everything, so the page recovers by itself after the API restarts. No polling: the only
// timer that repeats re-renders "age" texts (freshness) from data already in the page.

import { bindCursor, priceChart, probChart, ratioChart, scoreChart } from "./charts.js";
import {
  COMPONENTS, HMM_LABELS, HMM_SHORT, NA, TIERS, VOL_LABELS, VOL_LETTER,
  decodeSymbol, encodeSymbol, esc, fmtAge, fmtBp, fmtDateTime, fmtMult, fmtNum, fmtPct,
  fmtPrice, fmtSigned, fmtVol, freshnessLimitOf, freshnessOf, isNum, na, titleCase,
} from "./format.js";
import { pageLabels } from "./labels.js";
import { Organism, marketParams, paramsOf, wake } from "./organism.js";

const DEBOUNCE_MS = 150; // a burst of change events becomes one refetch...
const MAX_WAIT_MS = 900; // ...at most this late after its first event...
const MIN_GAP_MS = 700; // ...and never sooner than this after the previous refetch began

const HISTORY = 600;

const S = {
  snaps: [],
  byId: new Map(),
  summary: null,
  detail: null,
  detailKey: null,
  detailError: null,
  status: null,
  config: null,
  route: parseRoute(),
  shown: null, // the route whose skeleton is on screen
  sort: restore("sort", { key: "symbol", dir: 1 }),
  filter: { q: "", vol: "", hmm: "", tier: "" },
  bands: restore("bands", "vol"),
  live: "connecting",
  lastChange: null,
  loaded: false,
  apiError: null,
  flash: new Set(),
  cursor: null,
};
const organisms = new Map();
const rows = new Map();

function restore(key, fallback) {
  try {
    const raw = localStorage.getItem(`regimes.${key}`);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function persist(key, value) {
  try {
    localStorage.setItem(`regimes.${key}`, JSON.stringify(value));
  } catch {
    /* private mode: preferences simply do not persist */
  }
}

// ---------------------------------------------------------------- routing

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "advanced") return { name: "advanced", hash: "advanced" };
  if (parts[0] === "symbol" && parts.length >= 3) {
    const [, exchange, token, timeframe] = parts;
    const symbol = token.includes("/") ? token : decodeSymbol(token);
    return {
      name: "symbol", hash: `symbol/${exchange}/${token}/${timeframe || ""}`, exchange, symbol,
      token: encodeSymbol(symbol), timeframe: timeframe || null,
    };
  }
  return { name: "overview", hash: "overview" };
}

const symbolHref = (s) => `#/symbol/${encodeURIComponent(s.exchange)}/${encodeSymbol(s.symbol)}/${encodeURIComponent(s.timeframe)}`;

function routeSeriesId(route) {
  if (route.name !== "symbol") return null;
  if (route.timeframe) return `${route.exchange}:${route.symbol}:${route.timeframe}`;
  return S.detail ? S.detail.snapshot.series : null;
}

// ---------------------------------------------------------------- data

async function api(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`;
    try {
      detail = (await res.json()).detail || detail;
    } catch {
      /* not JSON: keep the status line */
    }
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return pageLabels(await res.json());
}

let timer = null;
let firstPending = 0;
let lastRefresh = -Infinity;
let pendingAll = false;
const pendingSeries = new Set();
let running = false;
let again = false;
let urgentPending = false;

/** Ask for a refetch; bursts of change events collapse into one. ``urgent`` (navigation, a fresh
 * connection) goes at once. */
function schedule(series, all = false, urgent = false) {
  if (all) pendingAll = true;
  for (const id of series || []) pendingSeries.add(id);
  const now = performance.now();
  if (urgent) urgentPending = true;
  if (timer === null) firstPending = now;
  else clearTimeout(timer);
  const settle = Math.min(DEBOUNCE_MS, firstPending + MAX_WAIT_MS - now);
  timer = setTimeout(flush, urgentPending ? 0 : Math.max(0, settle, lastRefresh + MIN_GAP_MS - now));
}

async function flush() {
  timer = null;
  if (running) {
    again = true;
    return;
  }
  running = true;
  urgentPending = false;
  lastRefresh = performance.now();
  const all = pendingAll;
  const changed = new Set(pendingSeries);
  pendingAll = false;
  pendingSeries.clear();
  try {
    await refresh(all, changed);
  } finally {
    running = false;
    if (again) {
      again = false;
      schedule(null);
    }
  }
}

async function refresh(all, changed) {
  try {
    const [snaps, summary] = await Promise.all([api("/api/symbols"), api("/api/summary")]);
    S.snaps = snaps;
    S.byId = new Map(snaps.map((s) => [s.series, s]));
    S.summary = summary;
    const route = S.route;
    if (route.name === "symbol") {
      const id = routeSeriesId(route);
      if (all || !S.detail || S.detailKey !== route.hash || changed.has(id)) await loadDetail();
    }
    if (route.name === "advanced") await loadStatus();
    S.apiError = null;
    S.loaded = true;
  } catch (err) {
    S.apiError = err.message || String(err);
    console.warn("regimes: refresh failed, waiting for the live stream to reconnect:", S.apiError);
  }
  S.flash = changed;
  render();
}

async function loadDetail() {
  const r = S.route;
  const qs = new URLSearchParams({ history: String(HISTORY) });
  if (r.timeframe) qs.set("timeframe", r.timeframe);
  try {
    S.detail = await api(`/api/symbols/${encodeURIComponent(r.exchange)}/${r.token}?${qs}`);
    S.detailError = null;
  } catch (err) {
    if (!err.status) throw err;
    S.detail = null;
    S.detailError = err.message;
  }
  S.detailKey = r.hash;
}

async function loadStatus() {
  try {
    if (!S.config) S.config = await api("/api/config");
    S.status = await api("/api/status");
  } catch (err) {
    if (!err.status) throw err;
    S.status = null;
  }
}

// ---------------------------------------------------------------- live stream

let source = null;
let backoff = 1000;

function connect() {
  setLive("connecting");
  source = new EventSource("/api/stream");
  source.addEventListener("open", () => {
    backoff = 1000;
    setLive("live");
  });
  source.addEventListener("hello", () => {
    setLive("live");
    schedule(null, true, true);
  });
  source.addEventListener("change", (ev) => {
    let notice = null;
    try {
      notice = JSON.parse(ev.data);
    } catch {
      notice = null;
    }
    S.lastChange = Date.now();
    setLive("live");
    if (notice && Array.isArray(notice.series)) schedule(notice.series);
    else schedule(null, true);
  });
  source.addEventListener("error", () => {
    // The browser retries on its own; if it gave up (the stream answered with an error), start over.
    setLive("reconnecting");
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 15000);
    }
  });
}

function setLive(state) {
  if (S.live === state) return;
  S.live = state;
  renderLive();
}

// ---------------------------------------------------------------- shared pieces

function organismFor(id) {
  let org = organisms.get(id);
  if (!org) {
    org = new Organism(id);
    organisms.set(id, org);
  }
  return org;
}

function placeOrganism(slot, org, params, label) {
  if (!slot) return;
  if (S.loaded) org.set(params, label); // before the first fetch there is nothing to show, not "no verdict"
  if (org.svg.parentNode !== slot) slot.replaceChildren(org.svg);
  wake();
}

function organismLabel(name, params) {
  if (params.status === "none") return `${name}: no HMM verdict yet`;
  if (params.status === "untrained") return `${name}: HMM not trained yet`;
  return `${name}: ${params.regime}, confidence ${fmtPct(params.confidence, 0)}, bias ${fmtSigned(params.bias)}`;
}

function volBadge(label, vol, { big = false } = {}) {
  if (!VOL_LABELS.includes(label)) return na();
  let tip = `${titleCase(label)} volatility`;
  if (vol) {
    tip += `\nshort ${fmtVol(vol.short)} \u00b7 long ${fmtVol(vol.long)}\nratio ${fmtNum(vol.ratio, 2)}`;
    if (vol.sufficient === false) tip += `\nwarming up: ${vol.samples ?? NA} returns, regime defaults to normal`;
  }
  const warm = vol && vol.sufficient === false ? " warming" : "";
  return `<span class="badge vb-${label}${big ? " big" : ""}${warm}" data-testid="vol-badge" data-regime="${label}" data-tip="${esc(tip)}" tabindex="0" aria-label="${esc(tip.replace(/\n/g, "; "))}">${VOL_LETTER[label]}</span>`;
}

function hmmChip(h) {
  if (!h) return `<span class="hmm-state none" data-testid="hmm-status" data-status="none">no HMM yet</span>`;
  if (!h.trained) {
    return `<span class="hmm-state untrained" data-testid="hmm-status" data-status="untrained" data-tip="The model is not trained yet; its verdict is the neutral default.\n${h.observation_count ?? NA} candles filtered">untrained</span>`;
  }
  return `<span class="chip h-${h.regime}" data-testid="hmm-status" data-status="ok" data-regime="${h.regime}">${titleCase(h.regime)}</span>`;
}

function probBar(h) {
  if (!h || !h.trained || !h.probabilities) return "";
  const p = h.probabilities;
  const parts = [["BEARISH", p.bearish], ["RANGING", p.ranging], ["BULLISH", p.bullish]];
  const tip = parts.map(([l, v]) => `${titleCase(l)} ${fmtPct(v, 0)}`).join(" \u00b7 ");
  return `<span class="pbar" data-testid="prob-bar" data-tip="${esc(tip)}">${parts
    .map(([l, v]) => `<i class="h-${l}" style="width:${isNum(v) ? (v * 100).toFixed(1) : 0}%"></i>`)
    .join("")}</span>`;
}

function biasArrow(b) {
  if (!isNum(b)) return na();
  const cls = b > 0.02 ? "up" : b < -0.02 ? "down" : "flat";
  const deg = (-b * 90).toFixed(1);
  return `<span class="bias ${cls}" data-testid="bias" data-bias="${b}"><svg viewBox="0 0 16 16" aria-hidden="true"><g transform="rotate(${deg} 8 8)"><path d="M2 8h10M8.5 4.5 12 8l-3.5 3.5"/></g></svg>${fmtSigned(b)}</span>`;
}

function zeroBar(v) {
  if (!isNum(v)) return na();
  const w = Math.min(50, Math.abs(v) * 50);
  const left = v >= 0 ? 50 : 50 - w;
  return `<span class="zbar ${v >= 0 ? "pos" : "neg"}"><i style="left:${left}%;width:${w}%"></i></span><span class="zval">${fmtSigned(v)}</span>`;
}

function freshCell(s, now) {
  const age = freshnessOf(s, now);
  if (age === null) return na();
  const ok = age <= freshnessLimitOf(s);
  return `<span class="fresh ${ok ? "ok" : "stale"}" data-fresh-for="${esc(s.series)}"><i></i><span>${fmtAge(age)}</span></span>`;
}

function kv(label, value, testid = "") {
  return `<div class="kv"${testid ? ` data-testid="${testid}"` : ""}><span class="k">${label}</span><span class="v">${value}</span></div>`;
}

function hmmView(s) {
  const h = s && s.hmm_regime;
  return { h, ok: !!(h && h.trained) };
}

// ---------------------------------------------------------------- render

function render() {
  const route = S.route;
  if (S.shown !== route.hash) {
    buildSkeleton(route);
    S.shown = route.hash;
  }
  document.querySelectorAll("[data-route]").forEach((a) => a.classList.toggle("active", a.dataset.route === route.name || (route.name === "symbol" && a.dataset.route === "overview")));
  if (route.name === "overview") renderOverview();
  else if (route.name === "symbol") renderSymbol();
  else renderAdvanced();
  renderLive();
  const banner = document.getElementById("banner");
  banner.hidden = !S.apiError;
  banner.textContent = S.apiError ? `API unreachable (${S.apiError}). The page refreshes as soon as the live stream reconnects.` : "";
  if (S.loaded) document.body.dataset.ready = "1";
}

function renderLive() {
  const el = document.querySelector("[data-testid=live-status]");
  if (!el) return;
  el.dataset.state = S.live;
  el.querySelector("span").textContent = { live: "live", connecting: "connecting", reconnecting: "reconnecting" }[S.live];
  el.title = S.live === "live" ? "Server-Sent Events connected" : "Waiting for the live stream";
  const upd = document.querySelector("[data-testid=last-update]");
  const at = S.summary && S.summary.updated_at;
  upd.textContent = isNum(at) ? `updated ${fmtAge((Date.now() - at) / 1000)} ago` : "no update yet";
}

function buildSkeleton(route) {
  const view = document.getElementById("view");
  rows.clear();
  if (route.name === "overview") view.innerHTML = overviewSkeleton();
  else if (route.name === "symbol") view.innerHTML = `<div data-testid="symbol-view" class="symbol-view"></div>`;
  else view.innerHTML = `<div data-testid="advanced-view" class="advanced-view"></div>`;
  view.dataset.view = route.name;
  if (route.name === "overview") bindOverview();
  window.scrollTo(0, 0);
}

// ---------------------------------------------------------------- overview

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

function overviewSkeleton() {
  const head = COLUMNS.map(([key, title, cls]) =>
    `<th class="${cls}" data-sort="${key}" aria-sort="none"><button type="button">${title}<i class="sort-ind"></i></button></th>`).join("");
  const opts = (items) => items.map(([v, t]) => `<option value="${v}">${t}</option>`).join("");
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
      <select id="f-vol" data-testid="filter-vol" aria-label="Volatility regime">${opts([["", "All vol regimes"], ...VOL_LABELS.map((l) => [l, `${VOL_LETTER[l]} · ${l}`])])}</select>
      <select id="f-hmm" data-testid="filter-hmm" aria-label="HMM regime">${opts([["", "All HMM regimes"], ...HMM_LABELS.map((l) => [l, titleCase(l)]), ["untrained", "Untrained"], ["none", "No HMM yet"]])}</select>
      <select id="f-tier" data-testid="filter-tier" aria-label="Tier"><option value="">All tiers</option></select>
      <button type="button" class="ghost" id="f-clear" hidden>Clear</button>
      <span class="muted count" id="row-count" data-testid="row-count"></span>
    </div>
    <div class="table-wrap">
      <table class="grid" data-testid="overview-table">
        <thead><tr>${head}</tr></thead>
        <tbody id="rows"></tbody>
      </table>
    </div>
    <div class="empty" id="empty" hidden></div>
  </section>`;
}

function bindOverview() {
  const f = S.filter;
  const q = document.getElementById("f-q");
  const vol = document.getElementById("f-vol");
  const hmm = document.getElementById("f-hmm");
  const tier = document.getElementById("f-tier");
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
  document.getElementById("vol-summary").addEventListener("click", (ev) => {
    const row = ev.target.closest("[data-regime]");
    if (!row) return;
    f.vol = f.vol === row.dataset.regime ? "" : row.dataset.regime;
    vol.value = f.vol;
    renderOverview();
  });
  document.getElementById("hmm-summary").addEventListener("click", (ev) => {
    const row = ev.target.closest("[data-regime]");
    if (!row) return;
    f.hmm = f.hmm === row.dataset.regime ? "" : row.dataset.regime;
    hmm.value = f.hmm;
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
  return list
    .map((s) => [get(s), s])
    .sort(([a, sa], [b, sb]) => {
      const na1 = a === null || a === undefined || (typeof a === "number" && !Number.isFinite(a));
      const nb1 = b === null || b === undefined || (typeof b === "number" && !Number.isFinite(b));
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
    `<td class="num" data-label="Conf." data-testid="cell-confidence">${ok ? fmtPct(h.confidence, 0) : na()}</td>`,
    `<td class="num" data-label="Bias" data-testid="cell-bias">${ok ? biasArrow(h.bias_signal) : na()}</td>`,
    `<td class="num" data-label="Size" data-testid="cell-sizing">${sc ? fmtMult(sc.sizing_multiplier) : na()}</td>`,
    `<td class="num" data-label="NAV/trade" data-testid="cell-nav">${sc ? fmtPct(sc.effective_per_trade_nav_pct, 2) + capped : na()}</td>`,
    `<td class="num" data-label="Hybrid" data-testid="cell-score">${sc ? zeroBar(sc.hybrid_score) : na()}</td>`,
    `<td class="num" data-label="Fresh" data-testid="cell-fresh">${freshCell(s, now)}</td>`,
  ];
  return cells.join("");
}

function renderOverview() {
  const now = Date.now();
  const tierSel = document.getElementById("f-tier");
  if (!tierSel) return;
  const tiers = [...new Set(S.snaps.map((s) => s.tier).filter(Boolean))].sort((a, b) => SORTS.tier({ tier: a }) - SORTS.tier({ tier: b }) || a.localeCompare(b));
  const tierOpts = `<option value="">All tiers</option>` + tiers.map((t) => `<option value="${esc(t)}">${esc(t)}</option>`).join("");
  if (tierSel.dataset.opts !== tierOpts) {
    tierSel.innerHTML = tierOpts;
    tierSel.dataset.opts = tierOpts;
  }
  tierSel.value = S.filter.tier;

  renderSummaryBars();
  renderMarket();

  const list = sorted(S.snaps.filter(matches));
  const body = document.getElementById("rows");
  const seen = new Set();
  list.forEach((s, i) => {
    seen.add(s.series);
    let tr = rows.get(s.series);
    if (!tr) {
      tr = document.createElement("tr");
      tr.setAttribute("data-testid", "row");
      tr.dataset.series = s.series;
      rows.set(s.series, tr);
    }
    const html = rowHtml(s, now);
    if (tr._html !== html) {
      tr.innerHTML = html;
      tr._html = html;
    }
    const org = organismFor(s.series);
    const params = paramsOf(s);
    placeOrganism(tr.querySelector("[data-org]"), org, params, organismLabel(s.symbol, params));
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

  document.querySelectorAll("th[data-sort]").forEach((th) => {
    const on = th.dataset.sort === S.sort.key;
    th.classList.toggle("sorted", on);
    th.setAttribute("aria-sort", on ? (S.sort.dir > 0 ? "ascending" : "descending") : "none");
  });
  const f = S.filter;
  const filtered = !!(f.q || f.vol || f.hmm || f.tier);
  document.getElementById("f-clear").hidden = !filtered;
  document.getElementById("row-count").textContent = filtered ? `${list.length} of ${S.snaps.length} series` : `${S.snaps.length} series`;
  const empty = document.getElementById("empty");
  empty.hidden = list.length > 0;
  empty.textContent = !S.loaded ? "Loading…" : S.snaps.length ? "No series match the filters." : "No series yet: waiting for the state publisher.";
}

function renderSummaryBars() {
  const sum = S.summary;
  const volEl = document.getElementById("vol-summary");
  const hmmEl = document.getElementById("hmm-summary");
  if (!volEl || !hmmEl) return;
  const vs = (sum && sum.vol_regime_summary) || {};
  const avg = (sum && sum.vol_regime_avg_vol_short) || {};
  const volMax = Math.max(1, ...VOL_LABELS.map((l) => vs[l] || 0));
  volEl.innerHTML = VOL_LABELS.map((l) => {
    const n = isNum(vs[l]) ? vs[l] : null;
    const active = S.filter.vol === l ? " active" : "";
    return `<button type="button" class="bar-row${active}" data-testid="vol-summary-bar" data-regime="${l}" data-count="${n ?? ""}" title="Filter: ${l}">
      <span class="badge vb-${l}">${VOL_LETTER[l]}</span><span class="bar-name">${l}</span>
      <span class="bar-track"><i class="v-${l}" style="width:${n ? (n / volMax) * 100 : 0}%"></i></span>
      <span class="bar-n" data-testid="bar-count">${n ?? NA}</span><span class="bar-extra">${n ? `σ ${fmtVol(avg[l])}` : ""}</span></button>`;
  }).join("");

  const hs = (sum && sum.hmm_regime_summary) || {};
  const untrained = sum && isNum(sum.hmm_untrained) ? sum.hmm_untrained : null;
  const total = sum && isNum(sum.symbols) ? sum.symbols : null;
  const trained = HMM_LABELS.reduce((a, l) => a + (hs[l] || 0), 0);
  const none = total === null || untrained === null ? null : Math.max(0, total - trained - untrained);
  const items = [...HMM_LABELS.map((l) => [l, titleCase(l), hs[l], `h-${l}`]), ["untrained", "untrained", untrained, "h-untrained"], ["none", "no HMM", none, "h-none"]];
  const hmmMax = Math.max(1, ...items.map((it) => it[2] || 0));
  hmmEl.innerHTML = items.map(([key, name, n, cls]) => {
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
  const [pb, pr, pu] = params.probs;
  // Under the detector's confidence threshold the market has no clear regime, only a lean.
  const clear = params.confidence >= 0.15;
  const state = clear
    ? `<div class="big-state h-text-${params.regime}" data-testid="market-state">${titleCase(params.regime)}</div>`
    : `<div class="big-state" data-testid="market-state">Mixed <span class="lean h-text-${params.regime}">leaning ${params.regime.toLowerCase()}</span></div>`;
  read.innerHTML = `${state}
    ${kv("Bullish", fmtPct(pu, 0))}${kv("Ranging", fmtPct(pr, 0))}${kv("Bearish", fmtPct(pb, 0))}
    ${kv("Confidence", fmtPct(params.confidence, 0))}${kv("Mean bias", biasArrow(params.bias))}`;
}

// ---------------------------------------------------------------- symbol view

function renderSymbol() {
  const root = document.querySelector("[data-testid=symbol-view]");
  if (!root) return;
  const r = S.route;
  if (!S.detail || S.detailKey !== r.hash) {
    root.innerHTML = `<div class="sym-head"><a class="back" href="#/">\u2190 Overview</a><h1>${esc(r.symbol)}</h1></div>
      <div class="card empty">${S.detailError ? `Cannot show this series: ${esc(S.detailError)}` : "Loading…"}</div>`;
    return;
  }
  // Other series' changes leave this view alone (and the chart cursor where it is).
  if (root._detail === S.detail && root._bands === S.bands) return;
  root._detail = S.detail;
  root._bands = S.bands;
  const { snapshot: s, history, transitions, thresholds } = S.detail;
  const live = S.byId.get(s.series);
  const snap = live && (live.updated_at ?? 0) > (s.updated_at ?? 0) ? live : s;
  const { h, ok } = hmmView(snap);
  const sc = snap.screener;
  const vol = snap.vol;
  const now = Date.now();

  const head = `<div class="sym-head">
      <a class="back" href="#/" aria-label="Back to the overview">\u2190<span class="back-text"> Overview</span></a>
      <h1 data-testid="symbol-title">${esc(snap.symbol)}</h1>
      <span class="sub">${esc(snap.exchange)} · ${esc(snap.timeframe)}</span>
      ${snap.tier ? `<span class="tier">${esc(snap.tier)}</span>` : ""}
      <span data-testid="symbol-vol">${volBadge(snap.vol_regime, vol, { big: true })}</span>
      <span data-testid="symbol-hmm">${hmmChip(h)}</span>
      <span class="spacer"></span>
      <span class="sym-price">
        <span class="price" data-testid="symbol-price">${snap.price ? `${fmtPrice(snap.price.close)} <span class="sub">${fmtDateTime(snap.price.ts)}</span>` : na()}</span>
        <span data-testid="symbol-fresh">${freshCell(snap, now)}</span>
      </span>
    </div>`;

  const seg = (mode, text) => `<button type="button" data-bands="${mode}" aria-pressed="${S.bands === mode}">${text}</button>`;
  const charts = history.length
    ? `<div class="readout" id="readout" data-testid="chart-readout"></div>
       <div class="chart" id="ch-price" data-testid="price-chart"></div>
       <div class="chart-h">Vol ratio <span class="muted">short / long, against the regime thresholds</span></div>
       <div class="chart" id="ch-ratio" data-testid="ratio-chart"></div>
       <div class="chart-h">HMM probabilities <span class="legend"><i class="h-BEARISH"></i>bearish <i class="h-RANGING"></i>ranging <i class="h-BULLISH"></i>bullish</span></div>
       <div class="chart" id="ch-prob" data-testid="prob-chart"></div>
       <div class="chart-h">Hybrid score &amp; idle target <span class="legend"><i class="l-score"></i>hybrid score <i class="l-idle"></i>idle target</span></div>
       <div class="chart" id="ch-score" data-testid="score-chart"></div>`
    : `<div class="empty" data-testid="no-history">No history yet: points appear with the screener's first decision.</div>`;

  const params = paramsOf(snap);
  const hmmCard = !h
    ? `<p class="muted" data-testid="hmm-missing">No HMM verdict yet for this series.</p>`
    : !h.trained
      ? `<p class="muted" data-testid="hmm-missing">Model not trained yet: the verdict is the neutral default.</p>${kv("Candles filtered", h.observation_count ?? NA)}`
      : `${kv("Regime", `<span class="chip h-${h.regime}">${titleCase(h.regime)}</span>`)}
         <div class="probs">${HMM_LABELS.map((l) => {
           const v = h.probabilities?.[l.toLowerCase()];
           return `<div class="prob-row"><span>${titleCase(l)}</span><span class="bar-track"><i class="h-${l}" style="width:${isNum(v) ? v * 100 : 0}%"></i></span><span class="num">${fmtPct(v, 1)}</span></div>`;
         }).join("")}</div>
         ${kv("Confidence", fmtPct(h.confidence, 0), "hmm-confidence")}${kv("Bias signal", biasArrow(h.bias_signal))}
         ${kv("In regime since", fmtDateTime(h.since_ts))}${kv("Blend factor", fmtNum(h.blend_factor, 2))}`;

  const volCard = vol
    ? `${kv("Regime", volBadge(snap.vol_regime, vol) + ` <span class="muted">${esc(snap.vol_regime ?? "")}</span>`)}
       ${kv("Short vol", fmtVol(vol.short), "vol-short")}${kv("Long vol", fmtVol(vol.long), "vol-long")}${kv("Ratio", fmtNum(vol.ratio, 2), "vol-ratio")}
       ${kv("Thresholds", thresholds ? `${fmtNum(thresholds.low)} / ${fmtNum(thresholds.normal)} / ${fmtNum(thresholds.high)}` : NA)}
       ${kv("Samples", `${vol.samples ?? NA}${vol.sufficient === false ? ` <span class="warn-text">warming up</span>` : ""}`)}
       ${kv("In regime since", fmtDateTime(vol.since_ts))}`
    : `<p class="muted">No volatility verdict yet.</p>${kv("Short vol", na(), "vol-short")}${kv("Long vol", na(), "vol-long")}${kv("Ratio", na(), "vol-ratio")}`;

  const sizing = `${kv("Tier", esc(snap.tier) || NA)}${kv("Multiplier", sc ? fmtMult(sc.sizing_multiplier) : na(), "sizing-mult")}
    ${kv("Base NAV/trade", sc ? fmtPct(sc.base_per_trade_nav_pct) : na())}
    ${kv("Effective NAV/trade", sc ? fmtPct(sc.effective_per_trade_nav_pct) + (sc.capped ? ` <span class="warn-text">capped</span>` : "") : na(), "effective-nav")}`;

  const weights = sc && sc.weights ? weightsBlock(sc) : `<p class="muted">No screener decision yet.</p>${kv("Hybrid score", na(), "hybrid-score")}`;

  const gb = sc && sc.grid_bias;
  const mode = gb ? { symmetric: "Symmetric", long_bias: "Long bias \u2191", short_bias: "Short bias \u2193" }[gb.mode] || esc(gb.mode) : null;
  const grid = `${kv("Grid mode", mode ?? na(), "grid-mode")}
    ${kv("Sell-side (A) spacing", gb ? fmtMult(gb.entry_spacing_mult_a) : na())}${kv("Buy-side (B) spacing", gb ? fmtMult(gb.entry_spacing_mult_b) : na())}
    ${kv("Size skew override", gb && isNum(gb.size_skew_override) ? fmtSigned(gb.size_skew_override) : na())}
    ${kv("Blended idle target", sc ? fmtPct(sc.dynamic_idle_target, 1) : na(), "idle-target")}
    ${kv("Trend score", sc ? fmtSigned(sc.trend_score) : na())}${kv("HMM bias used", sc ? fmtSigned(sc.hmm_bias) : na())}
    ${kv("Blend with trend", sc ? fmtNum(sc.blend_factor, 2) : na())}`;

  const pipeCard = pipelineCard(snap, now);

  const trans = transitions.length
    ? `<table class="grid compact" data-testid="transitions"><thead><tr><th>Time (UTC)</th><th>Kind</th><th>From</th><th></th><th>To</th><th class="num">Ratio / conf.</th><th class="num">Close</th></tr></thead><tbody>
       ${transitions.map((t) => {
         const chip = (l) => (t.kind === "vol" ? volBadge(l, null) + ` <span class="muted">${esc(l)}</span>` : `<span class="chip h-${esc(l)}">${titleCase(l)}</span>`);
         const m = t.kind === "vol" ? fmtNum(t.ratio, 2) : isNum(t.confidence) ? fmtPct(t.confidence, 0) : NA;
         return `<tr data-testid="transition" data-kind="${esc(t.kind)}" data-from="${esc(t.from)}" data-to="${esc(t.to)}"><td>${fmtDateTime(t.ts)}</td><td>${t.kind === "vol" ? "Vol" : "HMM"}</td><td>${chip(t.from)}</td><td class="muted">\u2192</td><td>${chip(t.to)}</td><td class="num">${m}</td><td class="num">${fmtPrice(t.close)}</td></tr>`;
       }).join("")}</tbody></table>`
    : `<div class="empty" data-testid="no-transitions">No regime transitions recorded yet.</div>`;

  root.innerHTML = `${head}
    <div class="sym-grid">
      <div class="main-col">
        <section class="card charts-card">
          <div class="card-h"><h2>Price &amp; regime history</h2><span class="muted">${history.length} bars</span>
            ${history.length ? `<span class="seg" role="group" aria-label="Bands behind the price">${seg("vol", "Vol bands")}${seg("hmm", "HMM bands")}</span>` : ""}</div>
          <div id="charts">${charts}</div>
        </section>
        <div class="card-row">
          <div class="card"><div class="card-h"><h2>Sizing</h2></div>${sizing}</div>
          <div class="card" data-testid="weights-card"><div class="card-h"><h2>Hybrid weights in force</h2></div>${weights}</div>
          <div class="card"><div class="card-h"><h2>Grid bias &amp; idle target</h2></div>${grid}</div>
        </div>
        <section class="card"><div class="card-h"><h2>Transitions</h2><span class="muted">newest first</span></div><div class="table-wrap">${trans}</div></section>
      </div>
      <aside class="side">
        <div class="card organism-card"><div class="card-h"><h2>HMM regime</h2><span class="muted">${ok ? `${h.observation_count ?? NA} candles since training` : ""}</span></div>
          <div class="org-wrap"><div class="org-slot xl" id="sym-organism" data-testid="symbol-organism"></div></div>${hmmCard}</div>
        <div class="card"><div class="card-h"><h2>Volatility</h2></div>${volCard}</div>
        <div class="card"><div class="card-h"><h2>Data pipeline</h2></div>${pipeCard}</div>
      </aside>
    </div>`;
  placeOrganism(root.querySelector("#sym-organism"), organismFor(snap.series), params, organismLabel(snap.symbol, params));
  root.querySelectorAll("[data-bands]").forEach((b) => b.addEventListener("click", () => {
    S.bands = b.dataset.bands;
    persist("bands", S.bands);
    renderSymbol();
  }));
  drawCharts();
}

function weightsBlock(sc) {
  const w = sc.weights || {};
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

function pipelineCard(snap, now) {
  const p = snap.hmm_data_pipeline;
  const h = snap.hmm_regime;
  const trainedAt = h && isNum(h.trained_at) ? h.trained_at : null;
  const training = `${kv("Trained", h ? (h.trained ? "yes" : `<span class="warn-text">no</span>`) : na(), "pipeline-trained")}
    ${kv("Since last training", trainedAt ? fmtAge((now - trainedAt) / 1000) : na())}`;
  if (!p) return `<p class="muted">No pipeline report yet.</p>${kv("Freshness", freshCell(snap, now))}${training}`;
  return `${kv("Source", esc(p.source))}${kv("Freshness", `${freshCell(snap, now)} <span class="muted">limit ${fmtAge(p.freshness_limit_sec)}</span>`)}
    ${kv("Coverage", `${fmtNum(p.coverage_pct, 1)}% <span class="muted">${p.samples ?? NA} bars</span>`)}${kv("Gaps", p.gaps ?? NA)}
    ${kv("Backfill", p.backfill_last_at ? `${fmtAge((now - p.backfill_last_at) / 1000)} ago · ${p.backfill_last_rows ?? NA} rows` : na())}
    ${p.last_error ? kv("Last error", `<span class="bad-text">${esc(p.last_error)}</span>`) : ""}${training}`;
}

/** History to draw. A model that was never trained publishes the neutral default, not a belief: hide it. */
function chartPoints(detail) {
  const h = detail.snapshot.hmm_regime;
  const neverTrained = h && !h.trained && !isNum(h.trained_at);
  return neverTrained ? detail.history.map((p) => ({ ...p, hmm: null, p: null })) : detail.history;
}

function drawCharts() {
  const box = document.getElementById("charts");
  if (!box || !S.detail || !S.detail.history.length) return;
  const points = chartPoints(S.detail);
  const width = Math.max(280, Math.floor(box.clientWidth || 640));
  document.getElementById("ch-price").innerHTML = priceChart(points, { width, bands: S.bands });
  document.getElementById("ch-ratio").innerHTML = ratioChart(points, S.detail.thresholds, { width });
  const hasP = points.some((p) => Array.isArray(p.p));
  document.getElementById("ch-prob").innerHTML = hasP
    ? probChart(points, { width })
    : `<div class="empty slim" data-testid="no-probabilities">No HMM probabilities recorded for this series.</div>`;
  document.getElementById("ch-score").innerHTML = scoreChart(points, { width });
  box.dataset.width = String(width);
  const readout = (i) => {
    const p = points[i === null ? points.length - 1 : i];
    const el = document.getElementById("readout");
    if (!p || !el) return;
    const probs = Array.isArray(p.p) ? ` ${p.p.map((v) => fmtPct(v, 0)).join(" / ")}` : "";
    el.innerHTML = `<span class="muted">${i === null ? "latest" : "at"}</span> ${fmtDateTime(p.ts)}
      <span>close <b>${fmtPrice(p.close)}</b></span>
      <span>vol ${p.vol ? `<span class="badge sm vb-${p.vol}">${VOL_LETTER[p.vol] || "?"}</span>` : NA} ratio <b>${fmtNum(p.ratio, 2)}</b></span>
      <span>HMM ${p.hmm ? `<b class="h-text-${p.hmm}">${HMM_SHORT[p.hmm] || p.hmm}</b>${probs}` : NA}</span>
      <span>score <b>${fmtSigned(p.score)}</b></span><span>idle <b>${fmtPct(p.idle, 1)}</b></span><span>NAV <b>${fmtPct(p.nav, 2)}</b></span>`;
  };
  bindCursor(box, points, width, readout);
  readout(null);
}

// ---------------------------------------------------------------- advanced

function renderAdvanced() {
  const root = document.querySelector("[data-testid=advanced-view]");
  if (!root) return;
  const now = Date.now();
  const snaps = [...S.snaps].sort((a, b) => a.series.localeCompare(b.series));
  const sum = S.summary || {};
  const counts = sum.vol_regime_summary || {};
  const avgShort = sum.vol_regime_avg_vol_short || {};
  const byLabel = Object.fromEntries(VOL_LABELS.map((l) => [l, snaps.filter((s) => s.vol_regime === l)]));
  const mean = (xs) => (xs.length ? xs.reduce((a, v) => a + v, 0) / xs.length : null);

  const volRows = VOL_LABELS.map((l) => {
    const members = byLabel[l];
    const longs = members.map((s) => s.vol?.long).filter(isNum);
    const ratios = members.map((s) => s.vol?.ratio).filter(isNum);
    const mults = members.map((s) => s.screener?.sizing_multiplier).filter(isNum);
    const multTxt = mults.length ? (Math.min(...mults) === Math.max(...mults) ? fmtMult(mults[0]) : `${fmtMult(Math.min(...mults))}–${fmtNum(Math.max(...mults))}`) : NA;
    return `<tr data-testid="vol-regime-row" data-regime="${l}"><td>${volBadge(l, null)} <span>${l}</span></td>
      <td class="num" data-testid="vol-regime-count">${isNum(counts[l]) ? counts[l] : NA}</td>
      <td class="num" data-testid="vol-regime-avg">${counts[l] ? fmtVol(avgShort[l]) : NA}</td>
      <td class="num">${fmtVol(mean(longs))}</td><td class="num">${fmtNum(mean(ratios), 2)}</td><td class="num">${multTxt}</td>
      <td class="names">${members.length ? members.map((s) => `<a href="${symbolHref(s)}">${esc(s.symbol)}</a>`).join(" ") : `<span class="muted">${NA}</span>`}</td></tr>`;
  }).join("");

  // Weights in force per vol regime (mean over the series in it), and each against the normal regime.
  const wMean = Object.fromEntries(VOL_LABELS.map((l) => {
    const ws = byLabel[l].map((s) => s.screener?.weights).filter(Boolean);
    return [l, ws.length ? Object.fromEntries(COMPONENTS.map((c) => [c, mean(ws.map((w) => w[c]).filter(isNum))])) : null];
  }));
  // Implied modifier: a component's weight relative to trend's, against the same in the normal regime.
  // It equals the configured modifier when trend and the normal regime carry none (the seed's layout).
  const ref = wMean.normal;
  const implied = (w, c) => (w && ref && w.trend > 0 && ref.trend > 0 && ref[c] > 0 && isNum(w[c]) ? w[c] / w.trend / (ref[c] / ref.trend) : null);
  const weightRows = VOL_LABELS.map((l) => {
    const w = wMean[l];
    const n = byLabel[l].filter((s) => s.screener?.weights).length;
    const cells = COMPONENTS.map((c) => {
      if (!w || !isNum(w[c])) return `<td class="num">${na()}</td>`;
      // The configured modifier when the API gives it; otherwise what the weights in force imply.
      const configured = S.config?.hybrid_weight_modifiers?.default?.[l]?.[c];
      const m = c === "trend" ? null : S.config ? (isNum(configured) ? configured : 1) : l === "normal" ? null : implied(w, c);
      const mTxt = m === null ? "" : ` <span class="rel ${m > 1.0005 ? "up" : m < 0.9995 ? "down" : ""}" data-testid="implied-modifier">${fmtMult(m)}</span>`;
      return `<td class="num">${fmtPct(w[c], 1)}${mTxt}</td>`;
    }).join("");
    const stack = w ? `<div class="wstack slim">${COMPONENTS.map((c) => `<i class="w-${c}" style="width:${isNum(w[c]) ? w[c] * 100 : 0}%"></i>`).join("")}</div>` : na();
    return `<tr data-testid="weights-row" data-regime="${l}"><td>${volBadge(l, null)} ${l}</td><td class="num">${n}</td>${cells}<td class="wcell">${stack}</td></tr>`;
  }).join("");

  const tuningTable = (key, labels, short, testid) => {
    const rowsHtml = snaps.map((s) => {
      const t = s[key];
      if (!t) return `<tr data-testid="${testid}-row"><td><a href="${symbolHref(s)}">${esc(s.symbol)}</a></td><td class="num" colspan="${3 + labels.length * 2}">${na()}</td></tr>`;
      return `<tr data-testid="${testid}-row"><td><a href="${symbolHref(s)}">${esc(s.symbol)}</a> <span class="sub">${esc(s.timeframe)}</span></td>
        <td class="num">${isNum(t.flips_per_day) ? fmtNum(t.flips_per_day, 1) : NA}</td><td class="num">${t.flips ?? NA}</td>
        <td>${t.current ? short(t.current) : NA} <span class="sub">${isNum(t.current_since_ts) ? fmtAge((now - t.current_since_ts) / 1000) : ""}</span></td>
        ${labels.map((l) => `<td class="num">${isNum(t.mean_dwell_min?.[l]) ? fmtAge(t.mean_dwell_min[l] * 60) : NA}</td>`).join("")}
        ${labels.map((l) => { const v = t.mean_forward_return?.[l]; return `<td class="num ${isNum(v) ? (v > 0 ? "pos-text" : v < 0 ? "neg-text" : "") : ""}">${fmtBp(v)}</td>`; }).join("")}</tr>`;
    }).join("");
    const lh = labels.map((l) => `<th class="num">${short(l, true)}</th>`).join("");
    return `<table class="grid compact" data-testid="${testid}"><thead>
      <tr><th rowspan="2">Series</th><th rowspan="2" class="num">Flips/day</th><th rowspan="2" class="num">Flips</th><th rowspan="2">Current</th>
      <th colspan="${labels.length}" class="grp">Mean dwell</th><th colspan="${labels.length}" class="grp">Fwd return / bar</th></tr>
      <tr>${lh}${lh}</tr></thead><tbody>${rowsHtml || `<tr><td colspan="${4 + labels.length * 2}">${na()}</td></tr>`}</tbody></table>`;
  };
  const hmmShort = (l, head) => (head ? HMM_SHORT[l] || l : `<span class="chip h-${esc(l)}">${HMM_SHORT[l] || esc(l)}</span>`);
  const volShort = (l) => (VOL_LETTER[l] ? `<span class="badge sm vb-${l}">${VOL_LETTER[l]}</span>` : esc(l));

  const pipeRows = snaps.map((s) => {
    const p = s.hmm_data_pipeline;
    const h = s.hmm_regime;
    const trained = h ? (h.trained ? `<span class="ok-text">yes</span>` : `<span class="warn-text">no</span>`) : na();
    const since = h && isNum(h.trained_at) ? fmtAge((now - h.trained_at) / 1000) : NA;
    return `<tr data-testid="pipeline-row" data-series="${esc(s.series)}"><td><a href="${symbolHref(s)}">${esc(s.symbol)}</a> <span class="sub">${esc(s.timeframe)}</span></td>
      <td>${p ? esc(p.source) : na()}</td><td class="num">${freshCell(s, now)}</td><td class="num">${p ? fmtAge(p.freshness_limit_sec) : NA}</td>
      <td class="num">${p ? `${fmtNum(p.coverage_pct, 1)}%` : NA}</td><td class="num">${p?.samples ?? NA}</td><td class="num">${p?.gaps ?? NA}</td>
      <td>${p && p.backfill_last_at ? `${fmtAge((now - p.backfill_last_at) / 1000)} ago · ${p.backfill_last_rows ?? NA} rows` : NA}${p?.backfill_last_message ? `<div class="sub">${esc(p.backfill_last_message)}</div>` : ""}</td>
      <td>${p?.last_error ? `<span class="bad-text">${esc(p.last_error)}</span>` : NA}</td>
      <td>${trained}</td><td class="num">${since}</td><td class="num">${h?.observation_count ?? NA}</td></tr>`;
  }).join("");

  const services = S.status && S.status.services && S.status.services.length
    ? `<table class="grid compact" data-testid="services"><thead><tr><th>Service</th><th>Replica</th><th>Host</th><th class="num">Up</th><th class="num">Last seen</th><th class="num">Handled</th><th class="num">Skipped</th><th class="num">Dead-lettered</th></tr></thead><tbody>
      ${S.status.services.map((v) => {
        const seen = (now - v.last_seen) / 1000;
        return `<tr><td>${esc(v.service)}</td><td>${esc(v.replica)}</td><td>${esc(v.host)} <span class="sub">pid ${esc(v.pid)}</span></td><td class="num">${fmtAge((now - v.started_at) / 1000)}</td>
        <td class="num"><span class="fresh ${seen < 30 ? "ok" : "stale"}"><i></i><span>${fmtAge(seen)}</span></span></td><td class="num">${v.handled}</td><td class="num">${v.skipped}</td><td class="num ${v.dead_lettered ? "bad-text" : ""}">${v.dead_lettered}</td></tr>`;
      }).join("")}</tbody></table>`
    : `<div class="empty">No service health reports.</div>`;

  root.innerHTML = `<div class="adv-grid">
    <section class="card" data-testid="vol-regimes-block"><div class="card-h"><h2>Vol Regimes</h2><span class="muted">${isNum(sum.symbols) ? sum.symbols : NA} symbols</span></div>
      <div class="table-wrap"><table class="grid compact"><thead><tr><th>Regime</th><th class="num">Symbols</th><th class="num">Avg short vol</th><th class="num">Avg long vol</th><th class="num">Avg ratio</th><th class="num">Sizing</th><th>Series</th></tr></thead><tbody>${volRows}</tbody></table></div></section>
    <section class="card" data-testid="weights-block"><div class="card-h"><h2>Hybrid weight modifiers per vol regime</h2><span class="muted" data-tip="Mean weights in force over the series in each regime.\n×: implied modifier = (w / w_trend) ÷ the same in the normal regime; it equals the configured modifier when trend and the normal regime are unmodified.">weights in force · × implied modifier vs normal</span></div>
      <div class="table-wrap"><table class="grid compact"><thead><tr><th>Regime</th><th class="num">n</th>${COMPONENTS.map((c) => `<th class="num"><span class="dot w-${c}"></span>${c}</th>`).join("")}<th></th></tr></thead><tbody>${weightRows}</tbody></table></div></section>
    <section class="card wide" data-testid="tuning-block"><div class="card-h"><h2>HMM tuning</h2><span class="muted">flips, dwell times and forward return per regime (seed 003 §4)</span></div>
      <div class="table-wrap">${tuningTable("hmm_tuning", HMM_LABELS, hmmShort, "hmm-tuning")}</div></section>
    <section class="card wide" data-testid="vol-tuning-block"><div class="card-h"><h2>Vol regime tuning</h2><span class="muted">the same metrics for the volatility labels</span></div>
      <div class="table-wrap">${tuningTable("vol_tuning", VOL_LABELS, volShort, "vol-tuning")}</div></section>
    <section class="card wide" data-testid="pipeline-block"><div class="card-h"><h2>Data pipeline</h2><span class="muted">freshness, coverage, backfill and training per series</span></div>
      <div class="table-wrap"><table class="grid compact"><thead><tr><th>Series</th><th>Source</th><th class="num">Freshness</th><th class="num">Limit</th><th class="num">Coverage</th><th class="num">Bars</th><th class="num">Gaps</th><th>Backfill</th><th>Last error</th><th>Trained</th><th class="num">Since training</th><th class="num">Obs.</th></tr></thead>
      <tbody>${pipeRows || `<tr><td colspan="12">${na()}</td></tr>`}</tbody></table></div></section>
    <section class="card wide" data-testid="services-block"><div class="card-h"><h2>Services</h2><span class="muted">${esc(S.status?.namespace || "")}</span></div><div class="table-wrap">${services}</div></section>
  </div>`;
}

// ---------------------------------------------------------------- tooltip, clock, boot

function bindTooltip() {
  const tip = document.getElementById("tip");
  let owner = null;
  const show = (target) => {
    owner = target;
    tip.textContent = target.dataset.tip;
    tip.hidden = false;
    const box = target.getBoundingClientRect();
    const tw = tip.offsetWidth;
    const th = tip.offsetHeight;
    let left = box.left + box.width / 2 - tw / 2;
    left = Math.max(6, Math.min(window.innerWidth - tw - 6, left));
    const top = box.top - th - 8 < 4 ? box.bottom + 8 : box.top - th - 8;
    tip.style.left = `${left + window.scrollX}px`;
    tip.style.top = `${top + window.scrollY}px`;
  };
  const hide = () => {
    owner = null;
    tip.hidden = true;
  };
  document.addEventListener("pointerover", (ev) => {
    const t = ev.target.closest && ev.target.closest("[data-tip]");
    if (t) show(t);
    else if (owner) hide();
  });
  document.addEventListener("focusin", (ev) => {
    const t = ev.target.closest && ev.target.closest("[data-tip]");
    if (t) show(t);
  });
  document.addEventListener("focusout", hide);
  window.addEventListener("scroll", hide, { passive: true });
}

/** Age texts move on by themselves: re-render them from the data already held (no request). */
function tickClock() {
  const now = Date.now();
  document.querySelectorAll("[data-fresh-for]").forEach((el) => {
    const s = S.byId.get(el.dataset.freshFor);
    if (!s) return;
    const age = freshnessOf(s, now);
    if (age === null) return;
    el.classList.toggle("ok", age <= freshnessLimitOf(s));
    el.classList.toggle("stale", age > freshnessLimitOf(s));
    const span = el.querySelector("span");
    if (span) span.textContent = fmtAge(age);
  });
  renderLive();
}

let resizeFrame = 0;
let lastWidth = 0;
function onResize() {
  if (resizeFrame) return;
  resizeFrame = requestAnimationFrame(() => {
    resizeFrame = 0;
    const box = document.getElementById("charts");
    if (box && S.route.name === "symbol" && Math.abs((box.clientWidth || 0) - lastWidth) > 4) {
      lastWidth = box.clientWidth;
      drawCharts();
    }
  });
}

function onRoute() {
  S.route = parseRoute();
  render();
  schedule(null, true, true);
}

function boot() {
  bindTooltip();
  window.addEventListener("hashchange", onRoute);
  window.addEventListener("resize", onResize);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) schedule(null, true, true);
  });
  render();
  connect();
  schedule(null, true, true);
  setInterval(tickClock, 1000);
}

boot();
