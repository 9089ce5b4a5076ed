// The JSON API writes every regime label in lower case (README, "API"); the page's CSS classes,
// filters and lookups use the HMM labels in upper case (h-BEARISH, HMM_SHORT.BULLISH, ...).
// Converted once, where the data arrives, so nothing else in the page depends on the API's case.

const UP = { bearish: "BEARISH", ranging: "RANGING", bullish: "BULLISH" };
const up = (label) => UP[label] || label;
const upKeys = (map) => (map ? Object.fromEntries(Object.entries(map).map(([k, v]) => [up(k), v])) : map);

function tuning(t) {
  if (!t) return;
  t.current = up(t.current);
  t.bars = upKeys(t.bars);
  t.mean_dwell_min = upKeys(t.mean_dwell_min);
  t.mean_forward_return = upKeys(t.mean_forward_return);
}

function series(s) {
  if (!s || typeof s !== "object") return;
  if (s.hmm_regime) s.hmm_regime.regime = up(s.hmm_regime.regime);
  tuning(s.hmm_tuning);
}

function summary(sum) {
  if (sum && sum.hmm_regime_summary) sum.hmm_regime_summary = upKeys(sum.hmm_regime_summary);
}

/** A response of /api/symbols, /api/summary, /api/status, /api/config or a symbol's detail, HMM labels upper-cased. */
export function pageLabels(data) {
  if (Array.isArray(data)) {
    data.forEach(series);
  } else if (data && data.snapshot) {
    series(data.snapshot);
    if (data.consensus) data.consensus.regime = up(data.consensus.regime);
    if (Array.isArray(data.history)) data.history.forEach((p) => { p.hmm = up(p.hmm); });
    (data.transitions || []).forEach((t) => {
      if (t.kind === "hmm") {
        t.from = up(t.from);
        t.to = up(t.to);
      }
    });
  } else if (data && data.hmm_regime_summary) {
    summary(data);
  } else if (data && Array.isArray(data.series)) {
    summary(data.summary);
    data.series.forEach(series);
  } else if (data && data.vocabulary) {
    data.vocabulary.hmm_labels = data.vocabulary.hmm_labels.map(up);
  }
  return data;
}
