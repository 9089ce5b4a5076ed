// Small pieces of markup more than one view uses: badges, chips, bars, ages, key-value rows, organisms.

import {
  NA, esc, fmtAge, fmtCount, fmtNum, fmtPct, fmtSigned, fmtVol, freshnessLimitOf, freshnessOf, isNum, na, titleCase,
} from "./format.js";
import { Organism, wake } from "./organism.js";
import { S, organisms } from "./state.js";
import { HMM_LABELS, VOL_LABELS, depthRule, probKey, volLetter } from "./vocab.js";

export function organismFor(id) {
  let org = organisms.get(id);
  if (!org) {
    org = new Organism(id);
    organisms.set(id, org);
  }
  return org;
}

export function placeOrganism(slot, org, params, label) {
  if (!slot) return;
  if (S.loaded) org.set(params, label); // before the first fetch there is nothing to show, not "no verdict"
  if (org.svg.parentNode !== slot) slot.replaceChildren(org.svg);
  wake();
}

export function organismLabel(name, params) {
  if (params.status === "none") return `${name}: no HMM verdict yet`;
  if (params.status === "untrained") return `${name}: HMM not trained yet`;
  return `${name}: ${params.regime}, confidence ${fmtPct(params.confidence, 0)}, bias ${fmtSigned(params.bias)}`;
}

export function volBadge(label, vol, { big = false } = {}) {
  if (!VOL_LABELS.includes(label)) return na();
  let tip = `${titleCase(label)} volatility`;
  if (vol) {
    tip += `\nshort ${fmtVol(vol.short)} \u00b7 long ${fmtVol(vol.long)}\nratio ${fmtNum(vol.ratio, 2)}`;
    if (vol.sufficient === false) tip += `\nwarming up: ${vol.samples ?? NA} returns, regime defaults to normal`;
  }
  const warm = vol && vol.sufficient === false ? " warming" : "";
  return `<span class="badge vb-${label}${big ? " big" : ""}${warm}" data-testid="vol-badge" data-regime="${label}" data-tip="${esc(tip)}" tabindex="0" aria-label="${esc(tip.replace(/\n/g, "; "))}">${volLetter(label)}</span>`;
}

/** A vol badge with the label's name beside it. */
export const volNamed = (label) => `<span class="named">${volBadge(label, null)} <span class="muted">${esc(label)}</span></span>`;

export const hmmLabelChip = (label) => `<span class="chip h-${esc(label)}">${titleCase(label)}</span>`;

export function hmmChip(h) {
  if (!h) return `<span class="hmm-state none" data-testid="hmm-status" data-status="none">no HMM yet</span>`;
  if (!h.trained) {
    return `<span class="hmm-state untrained" data-testid="hmm-status" data-status="untrained" data-tip="The model is not trained yet; its verdict is the neutral default.\n${h.observation_count ?? NA} candles filtered">untrained</span>`;
  }
  return `<span class="chip h-${h.regime}" data-testid="hmm-status" data-status="ok" data-regime="${h.regime}">${titleCase(h.regime)}</span>`;
}

/** The HMM's training depth as a badge (compact: its initial), the tiers' rule in its tooltip; "—" untrained. */
export function depthBadge(h, { compact = false } = {}) {
  const tier = h && h.trained ? h.depth_tier : null;
  if (!tier) return compact ? "" : na(); // a table cell keeps just its confidence
  let tip = `Training depth: ${tier}`;
  if (isNum(h.training_candles)) tip += `\n${fmtCount(h.training_candles)} training candles`;
  if (isNum(h.label_agreement)) tip += `\nlabels agree with the previous model on ${fmtPct(h.label_agreement, 0)}`;
  tip += `\n${depthRule(fmtCount)} (candles)`;
  const text = compact ? tier.charAt(0).toUpperCase() : tier;
  return `<span class="depth d-${esc(tier)}${compact ? " sm" : ""}" data-testid="depth-tier" data-tier="${esc(tier)}" data-tip="${esc(tip)}" tabindex="0" aria-label="${esc(tip.replace(/\n/g, "; "))}">${esc(text)}</span>`;
}

/** "bearish 20% · ranging 80% · bullish 0%": probabilities in the vocabulary's order, each named. */
export function probWords(values, digits = 0) {
  return HMM_LABELS.map((l, i) => `${l.toLowerCase()} ${fmtPct(values[i], digits)}`).join(" \u00b7 ");
}

export function probBar(h) {
  if (!h || !h.trained || !h.probabilities) return "";
  const values = HMM_LABELS.map((l) => h.probabilities[probKey(l)]);
  return `<span class="pbar" data-testid="prob-bar" data-tip="${esc(probWords(values))}">${HMM_LABELS
    .map((l, i) => `<i class="h-${l}" style="width:${isNum(values[i]) ? (values[i] * 100).toFixed(1) : 0}%"></i>`)
    .join("")}</span>`;
}

export function biasArrow(b) {
  if (!isNum(b)) return na();
  const cls = b > 0.02 ? "up" : b < -0.02 ? "down" : "flat";
  const deg = (-b * 90).toFixed(1);
  return `<span class="bias ${cls}" data-testid="bias" data-bias="${b}"><svg viewBox="0 0 16 16" aria-hidden="true"><g transform="rotate(${deg} 8 8)"><path d="M2 8h10M8.5 4.5 12 8l-3.5 3.5"/></g></svg>${fmtSigned(b)}</span>`;
}

/** A score in [-1, 1] as a bar growing from the middle, with its value written beside it. */
export function zeroBar(v) {
  if (!isNum(v)) return na();
  const w = Math.min(50, Math.abs(v) * 50);
  const left = v >= 0 ? 50 : 50 - w;
  const sign = v >= 0 ? "pos" : "neg";
  return `<span class="zscore ${sign}" data-testid="zbar"><span class="zbar"><i style="left:${left}%;width:${w}%"></i></span><span class="zval">${fmtSigned(v)}</span></span>`;
}

/** An age in seconds, marked so the clock tick and the tests find every age on the page. */
export const age = (sec) => (isNum(sec) ? `<span data-age>${fmtAge(sec)}</span>` : NA);

export function freshCell(s, now) {
  const fresh = freshnessOf(s, now);
  if (fresh === null) return na();
  const ok = fresh <= freshnessLimitOf(s);
  return `<span class="fresh ${ok ? "ok" : "stale"}" data-fresh-for="${esc(s.series)}"><i></i>${age(fresh)}</span>`;
}

export function kv(label, value, testid = "") {
  return `<div class="kv"${testid ? ` data-testid="${testid}"` : ""}><span class="k">${label}</span><span class="v">${value}</span></div>`;
}

export function hmmView(s) {
  const h = s && s.hmm_regime;
  return { h, ok: !!(h && h.trained) };
}
