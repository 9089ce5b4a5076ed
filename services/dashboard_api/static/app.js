// regime-stack dashboard: overview, symbol view and advanced tab over the status API.
// Live: one EventSource on /api/stream. A "change" event names the series the state publisher just
// wrote; the page refetches (debounced) what it shows. "hello" (every connect and reconnect)
// refetches everything, so the page recovers by itself after the API restarts. No polling: the only
// timer that repeats re-renders "age" texts (freshness) from data already in the page.
// The labels (regimes, tiers, score components) come from /api/config before anything renders.

import { renderAdvanced } from "./advanced.js";
import { fmtAge, freshnessLimitOf, freshnessOf, isNum } from "./format.js";
import { bindOverview, overviewSkeleton, renderOverview } from "./overview.js";
import { HISTORY, S, parseRoute, routeSeriesId, rows } from "./state.js";
import { drawCharts, renderSymbol } from "./symbol.js";
import { hasVocabulary, setVocabulary } from "./vocab.js";
import { pageLabels } from "./labels.js";

const DEBOUNCE_MS = 150; // a burst of change events becomes one refetch...
const MAX_WAIT_MS = 900; // ...at most this late after its first event...
const MIN_GAP_MS = 700; // ...and never sooner than this after the previous refetch began

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
    if (!S.config) await loadConfig();
    const [snaps, summary] = await Promise.all([api("/api/symbols"), api("/api/summary")]);
    S.snaps = snaps;
    S.byId = new Map(snaps.map((s) => [s.series, s]));
    S.summary = summary;
    const route = S.route;
    if (route.name === "symbol") {
      const id = routeSeriesId(route);
      // A sibling timeframe's change moves the symbol's consensus, which the detail carries.
      const symbol = symbolOf(id);
      const touched = [...changed].some((c) => symbolOf(c) === symbol);
      if (all || !S.detail || S.detailKey !== route.hash || touched) await loadDetail();
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

/** ``kraken:BTC/USD`` of the series id ``kraken:BTC/USD:1m`` (a symbol may hold ":" itself: the timeframe is last). */
const symbolOf = (id) => id.slice(0, id.lastIndexOf(":"));

/** Once per page: the config in force, and with it the vocabulary every view is built from. */
async function loadConfig() {
  const config = await api("/api/config");
  setVocabulary(config.vocabulary);
  S.config = config;
  S.shown = null; // the skeleton so far had no labels to show
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

// ---------------------------------------------------------------- render

function render() {
  const route = S.route;
  if (hasVocabulary() && S.shown !== route.hash) {
    buildSkeleton(route);
    S.shown = route.hash;
  }
  document.querySelectorAll("[data-route]").forEach((a) => a.classList.toggle("active", a.dataset.route === route.name || (route.name === "symbol" && a.dataset.route === "overview")));
  if (S.shown === route.hash) {
    if (route.name === "overview") renderOverview();
    else if (route.name === "symbol") renderSymbol();
    else renderAdvanced();
  }
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
  // A wall-clock stamp (the state publisher's last write), so aged against the wall clock.
  upd.innerHTML = isNum(at) ? `updated <span data-age>${fmtAge((Date.now() - at) / 1000)}</span> ago` : "no update yet";
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
    const fresh = freshnessOf(s, now);
    if (fresh === null) return;
    el.classList.toggle("ok", fresh <= freshnessLimitOf(s));
    el.classList.toggle("stale", fresh > freshnessLimitOf(s));
    const text = el.querySelector("[data-age]");
    if (text) text.textContent = fmtAge(fresh);
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
