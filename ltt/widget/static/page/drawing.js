// Drawing: the graph as SVG elements (or, past ELEMENT_LIMIT edges, on a canvas), fitting and
// applying the pan/zoom of the view state `st`.

import { KIND_LABEL, GRID, parseNode, nodeXY, attnLevel, edgePath, nodeMark, edgeStyle, layoutGraph, MARGIN, COMPACT_ABOVE, ELEMENT_LIMIT } from "./layout.js";
import { s, fmt, quoted, plotW, plotH, scheme } from "./state.js";
import { axes, marks_, highlight } from "./axes.js";

export function markTokens(st) {
  const out = [];
  for (const key of Object.keys(st.model.get("marks") || {})) {
    const [a, b] = String(key).split("|").map(parseNode);
    if (a) out.push(a.token);
    if (b) out.push(b.token);
  }
  return out;
}


export function draw(st) {
  scheme(st);
  st.graph = st.model.get("graph");
  if (!st.graph || !st.graph.tokens) return;
  const t0 = performance.now();
  const T0 = st.graph.tokens.length;
  st.lay = layoutGraph(st.graph, GRID, { compact: T0 > COMPACT_ABOVE && !st.allBox.checked, extra: markTokens(st) });
  st.byKey = new Map(st.lay.edges.map((e) => [e.key, e]));
  st.nodeByName = new Map(st.graph.nodes.map((n) => [n.name, n]));
  st.batched = st.lay.edges.length > ELEMENT_LIMIT;
  st.gBands.replaceChildren();
  st.gEdges.replaceChildren();
  st.gNodes.replaceChildren();
  // alternate layer bands
  for (let l = 0; l < st.graph.n_layers; l += 2) {
    st.gBands.append(s("rect", { x: 0, y: (st.graph.n_layers - l - 1) * GRID.row, width: st.lay.width, height: GRID.row, class: "ltt-band" }));
  }
  for (const t of (st.graph.settings.targets || []).length <= 32 ? st.graph.settings.targets : []) {
    st.gBands.append(s("rect", { x: st.lay.cols.x[t] * GRID.col, y: 0, width: st.lay.cols.w[t] * GRID.col, height: st.lay.height, class: "ltt-target-col" }));
  }
  // positions without nodes: a faint mark at every state, for context (greyed)
  let ghost = "";
  for (let t = 0; t < T0 && T0 * st.graph.n_layers <= 20000; t++) {
    if (st.lay.cols.active.has(t) || st.lay.cols.w[t] < 1) continue;
    for (let l = -1; l < st.graph.n_layers; l++) {
      const [x, y] = nodeXY(l < 0 ? "X" : "I", l, st.lay.colOf(t), false, st.graph.n_layers);
      ghost += nodeMark(x, y);
    }
  }
  if (ghost) st.gBands.append(s("path", { class: "ltt-ghost-node", d: ghost }));
  const order = { residual: 0, ffn: 1, attention: 2 };
  const edges = st.batched ? st.lay.edges : st.lay.edges.slice().sort((a, b) => order[a.kind] - order[b.kind] || a.weight - b.weight);
  if (!st.batched) {
    const frag = document.createDocumentFragment();
    for (const e of edges) {
      const es = edgeStyle(e.weight);
      e.d = edgePath(e.kind, e.a, e.b);
      const a = parseNode(e.source), b = parseNode(e.target);
      frag.append(s("path", {
        class: `ltt-edge ltt-${e.kind}`, d: e.d, "data-edge": e.key, "data-weight": e.weight,
        "stroke-width": es.width.toFixed(2), "stroke-opacity": es.opacity.toFixed(3),
        tabindex: 0, role: "button",
        "aria-label": `${e.kind} edge, layer ${e.layer}, ${e.source} ${quoted(st.graph.tokens[a.token])} to ${e.target} ${quoted(st.graph.tokens[b.token])}, weight ${fmt(e.weight, 3)}`,
      }));
    }
    st.gEdges.append(frag);
    const nfrag = document.createDocumentFragment();
    for (const n of st.graph.nodes) {
      const [x, y] = st.lay.pos.get(n.name);
      nfrag.append(s("path", {
        class: `ltt-node ltt-node-${n.kind}`, d: nodeMark(x, y), "data-node": n.name, tabindex: 0, role: "button",
        "aria-label": `${n.name}, ${KIND_LABEL[n.kind]}, layer ${n.layer < 0 ? "embedding" : n.layer}, token ${n.token} ${quoted(st.graph.tokens[n.token])}`,
      }));
    }
    st.gNodes.append(nfrag);
  } else {
    // canvas: one stroke per (kind, weight bucket), whatever the graph's size
    const B = 8;
    const buckets = new Map();
    for (const e of edges) {
      const b = Math.min(B - 1, Math.floor(Math.min(1, Math.max(0, e.weight)) * B));
      const k = `${e.kind}:${b}`;
      if (!buckets.has(k)) buckets.set(k, { kind: e.kind, style: edgeStyle((b + 0.5) / B), list: [] });
      buckets.get(k).list.push(e);
    }
    const order2 = ["residual", "ffn", "attention"];
    st.canvasBuckets = [...buckets.values()].sort((x, y) => order2.indexOf(x.kind) - order2.indexOf(y.kind) || x.style.width - y.style.width);
    st.canvasNodes = { X: [], A: [], M: [], I: [] };
    for (const n of st.graph.nodes) st.canvasNodes[n.kind].push(st.lay.pos.get(n.name));
  }
  st.canvas.style.display = st.batched ? "block" : "none";
  st.gBands.style.display = st.batched ? "none" : "";
  st.bg.style.fill = st.batched ? "transparent" : "";
  st.svg.setAttribute("aria-label", `contribution graph of ${st.graph.tokens.length} tokens and ${st.graph.n_layers} layers: ${st.graph.nodes.length} nodes, ${st.lay.edges.length} edges, targets ${(st.graph.settings.targets || []).join(", ")}. Tab to a node, edge or target marker; Enter or Space selects it.`);
  st.svg.dataset.nodes = String(st.graph.nodes.length);
  st.svg.dataset.edges = String(st.lay.edges.length);
  st.svg.dataset.mode = st.batched ? "batched" : "elements";
  st.svg.dataset.threshold = String(st.graph.settings.threshold);
  marks_(st);
  highlight(st);
  applyView(st);
  st.svg.dataset.renderMs = (performance.now() - t0).toFixed(1);
}

export function fit(st, from = 0, to = null) {
  if (!st.graph) return;
  const T = st.graph.tokens.length;
  const a = Math.max(0, Math.min(T - 1, from));
  const b = Math.max(a, Math.min(T - 1, to === null ? T - 1 : to));
  const x0 = st.lay.cols.x[a] * GRID.col;
  const span = (st.lay.cols.x[b] + st.lay.cols.w[b]) * GRID.col - x0;
  const kx = Math.min(plotW(st) / span, 2.2);
  const ky = Math.min(plotH(st) / (st.lay.height + 18), 1.6);
  const tx = -x0 * kx + Math.max(0, (plotW(st) - span * kx) / 2);
  const ty = 10 * ky + Math.max(0, (plotH(st) - (st.lay.height + 18) * ky) / 2);
  st.view = { kx, ky, tx, ty };
  applyView(st);
}


export function applyView(st) {
  if (st.rafPending) return;
  st.rafPending = true;
  requestAnimationFrame(() => { st.rafPending = false; applyViewNow(st); });
}

export function applyViewNow(st) {
  st.svg.setAttribute("width", String(st.size.w));
  st.svg.setAttribute("height", String(st.size.h));
  st.plot.setAttribute("x", String(MARGIN.left));
  st.plot.setAttribute("y", String(MARGIN.top));
  st.plot.setAttribute("width", String(plotW(st)));
  st.plot.setAttribute("height", String(plotH(st)));
  st.content.setAttribute("transform", `matrix(${st.view.kx} 0 0 ${st.view.ky} ${st.view.tx} ${st.view.ty})`);
  // node marks shrink with the rows, so they never cover the edges between them
  st.root.style.setProperty("--ltt-node-scale", Math.max(0.4, Math.min(1, (GRID.row * st.view.ky) / 46)).toFixed(2));
  if (st.batched) drawCanvas(st);
  axes(st);
}

const COLORS = { attention: "#2f6fdf", residual: "#7b8494", ffn: "#c96f0c", X: "#868e9b", A: "#2f6fdf", I: "#1f2937", M: "#c96f0c", band: "#f6f7f9" };
export function palette(st) { // the theme's colours (CSS variables), for the canvas
  const cs = getComputedStyle(st.root);
  const v = (name, dflt) => (cs.getPropertyValue(name) || "").trim() || dflt;
  COLORS.attention = COLORS.A = v("--ltt-attn", COLORS.A);
  COLORS.residual = v("--ltt-resid", COLORS.residual);
  COLORS.ffn = COLORS.M = v("--ltt-ffn", COLORS.M);
  COLORS.X = v("--ltt-emb", COLORS.X);
  COLORS.I = v("--ltt-state", COLORS.I);
  COLORS.band = v("--ltt-band", COLORS.band);
}

export function drawCanvas(st) {
  const tStart = performance.now();
  const dpr = window.devicePixelRatio || 1;
  const W = plotW(st), H = plotH(st);
  st.canvas.style.left = `${MARGIN.left}px`;
  st.canvas.style.top = `${MARGIN.top}px`;
  st.canvas.style.width = `${W}px`;
  st.canvas.style.height = `${H}px`;
  if (st.canvas.width !== Math.round(W * dpr) || st.canvas.height !== Math.round(H * dpr)) {
    st.canvas.width = Math.round(W * dpr);
    st.canvas.height = Math.round(H * dpr);
  }
  const ctx = st.canvas.getContext("2d");
  if (!ctx) return;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  const { kx, ky, tx, ty } = st.view;
  const x0 = -tx / kx, x1 = (W - tx) / kx, y0 = -ty / ky, y1 = (H - ty) / ky;
  ctx.globalAlpha = 1;
  palette(st);
  ctx.fillStyle = COLORS.band;
  for (let l = 0; l < st.graph.n_layers; l += 2) ctx.fillRect(tx, ty + (st.graph.n_layers - l - 1) * GRID.row * ky, st.lay.width * kx, GRID.row * ky);
  ctx.fillStyle = "rgba(255, 243, 214, 0.7)";
  for (const t of (st.graph.settings.targets || []).length <= 32 ? st.graph.settings.targets : []) ctx.fillRect(tx + st.lay.cols.x[t] * GRID.col * kx, ty, st.lay.cols.w[t] * GRID.col * kx, st.lay.height * ky);
  ctx.lineCap = "butt";
  const selfBow = 0.42 * GRID.col;
  for (const bucket of st.canvasBuckets) {
    ctx.strokeStyle = COLORS[bucket.kind];
    ctx.globalAlpha = bucket.style.opacity;
    ctx.lineWidth = Math.min(bucket.style.width, Math.max(0.8, GRID.col * kx * 0.5));
    ctx.beginPath();
    for (const e of bucket.list) {
      const a = e.a, b = e.b;
      const lo = Math.min(a[0], b[0]) - selfBow, hi = Math.max(a[0], b[0]);
      if (hi < x0 || lo > x1 || a[1] < y0 || b[1] > y1) continue; // a is below b
      const ax = tx + a[0] * kx, ay = ty + a[1] * ky, bx = tx + b[0] * kx, by = ty + b[1] * ky;
      ctx.moveTo(ax, ay);
      // an attention curve flatter than a few pixels is drawn as the line it looks like
      if (bucket.kind !== "attention" || (ay - by < 10 && a[0] !== b[0])) ctx.lineTo(bx, by);
      else if (a[0] === b[0]) ctx.quadraticCurveTo(ax - selfBow * kx, (ay + by) / 2, bx, by);
      else { const yc = ty + attnLevel(a, b) * ky; ctx.bezierCurveTo(ax, yc, bx, yc, bx, by); }
    }
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
  const r = Math.max(1.2, Math.min(5, GRID.col * kx * 0.3, GRID.row * ky * 0.12));
  for (const kind of ["X", "A", "M", "I"]) {
    ctx.fillStyle = COLORS[kind];
    ctx.beginPath();
    for (const [x, y] of st.canvasNodes[kind]) {
      if (x < x0 - 1 || x > x1 + 1 || y < y0 - 1 || y > y1 + 1) continue;
      const px = tx + x * kx, py = ty + y * ky;
      if (kind === "M") ctx.rect(px - r * 0.85, py - r * 0.85, r * 1.7, r * 1.7);
      else { ctx.moveTo(px + r, py); ctx.arc(px, py, r, 0, 2 * Math.PI); }
    }
    ctx.fill();
  }
  st.svg.dataset.canvasMs = (performance.now() - tStart).toFixed(1);
}

