// Axes and overlays: token labels (sticky above the graph), output markers, layer labels, the
// change marks of a diff and the selection's highlight, all functions of the view state `st`.

import { GRID, edgePath, nodeMark, keyPath, visibleToken, MARGIN } from "./layout.js";
import { s, quoted, plotW, plotH, sx, sy } from "./state.js";

export function axes(st) {
  if (!st.graph) return;
  st.axisX.replaceChildren();
  st.axisY.replaceChildren();
  st.axisTop.replaceChildren();
  const T = st.graph.tokens.length;
  const cols = st.lay.cols;
  const colW = GRID.col * st.view.kx; // a full column on screen
  const rotated = colW < 52;
  const stride = rotated ? Math.max(1, Math.ceil(13 / colW)) : 1;
  const baseY = MARGIN.top + plotH(st) + 6;
  const targets = new Set(st.graph.settings.targets || []);
  const fewTargets = targets.size <= 16;
  let shownCol = -1;
  const bar = [];
  for (let t = 0; t < T; t++) {
    const x = sx(st, (cols.x[t] + cols.w[t] / 2) * GRID.col);
    if (x < MARGIN.left - 2 || x > MARGIN.left + plotW(st) + 2) continue;
    const full = cols.w[t] >= 1;
    const active = cols.active.has(t);
    const col = Math.floor(cols.x[t]);
    if (full && (col % stride === 0 && col !== shownCol || (fewTargets && targets.has(t)))) {
      shownCol = col;
      const label = s("text", { class: `ltt-token${targets.has(t) ? " ltt-is-target" : ""}${active ? "" : " ltt-inactive"}`, "data-token": t });
      let text = visibleToken(st.graph.tokens[t]);
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
      st.axisX.append(label);
      bar.push([t, x]);
    }
    // output markers along the top: click picks the target, shift/ctrl-click adds or removes
    const mw = cols.w[t] * colW;
    const mk = s("rect", {
      class: `ltt-out${targets.has(t) ? " ltt-is-target" : ""}${active ? "" : " ltt-inactive"}`, "data-output": t,
      x: x - Math.min(7, mw * 0.4), y: MARGIN.top - 13, width: Math.max(2, Math.min(14, mw * 0.8)), height: 10, rx: 2,
      tabindex: 0, role: "button", "aria-label": `target ${t} ${quoted(st.graph.tokens[t])}${targets.has(t) ? " (selected)" : ""}${predicts(st, t)}`,
    });
    st.axisTop.append(mk);
  }
  columnBar(st, bar, colW);
  const preds = st.graph.predictions || {};
  let lastEnd = -Infinity;
  for (const t of [...targets].sort((a, b) => a - b)) {
    let x = sx(st, (cols.x[t] + cols.w[t] / 2) * GRID.col);
    if (x < MARGIN.left || x > MARGIN.left + plotW(st)) continue;
    const p = preds[String(t)];
    const text = p !== undefined ? `→ ${visibleToken(p)}` : `#${t}`;
    const approx = 7 * (1 + text.length);
    // keep the whole label inside the view: shift it in from either edge, never clip it
    x = Math.min(Math.max(x, MARGIN.left - 40 + approx / 2), st.size.w - 2 - approx / 2);
    if (x - approx / 2 < lastEnd) continue; // no room: the marker stays, the label goes
    lastEnd = x + approx / 2;
    const label = s("text", { class: "ltt-pred", x: x, y: MARGIN.top - 17, "text-anchor": "middle" });
    label.textContent = text;
    st.axisTop.append(label);
  }
  const L = st.graph.n_layers;
  const rowH = GRID.row * st.view.ky;
  const lstride = Math.max(1, Math.ceil(14 / rowH));
  for (let l = -1; l < L; l++) {
    if (l >= 0 && (L - 1 - l) % lstride !== 0) continue;
    const y = sy(st, l < 0 ? st.lay.height : (L - l - 1) * GRID.row);
    if (y < MARGIN.top - 4 || y > MARGIN.top + plotH(st) + 4) continue;
    const label = s("text", { class: "ltt-layer", x: MARGIN.left - 6, y: y + 4, "text-anchor": "end" });
    label.textContent = l < 0 ? "emb" : `L${l}`;
    st.axisY.append(label);
  }
}

// -- change marks (a contrastive view): an overlay per marked edge, dashed where this graph
// does not keep the edge; without a "marks" trait nothing is drawn
export function marks_(st) {
  st.gMarks.replaceChildren();
  st.ghostByKey = new Map();
  const marks = st.model.get("marks") || {};
  const keys = Object.keys(marks);
  const lg = st.root.querySelector(".ltt-legend-diff");
  if (lg) lg.style.display = keys.length ? "" : "none";
  st.svg.dataset.marks = String(keys.length);
  if (!st.graph || !st.lay) return;
  const frag = document.createDocumentFragment();
  for (const key of keys) {
    const e = st.byKey.get(key);
    const d = e ? e.d || edgePath(e.kind, e.a, e.b) : keyPath(key, st.graph.parallel, st.graph.n_layers, GRID, st.lay.colOf);
    if (!d) continue;
    if (!e) st.ghostByKey.set(key, d);
    const stat = String(marks[key]);
    frag.append(s("path", { class: `ltt-mark ltt-mark-${stat}${e ? "" : " ltt-mark-ghost"}`, d, "data-mark": key, "data-status": stat }));
  }
  st.gMarks.append(frag);
}

export function highlight(st) {
  st.gHi.replaceChildren();
  const sel = st.model.get("selection") || {};
  if (sel.edge && st.byKey.has(sel.edge)) {
    const e = st.byKey.get(sel.edge);
    st.gHi.append(s("path", { class: "ltt-hi-edge", d: e.d || edgePath(e.kind, e.a, e.b) }));
  } else if (sel.edge && st.ghostByKey.has(sel.edge)) {
    st.gHi.append(s("path", { class: "ltt-hi-edge ltt-hi-ghost", d: st.ghostByKey.get(sel.edge) }));
  }
  const name = sel.node || (sel.edge ? null : null);
  if (name && st.lay && st.lay.pos.has(name)) {
    const [x, y] = st.lay.pos.get(name);
    st.gHi.append(s("path", { class: "ltt-hi-node", d: nodeMark(x, y) }));
  }
}


/** ", predicts “x” (p 0.123)": what the model predicts after token t, or "" when unknown. */
export function predicts(st, t) {
  const o = (st.model.get("outputs") || [])[t];
  return o ? `, predicts ${quoted(o.token)} (p ${Number(o.prob).toFixed(3)})` : "";
}

/** Positions of the tokens whose string occurs more than once in the prompt. */
export function repeatedTokens(tokens) {
  const count = new Map();
  for (const t of tokens) count.set(t, (count.get(t) || 0) + 1);
  const out = new Set();
  tokens.forEach((t, i) => { if (count.get(t) > 1) out.add(i); });
  return out;
}

// The token labels again, in an HTML strip that stays at the top of the viewport (position:
// sticky) while the graph is scrolled past; a repeated token (or every one, with "position
// numbers" on) carries its position.
function columnBar(st, shown, colW) {
  const box = st.colbar;
  box.replaceChildren();
  const controls = st.root.querySelector(".ltt-controls"); // sticky too: the labels go just under it
  box.style.top = controls && getComputedStyle(controls).position === "sticky" ? `${controls.offsetHeight}px` : "0px";
  const dx = st.graphBox.offsetLeft - box.offsetLeft;
  const rep = repeatedTokens(st.graph.tokens);
  const every = st.numBox && st.numBox.checked;
  const targets = new Set(st.graph.settings.targets || []);
  const placed = []; // [right edge, label, is a target] of the labels kept, left to right
  for (const [t, x] of shown) {
    let text = visibleToken(st.graph.tokens[t]);
    const num = every || rep.has(t) ? `${t}:` : "";
    const room = Math.max(num.length + 2, Math.floor(Math.max(colW, 14) / 6.5));
    if ((num + text).length > room) text = text.slice(0, Math.max(1, room - num.length - 1)) + "…";
    // labels never overlap: one that would is left out (a target's pushes an ordinary one out)
    const half = ((num + text).length * 6.7) / 2, isTarget = targets.has(t);
    const last = () => placed[placed.length - 1];
    while (isTarget && placed.length && !last()[2] && last()[0] + 4 > dx + x - half) placed.pop()[1].remove();
    if (!isTarget && placed.length && last()[0] + 4 > dx + x - half) continue;
    const lab = document.createElement("span");
    lab.className = `ltt-colbar-label${targets.has(t) ? " ltt-is-target" : ""}`;
    lab.dataset.token = String(t);
    lab.textContent = num + text;
    lab.title = `token ${t} ${quoted(st.graph.tokens[t])}`;
    lab.style.left = `${(dx + x).toFixed(1)}px`;
    box.append(lab);
    placed.push([dx + x + half, lab, isTarget]);
  }
  if (st.pin) st.pin();
}

// Where position: sticky cannot hold (the nearest box that clips does not scroll, as in
// JupyterLab's output area), the controls, the column bar and the side panel are moved by hand
// to the top of the box that does scroll, so the token labels stay in view whatever the scroll.
// Returns the function that places them (on every scroll, from the capture phase of any element's).
export function pinHeaders(st) {
  const controls = st.root.querySelector(".ltt-controls");
  return () => {
    const scroller = brokenSticky(st.root);
    if (!scroller) { controls.style.transform = st.colbar.style.transform = st.panel.style.transform = ""; return; }
    const top = scroller === document.scrollingElement ? 0 : Math.max(0, scroller.getBoundingClientRect().top);
    const over = top - st.root.getBoundingClientRect().top; // how far the view's top has gone past it
    const ch = controls.offsetHeight, bh = st.colbar.offsetHeight, H = st.root.offsetHeight;
    const cT = controls.offsetTop, bT = st.colbar.offsetTop; // where they sit in the view
    const clamp = (v, hi) => Math.max(0, Math.min(v, hi)); // never past the view's end
    controls.style.transform = `translateY(${clamp(over - cT, H - cT - ch - bh)}px)`;
    st.colbar.style.transform = `translateY(${clamp(over + ch - bT, H - bT - bh)}px)`;
    // the side panel beside the graph follows too, under the bars, within the graph's row
    const main = st.panel.parentElement, po = st.panel.offsetParent;
    const rel = (el) => el.getBoundingClientRect().top - st.root.getBoundingClientRect().top; // untransformed boxes
    const pT = (po === st.root || !po ? 0 : rel(po)) + st.panel.offsetTop; // where the panel sits in the view
    st.panel.style.transform = getComputedStyle(st.panel).position !== "sticky" ? ""
      : `translateY(${clamp(over + ch + bh - pT, rel(main) + main.offsetHeight - pT - st.panel.offsetHeight)}px)`;
  };
}

/** The box that scrolls the view when sticky positioning cannot follow it, else null: sticky
 *  holds to the nearest ancestor that clips, so it works when that one is the one that scrolls
 *  (or none clips and the document scrolls). */
function brokenSticky(root) {
  let clip = null;
  for (let e = root.parentElement; e && e !== document.body && e !== document.documentElement; e = e.parentElement) {
    const cs = getComputedStyle(e);
    const clips = ![cs.overflowX, cs.overflowY].every((o) => o === "visible" || o === "clip");
    if (/(auto|scroll)/.test(cs.overflowY) && e.scrollHeight > e.clientHeight) return clip ? e : null;
    if (clips && !clip) clip = e;
  }
  return clip ? document.scrollingElement : null;
}
