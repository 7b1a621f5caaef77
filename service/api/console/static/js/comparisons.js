// Comparisons tab: the interleaved comparisons (GET /admin/comparisons) that decide whether a
// candidate adapter that passed the offline gate replaces what serves, and Abort (POST
// /admin/comparisons/{id}/abort) for a running one. The run detail (runs.js) shows a run's
// comparison with the same pieces.
//
// What the numbers are (service/interleaving.py): a share of live searches shows the
// candidate's ranking and the serving one's (an adapter, or the raw query) team-draft
// interleaved. A search with engagement scores +1 when the shopper engaged with more of the
// candidate's products, −1 with more of the baseline's, 0 for a tie; searches nobody engaged
// with carry no information. The preference Δ is the mean score, with an interval at the
// deployment's confidence; the comparison is won when the whole interval lies above 0, lost
// when below, expired when its traffic or time budget runs out first, aborted by hand or when
// what serves changed under it. The tally is recomputed from the search log on every call.

import { api, hasOperation } from "./api.js";
import { signed } from "./attribution.js";
import { badge, clear, errorText, facts, h, int, message, pct, s, table, when } from "./dom.js";

/** The side of 0 an interval lies on: "above" (won), "below" (lost) or "spans" (undecided). */
export function verdict(t) {
  if (t.low > 0) return "above";
  if (t.high < 0) return "below";
  return "spans";
}

/** "+0.400 [−0.631, +1.431]". */
export function preferenceText(t) {
  return `${signed(t.preference, 3)} [${signed(t.low, 3)}, ${signed(t.high, 3)}]`;
}

const BAR = { w: 168, h: 30, pad: 10 };

/**
 * The preference's interval as a small SVG on a fixed scale from −1 to +1 (Δ's whole range,
 * so bars of different comparisons read alike): a line for the interval, a dot for Δ, a mark
 * at 0. An interval reaching past ±1 (few searches) is cut at the edge and its end drawn as
 * an arrow; the exact numbers are in the hover title and the data attributes.
 */
export function intervalBar(t) {
  const span = BAR.w - 2 * BAR.pad;
  const x = (v) => BAR.pad + ((Math.max(-1, Math.min(1, v)) + 1) / 2) * span;
  const mid = 12;
  const side = verdict(t);
  const title = `preference ${preferenceText(t)} over ${int(t.searches)} searches with engagement`;
  const svg = s("svg", {
    class: `interval interval-${side}`,
    viewBox: `0 0 ${BAR.w} ${BAR.h}`,
    width: BAR.w,
    height: BAR.h,
    role: "img",
    "aria-label": title,
    "data-preference": t.preference,
    "data-low": t.low,
    "data-high": t.high,
    "data-verdict": side,
  });
  svg.append(
    s("title", null, title),
    s("line", { class: "interval-axis", x1: x(-1), x2: x(1), y1: mid, y2: mid }),
    s("line", { class: "interval-zero", x1: x(0), x2: x(0), y1: mid - 8, y2: mid + 8 }),
    s("line", { class: "interval-ci", x1: x(t.low), x2: x(t.high), y1: mid, y2: mid }),
  );
  // Arrowheads where the interval is cut at the edge of the scale.
  if (t.low < -1) {
    svg.append(s("path", { class: "interval-cut", d: `M${x(-1) + 5},${mid - 4} L${x(-1)},${mid} L${x(-1) + 5},${mid + 4}` }));
  }
  if (t.high > 1) {
    svg.append(s("path", { class: "interval-cut", d: `M${x(1) - 5},${mid - 4} L${x(1)},${mid} L${x(1) - 5},${mid + 4}` }));
  }
  svg.append(
    s("circle", { class: "interval-mean", cx: x(t.preference), cy: mid, r: 3.5 }),
    s("text", { x: x(-1), y: BAR.h - 1, "text-anchor": "middle" }, "−1"),
    s("text", { x: x(0), y: BAR.h - 1, "text-anchor": "middle" }, "0"),
    s("text", { x: x(1), y: BAR.h - 1, "text-anchor": "middle" }, "+1"),
  );
  return svg;
}

/** Δ with its interval, as text and as the bar. */
export function preferenceCell(t) {
  return h("span", { class: "preference" },
    h("span", { class: "preference-text" }, preferenceText(t)), intervalBar(t));
}

function baselineText(c) {
  return c.baseline ? h("code", null, c.baseline) : h("span", { class: "muted" }, "raw query");
}

function versus(c) {
  return h("span", { class: "versus" }, h("code", null, c.candidate), h("br"),
    h("span", { class: "muted" }, "vs "), baselineText(c));
}

/** Why a comparison ended (or what it waits for while running). */
export function reasonOf(c) {
  const d = c.decision || {};
  if (c.status === "running") {
    return h("span", { class: "muted" },
      `interleaving ${pct(c.share, 0)} of searches; ends by ${when(c.deadline)} or after `,
      `${int(c.max_searches)} searches`);
  }
  return h("span", null, d.reason || "–",
    d.promotion_error ? h("span", { class: "promotion-error" }, ` · promotion failed: ${d.promotion_error}`) : null);
}

/** The tally's counts as "wins / losses / ties". */
export function wlt(t) {
  return `${int(t.wins)} / ${int(t.losses)} / ${int(t.ties)}`;
}

/**
 * One comparison as a definition list, for a run's detail. `c` has ComparisonOut's shape; a
 * decided one shows the tally its decision recorded (what it was decided on) when it has one.
 */
export function comparisonFacts(c) {
  const decided = Boolean(c.status !== "running" && c.decision && c.decision.tally);
  const t = decided ? c.decision.tally : c.tally;
  return h("div", { class: "comparison-detail", dataset: { comparison: c.id } },
    facts([
      ["comparison", [h("code", null, c.id), " ", badge(c.status)]],
      c.candidate ? ["candidate vs baseline", versus(c)] : null,
      t ? ["interleaved searches", `${int(t.interleaved)} (${int(t.searches)} with engagement)`] : null,
      t ? ["wins / losses / ties", h("span", { dataset: { field: "wlt" } }, wlt(t))] : null,
      t ? [decided ? "preference at the decision" : "preference (live)", preferenceCell(t)] : null,
      c.decision?.confidence ? ["confidence", pct(c.decision.confidence, 0)] : null,
      c.decided_at ? ["decided", when(c.decided_at)] : null,
      ["reason", reasonOf(c)],
    ]));
}

export function createComparisonsTab(root) {
  const status = h("div", { class: "status-line", id: "comparisons-status" });
  const list = h("div", { id: "comparisons-list" });
  root.append(
    h("h2", null, "Interleaved comparisons"),
    h("p", { class: "muted explain-text" },
      "A candidate that passed the offline gate is shown to a share of live searches, its ",
      "ranking team-draft interleaved with what serves. Each search with engagement scores +1 ",
      "for the candidate, −1 for the baseline or 0; the preference Δ is their mean. Won (the ",
      "candidate is promoted) when Δ's interval lies above 0, lost when below; the bar shows the ",
      "interval on the scale −1 … +1 around 0."),
    h("div", { class: "toolbar" }, h("button", { type: "button", onclick: () => load() }, "Refresh")),
    status, list);

  function say(kind, text) {
    clear(status).append(message(kind, text));
  }

  async function abort(c) {
    const serving = c.baseline || "the raw query";
    if (!window.confirm(`Abort the comparison of ${c.candidate}? The candidate is rejected; ${serving} keeps serving.`)) {
      return;
    }
    say("info", "Aborting…");
    try {
      const r = await api(`/admin/comparisons/${encodeURIComponent(c.id)}/abort`, { method: "POST" });
      say("ok", `Comparison ${r.id.slice(0, 8)} is ${r.status}: ${r.candidate} is rejected, ${serving} keeps serving.`);
    } catch (err) {
      say("error", `Abort failed: ${errorText(err)}`);
    }
    load(false);
  }

  async function load(clearStatus = true) {
    if (clearStatus) clear(status);
    if (!(await hasOperation("/admin/comparisons", "get"))) {
      clear(list).append(message("warn", "This API has no /admin/comparisons yet."));
      return;
    }
    let rows;
    try {
      rows = await api("/admin/comparisons", { query: { limit: 100 } });
    } catch (err) {
      clear(list).append(message("error", errorText(err)));
      return;
    }
    clear(list).append(table([
      {
        label: "comparison / run",
        value: (c) => [h("code", { title: c.id }, c.id.slice(0, 8)), h("br"),
          h("span", { class: "muted small" }, "run ",
            c.run_id ? h("code", { title: c.run_id }, c.run_id.slice(0, 8)) : "–")],
      },
      { label: "candidate vs baseline", value: versus },
      { label: "status", value: (c) => badge(c.status) },
      { label: "interleaved", class: "num", value: (c) => h("span", { dataset: { field: "interleaved" } }, int(c.tally.interleaved)) },
      { label: "engaged", class: "num", value: (c) => h("span", { dataset: { field: "searches" } }, int(c.tally.searches)) },
      { label: "wins / losses / ties", class: "num nowrap", value: (c) => h("span", { dataset: { field: "wlt" } }, wlt(c.tally)) },
      { label: "preference Δ [interval]", value: (c) => preferenceCell(c.tally) },
      {
        label: "started / decided",
        class: "nowrap",
        value: (c) => [when(c.created_at), h("br"),
          c.decided_at ? when(c.decided_at) : h("span", { class: "muted" }, "undecided")],
      },
      { label: "reason", value: reasonOf },
      {
        label: "",
        value: (c) => c.status !== "running" ? ""
          : h("button", {
            type: "button", class: "small danger", dataset: { abort: c.id }, onclick: () => abort(c),
          }, "Abort"),
      },
    ], rows, {
      empty: "No comparisons yet: a trained candidate that passes the gate starts one.",
      rowAttrs: (c) => ({ dataset: { comparison: c.id, status: c.status } }),
    }));
  }

  return { show: () => load() };
}
