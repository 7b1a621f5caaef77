// Training runs tab: GET /admin/runs, one run's detail (GET /admin/runs/{id}) with its reward
// curve and gate decision, and "train now" (POST /admin/train).
//
// The curve comes from `metrics.steps`, the rows the trainer writes to metrics.jsonl (one per
// policy-gradient step: reward_mean, reward_std, ndcg of the sampled rewrites on the whole index,
// val_ndcg on held-out queries every eval_every steps; a warm-start row has `phase`). A run
// that is still queued or running has no steps yet; one that failed may have none.
//
// A run whose candidate passed the gate is `comparing` while its interleaved comparison runs
// (`metrics.comparison_id`); once decided, `metrics.comparison` holds the decision. The detail
// shows the comparison as GET /admin/comparisons has it (live tally), else the run's record.

import { api } from "./api.js";
import { gateSummary } from "./adapters.js";
import { comparisonFacts } from "./comparisons.js";
import { legend, lineChart } from "./charts.js";
import { badge, clear, duration, errorText, facts, fmt, h, int, message, table, when } from "./dom.js";

/** The per-step series of a run's metrics: [{name, points, band?}] for lineChart. */
export function rewardSeries(metrics) {
  const rows = (metrics?.steps || []).filter((r) => r && !r.phase && Number.isFinite(r.step));
  const trained = rows.filter((r) => Number.isFinite(r.reward_mean));
  const series = [{
    name: "reward (mean of the group)",
    points: trained.map((r) => ({ x: r.step, y: r.reward_mean })),
    band: trained.filter((r) => Number.isFinite(r.reward_std))
      .map((r) => ({ x: r.step, lo: r.reward_mean - r.reward_std, hi: r.reward_mean + r.reward_std })),
  }];
  const ndcg = trained.filter((r) => Number.isFinite(r.ndcg));
  if (ndcg.length) {
    series.push({ name: "NDCG@10 of the samples", points: ndcg.map((r) => ({ x: r.step, y: r.ndcg })) });
  }
  const val = rows.filter((r) => Number.isFinite(r.val_ndcg));
  if (val.length) {
    series.push({
      name: "validation NDCG@10 (greedy)",
      points: val.map((r) => ({ x: r.step, y: r.val_ndcg })),
    });
  }
  return series;
}

function interval(sm) {
  return sm ? `${fmt(sm.mean)} [${fmt(sm.lo)}, ${fmt(sm.hi)}]` : "–";
}

function gateDetail(gate) {
  if (!gate) return message("info", "No gate decision (the run did not get that far).");
  return h("div", { class: "gate-detail" },
    h("p", null, gateSummary(gate)),
    gate.reliable === false
      ? message("warn", "Unreliable: judged@10 is below 0.9 for some policy, so its NDCG "
        + "counts many ungraded products as irrelevant.")
      : null,
    table([
      { label: "policy", value: (r) => r[0] },
      { label: "NDCG@10 mean [95% CI]", class: "num", value: (r) => interval(r[1]) },
      { label: "judged@10", class: "num", value: (r) => fmt(r[1]?.["judged@10"]) },
    ], [
      ["candidate", gate.candidate],
      ["active", gate.active],
      ["raw query", gate.raw],
      [`Δ vs ${gate.baseline}`, gate.delta_vs_baseline],
    ].filter((r) => r[1])),
    h("p", { class: "muted" },
      `${gate.validation_queries ?? "?"} validation queries (${gate.grades ?? "human"} grades); `,
      "passes when the lower end of Δ ",
      `exceeds the margin ${fmt(gate.margin)}.`));
}

/** The run's comparison into `slot`: the API's (live tally) when listed, else what the run
 *  recorded of the decision (the list holds the latest comparisons only). */
async function comparisonInto(slot, id, run) {
  const m = run.metrics || {};
  let found = null;
  try {
    const rows = await api("/admin/comparisons", { query: { limit: 500 } });
    found = rows.find((c) => c.id === id) || null;
  } catch {
    found = null; // an older API without the endpoint: fall back on the run's record
  }
  if (!found && m.comparison) {
    found = {
      id, status: m.comparison.status, tally: m.comparison.tally, decision: m.comparison,
      candidate: run.adapter, baseline: m.parent ?? null, decided_at: null,
    };
  }
  if (!found) {
    slot.replaceChildren(message("warn", `Comparison ${id} is not among the latest 500.`));
    return;
  }
  slot.replaceChildren(comparisonFacts(found));
  if (found.status === "running") {
    slot.append(h("p", { class: "muted" }, "It runs on live traffic; ",
      h("a", { href: "#comparisons" }, "the Comparisons tab"), " can abort it."));
  }
}

export function createRunsTab(root) {
  const algorithm = h("select", { name: "algorithm" }, ["ospo", "grpo"].map((a) => h("option", { value: a }, a)));
  const steps = h("input", { type: "number", name: "steps", min: 1, placeholder: "default" });
  const status = h("div", { class: "status-line", id: "runs-status" });
  const list = h("div", { id: "runs-list" });
  const detail = h("div", { id: "run-detail" });
  const trainForm = h("form", { class: "toolbar", id: "train-form" },
    h("button", { type: "button", onclick: () => load() }, "Refresh"),
    h("label", null, "algorithm ", algorithm),
    h("label", null, "steps ", steps),
    h("button", { type: "submit", class: "primary" }, "Train now"));
  root.append(h("h2", null, "Training runs"), trainForm, status, list, detail);

  trainForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { algorithm: algorithm.value };
    if (steps.value) body.steps = Number(steps.value);
    clear(status).append(message("info", "Queueing a training run…"));
    try {
      const r = await api("/admin/train", { method: "POST", body });
      clear(status).append(message("ok", `Run ${r.run_id} is ${r.status}; a worker trains it.`));
    } catch (err) {
      clear(status).append(message("error", `Train failed: ${errorText(err)}`));
    }
    load(false);
  });

  async function open(runId) {
    clear(detail).append(message("info", "Loading the run…"));
    let run;
    try {
      run = await api(`/admin/runs/${encodeURIComponent(runId)}`);
    } catch (err) {
      clear(detail).append(message("error", errorText(err)));
      return;
    }
    const m = run.metrics || {};
    const series = rewardSeries(m);
    const hasCurve = series.some((se) => se.points.length);
    const comparisonId = m.comparison?.id ?? m.comparison_id;
    const comparisonSlot = comparisonId
      ? h("div", { id: "run-comparison" }, message("info", "Loading the comparison…"))
      : null;
    clear(detail).append(h("section", { class: "panel wide", id: "run", dataset: { run: run.run_id } },
      h("h3", null, `Run ${run.run_id} `, badge(run.status)),
      run.error ? message("error", run.error) : null,
      facts([
        ["algorithm", run.algorithm],
        ["adapter", run.adapter || "–"],
        ["parent", m.parent || "–"],
        ["queries", m.train_queries !== undefined
          ? `${int(m.train_queries)} trained of ${int(m.labelled_queries)} labelled` : "–"],
        ["created", when(run.created_at)],
        ["ran", `${when(run.started_at)} → ${when(run.finished_at)} (${duration(run.started_at, run.finished_at)})`],
        ["steps", String((m.steps || []).filter((r) => Number.isFinite(r.reward_mean)).length)],
      ]),
      h("h4", null, "Reward per step"),
      hasCurve
        ? [lineChart({ series, xLabel: "step", yLabel: "NDCG@10", title: `reward curve of run ${run.run_id}`,
            yFormat: (v) => v.toFixed(2) }), legend(series.map((se) => se.name))]
        : message("info", run.status === "queued" || run.status === "running"
          ? "No steps recorded yet: the curve appears when the run finishes."
          : "This run recorded no steps."),
      h("h4", null, "Gate decision"),
      gateDetail(m.gate),
      comparisonSlot ? [h("h4", null, "Interleaved comparison"), comparisonSlot] : null,
      m.promotion_error ? message("error", `Promotion failed: ${m.promotion_error}`) : null,
      h("details", null, h("summary", null, "configuration"), h("pre", null, JSON.stringify(run.config, null, 2)))));
    if (comparisonSlot) comparisonInto(comparisonSlot, comparisonId, run);
  }

  async function load(clearStatus = true) {
    if (clearStatus) clear(status);
    let rows;
    try {
      rows = await api("/admin/runs", { query: { limit: 50 } });
    } catch (err) {
      clear(list).append(message("error", errorText(err)));
      return;
    }
    clear(list).append(table([
      {
        label: "run",
        value: (r) => h("button", {
          type: "button", class: "link", dataset: { run: r.run_id }, onclick: () => open(r.run_id),
        }, r.run_id.slice(0, 8)),
      },
      { label: "status", value: (r) => badge(r.status) },
      { label: "algorithm", value: (r) => r.algorithm },
      { label: "created", value: (r) => when(r.created_at) },
      { label: "duration", value: (r) => duration(r.started_at, r.finished_at) },
      { label: "gate", value: (r) => gateSummary(r.metrics?.gate) },
      { label: "adapter", value: (r) => r.adapter ? h("code", null, r.adapter) : "–" },
    ], rows, { empty: "No training runs yet.", rowAttrs: (r) => ({ dataset: { runRow: r.run_id } }) }));
  }

  return { show: () => load() };
}
