// Search tab: POST /v1/search as a storefront would call it, with what a search engineer wants
// to see next to the results: the rewrite and where it came from, the timings, facets and the
// merchandising rules that fired; then GET /admin/explain colours the policy's added phrases
// by their attribution (that call needs judged products for the query and a worker: its
// 404 / 503 / 504 answers are shown as what they are, not as a broken page).

import { api, apiSchema } from "./api.js";
import { renderExplanation } from "./attribution.js";
import { bars } from "./charts.js";
import { badge, clear, errorText, facts, fmt, h, message, splitList } from "./dom.js";

const MODES = ["", "hybrid", "dense", "lexical"];

export function createSearchTab(root) {
  const state = { attributes: {} };
  const q = h("input", {
    type: "search", name: "query", placeholder: "a shopper's query, e.g. printer ink",
    required: true, autocomplete: "off",
  });
  const k = h("input", { type: "number", name: "k", min: 1, max: 100, value: "10" });
  const mode = h("select", { name: "mode" }, MODES.map((m) => h("option", { value: m }, m || "default")));
  const brand = h("input", { type: "text", name: "brand", placeholder: "HP, Canon" });
  const priceMin = h("input", { type: "number", name: "price_min", min: 0, step: "any", placeholder: "min" });
  const priceMax = h("input", { type: "number", name: "price_max", min: 0, step: "any", placeholder: "max" });
  const explainBox = h("input", { type: "checkbox", name: "explain", checked: true });
  const chips = h("span", { class: "chips" });
  const filterSet = h(
    "fieldset",
    { class: "filters", hidden: true },
    h("legend", null, "Filters"),
    h("label", null, "brand ", brand),
    h("label", null, "price ", priceMin, " – ", priceMax),
    chips,
  );
  const form = h(
    "form",
    { class: "search-form", id: "search-form" },
    h("div", { class: "row" },
      q,
      h("label", null, "k ", k),
      h("label", null, "mode ", mode),
      h("label", { class: "check" }, explainBox, " explain attribution"),
      h("button", { type: "submit", class: "primary" }, "Search")),
    filterSet,
  );
  const out = h("div", { id: "search-out" });
  root.append(h("h2", null, "Search"), form, out);

  // Filters only where this API version accepts them (the request model forbids unknown
  // fields, so sending them to an older API would be a 422).
  apiSchema().then((spec) => {
    const props = spec?.components?.schemas?.SearchRequest?.properties || {};
    filterSet.hidden = !("filters" in props);
  });

  function drawChips() {
    clear(chips);
    for (const [field, values] of Object.entries(state.attributes)) {
      for (const v of values) {
        chips.append(h("button", {
          type: "button", class: "chip", title: "remove this filter",
          onclick: () => {
            state.attributes[field] = values.filter((x) => x !== v);
            if (!state.attributes[field].length) delete state.attributes[field];
            drawChips();
            form.requestSubmit();
          },
        }, `${field}: ${v} ×`));
      }
    }
  }

  function requestBody() {
    const body = { query: q.value.trim(), k: Number(k.value) || 10 };
    if (mode.value) body.mode = mode.value;
    if (filterSet.hidden) return body;
    const filters = {};
    const brands = splitList(brand.value);
    if (brands.length) filters.brand = brands;
    const price = {};
    if (priceMin.value !== "") price.min = Number(priceMin.value);
    if (priceMax.value !== "") price.max = Number(priceMax.value);
    if (Object.keys(price).length) filters.price = price;
    if (Object.keys(state.attributes).length) filters.attributes = state.attributes;
    if (Object.keys(filters).length) body.filters = filters;
    return body;
  }

  function addFacet(field, value) {
    if (field === "brand") {
      const have = splitList(brand.value);
      if (!have.includes(value)) brand.value = have.concat(value).join(", ");
    } else {
      const have = state.attributes[field] || [];
      if (!have.includes(value)) state.attributes[field] = have.concat(value);
      drawChips();
    }
    form.requestSubmit();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = requestBody();
    if (!body.query) return;
    clear(out).append(message("info", "Searching…"));
    let res;
    try {
      res = await api("/v1/search", { method: "POST", body });
    } catch (err) {
      clear(out).append(message("error", errorText(err)));
      return;
    }
    clear(out).append(renderResponse(res, addFacet));
    if (explainBox.checked) {
      const slot = h("section", { class: "panel", id: "explain" },
        h("h3", null, "Attribution of the rewrite"),
        h("p", { class: "muted" },
          "The active policy's greedy rewrite of this query, scored against its judged products: ",
          "each added phrase's Shapley/Owen share of the change in NDCG@10 (GET /admin/explain)."),
        message("info", "Asking a worker to explain the rewrite…"));
      out.append(slot);
      explainInto(slot, body.query);
    }
  });
}

async function explainInto(slot, query) {
  try {
    const ex = await api("/admin/explain", { query: { query } });
    slot.lastChild.replaceWith(renderExplanation(ex));
  } catch (err) {
    const why = err.code === "no_worker"
      ? "No worker is running to explain the rewrite: start `ospo worker` (or `ospo up`)."
      : {
        404: "Explain needs judged products (labels) for this query.",
        503: "No worker or broker could run the explanation.",
        504: "A worker is running but did not answer in time (busy training?).",
      }[err.status];
    slot.lastChild.replaceWith(message(err.status === 404 ? "info" : "warn",
      why ? `${why} (${errorText(err)})` : errorText(err)));
  }
}

function renderResponse(res, addFacet) {
  const rewrite = h("section", { class: "panel", id: "rewrite" },
    h("h3", null, "Rewrite"),
    h("p", { class: "rewrite-line" },
      h("span", { class: "typed" }, res.query),
      res.expansion ? [h("span", { class: "plus" }, " ⊕ "), h("span", { class: "expansion" }, res.expansion)]
        : h("span", { class: "muted" }, "  (nothing added)")),
    facts([
      ["searched with", res.rewrite],
      ["source", badge(res.rewrite_source)],
      ["adapter", res.adapter || "none"],
      ["retrieval", res.retrieval_mode],
      ["index", res.index_version],
      ["search id", h("code", null, res.search_id)],
    ]),
    res.rules && res.rules.length
      ? h("p", { class: "rules-fired" }, "Rules fired: ",
        res.rules.map((r) => badge(`${r.kind} #${r.id}`, r.kind)))
      : null,
  );
  const timings = h("section", { class: "panel", id: "timings" },
    h("h3", null, "Timings"),
    bars(Object.entries(res.timings || {}).map(([label, value]) => ({ label: label.replace(/_ms$/, ""), value })),
      (v) => `${fmt(v, 1)} ms`));
  const results = h("section", { class: "panel wide", id: "results" },
    h("h3", null, `Results (${res.results.length})`),
    res.results.length
      ? h("ol", { class: "results" }, res.results.map((r) =>
        h("li", { class: "result", dataset: { product: r.product_id, brand: r.brand ?? "", price: r.price ?? "" } },
          h("div", { class: "result-title" }, r.title, r.pinned ? badge("pinned", "pin") : null),
          h("div", { class: "result-meta" },
            h("code", null, r.product_id),
            r.brand ? ` · ${r.brand}` : "",
            r.price !== undefined && r.price !== null ? ` · ${fmt(r.price, 2)}` : "",
            ` · score ${fmt(r.score, 4)}`))))
      : message("info", "No results."));
  const side = h("div", { class: "side" }, rewrite, timings, renderFacets(res, addFacet));
  // What the request asked that this index lacks (an unknown filter or facet field).
  const warnings = (res.warnings || []).map((w) => message("warn", w));
  return h("div", null,
    warnings.length ? h("div", { id: "search-warnings" }, warnings) : null,
    h("div", { class: "search-grid" }, results, side));
}

/** The facets panel: a numeric field's range among the candidates (`facet_stats`: price's
 *  min–max and how many candidates have a price), then each categorical field's top values,
 *  each a button that filters by it. Null when the answer has neither. */
export function renderFacets(res, addFacet) {
  const facets = res.facets || {};
  const stats = res.facet_stats || {};
  if (!Object.keys(facets).length && !Object.keys(stats).length) return null;
  return h("section", { class: "panel", id: "facets" },
    h("h3", null, "Facets"),
    Object.entries(stats).map(([field, st]) =>
      h("div", { class: "facet-stat", dataset: { stat: field } },
        h("h4", null, field),
        h("p", null,
          h("span", { class: "facet-range" }, `${fmt(st.min, 2)} – ${fmt(st.max, 2)}`),
          st.count !== undefined && st.count !== null
            ? h("span", { class: "count" }, ` · ${st.count} of the candidates have a ${field}`)
            : null))),
    Object.entries(facets).map(([field, values]) =>
      h("div", { class: "facet" },
        h("h4", null, field),
        h("ul", null, (values || []).map((fv) =>
          h("li", null,
            h("button", {
              type: "button", class: "link", title: `filter by ${field} = ${fv.value}`,
              onclick: () => addFacet(field, fv.value),
            }, fv.value),
            h("span", { class: "count" }, String(fv.count))))))));
}
