// The stack's labels, as /api/config's "vocabulary" lists them. They are read once at start-up, so a
// label added to the stack shows up here without a copy of the list to update. Importers see the
// lists filled in (ES module bindings are live); nothing renders before setVocabulary has run.
// What each label looks like on the page (a letter, a short name) is presentation, kept here.

export let VOL_LABELS = [];
export let HMM_LABELS = [];
export let TIERS = [];
export let COMPONENTS = [];
export let DEPTH_TIERS = [];
export let DEPTH_CANDLES = {};

const VOL_LETTER = { low: "L", normal: "N", high: "H", crisis: "C" };
const HMM_SHORT = { BEARISH: "Bear", RANGING: "Range", BULLISH: "Bull" };

export function setVocabulary(v) {
  VOL_LABELS = [...v.vol_labels];
  HMM_LABELS = [...v.hmm_labels];
  TIERS = [...v.tiers];
  COMPONENTS = [...v.score_components];
  DEPTH_TIERS = [...(v.depth_tiers ?? [])];
  DEPTH_CANDLES = { ...(v.depth_candles ?? {}) };
}

export const hasVocabulary = () => VOL_LABELS.length > 0 && HMM_LABELS.length > 0;

/** The letter on a vol badge; a label the page has no letter for shows its initial. */
export const volLetter = (label) => VOL_LETTER[label] ?? String(label ?? "?").charAt(0).toUpperCase();

/** "Bear" for BEARISH; a label the page has no short name for shows in title case. */
export const hmmShort = (label) => HMM_SHORT[label] ?? (label ? label.charAt(0) + label.slice(1).toLowerCase() : "?");

/** "shallow < 1,000 ≤ moderate < 2,000 ≤ deep": the tiers with the candles each begins at, from the API. */
export function depthRule(fmt) {
  return DEPTH_TIERS.map((t, i) => (i === 0 ? t : `${fmt(DEPTH_CANDLES[t])} \u2264 ${t}`)).join(" < ");
}

/** The key of a label in a probabilities object ({bearish, ranging, bullish}). */
export const probKey = (label) => label.toLowerCase();
