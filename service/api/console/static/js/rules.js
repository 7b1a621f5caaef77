// Rules tab: merchandising rules (GET/POST/PUT/DELETE /admin/rules). A synonym is a group of
// interchangeable terms (no query); a pin or hide names one query (the API normalises it) and
// product ids, pinned in the order given. Rules override the model; searches report which fired.

import { api, hasOperation } from "./api.js";
import { badge, clear, errorText, h, message, splitList, table, when } from "./dom.js";

export function ruleBody({ kind, query, terms, productIds, enabled, note }) {
  const body = { kind, enabled };
  if (kind === "synonym") body.terms = splitList(terms);
  else {
    body.query = query.trim();
    body.product_ids = splitList(productIds);
  }
  if (note.trim()) body.note = note.trim();
  return body;
}

export function createRulesTab(root) {
  const kind = h("select", { name: "kind" }, ["synonym", "pin", "hide"].map((k) => h("option", { value: k }, k)));
  const query = h("input", { type: "text", name: "query", placeholder: "printer ink" });
  const terms = h("input", { type: "text", name: "terms", placeholder: "laptop, notebook" });
  const productIds = h("input", { type: "text", name: "product_ids", placeholder: "p1, p2 (in order)" });
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: true });
  const note = h("input", { type: "text", name: "note", placeholder: "why (optional)" });
  const title = h("h3", null, "New rule");
  const save = h("button", { type: "submit", class: "primary" }, "Create");
  const cancel = h("button", { type: "button", hidden: true }, "Cancel edit");
  const queryLabel = h("label", null, "query ", query);
  const termsLabel = h("label", null, "terms ", terms);
  const idsLabel = h("label", null, "product ids ", productIds);
  const form = h("form", { class: "panel rule-form", id: "rule-form" },
    title,
    h("div", { class: "row" }, h("label", null, "kind ", kind), queryLabel, termsLabel, idsLabel),
    h("div", { class: "row" },
      h("label", { class: "check" }, enabled, " enabled"), h("label", null, "note ", note), save, cancel));
  const status = h("div", { class: "status-line", id: "rules-status" });
  const list = h("div", { id: "rules-list" });
  root.append(h("h2", null, "Merchandising rules"), form, status, list);
  let editing = null;

  function syncKind() {
    const synonym = kind.value === "synonym";
    termsLabel.hidden = !synonym;
    queryLabel.hidden = synonym;
    idsLabel.hidden = synonym;
  }
  kind.addEventListener("change", syncKind);
  syncKind();

  function reset() {
    editing = null;
    form.reset();
    enabled.checked = true;
    title.textContent = "New rule";
    save.textContent = "Create";
    cancel.hidden = true;
    syncKind();
  }
  cancel.addEventListener("click", reset);

  function edit(rule) {
    editing = rule.id;
    kind.value = rule.kind;
    query.value = rule.query || "";
    terms.value = (rule.terms || []).join(", ");
    productIds.value = (rule.product_ids || []).join(", ");
    enabled.checked = rule.enabled !== false;
    note.value = rule.note || "";
    title.textContent = `Edit rule #${rule.id}`;
    save.textContent = "Save";
    cancel.hidden = false;
    syncKind();
    form.scrollIntoView({ block: "nearest" });
  }

  function say(kindOf, text) {
    clear(status).append(message(kindOf, text));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = ruleBody({ kind: kind.value, query: query.value, terms: terms.value,
      productIds: productIds.value, enabled: enabled.checked, note: note.value });
    say("info", "Saving…");
    try {
      const rule = editing === null
        ? await api("/admin/rules", { method: "POST", body })
        : await api(`/admin/rules/${editing}`, { method: "PUT", body });
      say("ok", `${editing === null ? "Created" : "Saved"} rule #${rule.id} (${rule.kind}).`);
      reset();
    } catch (err) {
      say("error", errorText(err));
    }
    load(false);
  });

  async function remove(rule) {
    if (!window.confirm(`Delete rule #${rule.id} (${rule.kind})?`)) return;
    try {
      await api(`/admin/rules/${rule.id}`, { method: "DELETE" });
      say("ok", `Deleted rule #${rule.id}.`);
      if (editing === rule.id) reset();
    } catch (err) {
      say("error", errorText(err));
    }
    load(false);
  }

  async function load(clearStatus = true) {
    if (clearStatus) clear(status);
    if (!(await hasOperation("/admin/rules", "get"))) {
      clear(list).append(message("warn", "This API has no /admin/rules yet."));
      form.hidden = true;
      return;
    }
    form.hidden = false;
    let rows;
    try {
      rows = await api("/admin/rules");
    } catch (err) {
      clear(list).append(message("error", errorText(err)));
      return;
    }
    clear(list).append(table([
      { label: "#", class: "num", value: (r) => String(r.id) },
      { label: "kind", value: (r) => badge(r.kind) },
      { label: "query", value: (r) => r.query ?? "–" },
      { label: "terms / products", value: (r) => (r.kind === "synonym" ? r.terms : r.product_ids || []).join(", ") },
      { label: "enabled", value: (r) => r.enabled ? "yes" : badge("off", "off") },
      { label: "note", value: (r) => r.note || "" },
      { label: "updated", value: (r) => when(r.updated_at) },
      {
        label: "",
        value: (r) => h("span", { class: "actions" },
          h("button", { type: "button", class: "small", onclick: () => edit(r) }, "Edit"),
          h("button", { type: "button", class: "small danger", onclick: () => remove(r) }, "Delete")),
      },
    ], rows, { empty: "No rules.", rowAttrs: (r) => ({ dataset: { rule: String(r.id) } }) }));
  }

  return { show: () => load() };
}
