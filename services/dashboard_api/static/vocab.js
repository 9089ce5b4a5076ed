// The stack's labels, as /api/config's "vocabulary" lists them. They are read once at start-up, so a
// label added to the stack shows up here without a copy of the list to update. Importers see the
// lists filled in (ES module bindings are live); nothing renders before setVocabulary has run.
// What each label looks like on the page (a letter, a short name) is presentation, kept here.

export let VOL_LABELS = [];
export let HMM_LABELS = [];
export let TIERS = [];
export let COMPONENTS = [];

const VOL_LETTER = { low: "L", normal: "N", high: "H", crisis: "C" };
const HMM_SHORT = { BEARISH: "Bear", RANGING: "Range", BULLISH: "Bull" };

export function setVocabulary(v) {
  VOL_LABELS = [...v.vol_labels];
  HMM_LABELS = [...v.hmm_labels];
  TIERS = [...v.tiers];
  COMPONENTS = [...v.score_components];
}

export const hasVocabulary = () => VOL_LABELS.length > 0 && HMM_LABELS.length > 0;

/** The letter on a vol badge; a label the page has no letter for shows its initial. */
export const volLetter = (label) => VOL_LETTER[label] ?? String(label ?? "?").charAt(0).toUpperCase();

/** "Bear" for BEARISH; a label the page has no short name for shows in title case. */
export const hmmShort = (label) => HMM_SHORT[label] ?? (label ? label.charAt(0) + label.slice(1).toLowerCase() : "?");

/** The key of a label in a probabilities object ({bearish, ranging, bullish}). */
export const probKey = (label) => label.toLowerCase();
