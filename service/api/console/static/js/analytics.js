// Analytics tab: GET /admin/analytics over the last N days (optionally one adapter): figure
// cards for the window, per-day charts (searches; click-through, no-result, add-to-cart and
// purchase rates), the per-adapter table and the top (no-result) queries.

import { api } from "./api.js";
import { legend, lineChart } from "./charts.js";
import { clear, errorText, fmt, h, int, message, pct, table } from "./dom.js";

const RATES = [
  ["click_through_rate", "click-through"],
  ["no_result_rate", "no-result"],
  ["add_to_cart_rate", "add-to-cart"],
  ["purchase_rate", "purchase"],
];

function card(label, value, sub, id) {
  return h("div", { class: "card", dataset: { figure: id } },
    h("div", { class: "card-value" }, value),
    h("div", { class: "card-label" }, label),
    sub ? h("div", { class: "card-sub" }, sub) : null);
}

export function figureCards(t) {
  return h("div", { class: "cards", id: "figures" },
    card("searches", int(t.searches), `${int(t.no_result_searches)} without results`, "searches"),
    card("click-through rate", pct(t.click_through_rate), `${int(t.clicked_searches)} searches clicked`, "ctr"),
    card("no-result rate", pct(t.no_result_rate), null, "no_result_rate"),
    card("mean click position", fmt(t.mean_click_position, 2),
      `over ${int(t.positioned_clicks)} clicks`, "mean_click_position"),
    card("add-to-cart rate", pct(t.add_to_cart_rate), `${int(t.add_to_cart_searches)} searches`, "add_to_cart_rate"),
    card("purchase rate", pct(t.purchase_rate), `${int(t.purchase_searches)} searches`, "purchase_rate"));
}

function dayTicks(days) {
  return days.map((d, i) => ({ x: i, label: String(d.day).slice(5) }));
}

export function createAnalyticsTab(root) {
  const days = h("select", { name: "days" },
    [7, 30, 90].map((d) => h("option", { value: String(d), selected: d === 30 }, `last ${d} days`)));
  const adapter = h("select", { name: "adapter" }, h("option", { value: "" }, "all adapters"));
  const top = h("input", { type: "number", name: "top", min: 1, max: 100, value: "10" });
  const out = h("div", { id: "analytics-out" });
  const form = h("form", { class: "toolbar", id: "analytics-form" },
    h("label", null, "window ", days),
    h("label", null, "adapter ", adapter),
    h("label", null, "top ", top),
    h("button", { type: "submit", class: "primary" }, "Update"));
  root.append(h("h2", null, "Search analytics"), form, out);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });

  function adapterOptions(rows) {
    const current = adapter.value;
    const names = rows.map((r) => r.adapter ?? "-");
    if (current && !names.includes(current)) names.push(current);
    adapter.replaceChildren(h("option", { value: "" }, "all adapters"),
      names.map((n) => h("option", { value: n, selected: n === current }, n === "-" ? "no adapter" : n)));
  }

  async function load() {
    clear(out).append(message("info", "Counting…"));
    let a;
    try {
      a = await api("/admin/analytics", { query: { days: days.value, top: top.value, adapter: adapter.value } });
    } catch (err) {
      clear(out).append(message("error", errorText(err)));
      return;
    }
    if (!adapter.value) adapterOptions(a.per_adapter);
    const perDay = a.per_day || [];
    const searchSeries = [{
      name: "searches",
      points: perDay.map((d, i) => ({ x: i, y: d.searches, label: String(d.day) })),
    }];
    const rateSeries = RATES.map(([key, name]) => ({
      name,
      points: perDay.map((d, i) => ({ x: i, y: d[key] ?? NaN, label: String(d.day) })),
    }));
    clear(out).append(
      h("p", { class: "muted" },
        `${String(a.window.since).slice(0, 10)} → ${String(a.window.until).slice(0, 10)} `,
        `(UTC, ${a.window.days} days)`,
        a.window.adapter ? `, adapter ${a.window.adapter}` : "",
        `; ${a.exact ? "exact" : "sampled"} figures, ${fmt(a.query_ms, 1)} ms of SQL`),
      figureCards(a.totals),
      h("div", { class: "chart-pair" },
        h("section", { class: "panel", id: "chart-searches" }, h("h3", null, "Searches per day"),
          lineChart({ series: searchSeries, xTicks: dayTicks(perDay), title: "searches per day",
            yFormat: (v) => int(v), xFormat: (i) => String(perDay[i]?.day ?? i) })),
        h("section", { class: "panel", id: "chart-rates" }, h("h3", null, "Rates per day"),
          lineChart({ series: rateSeries, xTicks: dayTicks(perDay), yDomain: [0, 1], title: "rates per day",
            yFormat: (v) => pct(v, 0), xFormat: (i) => String(perDay[i]?.day ?? i) }),
          legend(rateSeries.map((se) => se.name)))),
      h("section", { class: "panel wide", id: "per-adapter" }, h("h3", null, "Per adapter"),
        table([
          { label: "adapter", value: (r) => r.adapter ?? "no adapter" },
          { label: "searches", class: "num", value: (r) => int(r.searches) },
          { label: "CTR", class: "num", value: (r) => pct(r.click_through_rate) },
          { label: "no-result", class: "num", value: (r) => pct(r.no_result_rate) },
          { label: "mean click pos.", class: "num", value: (r) => fmt(r.mean_click_position, 2) },
          { label: "add-to-cart", class: "num", value: (r) => pct(r.add_to_cart_rate) },
          { label: "purchase", class: "num", value: (r) => pct(r.purchase_rate) },
        ], a.per_adapter, { empty: "No searches in the window." })),
      h("div", { class: "chart-pair" },
        h("section", { class: "panel", id: "top-queries" }, h("h3", null, "Top queries"),
          table([
            { label: "query", value: (r) => r.query },
            { label: "searches", class: "num", value: (r) => int(r.searches) },
          ], a.top_queries, { empty: "No searches in the window." })),
        h("section", { class: "panel", id: "top-no-result" }, h("h3", null, "Top no-result queries"),
          table([
            { label: "query", value: (r) => r.query },
            { label: "no-result searches", class: "num", value: (r) => int(r.searches) },
          ], a.top_no_result_queries, { empty: "Every search found something." }))),
    );
  }

  return { show: () => load() };
}
