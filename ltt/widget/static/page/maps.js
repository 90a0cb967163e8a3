// Heatmaps of a head: its contribution map and attention pattern, with token axes and the target's row.

import { visibleToken, colorRamp } from "./layout.js";
import { h, fmt, quoted } from "./state.js";

export function heatmap(st, data, R, C, name, target, source, rgb) {
  const base = cssRGB(st, "--ltt-bg"); // zero is the panel's background: white, or dark in a dark scheme
  const box = h("div", { class: "ltt-heatmap" });
  let max = 0;
  for (let i = 0; i < data.length; i++) if (data[i] > max) max = data[i];
  const cv = h("canvas", { width: C, height: R, class: "ltt-heatmap-canvas", "data-map": name, role: "img", "aria-label": `${name}: rows are targets, columns are sources` });
  const ctx = cv.getContext("2d");
  if (ctx) {
    const img = ctx.createImageData(C, R);
    for (let i = 0; i < R * C; i++) {
      const [r, g, b] = colorRamp(max > 0 ? data[i] / max : 0, rgb, base);
      img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  const side = Math.max(120, Math.min(240, (st.panel.clientWidth || 300) - 90)); // the map and its labels fit the panel
  const px = Math.max(1, Math.floor(side / Math.max(R, C)));
  const dim = Math.max(R, C) * px < 120 ? Math.max(1, Math.floor(120 / Math.max(R, C))) : px;
  cv.style.width = `${C * dim}px`;
  cv.style.height = `${R * dim}px`;
  const readout = h("div", { class: "ltt-map-readout", text: `max ${fmt(max, 4)} · row = target, column = source` });
  cv.addEventListener("mousemove", (ev) => {
    const r = cv.getBoundingClientRect();
    const c = Math.floor(((ev.clientX - r.left) / r.width) * C), rr = Math.floor(((ev.clientY - r.top) / r.height) * R);
    if (c < 0 || rr < 0 || c >= C || rr >= R) return;
    readout.textContent = `${rr} ${quoted(st.graph.tokens[rr] ?? "")} ← ${c} ${quoted(st.graph.tokens[c] ?? "")}: ${fmt(data[rr * C + c], 5)}`;
  });
  // token labels on both axes: every n-th token so that labels never overlap
  const every = Math.max(1, Math.ceil(11 / dim));
  const yAxis = h("div", { class: "ltt-map-yaxis" });
  const xAxis = h("div", { class: "ltt-map-xaxis" });
  yAxis.style.height = `${R * dim}px`;
  xAxis.style.width = `${C * dim}px`;
  for (let i = 0; i < Math.max(R, C); i += every) {
    const tok = visibleToken(st.graph.tokens[i] ?? "");
    const short = tok.length > 9 ? tok.slice(0, 8) + "…" : tok;
    if (i < R) {
      const lab = h("span", { class: `ltt-map-label${i === target ? " ltt-is-target" : ""}`, text: short, title: `${i} ${quoted(tok)}` });
      lab.style.top = `${i * dim + dim / 2}px`;
      yAxis.append(lab);
    }
    if (i < C) {
      const lab = h("span", { class: `ltt-map-label${i === source ? " ltt-is-target" : ""}`, text: short, title: `${i} ${quoted(tok)}` });
      lab.style.left = `${i * dim + dim / 2}px`;
      xAxis.append(lab);
    }
  }
  const wrap = h("div", { class: "ltt-heatmap-wrap" }, cv);
  if (target !== undefined && target < R) {
    const mark = h("div", { class: "ltt-map-row" });
    mark.style.top = `${target * dim}px`;
    mark.style.height = `${dim}px`;
    wrap.append(mark);
  }
  const grid = h("div", { class: "ltt-map-grid" }, yAxis, wrap, h("span"), xAxis);
  box.append(h("div", { class: "ltt-sub", text: name }), grid, readout);
  // the target's row, zoomed: its largest sources as labelled bars
  if (target !== undefined && target < R) {
    const row = Array.from(data.subarray(target * C, target * C + C), (v, s) => [s, v]).filter((x) => x[1] > 0);
    row.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
    const top = row.slice(0, 8);
    const rmax = Math.max(1e-12, ...top.map((x) => x[1]));
    const bars = h("div", { class: "ltt-row-bars", "data-row": target });
    bars.append(h("div", { class: "ltt-map-readout", text: `row of target ${target} ${quoted(st.graph.tokens[target] ?? "")}, largest sources:` }));
    for (const [s, v] of top) {
      bars.append(h("div", { class: `ltt-row-bar${s === source ? " ltt-is-source" : ""}` },
        h("span", { class: "ltt-tok ltt-row-tok", text: `${s} ${visibleToken(st.graph.tokens[s] ?? "")}` }),
        bar(st, v, rmax, `rgb(${rgb.join(",")})`), h("span", { class: "ltt-num", text: fmt(v, 4) })));
    }
    box.append(bars);
  }
  return box;
}


export function bar(st, v, max, color) {
  const w = Math.max(0, Math.min(1, (Number(v) || 0) / (max || 1)));
  const b = h("span", { class: "ltt-bar" });
  b.style.width = `${(w * 60).toFixed(1)}px`;
  b.style.background = color;
  return b;
}

/** A colour variable of the view's theme as [r, g, b] (as the browser resolves it). */
export function cssRGB(st, name) {
  const probe = document.createElement("span");
  probe.style.color = `var(${name})`;
  probe.style.display = "none";
  st.root.append(probe);
  const m = (getComputedStyle(probe).color.match(/[\d.]+/g) || [255, 255, 255]).map(Number);
  probe.remove();
  return m.slice(0, 3);
}
