// ltt graph view: a trace's pruned contribution graph as a token x layer grid, its controls and its
// panels (top tokens, heads, neurons). One self-contained ES module with anywidget's
// render({ model, el }) contract, loaded as it is by the Jupyter widget and by ltt serve (through
// socket_kernel.js); the standalone HTML report inlines it with report_kernel.js, whose
// offlineKernel() answers the page. Token strings only ever reach the page as textContent.

const SVGNS = "http://www.w3.org/2000/svg";
const NODE_RE = /^([XAMI])(\d+)_(\d+)$/;
const KIND_LABEL = { X: "embedding", A: "after attention", M: "FFN block", I: "after FFN" };

// Pure helpers (named exports, testable on their own) ----------------------------------------

/** Grid unit sizes of the layout, in model units (one column per token, one row per layer). */
export const GRID = { col: 36, row: 60 };

/** {kind, layer, token} of a node name ("X0_3", "A2_5", "M2_5", "I2_5"), or null. */
export function parseNode(name) {
  const m = NODE_RE.exec(String(name));
  if (!m) return null;
  return { kind: m[1], layer: m[1] === "X" ? -1 : Number(m[2]), token: Number(m[3]) };
}

/** The key of an edge, as the data-edge attribute shows it: "source|target|kind". */
export function edgeKey(e) {
  return `${e.source}|${e.target}|${e.kind}`;
}

/** Position of a node in model units, y pointing down (row 0 = top layer output). */
export function nodeXY(kind, layer, token, parallel, nLayers, grid = GRID) {
  const { col, row } = grid;
  let x = (token + 0.5) * col;
  let up;
  if (kind === "X") up = 0;
  else if (kind === "I") up = (layer + 1) * row;
  else if (kind === "A") up = (layer + 1) * row - 0.5 * row;
  else {
    x += 0.3 * col;
    up = (layer + 1) * row - (parallel ? 0.5 : 0.25) * row;
  }
  return [x, nLayers * row - up];
}

/** The height an attention edge runs at between its source row (a) and its target row (b):
 *  the longer the edge, the nearer the target row, so edges of different lengths into one state
 *  run apart instead of on top of each other, and none crosses another token's node. */
export function attnLevel(a, b, grid = GRID) {
  const dist = Math.abs(b[0] - a[0]) / grid.col;
  const f = 0.22 + 0.56 * Math.min(1, Math.log1p(dist) / Math.log1p(24));
  return a[1] + (b[1] - a[1]) * f;
}

/** SVG path data of an edge between two positions: residual and FFN edges are straight,
 *  attention edges rise from the source, run level (at attnLevel) and rise into the target
 *  (self-attention bows to the left of the column). */
export function edgePath(kind, a, b, grid = GRID) {
  const f = (v) => Math.round(v * 100) / 100;
  const [x1, y1] = a;
  const [x2, y2] = b;
  if (kind !== "attention") return `M${f(x1)} ${f(y1)}L${f(x2)} ${f(y2)}`;
  if (Math.abs(x1 - x2) < 1e-6) {
    const ym = (y1 + y2) / 2;
    return `M${f(x1)} ${f(y1)}Q${f(x1 - 0.42 * grid.col)} ${f(ym)} ${f(x2)} ${f(y2)}`;
  }
  const yc = attnLevel(a, b, grid);
  return `M${f(x1)} ${f(y1)}C${f(x1)} ${f(yc)} ${f(x2)} ${f(yc)} ${f(x2)} ${f(y2)}`;
}

/** Path data of a node mark: a tiny square whose thick non-scaling stroke draws the dot (round
 *  joins) or the square (miter joins) at a constant screen size whatever the zoom. */
export function nodeMark(x, y) {
  const e = 0.01;
  return `M${x - e} ${y - e}h${2 * e}v${2 * e}h${-2 * e}z`;
}

/** Path data of any edge key "source|target|kind", drawn or not (the place of an edge that only
 *  another graph keeps), or null for a malformed key. */
export function keyPath(key, parallel, nLayers, grid = GRID, colOf = null) {
  const [src, dst, kind] = String(key).split("|");
  const a = parseNode(src);
  const b = parseNode(dst);
  if (!a || !b || !kind) return null;
  const par = parallel || [];
  const c = colOf || ((t) => t);
  const pa = nodeXY(a.kind, a.layer, c(a.token), !!par[a.layer], nLayers, grid);
  const pb = nodeXY(b.kind, b.layer, c(b.token), !!par[b.layer], nLayers, grid);
  return edgePath(kind, pa, pb, grid);
}

/** What a change mark means, for the legend and tooltips ("marks" trait: edge key -> status). */
export const MARK_LABEL = {
  rose: "flow rose",
  fell: "flow fell",
  appeared: "appeared (only in b)",
  vanished: "vanished (only in a)",
};

/** Stroke width (screen px) and opacity of an edge of the given weight in [0, 1]. */
export function edgeStyle(weight) {
  const w = Math.min(1, Math.max(0, Number(weight) || 0));
  return { width: 0.6 + 5.4 * w, opacity: 0.3 + 0.7 * Math.sqrt(w) };
}

/** Columns of a prompt: every token a full column, or (compact) full columns only for the
 *  tokens in `active` and a narrow sliver for the others. Returns {x: left edge per token (grid
 *  units of a column), w: width per token, width: total, active: Set}. */
export function columnsOf(T, active, compact, sliver = null) {
  if (sliver === null) { // the collapsed tokens together take at most a fifth of the width
    const off = T - Math.min(T, active.size);
    sliver = off ? Math.min(0.22, (0.25 * Math.max(1, active.size)) / off) : 0.22;
  }
  const x = new Float64Array(T);
  const w = new Float64Array(T);
  let at = 0;
  for (let t = 0; t < T; t++) {
    x[t] = at;
    w[t] = !compact || active.has(t) ? 1 : sliver;
    at += w[t];
  }
  return { x, w, width: at, active };
}

/** Lay a graph out: node positions, edges with their end points, the model-space size. With
 *  opts.compact, tokens carrying no node (nor in opts.extra) get a narrow column. */
export function layoutGraph(graph, grid = GRID, opts = {}) {
  const L = graph.n_layers;
  const T = graph.tokens.length;
  const par = graph.parallel || [];
  const active = new Set(graph.nodes.map((n) => n.token));
  for (const t of opts.extra || []) active.add(t);
  for (const t of (graph.settings && graph.settings.targets) || []) active.add(t);
  const cols = columnsOf(T, active, !!opts.compact);
  const colOf = (t) => cols.x[t] + cols.w[t] / 2 - 0.5; // nodeXY's token argument: the centre
  const pos = new Map();
  for (const n of graph.nodes) {
    pos.set(n.name, nodeXY(n.kind, n.layer, colOf(n.token), !!par[n.layer], L, grid));
  }
  const edges = [];
  for (const e of graph.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.target);
    if (!a || !b) continue;
    edges.push({ source: e.source, target: e.target, kind: e.kind, weight: e.weight, layer: e.layer, key: edgeKey(e), a, b });
  }
  return { width: cols.width * grid.col, height: L * grid.row, pos, edges, cols, colOf };
}

/** Text shown for a token: newlines and tabs made visible, an all-blank token shown as ␣. */
export function visibleToken(s) {
  let t = String(s).replace(/\r/g, "\u240d").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  if (t.length && t.trim() === "") t = t.replace(/ /g, "\u2423");
  return t;
}

/** A sequential colour (white -> hue) for v in [0, 1], as [r, g, b]. */
export function colorRamp(v, rgb = [47, 111, 223]) {
  const t = Math.min(1, Math.max(0, Number(v) || 0));
  return rgb.map((c) => Math.round(255 + (c - 255) * t));
}

/** Bytes as they come from a model (DataView, ArrayBuffer, typed array, base64 string) to a
 *  Float32Array. */
export function toFloat32(bytes) {
  if (bytes == null) return new Float32Array(0);
  if (typeof bytes === "string") {
    const bin = atob(bytes);
    const u8 = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    return new Float32Array(u8.buffer, 0, u8.length >> 2);
  }
  if (bytes instanceof ArrayBuffer) return new Float32Array(bytes.slice(0));
  if (ArrayBuffer.isView(bytes)) {
    const u8 = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return new Float32Array(u8.slice().buffer, 0, u8.length >> 2);
  }
  return new Float32Array(0);
}

/** Token positions from a text such as "-1, 5" for T tokens; throws on a bad entry. */
export function parseTargets(text, T) {
  const out = [];
  for (const part of String(text).split(/[\s,]+/).filter(Boolean)) {
    if (!/^-?\d+$/.test(part)) throw new Error(`targets: ${JSON.stringify(part)} is not a token position`);
    let p = Number(part);
    if (p < 0) p += T;
    if (p < 0 || p >= T) throw new Error(`targets: ${part} is outside the ${T} tokens`);
    if (!out.includes(p)) out.push(p);
  }
  if (!out.length) throw new Error("targets: give at least one token position");
  return out.sort((a, b) => a - b);
}

// The page's model outside Jupyter ------------------------------------------------------------

/** An anywidget-like model for the pages that have no Jupyter comm (the report, ltt serve): get /
 *  set / on / off / save_changes / send, plus apply(updates) for the kernel's answers (sets the
 *  values, fires their change events). save_changes() fires the changed keys' events, then hands
 *  transmit({changes: {key: value}}); send(msg) hands transmit({msg}). */
export function createModel(initial, transmit) {
  const state = { ...initial };
  const handlers = new Map();
  const pending = new Set();
  const emit = (ev) => {
    for (const cb of handlers.get(ev) || []) cb();
    if (ev.startsWith("change:")) for (const cb of handlers.get("change") || []) cb();
  };
  return {
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; pending.add(k); },
    on: (ev, cb) => { if (!handlers.has(ev)) handlers.set(ev, new Set()); handlers.get(ev).add(cb); },
    off: (ev, cb) => {
      if (!ev) handlers.clear();
      else if (handlers.has(ev)) { if (cb) handlers.get(ev).delete(cb); else handlers.delete(ev); }
    },
    save_changes: () => {
      const keys = [...pending];
      pending.clear();
      if (!keys.length) return;
      const changes = {};
      for (const k of keys) changes[k] = state[k];
      for (const k of keys) emit(`change:${k}`);
      transmit({ changes });
    },
    send: (msg) => transmit({ msg }),
    apply: (updates) => {
      const keys = Object.keys(updates || {});
      for (const k of keys) state[k] = updates[k];
      for (const k of keys) emit(`change:${k}`);
    },
  };
}

// DOM helpers -----------------------------------------------------------------------------------

/** A DOM element: attrs "class", "text" (textContent, never markup), "on<event>" (a listener) or
 *  plain attributes (null, undefined and false left out); children appended. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function s(tag, attrs = {}) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  return node;
}

const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(d));
const quoted = (t) => `“${visibleToken(t)}”`;

// The view --------------------------------------------------------------------------------------

const MARGIN = { left: 46, right: 12, top: 34, bottom: 78 };
const COMPACT_ABOVE = 40; // longer prompts give full columns only to the tokens that carry nodes
const ELEMENT_LIMIT = 4000; // above this many edges, edges and nodes are drawn on a canvas

export function render({ model, el }) {
  const root = h("div", { class: "ltt-root" });
  el.append(root);
  const listeners = [];
  const on = (ev, cb) => { model.on(ev, cb); listeners.push([ev, cb]); };
  const commit = (changes) => {
    for (const [k, v] of Object.entries(changes)) model.set(k, v);
    model.save_changes();
  };

  // -- header: model facts, prompt box and picker, notices
  const facts = h("div", { class: "ltt-facts" });
  const promptInput = h("input", { class: "ltt-prompt", type: "text", placeholder: "a new prompt…", "aria-label": "prompt" });
  const runBtn = h("button", { class: "ltt-run", text: "Run" });
  // BOS for a new prompt: indeterminate = the tokenizer's choice; checked/unchecked force it.
  const bosBox = h("input", { class: "ltt-bos", type: "checkbox", "aria-label": "prepend BOS" });
  bosBox.indeterminate = true;
  const bosLabel = h("label", { class: "ltt-bos-label", title: "BOS first (dash: as the tokenizer does)" }, bosBox, "BOS");
  const picker = h("select", { class: "ltt-picker", "aria-label": "prompt picker" });
  const status = h("span", { class: "ltt-status" });
  const notice = h("div", { class: "ltt-notice" });
  const errorBox = h("div", { class: "ltt-error" });
  root.append(h("div", { class: "ltt-header" }, facts, h("div", { class: "ltt-promptbar" }, picker, promptInput, bosLabel, runBtn, status)), notice, errorBox);

  // -- controls
  const slider = h("input", { class: "ltt-threshold-slider", type: "range", step: "0.005", "aria-label": "threshold" });
  const thrBox = h("input", { class: "ltt-threshold", type: "number", step: "0.001", min: "0", max: "0.999", "aria-label": "threshold value" });
  const renormBox = h("input", { class: "ltt-renormalize", type: "checkbox" });
  const normBox = h("input", { class: "ltt-normalize", type: "checkbox" });
  const targetBox = h("input", { class: "ltt-targets", type: "text", size: "10", "aria-label": "targets", title: "token positions, e.g. -1, 5 (negative counts from the end)" });
  const fromBox = h("input", { class: "ltt-from", type: "number", min: "0", "aria-label": "focus from" });
  const toBox = h("input", { class: "ltt-to", type: "number", min: "0", "aria-label": "focus to" });
  const focusBtn = h("button", { class: "ltt-focus", text: "Focus" });
  const fitBtn = h("button", { class: "ltt-fit", text: "Fit" });
  const allBox = h("input", { class: "ltt-all-positions", type: "checkbox" });
  root.append(
    h("div", { class: "ltt-controls" },
      h("label", { class: "ltt-ctl" }, h("span", { text: "threshold" }), slider, thrBox),
      h("label", { class: "ltt-ctl" }, renormBox, h("span", { text: "renormalize" })),
      h("label", { class: "ltt-ctl", title: "apply the final norm before unembedding in the top-token panels" }, normBox, h("span", { text: "normalize before unembedding" })),
      h("label", { class: "ltt-ctl" }, h("span", { text: "targets" }), targetBox),
      h("span", { class: "ltt-ctl" }, h("span", { text: "tokens" }), fromBox, h("span", { text: "–" }), toBox, focusBtn, fitBtn),
      h("label", { class: "ltt-ctl", title: "give every token a full column, the ones without nodes greyed (long prompts show only the columns that carry nodes)" }, allBox, h("span", { text: "all positions" }))),
  );

  // -- main: graph and side panel
  const graphBox = h("div", { class: "ltt-graph" });
  const panel = h("div", { class: "ltt-panel" });
  const tooltip = h("div", { class: "ltt-tooltip" });
  root.append(h("div", { class: "ltt-main" }, graphBox, panel), tooltip, legend());

  const svg = s("svg", { class: "ltt-svg", role: "group" });
  const plot = s("svg", { class: "ltt-plot", overflow: "hidden" });
  const bg = s("rect", { class: "ltt-bg", x: 0, y: 0, width: "100%", height: "100%" });
  const content = s("g", { class: "ltt-content" });
  const gBands = s("g", { class: "ltt-bands" });
  const gEdges = s("g", { class: "ltt-edges" });
  const gMarks = s("g", { class: "ltt-marks" });
  const gHi = s("g", { class: "ltt-highlight" });
  const gNodes = s("g", { class: "ltt-nodes" });
  content.append(gBands, gEdges, gMarks, gHi, gNodes);
  plot.append(bg, content);
  const axisX = s("g", { class: "ltt-axis-x" });
  const axisY = s("g", { class: "ltt-axis-y" });
  const axisTop = s("g", { class: "ltt-axis-top" });
  svg.append(plot, axisX, axisY, axisTop);
  const canvas = h("canvas", { class: "ltt-canvas" });
  graphBox.append(canvas, svg);

  let lay = null; // current layout
  let graph = null;
  let view = { kx: 1, ky: 1, tx: 0, ty: 0 };
  let size = { w: 600, h: 400 };
  let batched = false;
  let canvasBuckets = [];
  let canvasNodes = null;
  let byKey = new Map(); // edge key -> edge (with d)
  let nodeByName = new Map();
  let ghostByKey = new Map(); // marked edge key absent from this graph -> path data

  const plotW = () => Math.max(50, size.w - MARGIN.left - MARGIN.right);
  const plotH = () => Math.max(50, size.h - MARGIN.top - MARGIN.bottom);

  function facts_() {
    const info = model.get("model_info") || {};
    const g = model.get("graph") || {};
    facts.replaceChildren();
    const items = [
      ["model", info.name ?? g.model],
      ["layers", info.n_layers ?? g.n_layers],
      ["heads", info.n_heads],
      ["d_model", info.d_model],
      ["vocabulary", info.vocab_size],
      ["tokens", g.tokens ? g.tokens.length : undefined],
    ];
    for (const [k, v] of items) {
      if (v === undefined || v === null) continue;
      facts.append(h("span", { class: "ltt-fact" }, h("b", { text: k }), " ", String(v)));
    }
    if (model.get("live") === false) facts.append(h("span", { class: "ltt-offline", text: "offline report" }));
  }

  function prompts_() {
    const list = model.get("prompts") || [];
    picker.replaceChildren();
    list.forEach((p, i) => picker.append(h("option", { value: String(i), text: p.length > 60 ? p.slice(0, 57) + "…" : p })));
    picker.value = String(model.get("prompt_index") || 0);
    picker.style.display = list.length > 1 ? "" : "none";
    const live = model.get("live") !== false;
    promptInput.disabled = !live;
    runBtn.disabled = !live;
    bosBox.disabled = !live;
    promptInput.placeholder = live ? "a new prompt…" : "new prompts need a live kernel";
  }

  function controls_() {
    const [lo, hi] = model.get("slider") || [0.01, 0.1];
    slider.min = String(lo);
    slider.max = String(hi);
    const thr = Number(model.get("threshold"));
    slider.value = String(Math.min(hi, Math.max(lo, thr)));
    // a box being edited keeps what the user is typing
    const editing = (box) => box.getRootNode && box.getRootNode().activeElement === box;
    if (!editing(thrBox)) thrBox.value = String(thr);
    renormBox.checked = !!model.get("renormalize");
    normBox.checked = !!model.get("normalize");
    const T = graph ? graph.tokens.length : 0;
    if (!editing(targetBox)) targetBox.value = (model.get("targets") || []).join(", ");
    fromBox.max = toBox.max = String(Math.max(0, T - 1));
  }

  function markTokens() {
    const out = [];
    for (const key of Object.keys(model.get("marks") || {})) {
      const [a, b] = String(key).split("|").map(parseNode);
      if (a) out.push(a.token);
      if (b) out.push(b.token);
    }
    return out;
  }

  // -- drawing
  function draw() {
    graph = model.get("graph");
    if (!graph || !graph.tokens) return;
    const t0 = performance.now();
    const T0 = graph.tokens.length;
    lay = layoutGraph(graph, GRID, { compact: T0 > COMPACT_ABOVE && !allBox.checked, extra: markTokens() });
    byKey = new Map(lay.edges.map((e) => [e.key, e]));
    nodeByName = new Map(graph.nodes.map((n) => [n.name, n]));
    batched = lay.edges.length > ELEMENT_LIMIT;
    gBands.replaceChildren();
    gEdges.replaceChildren();
    gNodes.replaceChildren();
    // alternate layer bands
    for (let l = 0; l < graph.n_layers; l += 2) {
      gBands.append(s("rect", { x: 0, y: (graph.n_layers - l - 1) * GRID.row, width: lay.width, height: GRID.row, class: "ltt-band" }));
    }
    for (const t of (graph.settings.targets || []).length <= 32 ? graph.settings.targets : []) {
      gBands.append(s("rect", { x: lay.cols.x[t] * GRID.col, y: 0, width: lay.cols.w[t] * GRID.col, height: lay.height, class: "ltt-target-col" }));
    }
    // positions without nodes: a faint mark at every state, for context (greyed)
    let ghost = "";
    for (let t = 0; t < T0 && T0 * graph.n_layers <= 20000; t++) {
      if (lay.cols.active.has(t) || lay.cols.w[t] < 1) continue;
      for (let l = -1; l < graph.n_layers; l++) {
        const [x, y] = nodeXY(l < 0 ? "X" : "I", l, lay.colOf(t), false, graph.n_layers);
        ghost += nodeMark(x, y);
      }
    }
    if (ghost) gBands.append(s("path", { class: "ltt-ghost-node", d: ghost }));
    const order = { residual: 0, ffn: 1, attention: 2 };
    const edges = batched ? lay.edges : lay.edges.slice().sort((a, b) => order[a.kind] - order[b.kind] || a.weight - b.weight);
    if (!batched) {
      const frag = document.createDocumentFragment();
      for (const e of edges) {
        const st = edgeStyle(e.weight);
        e.d = edgePath(e.kind, e.a, e.b);
        const a = parseNode(e.source), b = parseNode(e.target);
        frag.append(s("path", {
          class: `ltt-edge ltt-${e.kind}`, d: e.d, "data-edge": e.key, "data-weight": e.weight,
          "stroke-width": st.width.toFixed(2), "stroke-opacity": st.opacity.toFixed(3),
          tabindex: 0, role: "button",
          "aria-label": `${e.kind} edge, layer ${e.layer}, ${e.source} ${quoted(graph.tokens[a.token])} to ${e.target} ${quoted(graph.tokens[b.token])}, weight ${fmt(e.weight, 3)}`,
        }));
      }
      gEdges.append(frag);
      const nfrag = document.createDocumentFragment();
      for (const n of graph.nodes) {
        const [x, y] = lay.pos.get(n.name);
        nfrag.append(s("path", {
          class: `ltt-node ltt-node-${n.kind}`, d: nodeMark(x, y), "data-node": n.name, tabindex: 0, role: "button",
          "aria-label": `${n.name}, ${KIND_LABEL[n.kind]}, layer ${n.layer < 0 ? "embedding" : n.layer}, token ${n.token} ${quoted(graph.tokens[n.token])}`,
        }));
      }
      gNodes.append(nfrag);
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
      canvasBuckets = [...buckets.values()].sort((x, y) => order2.indexOf(x.kind) - order2.indexOf(y.kind) || x.style.width - y.style.width);
      canvasNodes = { X: [], A: [], M: [], I: [] };
      for (const n of graph.nodes) canvasNodes[n.kind].push(lay.pos.get(n.name));
    }
    canvas.style.display = batched ? "block" : "none";
    gBands.style.display = batched ? "none" : "";
    bg.style.fill = batched ? "transparent" : "";
    svg.setAttribute("aria-label", `contribution graph of ${graph.tokens.length} tokens and ${graph.n_layers} layers: ${graph.nodes.length} nodes, ${lay.edges.length} edges, targets ${(graph.settings.targets || []).join(", ")}. Tab to a node, edge or target marker; Enter or Space selects it.`);
    svg.dataset.nodes = String(graph.nodes.length);
    svg.dataset.edges = String(lay.edges.length);
    svg.dataset.mode = batched ? "batched" : "elements";
    svg.dataset.threshold = String(graph.settings.threshold);
    marks_();
    highlight();
    applyView();
    svg.dataset.renderMs = (performance.now() - t0).toFixed(1);
  }

  function fit(from = 0, to = null) {
    if (!graph) return;
    const T = graph.tokens.length;
    const a = Math.max(0, Math.min(T - 1, from));
    const b = Math.max(a, Math.min(T - 1, to === null ? T - 1 : to));
    const x0 = lay.cols.x[a] * GRID.col;
    const span = (lay.cols.x[b] + lay.cols.w[b]) * GRID.col - x0;
    const kx = Math.min(plotW() / span, 2.2);
    const ky = Math.min(plotH() / (lay.height + 18), 1.6);
    const tx = -x0 * kx + Math.max(0, (plotW() - span * kx) / 2);
    const ty = 10 * ky + Math.max(0, (plotH() - (lay.height + 18) * ky) / 2);
    view = { kx, ky, tx, ty };
    applyView();
  }

  let rafPending = false;
  function applyView() {
    if (rafPending) return;
    rafPending = true;
    requestAnimationFrame(() => { rafPending = false; applyViewNow(); });
  }

  function applyViewNow() {
    svg.setAttribute("width", String(size.w));
    svg.setAttribute("height", String(size.h));
    plot.setAttribute("x", String(MARGIN.left));
    plot.setAttribute("y", String(MARGIN.top));
    plot.setAttribute("width", String(plotW()));
    plot.setAttribute("height", String(plotH()));
    content.setAttribute("transform", `matrix(${view.kx} 0 0 ${view.ky} ${view.tx} ${view.ty})`);
    // node marks shrink with the rows, so they never cover the edges between them
    root.style.setProperty("--ltt-node-scale", Math.max(0.4, Math.min(1, (GRID.row * view.ky) / 46)).toFixed(2));
    if (batched) drawCanvas();
    axes();
  }

  const COLORS = { attention: "#2f6fdf", residual: "#7b8494", ffn: "#c96f0c", X: "#868e9b", A: "#2f6fdf", I: "#1f2937", M: "#c96f0c", band: "#f6f7f9" };
  function palette() { // the theme's colours (CSS variables), for the canvas
    const cs = getComputedStyle(root);
    const v = (name, dflt) => (cs.getPropertyValue(name) || "").trim() || dflt;
    COLORS.attention = COLORS.A = v("--ltt-attn", COLORS.A);
    COLORS.residual = v("--ltt-resid", COLORS.residual);
    COLORS.ffn = COLORS.M = v("--ltt-ffn", COLORS.M);
    COLORS.X = v("--ltt-emb", COLORS.X);
    COLORS.I = v("--ltt-state", COLORS.I);
    COLORS.band = v("--ltt-band", COLORS.band);
  }

  function drawCanvas() {
    const tStart = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const W = plotW(), H = plotH();
    canvas.style.left = `${MARGIN.left}px`;
    canvas.style.top = `${MARGIN.top}px`;
    canvas.style.width = `${W}px`;
    canvas.style.height = `${H}px`;
    if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
      canvas.width = Math.round(W * dpr);
      canvas.height = Math.round(H * dpr);
    }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const { kx, ky, tx, ty } = view;
    const x0 = -tx / kx, x1 = (W - tx) / kx, y0 = -ty / ky, y1 = (H - ty) / ky;
    ctx.globalAlpha = 1;
    palette();
    ctx.fillStyle = COLORS.band;
    for (let l = 0; l < graph.n_layers; l += 2) ctx.fillRect(tx, ty + (graph.n_layers - l - 1) * GRID.row * ky, lay.width * kx, GRID.row * ky);
    ctx.fillStyle = "rgba(255, 243, 214, 0.7)";
    for (const t of (graph.settings.targets || []).length <= 32 ? graph.settings.targets : []) ctx.fillRect(tx + lay.cols.x[t] * GRID.col * kx, ty, lay.cols.w[t] * GRID.col * kx, lay.height * ky);
    ctx.lineCap = "butt";
    const selfBow = 0.42 * GRID.col;
    for (const bucket of canvasBuckets) {
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
      for (const [x, y] of canvasNodes[kind]) {
        if (x < x0 - 1 || x > x1 + 1 || y < y0 - 1 || y > y1 + 1) continue;
        const px = tx + x * kx, py = ty + y * ky;
        if (kind === "M") ctx.rect(px - r * 0.85, py - r * 0.85, r * 1.7, r * 1.7);
        else { ctx.moveTo(px + r, py); ctx.arc(px, py, r, 0, 2 * Math.PI); }
      }
      ctx.fill();
    }
    svg.dataset.canvasMs = (performance.now() - tStart).toFixed(1);
  }

  const sx = (x) => MARGIN.left + view.tx + x * view.kx;
  const sy = (y) => MARGIN.top + view.ty + y * view.ky;

  function axes() {
    if (!graph) return;
    axisX.replaceChildren();
    axisY.replaceChildren();
    axisTop.replaceChildren();
    const T = graph.tokens.length;
    const cols = lay.cols;
    const colW = GRID.col * view.kx; // a full column on screen
    const rotated = colW < 52;
    const stride = rotated ? Math.max(1, Math.ceil(13 / colW)) : 1;
    const baseY = MARGIN.top + plotH() + 6;
    const targets = new Set(graph.settings.targets || []);
    const fewTargets = targets.size <= 16;
    let shownCol = -1;
    for (let t = 0; t < T; t++) {
      const x = sx((cols.x[t] + cols.w[t] / 2) * GRID.col);
      if (x < MARGIN.left - 2 || x > MARGIN.left + plotW() + 2) continue;
      const full = cols.w[t] >= 1;
      const active = cols.active.has(t);
      const col = Math.floor(cols.x[t]);
      if (full && (col % stride === 0 && col !== shownCol || (fewTargets && targets.has(t)))) {
        shownCol = col;
        const label = s("text", { class: `ltt-token${targets.has(t) ? " ltt-is-target" : ""}${active ? "" : " ltt-inactive"}`, "data-token": t });
        let text = visibleToken(graph.tokens[t]);
        if (!rotated && text.length * 6.5 > colW) text = text.slice(0, Math.max(1, Math.floor(colW / 6.5) - 1)) + "…";
        if (rotated && text.length > 14) text = text.slice(0, 13) + "…";
        label.textContent = text;
        if (rotated) {
          label.setAttribute("transform", `translate(${x + 3},${baseY}) rotate(-55)`);
          label.setAttribute("text-anchor", "end");
        } else {
          label.setAttribute("x", String(x));
          label.setAttribute("y", String(baseY + 10));
          label.setAttribute("text-anchor", "middle");
        }
        axisX.append(label);
      }
      // output markers along the top: click picks the target, shift/ctrl-click adds or removes
      const mw = cols.w[t] * colW;
      const mk = s("rect", {
        class: `ltt-out${targets.has(t) ? " ltt-is-target" : ""}${active ? "" : " ltt-inactive"}`, "data-output": t,
        x: x - Math.min(7, mw * 0.4), y: MARGIN.top - 13, width: Math.max(2, Math.min(14, mw * 0.8)), height: 10, rx: 2,
        tabindex: 0, role: "button", "aria-label": `target ${t} ${quoted(graph.tokens[t])}${targets.has(t) ? " (selected)" : ""}`,
      });
      axisTop.append(mk);
    }
    const preds = graph.predictions || {};
    let lastEnd = -Infinity;
    for (const t of [...targets].sort((a, b) => a - b)) {
      let x = sx((cols.x[t] + cols.w[t] / 2) * GRID.col);
      if (x < MARGIN.left || x > MARGIN.left + plotW()) continue;
      const p = preds[String(t)];
      const text = p !== undefined ? `→ ${visibleToken(p)}` : `#${t}`;
      const approx = 7 * (1 + text.length);
      // keep the whole label inside the view: shift it in from either edge, never clip it
      x = Math.min(Math.max(x, MARGIN.left - 40 + approx / 2), size.w - 2 - approx / 2);
      if (x - approx / 2 < lastEnd) continue; // no room: the marker stays, the label goes
      lastEnd = x + approx / 2;
      const label = s("text", { class: "ltt-pred", x: x, y: MARGIN.top - 17, "text-anchor": "middle" });
      label.textContent = text;
      axisTop.append(label);
    }
    const L = graph.n_layers;
    const rowH = GRID.row * view.ky;
    const lstride = Math.max(1, Math.ceil(14 / rowH));
    for (let l = -1; l < L; l++) {
      if (l >= 0 && (L - 1 - l) % lstride !== 0) continue;
      const y = sy(l < 0 ? lay.height : (L - l - 1) * GRID.row);
      if (y < MARGIN.top - 4 || y > MARGIN.top + plotH() + 4) continue;
      const label = s("text", { class: "ltt-layer", x: MARGIN.left - 6, y: y + 4, "text-anchor": "end" });
      label.textContent = l < 0 ? "emb" : `L${l}`;
      axisY.append(label);
    }
  }

  // -- change marks (a contrastive view): an overlay per marked edge, dashed where this graph
  // does not keep the edge; without a "marks" trait nothing is drawn
  function marks_() {
    gMarks.replaceChildren();
    ghostByKey = new Map();
    const marks = model.get("marks") || {};
    const keys = Object.keys(marks);
    const lg = root.querySelector(".ltt-legend-diff");
    if (lg) lg.style.display = keys.length ? "" : "none";
    svg.dataset.marks = String(keys.length);
    if (!graph || !lay) return;
    const frag = document.createDocumentFragment();
    for (const key of keys) {
      const e = byKey.get(key);
      const d = e ? e.d || edgePath(e.kind, e.a, e.b) : keyPath(key, graph.parallel, graph.n_layers, GRID, lay.colOf);
      if (!d) continue;
      if (!e) ghostByKey.set(key, d);
      const status = String(marks[key]);
      frag.append(s("path", { class: `ltt-mark ltt-mark-${status}${e ? "" : " ltt-mark-ghost"}`, d, "data-mark": key, "data-status": status }));
    }
    gMarks.append(frag);
  }

  function highlight() {
    gHi.replaceChildren();
    const sel = model.get("selection") || {};
    if (sel.edge && byKey.has(sel.edge)) {
      const e = byKey.get(sel.edge);
      gHi.append(s("path", { class: "ltt-hi-edge", d: e.d || edgePath(e.kind, e.a, e.b) }));
    } else if (sel.edge && ghostByKey.has(sel.edge)) {
      gHi.append(s("path", { class: "ltt-hi-edge ltt-hi-ghost", d: ghostByKey.get(sel.edge) }));
    }
    const name = sel.node || (sel.edge ? null : null);
    if (name && lay && lay.pos.has(name)) {
      const [x, y] = lay.pos.get(name);
      gHi.append(s("path", { class: "ltt-hi-node", d: nodeMark(x, y) }));
    }
  }

  // -- hit testing (batched mode and hover); coordinates in screen px relative to the svg
  function toModel(px, py) {
    return [(px - MARGIN.left - view.tx) / view.kx, (py - MARGIN.top - view.ty) / view.ky];
  }

  function hitNode(px, py) {
    let best = null;
    let bd = 8;
    for (const n of graph.nodes) {
      const [x, y] = lay.pos.get(n.name);
      const d = Math.hypot(sx(x) - px, sy(y) - py);
      if (d < bd) { bd = d; best = n.name; }
    }
    return best;
  }

  function hitEdge(px, py) {
    // sample each edge's path in model space; fine for a click, a few ms for 50k edges
    const [mx, my] = toModel(px, py);
    const tol = 5;
    let best = null;
    let bd = tol;
    for (const e of lay.edges) {
      const a = e.a;
      const b = e.b;
      const xmin = Math.min(a[0], b[0]) - GRID.col * 0.5, xmax = Math.max(a[0], b[0]) + GRID.col * 0.5;
      if (mx < xmin || mx > xmax || my < Math.min(a[1], b[1]) - 2 || my > Math.max(a[1], b[1]) + 2) continue;
      for (let i = 0; i <= 16; i++) {
        const u = i / 16;
        const [x, y] = pointOn(e, a, b, u);
        const d = Math.hypot((x - mx) * view.kx, (y - my) * view.ky);
        if (d < bd) { bd = d; best = e.key; }
      }
    }
    return best;
  }

  function pointOn(e, a, b, u) {
    if (e.kind !== "attention") return [a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u];
    const ym = (a[1] + b[1]) / 2;
    if (Math.abs(a[0] - b[0]) < 1e-6) {
      const cx = a[0] - 0.42 * GRID.col;
      const v = 1 - u;
      return [v * v * a[0] + 2 * v * u * cx + u * u * b[0], v * v * a[1] + 2 * v * u * ym + u * u * b[1]];
    }
    const v = 1 - u;
    const yc = attnLevel(a, b);
    const x = v * v * v * a[0] + 3 * v * v * u * a[0] + 3 * v * u * u * b[0] + u * u * u * b[0];
    const y = v * v * v * a[1] + 3 * v * v * u * yc + 3 * v * u * u * yc + u * u * u * b[1];
    return [x, y];
  }

  function targetOf(ev) {
    const t = ev.target;
    if (t && t.dataset) {
      if (t.dataset.node) return { node: t.dataset.node };
      if (t.dataset.edge) return { edge: t.dataset.edge };
    }
    if (batched && graph) {
      const r = svg.getBoundingClientRect();
      const px = ev.clientX - r.left, py = ev.clientY - r.top;
      const n = hitNode(px, py);
      if (n) return { node: n };
      const e = hitEdge(px, py);
      if (e) return { edge: e };
    }
    return null;
  }

  // -- interaction: pan, zoom, click, hover
  let drag = null;
  function onDown(ev) {
    if (ev.button !== 0) return;
    drag = { x: ev.clientX, y: ev.clientY, tx: view.tx, ty: view.ty, moved: false };
  }
  function onMove(ev) {
    if (drag) {
      const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) {
        view.tx = drag.tx + dx;
        view.ty = drag.ty + dy;
        applyView();
        tooltip.style.display = "none";
        return;
      }
    }
    if (!hoverPending) {
      hoverPending = true;
      const e2 = { target: ev.target, clientX: ev.clientX, clientY: ev.clientY };
      requestAnimationFrame(() => { hoverPending = false; hover(e2); });
    }
  }
  let hoverPending = false;
  function onUp(ev) {
    const wasDrag = drag && drag.moved;
    drag = null;
    if (wasDrag) return;
    const out = ev.target && ev.target.dataset && ev.target.dataset.output;
    if (out !== undefined) return pickTarget(Number(out), ev.shiftKey || ev.ctrlKey || ev.metaKey);
    const hit = targetOf(ev);
    if (hit) select(hit);
  }
  function onWheel(ev) {
    ev.preventDefault();
    const r = svg.getBoundingClientRect();
    const px = ev.clientX - r.left - MARGIN.left, py = ev.clientY - r.top - MARGIN.top;
    const f = Math.exp(-ev.deltaY * 0.0015);
    const zx = ev.altKey ? 1 : f;
    const zy = ev.shiftKey ? 1 : f;
    view.tx = px - (px - view.tx) * zx;
    view.ty = py - (py - view.ty) * zy;
    view.kx *= zx;
    view.ky *= zy;
    applyView();
  }
  function hover(ev) {
    if (!graph) return;
    const hit = targetOf(ev);
    const out = ev.target && ev.target.dataset && ev.target.dataset.output;
    const tok = ev.target && ev.target.dataset && ev.target.dataset.token;
    let lines = null;
    if (out !== undefined || tok !== undefined) {
      const t = Number(out ?? tok);
      lines = [`token ${t}: ${quoted(graph.tokens[t])}`, out !== undefined ? "click: target · shift-click: add/remove" : null];
    } else if (hit && hit.node) {
      const n = nodeByName.get(hit.node);
      const p = parseNode(hit.node);
      lines = [`${hit.node} · ${KIND_LABEL[p.kind]}`, `layer ${p.layer < 0 ? "emb" : p.layer} · token ${p.token} ${quoted(graph.tokens[p.token])}`];
      if (n && n.bias) lines.push(`bias share ${fmt(n.bias, 5)}`);
    } else if (hit && hit.edge) {
      const e = byKey.get(hit.edge);
      if (e) {
        const a = parseNode(e.source), b = parseNode(e.target);
        const mark = (model.get("marks") || {})[e.key];
        lines = [`${e.kind} edge · layer ${e.layer}`, `${e.source} ${quoted(graph.tokens[a.token])} → ${e.target} ${quoted(graph.tokens[b.token])}`, `weight ${fmt(e.weight, 6)}`, mark ? `change: ${MARK_LABEL[mark] || mark}` : null];
      }
    }
    if (!lines) { tooltip.style.display = "none"; return; }
    tooltip.replaceChildren(...lines.filter(Boolean).map((l) => h("div", { text: l })));
    const r = root.getBoundingClientRect();
    tooltip.style.display = "block";
    tooltip.style.left = `${ev.clientX - r.left + 14}px`;
    tooltip.style.top = `${ev.clientY - r.top + 12}px`;
  }

  function select(hit) {
    const cur = model.get("selection") || {};
    const sel = hit.edge ? { edge: hit.edge } : { node: hit.node };
    if (hit.edge && cur.edge === hit.edge && Number.isInteger(cur.head)) sel.head = cur.head;
    commit({ selection: sel });
  }

  function pickTarget(t, add) {
    let tg = (model.get("targets") || []).slice();
    if (add) {
      tg = tg.includes(t) ? tg.filter((x) => x !== t) : tg.concat([t]);
      if (!tg.length) tg = [t];
    } else tg = [t];
    commit({ targets: tg.sort((a, b) => a - b) });
  }

  svg.addEventListener("pointerdown", onDown);
  svg.addEventListener("pointermove", onMove);
  svg.addEventListener("pointerup", onUp);
  svg.addEventListener("pointerleave", () => { tooltip.style.display = "none"; drag = null; });
  svg.addEventListener("wheel", onWheel, { passive: false });
  svg.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" && ev.key !== " ") return;
    const d = ev.target && ev.target.dataset;
    if (!d) return;
    if (d.output !== undefined) { ev.preventDefault(); pickTarget(Number(d.output), ev.shiftKey); }
    else if (d.node) { ev.preventDefault(); select({ node: d.node }); }
    else if (d.edge) { ev.preventDefault(); select({ edge: d.edge }); }
  });
  svg.addEventListener("dblclick", () => fit());

  // -- controls wiring
  slider.addEventListener("input", () => { thrBox.value = slider.value; });
  slider.addEventListener("change", () => setThreshold(slider.value));
  thrBox.addEventListener("change", () => setThreshold(thrBox.value));
  function setThreshold(v) {
    const x = Number(v);
    if (!(x >= 0 && x < 1)) { showError(`threshold must be a number in [0, 1), got ${JSON.stringify(v)}`); controls_(); return; }
    showError("");
    commit({ threshold: x });
  }
  renormBox.addEventListener("change", () => commit({ renormalize: renormBox.checked }));
  normBox.addEventListener("change", () => commit({ normalize: normBox.checked }));
  targetBox.addEventListener("change", () => {
    try {
      const tg = parseTargets(targetBox.value, graph ? graph.tokens.length : 0);
      showError("");
      commit({ targets: tg });
    } catch (err) { showError(err.message); controls_(); }
  });
  focusBtn.addEventListener("click", () => fit(Number(fromBox.value || 0), toBox.value === "" ? null : Number(toBox.value)));
  fitBtn.addEventListener("click", () => { fromBox.value = ""; toBox.value = ""; fit(); });
  const run = () => {
    const p = promptInput.value;
    if (!p.trim()) { showError("prompt: type a prompt first"); return; }
    showError("");
    model.send({ type: "run", prompt: p, bos: bosBox.indeterminate ? null : bosBox.checked });
  };
  runBtn.addEventListener("click", run);
  promptInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") run(); });
  picker.addEventListener("change", () => commit({ prompt_index: Number(picker.value) }));
  allBox.addEventListener("change", () => { draw(); fit(); });

  function showError(msg) {
    errorBox.textContent = msg || "";
    errorBox.style.display = msg ? "block" : "none";
  }

  // -- panels
  function renderPanel() {
    const p = model.get("panel") || {};
    panel.replaceChildren();
    if (!p.type) {
      panel.append(h("div", { class: "ltt-help" },
        h("p", { text: "Click a state (circle) for its top tokens, an attention edge for its heads, an FFN block (square) for its neurons." }),
        h("p", { text: "Drag to pan, wheel to zoom (shift: tokens only, alt: layers only), double-click to fit. Click a marker above the graph to pick the target token; shift-click adds one." })));
      return;
    }
    if (p.type === "state") panelState(p);
    else if (p.type === "attention") panelAttention(p);
    else if (p.type === "ffn") panelFfn(p);
    else if (p.type === "residual") panelResidual(p);
    else panel.append(h("div", { class: "ltt-panel-note", text: p.message || "" }));
  }

  function title(text, sub) {
    panel.append(h("div", { class: "ltt-panel-title", text }));
    if (sub) panel.append(h("div", { class: "ltt-panel-sub", text: sub }));
  }

  function tokenTable(rows, cols) {
    const table = h("table", { class: "ltt-table" });
    table.append(h("tr", {}, ...cols.map((c) => h("th", { text: c[0] }))));
    for (const r of rows) table.append(h("tr", {}, ...cols.map((c) => c[1](r))));
    return table;
  }

  function panelState(p) {
    const what = KIND_LABEL[parseNode(p.node).kind];
    title(`${p.node} · ${what}`, `layer ${p.layer < 0 ? "emb" : p.layer} · token ${p.position} ${quoted(p.position_token)} · ${p.normalize ? "final norm applied" : "no final norm"}${p.predecessor ? ` · rank change vs ${p.predecessor}` : ""}`);
    panel.append(tokenTable(p.tokens || [], [
      ["rank", (r) => h("td", { class: "ltt-num", text: String(r.rank) })],
      ["token", (r) => h("td", { class: "ltt-tok", text: visibleToken(r.token) })],
      ["prob", (r) => h("td", { class: "ltt-num" }, bar(r.prob, 1, "#2f6fdf"), h("span", { text: fmt(r.prob, 3) }))],
      ["logit", (r) => h("td", { class: "ltt-num", text: fmt(r.logit, 2) })],
      ["Δrank", (r) => h("td", { class: `ltt-num ${r.rank_change > 0 ? "ltt-up" : r.rank_change < 0 ? "ltt-down" : ""}`, text: r.rank_change === null || r.rank_change === undefined ? "" : r.rank_change > 0 ? `▲${r.rank_change}` : r.rank_change < 0 ? `▼${-r.rank_change}` : "=" })],
    ]));
    if (p.block) panel.append(effects(`what the ${p.block.what} added here promoted (direct effect on the logits)`, p.block));
  }

  function bar(v, max, color) {
    const w = Math.max(0, Math.min(1, (Number(v) || 0) / (max || 1)));
    const b = h("span", { class: "ltt-bar" });
    b.style.width = `${(w * 60).toFixed(1)}px`;
    b.style.background = color;
    return b;
  }

  function effects(label, p) {
    const box = h("div", { class: "ltt-effects" });
    box.append(h("div", { class: "ltt-sub", text: label }));
    const col = (name, items, cls) => h("div", { class: `ltt-effect-col ${cls}` }, h("div", { class: "ltt-effect-head", text: name }),
      ...(items || []).map((t) => h("div", { class: "ltt-effect", title: `effect ${fmt(t.effect, 4)}` }, h("span", { class: "ltt-tok", text: visibleToken(t.token) }), h("span", { class: "ltt-num", text: fmt(t.effect, 2) }))));
    box.append(h("div", { class: "ltt-effect-cols" }, col("promoted", p && p.promoted, "ltt-up"), col("suppressed", p && p.suppressed, "ltt-down")));
    return box;
  }

  function panelAttention(p) {
    const changed = p.raw_weight !== undefined && p.weight !== undefined && Math.abs(p.raw_weight - p.weight) > 5e-7;
    title(`attention edge · layer ${p.layer}`, `${p.source_node} ${quoted(p.source_token)} → ${p.target_node} ${quoted(p.target_token)}\nweight ${fmt(p.weight, 4)}${changed ? ` (raw share ${fmt(p.raw_weight, 4)} before renormalisation)` : ""}`);
    const heads = (p.heads || []).slice().sort((a, b) => b.share - a.share || a.head - b.head);
    const max = Math.max(1e-9, ...heads.map((x) => x.share));
    const chart = h("div", { class: "ltt-heads", role: "listbox", "aria-label": "heads by share" });
    for (const x of heads) {
      const selected = x.head === p.head;
      const row = h("div", { class: `ltt-head${selected ? " ltt-head-selected" : ""}`, "data-head": x.head, title: `head ${x.head}: share ${x.share}`,
        tabindex: 0, role: "option", "aria-selected": selected ? "true" : "false", "aria-label": `head ${x.head}, share ${fmt(x.share, 4)}${selected ? ", selected" : ""}` },
        h("span", { class: "ltt-head-mark", text: selected ? "▶" : "" }),
        h("span", { class: "ltt-head-label", text: `h${x.head}` }), bar(x.share, max, "var(--ltt-attn)"), h("span", { class: "ltt-num ltt-head-share", text: fmt(x.share, 4) }));
      const choose = () => commit({ selection: { ...(model.get("selection") || {}), head: x.head } });
      row.addEventListener("click", choose);
      row.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); choose(); } });
      chart.append(row);
    }
    panel.append(h("div", { class: "ltt-sub", text: "heads, largest share first (each head's raw share of the target state; click one)" }), chart);
    if (p.head !== undefined && p.head !== null) {
      panel.append(h("div", { class: "ltt-sub ltt-head-title", text: `head ${p.head}` }));
      const maps = toFloat32(model.get("panel_maps"));
      const shape = model.get("panel_maps_shape") || [];
      if (shape.length === 3 && maps.length === shape[0] * shape[1] * shape[2]) {
        const row = h("div", { class: "ltt-maps" });
        const names = p.maps || [];
        for (let i = 0; i < shape[0]; i++) {
          row.append(heatmap(maps.subarray(i * shape[1] * shape[2], (i + 1) * shape[1] * shape[2]), shape[1], shape[2], names[i] || `map ${i}`, p.target, p.source, i === 0 ? [47, 111, 223] : [232, 137, 28]));
        }
        panel.append(row);
      } else if (model.get("live") === false) {
        panel.append(h("div", { class: "ltt-panel-note", text: "this head's maps were not exported: they need a live kernel" }));
      }
      if (p.head_view) panel.append(effects("this head's output at the target: direct effect on the logits", p.head_view));
      else if (model.get("live") === false) panel.append(h("div", { class: "ltt-panel-note", text: "this head's promoted tokens need a live kernel" }));
    }
    if (p.block) panel.append(effects("the whole attention block at the target", p.block));
  }

  function heatmap(data, R, C, name, target, source, rgb) {
    const box = h("div", { class: "ltt-heatmap" });
    let max = 0;
    for (let i = 0; i < data.length; i++) if (data[i] > max) max = data[i];
    const cv = h("canvas", { width: C, height: R, class: "ltt-heatmap-canvas", "data-map": name, role: "img", "aria-label": `${name}: rows are targets, columns are sources` });
    const ctx = cv.getContext("2d");
    if (ctx) {
      const img = ctx.createImageData(C, R);
      for (let i = 0; i < R * C; i++) {
        const [r, g, b] = colorRamp(max > 0 ? data[i] / max : 0, rgb);
        img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
    }
    const side = Math.max(120, Math.min(240, (panel.clientWidth || 300) - 90)); // the map and its labels fit the panel
    const px = Math.max(1, Math.floor(side / Math.max(R, C)));
    const dim = Math.max(R, C) * px < 120 ? Math.max(1, Math.floor(120 / Math.max(R, C))) : px;
    cv.style.width = `${C * dim}px`;
    cv.style.height = `${R * dim}px`;
    const readout = h("div", { class: "ltt-map-readout", text: `max ${fmt(max, 4)} · row = target, column = source` });
    cv.addEventListener("mousemove", (ev) => {
      const r = cv.getBoundingClientRect();
      const c = Math.floor(((ev.clientX - r.left) / r.width) * C), rr = Math.floor(((ev.clientY - r.top) / r.height) * R);
      if (c < 0 || rr < 0 || c >= C || rr >= R) return;
      readout.textContent = `${rr} ${quoted(graph.tokens[rr] ?? "")} ← ${c} ${quoted(graph.tokens[c] ?? "")}: ${fmt(data[rr * C + c], 5)}`;
    });
    // token labels on both axes: every n-th token so that labels never overlap
    const every = Math.max(1, Math.ceil(11 / dim));
    const yAxis = h("div", { class: "ltt-map-yaxis" });
    const xAxis = h("div", { class: "ltt-map-xaxis" });
    yAxis.style.height = `${R * dim}px`;
    xAxis.style.width = `${C * dim}px`;
    for (let i = 0; i < Math.max(R, C); i += every) {
      const tok = visibleToken(graph.tokens[i] ?? "");
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
      bars.append(h("div", { class: "ltt-map-readout", text: `row of target ${target} ${quoted(graph.tokens[target] ?? "")}, largest sources:` }));
      for (const [s, v] of top) {
        bars.append(h("div", { class: `ltt-row-bar${s === source ? " ltt-is-source" : ""}` },
          h("span", { class: "ltt-tok ltt-row-tok", text: `${s} ${visibleToken(graph.tokens[s] ?? "")}` }),
          bar(v, rmax, `rgb(${rgb.join(",")})`), h("span", { class: "ltt-num", text: fmt(v, 4) })));
      }
      box.append(bars);
    }
    return box;
  }

  function panelFfn(p) {
    title(`${p.node} · FFN block`, `layer ${p.layer} · token ${p.position} ${quoted(p.position_token)}${p.weight !== undefined ? ` · FFN share ${fmt(p.weight, 4)}` : ""} · residual ${fmt(p.resid_share, 4)} · bias ${fmt(p.bias_share, 4)}`);
    const neurons = p.neurons || [];
    if (p.router) {  // a mixture of experts: the chosen experts, their gates and shares
      const r = p.router;
      const rmax = Math.max(1e-9, ...r.experts.map((e) => e.share));
      const box = h("div", { class: "ltt-router" }, h("div", { class: "ltt-sub", text: `router: ${r.experts.length} of ${r.n_experts} experts${r.shared !== null ? ` · shared ${fmt(r.shared, 4)}` : ""}` }));
      for (const e of r.experts) box.append(h("div", { class: "ltt-neuron-head", "data-expert": e.expert }, h("b", { text: `expert ${e.expert}` }), bar(e.share, rmax, "#7b5ea7"), h("span", { class: "ltt-num", text: `share ${fmt(e.share, 4)}` }), h("span", { class: "ltt-num", text: `gate ${fmt(e.gate, 3)}` })));
      panel.append(box);
    }
    const max = Math.max(1e-9, ...neurons.map((n) => n.share));
    const list = h("div", { class: "ltt-neurons" });
    for (const n of neurons) {
      const label = n.expert === undefined ? `n${n.neuron}` : `${n.expert === "shared" ? "shared" : `e${n.expert}`}·n${n.local}`;
      const row = h("div", { class: "ltt-neuron", "data-neuron": n.neuron },
        h("div", { class: "ltt-neuron-head" }, h("b", { text: label }), bar(n.share, max, "#e8891c"), h("span", { class: "ltt-num", text: `share ${fmt(n.share, 4)}` }), h("span", { class: "ltt-num", text: `act ${fmt(n.activation, 3)}` })),
        h("div", { class: "ltt-neuron-tokens" },
          h("span", { class: "ltt-up", text: "▲ " }), ...(n.promoted || []).map((t) => h("span", { class: "ltt-chip", text: visibleToken(t.token), title: `effect ${fmt(t.effect, 4)}` })),
          h("span", { class: "ltt-down", text: " ▼ " }), ...(n.suppressed || []).map((t) => h("span", { class: "ltt-chip", text: visibleToken(t.token), title: `effect ${fmt(t.effect, 4)}` }))));
      list.append(row);
    }
    panel.append(h("div", { class: "ltt-sub", text: "top neurons by share of the FFN output state" }), list);
    if (p.block) panel.append(effects("the whole FFN block (direct effect on the logits)", p.block));
  }

  function panelResidual(p) {
    title(`residual edge · layer ${p.layer}`, `${p.source} → ${p.target} · ${p.weight !== undefined ? `weight ${fmt(p.weight, 4)}` : "not in this graph at this threshold"}`);
    panel.append(h("div", { class: "ltt-panel-note", text: "The residual stream carried this share of the state unchanged. Click either end for its top tokens." }));
  }

  function legend() {
    const lg = h("div", { class: "ltt-legend" });
    const item = (cls, text) => h("span", { class: "ltt-legend-item" }, h("span", { class: `ltt-swatch ${cls}` }), text);
    lg.append(item("ltt-sw-I", "after FFN (I)"), item("ltt-sw-A", "after attention (A)"), item("ltt-sw-M", "FFN block (M)"), item("ltt-sw-X", "embedding"),
      item("ltt-sw-attention", "attention"), item("ltt-sw-residual", "residual"), item("ltt-sw-ffn", "FFN"));
    const widths = h("span", { class: "ltt-legend-width", title: "an edge's width and opacity grow with its weight: the share of the target state it carries (after renormalisation when that is on)" },
      h("span", { text: "edge width = share of the target state:" }));
    for (const w of [0.05, 0.3, 1]) {
      const st = edgeStyle(w);
      const sw = h("span", { class: "ltt-sw-w" });
      sw.style.height = `${st.width.toFixed(1)}px`;
      sw.style.opacity = st.opacity.toFixed(2);
      widths.append(sw, h("span", { text: String(w) }));
    }
    widths.append(h("span", { text: "· colour = kind" }));
    lg.append(widths);
    const diff = h("span", { class: "ltt-legend-diff" },
      ...Object.keys(MARK_LABEL).map((k) => item(`ltt-sw-${k}`, MARK_LABEL[k])), item("ltt-sw-ghost", "dashed: not in this graph"));
    diff.style.display = "none";
    lg.append(diff);
    return lg;
  }

  // -- model events
  const onGraph = () => {
    const first = !lay;
    const prevT = graph ? graph.tokens.length : -1;
    const prevW = lay ? lay.width : -1;
    draw(); controls_(); facts_();
    // a new prompt, or columns that moved (a compact layout of other targets): fit again
    if (first || graph.tokens.length !== prevT || Math.abs(lay.width - prevW) > 1e-6) fit();
  };
  on("change:graph", onGraph);
  on("change:threshold", controls_);
  on("change:renormalize", controls_);
  on("change:normalize", controls_);
  on("change:targets", controls_);
  on("change:slider", controls_);
  on("change:selection", highlight);
  on("change:marks", () => { marks_(); highlight(); });
  on("change:panel", renderPanel);
  on("change:panel_maps", renderPanel);
  on("change:model_info", facts_);
  on("change:prompts", prompts_);
  on("change:prompt_index", prompts_);
  on("change:live", prompts_);
  on("change:status", () => { status.textContent = model.get("status") || ""; root.classList.toggle("ltt-busy", !!model.get("status")); });
  on("change:error", () => showError(model.get("error")));
  on("change:notice", () => { notice.textContent = model.get("notice") || ""; notice.style.display = model.get("notice") ? "block" : "none"; });
  // the faithfulness line (ltt.faithfulness.summary_line) under the header, as text, when there is one
  const faith = h("div", { class: "ltt-faithfulness" });
  notice.before(faith);
  const faith_ = () => { const v = model.get("faithfulness") || ""; faith.textContent = v; faith.style.display = v ? "block" : "none"; };
  on("change:faithfulness", faith_);
  faith_();

  const ro = typeof ResizeObserver !== "undefined" ? new ResizeObserver(() => {
    const w = Math.floor(graphBox.clientWidth);
    if (w > 0 && Math.abs(w - size.w) > 2) { size.w = w; if (graph) fit(); }
  }) : null;
  if (ro) ro.observe(graphBox);

  size.w = Math.max(320, Math.floor(el.clientWidth * 0.66) || 640);
  const L0 = (model.get("graph") || {}).n_layers || 12;
  size.h = Math.max(380, Math.min(720, L0 * 22 + MARGIN.top + MARGIN.bottom + 40));
  facts_();
  prompts_();
  draw();
  controls_();
  renderPanel();
  showError(model.get("error"));
  notice.textContent = model.get("notice") || "";
  notice.style.display = model.get("notice") ? "block" : "none";
  requestAnimationFrame(() => { const w = Math.floor(graphBox.clientWidth); if (w > 0) size.w = w; fit(); });

  return () => {
    for (const [ev, cb] of listeners) model.off(ev, cb);
    if (ro) ro.disconnect();
    root.remove();
  };
}

export default { render };
