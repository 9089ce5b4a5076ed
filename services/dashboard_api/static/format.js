// Formatting and small helpers shared by the dashboard views. Every formatter returns "—" for a
// value that is absent (null, undefined, NaN), so a missing field never prints "null" or "NaN".

export const NA = "—";

const TF_MS = {
  "1m": 60e3, "3m": 180e3, "5m": 300e3, "15m": 900e3, "30m": 1800e3, "1h": 3600e3,
  "2h": 7200e3, "4h": 14400e3, "6h": 21600e3, "12h": 43200e3, "1d": 86400e3,
};

export const isNum = (v) => typeof v === "number" && Number.isFinite(v);
export const tfMs = (tf) => TF_MS[tf] ?? null;
export const na = () => `<span class="na">${NA}</span>`;

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** A number with a true minus sign. */
function minus(text) {
  return text.replace(/^-/, "\u2212");
}

export function fmtNum(v, digits = 2) {
  return isNum(v) ? minus(v.toFixed(digits)) : NA;
}

export function fmtSigned(v, digits = 2) {
  if (!isNum(v)) return NA;
  const t = Math.abs(v).toFixed(digits);
  if (Number(t) === 0) return t;
  return (v > 0 ? "+" : "\u2212") + t;
}

/** A fraction as a percentage: 0.02 -> "2.00%". */
export function fmtPct(v, digits = 2) {
  return isNum(v) ? minus((v * 100).toFixed(digits)) + "%" : NA;
}

/** Bar-level volatility (a std of log returns) as a percentage with three significant digits. */
export function fmtVol(v) {
  if (!isNum(v)) return NA;
  const x = Math.abs(v * 100);
  const digits = x === 0 ? 2 : x >= 10 ? 1 : x >= 1 ? 2 : x >= 0.1 ? 3 : 4;
  return (v * 100).toFixed(digits) + "%";
}

/** A count with thousands separators: 2000 -> "2,000". */
export function fmtCount(v) {
  return isNum(v) ? Math.round(v).toLocaleString("en-US") : NA;
}

export function fmtMult(v) {
  return isNum(v) ? "\u00d7" + v.toFixed(2) : NA;
}

/** A mean log return per bar in basis points. */
export function fmtBp(v) {
  if (!isNum(v)) return NA;
  return fmtSigned(v * 1e4, Math.abs(v * 1e4) >= 10 ? 1 : 2) + " bp";
}

/** An age or duration in seconds: "12 s", "3 min", "2.5 h", "4 d". */
export function fmtAge(sec) {
  if (!isNum(sec)) return NA;
  const s = Math.max(0, sec);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(s < 36000 ? 1 : 0)} h`;
  return `${Math.floor(s / 86400)} d`;
}

const pad = (n) => String(n).padStart(2, "0");

/** "14:03" (UTC), with seconds when asked. */
export function fmtClock(ms, seconds = false) {
  if (!isNum(ms)) return NA;
  const d = new Date(ms);
  const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return seconds ? `${hm}:${pad(d.getUTCSeconds())}` : hm;
}

/** "2024-05-01 14:03" (UTC). */
export function fmtDateTime(ms) {
  if (!isNum(ms)) return NA;
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${fmtClock(ms)}`;
}

export function fmtPrice(v) {
  if (!isNum(v)) return NA;
  const a = Math.abs(v);
  const digits = a >= 10 ? 2 : a >= 1 ? 4 : a >= 0.01 ? 5 : 8;
  return v.toLocaleString("en-US", { minimumFractionDigits: Math.min(digits, 2), maximumFractionDigits: digits });
}

/** "BTC/USD" -> "BTC-USD", the inverse of shared.subjects.decode_symbol. */
export function encodeSymbol(symbol) {
  let out = "";
  for (const ch of symbol) {
    if (ch === "/") out += "-";
    else if (/[A-Za-z0-9]/.test(ch)) out += ch;
    else out += "_" + ch.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

export function decodeSymbol(token) {
  return token.replace(/_([0-9A-F]{2})|-/g, (m, hex) => (hex ? String.fromCharCode(parseInt(hex, 16)) : "/"));
}

export function titleCase(label) {
  return label ? label.charAt(0).toUpperCase() + label.slice(1).toLowerCase() : NA;
}

// ---------------------------------------------------------------- one clock for every age
// A series' candles have a clock of their own: the demo market plays days-old candles faster than
// real time until it catches up. Ingest measures freshness against that clock, so every age on the
// page does too: a candle-time stamp (a regime's start, a training) is aged against the series'
// market "now", and a wall-clock stamp (a backfill, a heartbeat, a write) against the wall clock:
// both ends of that span shift by the same lag on the market clock, so it is the same span there.

/** Milliseconds the series' market clock runs behind the wall clock, as its last pipeline report implies:
 * the report's wall time less the market time its freshness was measured at (newest close + freshness). */
function clockLagMs(snap) {
  const pipe = snap.hmm_data_pipeline;
  const bar = tfMs(snap.timeframe) ?? (pipe && isNum(pipe.interval_min) ? pipe.interval_min * 60e3 : null);
  if (!pipe || !bar || !isNum(pipe.freshness_sec) || !isNum(pipe.last_ts) || !isNum(pipe.reported_at)) return 0;
  return Math.max(0, pipe.reported_at - (pipe.last_ts + bar) - pipe.freshness_sec * 1000);
}

/** The series' market "now" (ms): the wall clock less the lag, and never before the newest close it shows. */
function marketNow(snap, now) {
  const bar = tfMs(snap.timeframe);
  const newest = snap.price && isNum(snap.price.ts) && bar ? snap.price.ts + bar : -Infinity;
  return Math.max(now - clockLagMs(snap), newest);
}

/** Seconds from a candle-time stamp to the series' market now; null without a stamp. */
export function candleAge(snap, ts, now) {
  return isNum(ts) ? (marketNow(snap, now) - ts) / 1000 : null;
}

/** Seconds since a wall-clock stamp; null without one. */
export function wallAge(ts, now) {
  return isNum(ts) ? (now - ts) / 1000 : null;
}

/** Seconds since the newest candle closed: the pipeline's own figure aged to now, else the last price. */
export function freshnessOf(snap, now) {
  const pipe = snap.hmm_data_pipeline;
  if (pipe && isNum(pipe.freshness_sec)) {
    const since = isNum(pipe.reported_at) ? Math.max(0, (now - pipe.reported_at) / 1000) : 0;
    return pipe.freshness_sec + since;
  }
  const bar = tfMs(snap.timeframe);
  if (snap.price && isNum(snap.price.ts) && bar) return Math.max(0, (now - (snap.price.ts + bar)) / 1000);
  return null;
}

export function freshnessLimitOf(snap) {
  const pipe = snap.hmm_data_pipeline;
  if (pipe && isNum(pipe.freshness_limit_sec)) return pipe.freshness_limit_sec;
  const bar = tfMs(snap.timeframe);
  return bar ? Math.max(180, (3 * bar) / 1000) : 180;
}
