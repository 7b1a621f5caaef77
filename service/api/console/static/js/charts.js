// SVG charts drawn here, with no chart library: a line chart (training curves, per-day
// figures) and horizontal bars (timings). Colours come from console.css through the classes
// `series-0`, `series-1`, ...; every point carries a <title>, so hovering shows its value.

import { h, s } from "./dom.js";

const W = 640;
const H = 240;
const PAD = { left: 52, right: 16, top: 14, bottom: 36 };

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) {
    // A flat series: zero (no searches yet) on [0, 1], anything else ±10% around it.
    return lo === 0 ? niceTicks(0, 1, count) : niceTicks(lo - Math.abs(lo) * 0.1, hi + Math.abs(hi) * 0.1, count);
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= raw) ?? 10 * mag;
  const first = Math.floor(lo / step);
  const last = Math.ceil(hi / step - 1e-9);
  const ticks = [];
  for (let i = first; i <= last; i += 1) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

/**
 * A line chart.
 *   series: [{name, points: [{x, y}], band?: [{x, lo, hi}]}]   (x numeric, ascending)
 *   xTicks: optional [{x, label}] (categorical axes: days); default: nice numeric ticks
 *   yFormat / xFormat: value -> text; yDomain: [lo, hi] to fix the scale (rates: [0, 1])
 *   xLabel, yLabel: axis titles; title: the chart's accessible name
 */
export function lineChart({
  series,
  xTicks,
  yDomain,
  yFormat = (v) => String(v),
  xFormat = (v) => String(v),
  xLabel = "",
  yLabel = "",
  title = "",
}) {
  const pts = series.flatMap((se) => se.points.filter((p) => Number.isFinite(p.y)));
  const bands = series.flatMap((se) => se.band || []);
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": title,
  });
  if (title) svg.append(s("title", null, title));
  if (!pts.length) {
    svg.append(s("text", { x: W / 2, y: H / 2, class: "chart-empty", "text-anchor": "middle" },
      "no data"));
    return svg;
  }
  // The x range covers every point, with or without a value (a day with no searches has no
  // rate but still has its place on the axis).
  const xs = series.flatMap((se) => se.points.map((p) => p.x));
  const ys = pts.map((p) => p.y).concat(bands.flatMap((b) => [b.lo, b.hi]));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const yt = niceTicks(...(yDomain || [Math.min(...ys), Math.max(...ys)]));
  const [y0, y1] = yDomain || [yt[0], yt[yt.length - 1]];
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - PAD.top - PAD.bottom);

  const grid = s("g", { class: "chart-grid" });
  for (const t of yDomain ? niceTicks(y0, y1) : yt) {
    if (t < y0 - 1e-12 || t > y1 + 1e-12) continue;
    grid.append(
      s("line", { x1: PAD.left, x2: W - PAD.right, y1: py(t), y2: py(t) }),
      s("text", { x: PAD.left - 6, y: py(t) + 4, "text-anchor": "end" }, yFormat(t)),
    );
  }
  const ticks = xTicks || niceTicks(x0, x1, 6).filter((t) => t >= x0 && t <= x1)
    .map((t) => ({ x: t, label: xFormat(t) }));
  // Label at most ~8 ticks so dates never overlap, counted back from the last (today).
  const every = Math.max(1, Math.ceil(ticks.length / 8));
  ticks.forEach((t, i) => {
    if ((ticks.length - 1 - i) % every) return;
    grid.append(
      s("line", { class: "tick", x1: px(t.x), x2: px(t.x), y1: H - PAD.bottom, y2: H - PAD.bottom + 4 }),
      s("text", { x: px(t.x), y: H - PAD.bottom + 16, "text-anchor": "middle" }, t.label),
    );
  });
  grid.append(
    s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }),
    s("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }),
  );
  if (xLabel) {
    grid.append(s("text", { class: "axis-title", x: (PAD.left + W - PAD.right) / 2, y: H - 4,
      "text-anchor": "middle" }, xLabel));
  }
  if (yLabel) {
    grid.append(s("text", { class: "axis-title", x: 12, y: PAD.top + (H - PAD.top - PAD.bottom) / 2,
      "text-anchor": "middle", transform: `rotate(-90 12 ${PAD.top + (H - PAD.top - PAD.bottom) / 2})` },
      yLabel));
  }
  svg.append(grid);

  series.forEach((se, i) => {
    const g = s("g", { class: `series series-${i}`, "data-series": se.name });
    if (se.band && se.band.length > 1) {
      const upper = se.band.map((b) => `${px(b.x)},${py(b.hi)}`);
      const lower = se.band.slice().reverse().map((b) => `${px(b.x)},${py(b.lo)}`);
      g.append(s("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
    }
    const valid = se.points.filter((p) => Number.isFinite(p.y));
    if (valid.length > 1) {
      g.append(s("polyline", { class: "line", points: valid.map((p) => `${px(p.x)},${py(p.y)}`).join(" ") }));
    }
    for (const p of valid) {
      g.append(s("circle", { class: "point", cx: px(p.x), cy: py(p.y), r: valid.length > 60 ? 2 : 3.5 },
        s("title", null, `${se.name} · ${p.label ?? xFormat(p.x)}: ${yFormat(p.y)}`)));
    }
    svg.append(g);
  });
  return svg;
}

/** A legend for the series of a chart (same classes, so the same colours). */
export function legend(names) {
  return h("div", { class: "legend" },
    names.map((name, i) => h("span", { class: `legend-item series-${i}` }, h("i"), name)));
}

/** Horizontal bars: [{label, value}] scaled to the largest; `format` writes the value. */
export function bars(items, format = (v) => String(v)) {
  const max = Math.max(0, ...items.map((it) => it.value));
  return h("div", { class: "bars" },
    items.map((it) => {
      const fill = h("span", { class: "bar-fill" });
      fill.style.width = `${max > 0 ? (100 * it.value) / max : 0}%`;
      return h("div", { class: "bar-row", title: `${it.label}: ${format(it.value)}` },
        h("span", { class: "bar-label" }, it.label),
        h("span", { class: "bar-track" }, fill),
        h("span", { class: "bar-value" }, format(it.value)));
    }));
}
