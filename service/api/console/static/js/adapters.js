// Adapters tab: the registry (GET /admin/adapters) with each adapter's gate numbers, canary and
// warm-up; promote (POST /admin/adapters/{name}/promote) and rollback (POST
// /admin/adapters/rollback), each confirmed first because both change what shoppers get.

import { api } from "./api.js";
import { badge, clear, errorText, fmt, h, message, table, when } from "./dom.js";

export function gateSummary(gate) {
  if (!gate || typeof gate !== "object") return "–";
  const cand = gate["candidate_ndcg@10"] ?? gate.candidate?.mean;
  const base = gate.baseline === "active" ? gate["active_ndcg@10"] : gate["raw_query_ndcg@10"];
  const d = gate.delta_vs_baseline;
  return h("span", { class: "gate" },
    badge(gate.passed ? "passed" : "failed", gate.passed ? "passed" : "failed"),
    ` ${fmt(cand)} vs ${gate.baseline || "baseline"} ${fmt(base)}`,
    d ? h("span", { class: "muted" }, ` (Δ ${fmt(d.mean)} [${fmt(d.lo)}, ${fmt(d.hi)}])`) : "");
}

function warmupText(w) {
  if (!w || typeof w !== "object") return "–";
  const progress = w.total ? ` ${w.done ?? 0}/${w.total}` : "";
  return `${w.status || "?"}${progress}${w.error ? `: ${w.error}` : ""}`;
}

function canaryText(c) {
  if (!c || typeof c !== "object" || !Object.keys(c).length) return "–";
  if ("ok" in c) {
    const ms = c.latency_ms !== undefined ? ` · ${fmt(c.latency_ms, 0)} ms` : "";
    return h("span", { title: c.rewrite ? `canary rewrite: ${c.rewrite}` : "" }, c.ok ? `ok${ms}` : `failed${ms}`);
  }
  return Object.entries(c)
    .slice(0, 3)
    .map(([key, v]) => `${key}=${typeof v === "number" ? fmt(v, 2) : v}`)
    .join(", ");
}

export function createAdaptersTab(root) {
  const warm = h("input", { type: "checkbox", name: "warm", checked: true });
  const status = h("div", { class: "status-line", id: "adapters-status" });
  const list = h("div", { id: "adapters-list" });
  const refresh = h("button", { type: "button", onclick: () => load() }, "Refresh");
  const rollbackBtn = h("button",
    { type: "button", class: "danger", id: "rollback", onclick: () => rollback() }, "Roll back");
  root.append(
    h("h2", null, "Adapters"),
    h("div", { class: "toolbar" }, refresh, rollbackBtn,
      h("label", {
        class: "check",
        title: "Rewrite the head queries with the adapter before it serves (a worker does it, then flips)",
      }, warm, " warm the rewrite store before promoting")),
    status, list);

  function say(kind, text) {
    clear(status).append(message(kind, text));
  }

  async function promote(name) {
    if (!window.confirm(`Promote adapter ${name}? Shoppers' rewrites will come from it.`)) return;
    say("info", `Promoting ${name}…`);
    try {
      const r = await api(`/admin/adapters/${encodeURIComponent(name)}/promote`, {
        method: "POST", query: { warm: warm.checked ? "true" : "false" },
      });
      say("ok", r.status === "warming"
        ? `${name} is being warmed by a worker; it serves once the warm-up finishes.`
        : `${r.active} is active (previous: ${r.previous || "none"}; ${fmt(r.seconds, 2)} s).`);
    } catch (err) {
      say("error", `Promote failed: ${errorText(err)}`);
    }
    load(false);
  }

  async function rollback() {
    if (!window.confirm("Roll back to the previous adapter?")) return;
    say("info", "Rolling back…");
    try {
      const r = await api("/admin/adapters/rollback", { method: "POST" });
      say("ok", `Rolled back: ${r.active || "the base policy"} serves (was ${r.previous || "none"}).`);
    } catch (err) {
      say("error", `Rollback failed: ${errorText(err)}`);
    }
    load(false);
  }

  async function load(clearStatus = true) {
    if (clearStatus) clear(status);
    let rows;
    try {
      rows = await api("/admin/adapters");
    } catch (err) {
      clear(list).append(message("error", errorText(err)));
      return;
    }
    clear(list).append(table([
      { label: "name", value: (a) => h("code", null, a.name) },
      { label: "status", value: (a) => badge(a.status) },
      { label: "parent", value: (a) => a.parent || "–" },
      { label: "gate (NDCG@10)", value: (a) => gateSummary(a.metrics?.gate) },
      { label: "canary", value: (a) => canaryText(a.metrics?.canary) },
      { label: "warm-up", value: (a) => warmupText(a.metrics?.warmup) },
      { label: "created", value: (a) => when(a.created_at) },
      { label: "activated", value: (a) => when(a.activated_at) },
      {
        label: "",
        value: (a) => a.status === "active" || a.status === "rejected" ? ""
          : h("button", {
            type: "button", class: "small", dataset: { promote: a.name }, onclick: () => promote(a.name),
          }, "Promote"),
      },
    ], rows, {
      empty: "No adapters yet: POST /admin/train trains the first.",
      rowAttrs: (a) => ({ dataset: { adapter: a.name } }),
    }));
  }

  return { show: () => load() };
}
