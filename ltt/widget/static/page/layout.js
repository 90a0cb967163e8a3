// Layout: where every node, edge and column of a graph goes, and the other pure helpers of the
// page (named exports, testable with node --test). No DOM here.

const NODE_RE = /^([XAMI])(\d+)_(\d+)$/;
/** What each node kind is, for labels. */
export const KIND_LABEL = { X: "embedding", A: "after attention", M: "FFN block", I: "after FFN" };

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

/** A sequential colour (base, default white -> hue) for v in [0, 1], as [r, g, b]. */
export function colorRamp(v, rgb = [47, 111, 223], base = [255, 255, 255]) {
  const t = Math.min(1, Math.max(0, Number(v) || 0));
  return rgb.map((c, i) => Math.round(base[i] + (c - base[i]) * t));
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

/** The graph's margins on screen (px): layer labels left, token labels below, markers above. */
export const MARGIN = { left: 46, right: 12, top: 34, bottom: 78 };
export const COMPACT_ABOVE = 40; // longer prompts give full columns only to the tokens that carry nodes
export const ELEMENT_LIMIT = 4000; // above this many edges, edges and nodes are drawn on a canvas

/** The point at u in [0, 1] along an edge's path from a to b (model units). */
export function pointOn(e, a, b, u) {
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
