// Small DOM helpers shared by the tabs: element building, number and date formatting, tables,
// messages. Text always goes in through textContent (never innerHTML), so product titles,
// queries and error messages from the API can never inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.setAttribute("class", value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "3.2"). */
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element: s("line", {x1: 0, y1: 0, x2: 10, y2: 10}). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  return append(el, children);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A number with `digits` decimals; "–" for null, undefined and NaN. */
export function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
  return Number(value).toFixed(digits);
}

/** A share in [0, 1] as a percentage. */
export function pct(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(Number(value))) return "–";
  return `${(Number(value) * 100).toFixed(digits)}%`;
}

export function int(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US");
}

/** An ISO timestamp as "2025-01-31 14:05:09" in the browser's time zone. */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`
  );
}

/** Seconds between two ISO timestamps, as "12.3 s" / "4.1 min". */
export function duration(startIso, endIso) {
  if (!startIso || !endIso) return "–";
  const sec = (new Date(endIso) - new Date(startIso)) / 1000;
  if (!Number.isFinite(sec)) return "–";
  return sec < 120 ? `${sec.toFixed(1)} s` : `${(sec / 60).toFixed(1)} min`;
}

/** A table. columns: [{label, value: row => node|string, class?}]; empty: the text shown
 *  in place of rows when there are none. */
export function table(columns, rows, { empty = "Nothing yet.", rowAttrs } = {}) {
  const head = h("tr", null, columns.map((c) => h("th", { class: c.class }, c.label)));
  const body = rows.length
    ? rows.map((row) =>
        h(
          "tr",
          rowAttrs ? rowAttrs(row) : null,
          columns.map((c) => h("td", { class: c.class }, c.value(row))),
        ),
      )
    : [h("tr", null, h("td", { class: "empty", colSpan: columns.length }, empty))];
  return h("table", { class: "grid" }, h("thead", null, head), h("tbody", null, body));
}

/** A status word in a coloured pill (the colour comes from console.css by status name). */
export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${String(kind).replace(/[^a-z_-]/gi, "")}` }, text);
}

/** A message box: kind is "error", "warn", "info" or "ok". */
export function message(kind, text) {
  return h("div", { class: `msg msg-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** The message of an API error as a person should read it. */
export function errorText(err) {
  if (err && err.status) return `${err.status} ${err.code}: ${err.message}`;
  return `The request failed: ${err && err.message ? err.message : err}`;
}

/** A definition list of [label, value] pairs (null entries are left out). */
export function facts(pairs) {
  return h(
    "dl",
    { class: "facts" },
    pairs.filter(Boolean).map(([label, value]) => [h("dt", null, label), h("dd", null, value)]),
  );
}

/** Comma-separated text as a list of trimmed, non-empty items. */
export function splitList(text) {
  return String(text || "")
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
}
