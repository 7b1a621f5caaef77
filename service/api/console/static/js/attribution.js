// The rewrite's added phrases coloured by their attribution (GET /admin/explain): green for a
// phrase that raised NDCG@10 over the raw query, red for one that lowered it, the strength by
// |value| against the largest |value| of the rewrite, the exact value on hover.
//
// Segments are character spans [start, end) of `expansion` (the policy's additions); text
// between spans (spaces, punctuation) is shown uncoloured, so the line reads exactly as the
// policy wrote it.

import { fmt, h, table } from "./dom.js";

// Below this the colours would shout about noise: a rewrite whose phrases all moved NDCG@10 by
// less than 0.02 is drawn pale, not at full strength.
export const MIN_SCALE = 0.02;

/** The colour scale of a set of attributions: the largest |value|, at least MIN_SCALE. */
export function colourScale(values) {
  return Math.max(MIN_SCALE, ...values.map((v) => Math.abs(v)));
}

/** The background of a phrase with attribution `value` on `scale`: an HSL colour, green above
 *  zero, red below, grey at zero; lightness falls (colour deepens) with |value| / scale. */
export function attributionColour(value, scale) {
  if (!Number.isFinite(value) || value === 0) return "hsl(0, 0%, 92%)";
  const t = Math.min(1, Math.abs(value) / scale);
  const hue = value > 0 ? 135 : 0;
  const light = Math.round(94 - 40 * t);
  return `hsl(${hue}, 65%, ${light}%)`;
}

export function signed(value, digits = 4) {
  if (!Number.isFinite(value)) return "–";
  return `${value > 0 ? "+" : value < 0 ? "−" : "±"}${Math.abs(value).toFixed(digits)}`;
}

/** The expansion as a paragraph of spans, each segment coloured by its attribution. */
export function colouredExpansion(expansion, segments) {
  const scale = colourScale(segments.map((sg) => sg.attribution));
  const out = h("span", { class: "attributed" });
  let at = 0;
  const ordered = segments.slice().sort((a, b) => a.start - b.start);
  for (const sg of ordered) {
    if (sg.start > at) out.append(expansion.slice(at, sg.start));
    const span = h(
      "span",
      {
        class: `seg ${sg.attribution > 0 ? "seg-pos" : sg.attribution < 0 ? "seg-neg" : "seg-zero"}`,
        title: `${signed(sg.attribution)} NDCG@10`,
        tabIndex: 0,
        dataset: { attribution: String(sg.attribution) },
      },
      expansion.slice(sg.start, sg.end),
    );
    span.style.backgroundColor = attributionColour(sg.attribution, scale);
    out.append(span);
    at = Math.max(at, sg.end);
  }
  if (at < expansion.length) out.append(expansion.slice(at));
  return out;
}

/** A gradient from −scale (red) through 0 to +scale (green), labelled. */
function scaleLegend(scale) {
  const bar = h("span", { class: "scale-bar" });
  const stops = [-1, -0.5, 0, 0.5, 1].map((f) => attributionColour(f * scale || 0, scale));
  bar.style.backgroundImage = `linear-gradient(to right, ${stops.join(", ")})`;
  return h(
    "div",
    { class: "scale-legend" },
    h("span", null, signed(-scale, 3)),
    bar,
    h("span", null, signed(scale, 3)),
    h("span", { class: "muted" }, " ΔNDCG@10 per phrase (Shapley/Owen value)"),
  );
}

/** The whole explanation: the coloured rewrite, its rewards, the per-phrase table. */
export function renderExplanation(ex) {
  const segments = ex.segments || [];
  const reward = ex["reward_ndcg@10"];
  const raw = ex["raw_query_ndcg@10"];
  const scale = colourScale(segments.map((sg) => sg.attribution));
  const line = h(
    "p",
    { class: "rewrite-line" },
    h("span", { class: "typed" }, ex.query),
    ex.expansion
      ? [h("span", { class: "plus" }, " ⊕ "), colouredExpansion(ex.expansion, segments)]
      : h("span", { class: "muted" }, "  (the policy added nothing)"),
  );
  const summary = h(
    "p",
    { class: "explain-summary" },
    `NDCG@10 of the rewrite ${fmt(reward)} vs the raw query ${fmt(raw)} (${signed(reward - raw, 3)}); `,
    `adapter ${ex.adapter || "base model"}; estimator ${ex.estimator}, `,
    `${ex.coalitions_evaluated} coalitions; efficiency gap ${fmt(ex.efficiency_gap, 4)}`,
    ex.parsed ? "" : "; the answer did not follow the prompt's format",
  );
  const rows = table(
    [
      { label: "phrase", value: (sg) => sg.text },
      {
        label: "attribution",
        class: "num",
        value: (sg) => {
          const cell = h("span", { class: "swatch-value" }, signed(sg.attribution));
          cell.style.backgroundColor = attributionColour(sg.attribution, scale);
          return cell;
        },
      },
      { label: "chars", class: "num muted", value: (sg) => `${sg.start}–${sg.end}` },
    ],
    segments,
    { empty: "No phrases to attribute." },
  );
  return h("div", { class: "explanation" }, line, scaleLegend(scale), summary, rows);
}
