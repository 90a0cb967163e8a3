// ltt report kernel: the offline report's answers to the page, from the data embedded in it.
// A JavaScript port of the C core's threshold modes and pruning (renormalizeState, pruneGraph:
// backward reachability from the targets' outputs) over every state's parts that ltt.report
// carries; tests/test_browser.py and tests/test_report.py pin what the page then draws to
// trace.graph(...). ltt.report inlines this file after graph.js as the report's one module (the
// import line below is dropped there); the widget and ltt serve never load it.

import { parseNode, createModel } from "./graph.js";

/** The method's renormalize mode for one state: parts >= tau kept (or only the largest, first on
 *  ties, when none is), rescaled to sum to 1. parts: {heads: [[s, k, share]...] in (k, s) order,
 *  single: [resid, bias, ffn?]} -> {edges: Map s -> weight, single: [...]} */
export function renormalizeState(parts, tau) {
  const heads = parts.heads || [];
  const single = parts.single || [];
  const all = heads.map((h) => h[2]).concat(single);
  let keep = all.map((v) => v >= tau);
  if (!keep.some(Boolean)) {
    let best = 0;
    for (let i = 1; i < all.length; i++) if (all[i] > all[best]) best = i;
    keep = all.map((_, i) => i === best);
  }
  let z = 0;
  all.forEach((v, i) => { if (keep[i]) z += v; });
  const scale = z > 0 ? 1 / z : 1;
  const edges = new Map();
  heads.forEach((h, i) => {
    if (keep[i]) edges.set(h[0], (edges.get(h[0]) || 0) + h[2] * scale);
  });
  const out = single.map((v, i) => (keep[heads.length + i] ? v * scale : 0));
  return { edges, single: out };
}

/** The state an attention edge of layer l into token t enters: after attention (A), or the
 *  layer's output (I) in a parallel block, which has no A state. */
export function attnState(l, t, parallel) {
  return parallel[l] ? `I${l}_${t}` : `A${l}_${t}`;
}

/** Backward reachability from the targets' outputs through edges of weight >= tau; a reached
 *  state with no such edge keeps its largest incoming one (ties: residual, FFN, sources by s).
 *  `w` answers, per layer l and token t: attnIn(l, t) -> [[s, weight]...], resid(l, t),
 *  ffn(l, t), ffnResid(l, t) (undefined when unknown). Returns {edges, missing}. */
export function pruneGraph(L, parallel, targets, tau, w) {
  const edges = [];
  let missing = false;
  const inName = (l, t) => (l === 0 ? `X0_${t}` : `I${l - 1}_${t}`);
  const pick = (cand) => {
    const kept = cand.filter((c) => c[1] >= tau);
    if (kept.length) return kept;
    let best = null;
    for (const c of cand) if (best === null || c[1] > best[1]) best = c;
    return best ? [best] : [];
  };
  let reachedOut = new Set(targets);
  for (let l = L - 1; l >= 0; l--) {
    const reachedIn = new Set();
    const attnStep = (t, stateName, extra) => {
      const ar = w.resid(l, t);
      const at = w.attnIn(l, t);
      if (ar === undefined || at === undefined) { missing = true; return; }
      const cand = [["r", ar]].concat(extra).concat(at.map(([s, v]) => [s, v]));
      for (const [k, v] of pick(cand)) {
        if (k === "r") {
          edges.push({ source: inName(l, t), target: stateName, kind: "residual", weight: v, layer: l });
          reachedIn.add(t);
        } else if (k === "f") {
          edges.push({ source: inName(l, t), target: `M${l}_${t}`, kind: "ffn", weight: v, layer: l });
          edges.push({ source: `M${l}_${t}`, target: `I${l}_${t}`, kind: "ffn", weight: v, layer: l });
          reachedIn.add(t);
        } else {
          edges.push({ source: inName(l, k), target: stateName, kind: "attention", weight: v, layer: l });
          reachedIn.add(k);
        }
      }
    };
    if (parallel[l]) {
      for (const t of reachedOut) {
        const f = w.ffn(l, t);
        if (f === undefined) { missing = true; continue; }
        attnStep(t, attnState(l, t, parallel), [["f", f]]);
      }
    } else {
      const reachedMid = [];
      for (const t of reachedOut) {
        const fr = w.ffnResid(l, t);
        const f = w.ffn(l, t);
        if (fr === undefined || f === undefined) { missing = true; continue; }
        for (const [k, v] of pick([["r", fr], ["f", f]])) {
          if (k === "r") {
            edges.push({ source: `A${l}_${t}`, target: `I${l}_${t}`, kind: "residual", weight: v, layer: l });
          } else {
            edges.push({ source: `A${l}_${t}`, target: `M${l}_${t}`, kind: "ffn", weight: v, layer: l });
            edges.push({ source: `M${l}_${t}`, target: `I${l}_${t}`, kind: "ffn", weight: v, layer: l });
          }
        }
        reachedMid.push(t);
      }
      for (const t of reachedMid) attnStep(t, attnState(l, t, parallel), []);
    }
    reachedOut = reachedIn;
  }
  return { edges, missing };
}

/** Nodes of a pruned edge list, in the order Python's Graph keeps them. */
export function nodesOf(edges, L, targets, biasOf) {
  const seen = new Map();
  const add = (name) => {
    if (seen.has(name)) return;
    const p = parseNode(name);
    seen.set(name, { name, layer: p.layer, token: p.token, kind: p.kind, bias: biasOf ? biasOf(name) : 0 });
  };
  for (const e of edges) { add(e.source); add(e.target); }
  for (const t of targets) add(`I${L - 1}_${t}`);
  const order = { X: 0, A: 1, M: 2, I: 3 };
  return [...seen.values()].sort((a, b) => a.layer - b.layer || order[a.kind] - order[b.kind] || a.token - b.token);
}

/** The report's data from its <script> elements: deflated base64 JSON whose {"$a": [dtype,
 *  offset, length]} entries point into a second deflated base64 buffer of typed arrays (see
 *  ltt.report.pack); a plain JSON element is parsed as it is. */
export async function loadStore(dataEl, binEl) {
  if (!dataEl.dataset || !dataEl.dataset.encoding) return JSON.parse(dataEl.textContent);
  const inflate = async (b64) => {
    const bytes = Uint8Array.from(atob(String(b64).trim()), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  };
  const text = new TextDecoder().decode(await inflate(dataEl.textContent));
  const bin = binEl ? await inflate(binEl.textContent) : new Uint8Array(0);
  const TYPES = { f4: Float32Array, u1: Uint8Array, u2: Uint16Array, i4: Int32Array };
  return JSON.parse(text, (k, v) => {
    if (v && typeof v === "object" && !Array.isArray(v) && Array.isArray(v.$a) && Object.keys(v).length === 1) {
      const [code, off, n] = v.$a;
      const Type = TYPES[code];
      return new Type(bin.buffer.slice(bin.byteOffset + off, bin.byteOffset + off + n * Type.BYTES_PER_ELEMENT));
    }
    return v;
  });
}

/** The report's "kernel": answers setting changes from the data embedded in the page. Any set of
 *  the carried targets, at any threshold from the report's floor up, in either threshold mode,
 *  is pruned here from every state's parts (store.offline, see ltt.report). */
export function offlineKernel(store) {
  const exp = store.exported;
  const L = store.n_layers;
  const T = store.n_tokens ?? store.graphs.renorm.tokens.length;
  const parallel = store.parallel;
  const floor = exp.floor ?? exp.threshold;
  const carried = exp.carried || exp.targets;
  const off = store.offline;
  const sg = off.single; // Float32Array [L*T] each: attn_resid, attn_bias, ffn, ffn_resid
  const at = (l, t) => l * T + t;
  // raw mode: attention edges of every state the carried targets reach at the floor
  const rawAttn = new Map();
  for (let i = 0; i < off.raw.w.length; i++) {
    const key = at(off.raw.l[i], off.raw.t[i]);
    if (!rawAttn.has(key)) rawAttn.set(key, []);
    rawAttn.get(key).push([off.raw.s[i], off.raw.w[i]]);
  }
  for (const list of rawAttn.values()) list.sort((a, b) => a[0] - b[0]);
  const rawW = {
    attnIn: (l, t) => rawAttn.get(at(l, t)) || [],
    resid: (l, t) => sg.attn_resid[at(l, t)],
    ffn: (l, t) => sg.ffn[at(l, t)],
    ffnResid: (l, t) => sg.ffn_resid[at(l, t)],
  };
  // renormalize mode: each state's head parts >= floor (and its largest), (head, source) order
  const hp = off.heads;
  const span = new Map(); // l*T+t -> [first, end)
  for (let i = 0; i < hp.v.length; i++) {
    const key = at(hp.l[i], hp.t[i]);
    const sp = span.get(key);
    if (sp) sp[1] = i + 1; else span.set(key, [i, i + 1]);
  }
  const headParts = (l, t) => {
    const sp = span.get(at(l, t));
    const out = [];
    if (sp) for (let i = sp[0]; i < sp[1]; i++) out.push([hp.s[i], hp.k[i], hp.v[i]]);
    return out;
  };
  const renormW = (tau) => {
    const cache = new Map();
    const state = (l, t) => {
      const k = at(l, t);
      if (!cache.has(k)) {
        const single = [sg.attn_resid[k], sg.attn_bias[k]];
        if (parallel[l]) single.push(sg.ffn[k]);
        cache.set(k, renormalizeState({ heads: headParts(l, t), single }, tau));
      }
      return cache.get(k);
    };
    const ffnState = (l, t) => renormalizeState({ heads: [], single: [sg.ffn[at(l, t)], sg.ffn_resid[at(l, t)]] }, tau).single;
    return {
      state,
      attnIn: (l, t) => [...state(l, t).edges].sort((a, b) => a[0] - b[0]),
      resid: (l, t) => state(l, t).single[0],
      ffn: (l, t) => (parallel[l] ? state(l, t).single[2] : ffnState(l, t)[0]),
      ffnResid: (l, t) => ffnState(l, t)[1],
    };
  };
  const graphAt = (tau, renormalize, targets) => {
    const base = renormalize ? store.graphs.renorm : store.graphs.raw;
    if (tau === exp.threshold && targets.join() === exp.targets.join()) return { graph: base, missing: false };
    const w = renormalize ? renormW(tau) : rawW;
    const { edges, missing } = pruneGraph(L, parallel, targets, tau, w);
    const order = (e) => [e.layer, e.target, e.source, e.kind];
    edges.sort((a, b) => {
      const x = order(a), y = order(b);
      for (let i = 0; i < 4; i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
      return 0;
    });
    const biasOf = (name) => {
      const p = parseNode(name);
      if (p.kind === "X" || name !== attnState(p.layer, p.token, parallel)) return 0; // the bias sits where attention enters
      return renormalize ? w.state(p.layer, p.token).single[1] : sg.attn_bias[at(p.layer, p.token)];
    };
    const nodes = nodesOf(edges, L, targets, biasOf);
    const settings = { ...base.settings, threshold: tau, renormalize, targets };
    const preds = store.predictions || base.predictions || {};
    const predictions = {};
    for (const t of targets) if (preds[String(t)] !== undefined) predictions[String(t)] = preds[String(t)];
    return { graph: { ...base, settings, nodes, edges, predictions }, missing };
  };
  const mapsOf = (layer, head) => {
    const mm = off.maps && off.maps[`${layer}:${head}`];
    if (!mm) return null;
    const f = new Float32Array(2 * T * T);
    let i = 0;
    for (let t = 0; t < T; t++) {
      for (let s = 0; s <= t; s++, i++) {
        f[t * T + s] = mm.pattern[i] * mm.step[0];
        f[T * T + t * T + s] = mm.contribution[i] * mm.step[1];
      }
    }
    return { array: f, shape: [2, T, T] };
  };
  // panel keys from the templates the report carries (ltt/widget/panels.py PANEL_KEYS)
  const keys = store.panel_keys || {};
  const keyOf = (kind, fields) => String(keys[kind]).replace(/\{(\w+)\}/g, (_, name) => String(fields[name]));
  const panelFor = (sel, normalize) => {
    const P = store.panels;
    if (!sel || (!sel.node && !sel.edge)) return [{}, null];
    if (sel.node) {
      const p = parseNode(sel.node);
      if (p && p.kind === "M") return [P[keyOf("ffn", { node: sel.node })] || needsKernel(sel.node), null];
      return [P[keyOf("state", { node: sel.node, normalize: normalize ? 1 : 0 })] || needsKernel(sel.node), null];
    }
    const [src, dst, kind] = String(sel.edge).split("|");
    if (kind === "ffn") return panelFor({ node: parseNode(src).kind === "M" ? src : dst }, normalize);
    const base = P[keyOf("edge", { edge: sel.edge })];
    if (!base) return [needsKernel(sel.edge), null];
    if (base.type !== "attention") return [base, null];
    const head = Number.isInteger(sel.head) && sel.head >= 0 ? sel.head : base.heads[0].head;
    const hv = P[keyOf("head", { layer: base.layer, head, target: base.target })];
    const maps = mapsOf(base.layer, head);
    const panel = { ...base, head, head_view: hv || null, maps: maps ? base.maps : [] };
    return [panel, maps];
  };
  const needsKernel = (what) => ({ type: "offline", what, message: `${what}: this panel was not embedded in the report (it needs a live kernel)` });

  return {
    handle(model, changed) {
      const out = {};
      if ("threshold" in changed || "renormalize" in changed || "targets" in changed) {
        const tau = Number(model.get("threshold"));
        const renorm = !!model.get("renormalize");
        const targets = [...model.get("targets")].sort((a, b) => a - b);
        const notes = [];
        let useTau = tau;
        if (!(tau >= floor)) {
          notes.push(`threshold ${tau} is below this report's floor ${floor}: showing ${floor} (a live kernel goes lower)`);
          useTau = floor;
        }
        let useTargets = targets.filter((t) => carried.includes(t));
        if (useTargets.length !== targets.length) {
          notes.push(`this report carries the targets ${carried.length > 12 ? `${carried[0]}–${carried[carried.length - 1]}` : carried.join(", ")}; others need a live kernel`);
          if (!useTargets.length) { // keep what is drawn now
            const drawn = ((model.get("graph") || {}).settings || {}).targets || exp.targets;
            useTargets = drawn.filter((t) => carried.includes(t));
            if (!useTargets.length) useTargets = exp.targets.slice();
          }
        }
        const { graph, missing } = graphAt(useTau, renorm, useTargets);
        if (missing) notes.push("parts of this graph were not exported: it needs a live kernel to be exact");
        out.graph = graph;
        out.notice = notes.join(" · ");
        // the boxes show what the graph is drawn for, never a setting it could not honour
        if (useTau !== tau) out.threshold = useTau;
        if (useTargets.join() !== targets.join()) out.targets = useTargets;
      }
      if ("selection" in changed || "normalize" in changed) {
        const [panel, maps] = panelFor(model.get("selection"), !!model.get("normalize"));
        out.panel = panel;
        out.panel_maps = maps ? maps.array : new DataView(new ArrayBuffer(0));
        out.panel_maps_shape = maps ? maps.shape : [];
      }
      return out;
    },
    message(model, msg) {
      if (msg && msg.type === "run") {
        return { notice: "running a new prompt needs a live kernel (this is an offline report)" };
      }
      return {};
    },
  };
}

/** The report's model: graph.js's createModel() whose changes and messages travel to `kernel`
 *  over a MessageChannel (so the kernel answers after the page's own change events, as a real
 *  kernel would) and whose answers come back as change events; render() runs unchanged. */
export function createModelShim(initial, kernel) {
  const channel = new MessageChannel();
  // only the changed keys travel (the kernel reads their values from the model): a graph the
  // page sets is never copied through the channel
  const model = createModel(initial, ({ changes, msg }) => channel.port1.postMessage(changes ? { keys: Object.keys(changes) } : { msg }));
  channel.port2.onmessage = (ev) => {
    const { keys, msg } = ev.data;
    model.apply(keys ? kernel.handle(model, Object.fromEntries(keys.map((k) => [k, true]))) : kernel.message(model, msg));
  };
  channel.port1.start && channel.port1.start();
  return model;
}
