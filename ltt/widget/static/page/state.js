// The view's state: the page's model outside Jupyter (createModel), the DOM helpers, and the one
// explicit state object `st` every part of the view reads and writes (no closure variables).

import { visibleToken, MARGIN } from "./layout.js";
import { WRITABLE } from "./schema.js";

const SVGNS = "http://www.w3.org/2000/svg";

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

/** An SVG element with the given attributes (null and undefined left out). */
export function s(tag, attrs = {}) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  return node;
}

/** A number with d decimals, or a dash. */
export const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(d));
/** A token in curly quotes, made visible. */
export const quoted = (t) => `“${visibleToken(t)}”`;

/** The state of one rendered view: its model, the elements buildPage() makes, and what drawing
 *  keeps between frames (the layout, the shown graph, the pan/zoom, lookups by key). */
export function createState(model, el) {
  const st = {
    model, el, listeners: [],
    lay: null, graph: null, view: { kx: 1, ky: 1, tx: 0, ty: 0 }, size: { w: 600, h: 400 },
    batched: false, canvasBuckets: [], canvasNodes: null,
    byKey: new Map(), nodeByName: new Map(), ghostByKey: new Map(), // edge key -> edge; node name -> node; ghost key -> path
    drag: null, hoverPending: false, rafPending: false,
  };
  st.on = (ev, cb) => { model.on(ev, cb); st.listeners.push([ev, cb]); };
  st.commit = (changes) => { // only the fields the schema lets the page write
    for (const [k, v] of Object.entries(changes)) {
      if (!WRITABLE.includes(k)) throw new Error(`the page may not set ${k}: only ${WRITABLE.join(", ")}`);
      model.set(k, v);
    }
    model.save_changes();
  };
  return st;
}

/** The plot area's size on screen (px). */
export function plotW(st) { return Math.max(50, st.size.w - MARGIN.left - MARGIN.right); }
export function plotH(st) { return Math.max(50, st.size.h - MARGIN.top - MARGIN.bottom); }
/** Model units to screen px (relative to the svg). */
export function sx(st, x) { return MARGIN.left + st.view.tx + x * st.view.kx; }
export function sy(st, y) { return MARGIN.top + st.view.ty + y * st.view.ky; }

/** Class ltt-dark on the view when its background is dark, whatever made it so (the report's or
 *  serve's dark preference, JupyterLab's theme): the accents then take their dark values (graph.css). */
export function scheme(st) {
  const [r, g, b, a] = (getComputedStyle(st.root).backgroundColor.match(/[\d.]+/g) || []).map(Number);
  if (r === undefined || a === 0) return; // no background of its own: keep the light accents
  st.root.classList.toggle("ltt-dark", 0.2126 * r + 0.7152 * g + 0.0722 * b < 110);
}
