// What every view reads: the page state, the route, preferences kept across visits, and the
// organisms and table rows that persist between renders (so bodies morph and rows update in place).

import { decodeSymbol, encodeSymbol } from "./format.js";

export const HISTORY = 600; // points of history the symbol view asks for

export const S = {
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
  loaded: false,
  apiError: null,
  flash: new Set(),
};
export const organisms = new Map();
export const rows = new Map();

function restore(key, fallback) {
  try {
    const raw = localStorage.getItem(`regimes.${key}`);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

export function persist(key, value) {
  try {
    localStorage.setItem(`regimes.${key}`, JSON.stringify(value));
  } catch {
    /* private mode: preferences simply do not persist */
  }
}

export function parseRoute() {
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

export const symbolHref = (s) => `#/symbol/${encodeURIComponent(s.exchange)}/${encodeSymbol(s.symbol)}/${encodeURIComponent(s.timeframe)}`;

export function routeSeriesId(route) {
  if (route.name !== "symbol") return null;
  if (route.timeframe) return `${route.exchange}:${route.symbol}:${route.timeframe}`;
  return S.detail ? S.detail.snapshot.series : null;
}
