// Interaction with the graph: hit testing, pan, zoom, hover, click to select or pick targets.

import { KIND_LABEL, GRID, parseNode, MARK_LABEL, MARGIN, pointOn } from "./layout.js";
import { h, fmt, quoted, sx, sy } from "./state.js";
import { fit, applyView } from "./drawing.js";

// -- hit testing (batched mode and hover); coordinates in screen px relative to the svg
export function toModel(st, px, py) {
  return [(px - MARGIN.left - st.view.tx) / st.view.kx, (py - MARGIN.top - st.view.ty) / st.view.ky];
}

export function hitNode(st, px, py) {
  let best = null;
  let bd = 8;
  for (const n of st.graph.nodes) {
    const [x, y] = st.lay.pos.get(n.name);
    const d = Math.hypot(sx(st, x) - px, sy(st, y) - py);
    if (d < bd) { bd = d; best = n.name; }
  }
  return best;
}

export function hitEdge(st, px, py) {
  // sample each edge's path in model space; fine for a click, a few ms for 50k edges
  const [mx, my] = toModel(st, px, py);
  const tol = 5;
  let best = null;
  let bd = tol;
  for (const e of st.lay.edges) {
    const a = e.a;
    const b = e.b;
    const xmin = Math.min(a[0], b[0]) - GRID.col * 0.5, xmax = Math.max(a[0], b[0]) + GRID.col * 0.5;
    if (mx < xmin || mx > xmax || my < Math.min(a[1], b[1]) - 2 || my > Math.max(a[1], b[1]) + 2) continue;
    for (let i = 0; i <= 16; i++) {
      const u = i / 16;
      const [x, y] = pointOn(e, a, b, u);
      const d = Math.hypot((x - mx) * st.view.kx, (y - my) * st.view.ky);
      if (d < bd) { bd = d; best = e.key; }
    }
  }
  return best;
}


export function targetOf(st, ev) {
  const t = ev.target;
  if (t && t.dataset) {
    if (t.dataset.node) return { node: t.dataset.node };
    if (t.dataset.edge) return { edge: t.dataset.edge };
  }
  if (st.batched && st.graph) {
    const r = st.svg.getBoundingClientRect();
    const px = ev.clientX - r.left, py = ev.clientY - r.top;
    const n = hitNode(st, px, py);
    if (n) return { node: n };
    const e = hitEdge(st, px, py);
    if (e) return { edge: e };
  }
  return null;
}


export function onDown(st, ev) {
  if (ev.button !== 0) return;
  st.drag = { x: ev.clientX, y: ev.clientY, tx: st.view.tx, ty: st.view.ty, moved: false };
}
export function onMove(st, ev) {
  if (st.drag) {
    const dx = ev.clientX - st.drag.x, dy = ev.clientY - st.drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) st.drag.moved = true;
    if (st.drag.moved) {
      st.view.tx = st.drag.tx + dx;
      st.view.ty = st.drag.ty + dy;
      applyView(st);
      st.tooltip.style.display = "none";
      return;
    }
  }
  if (!st.hoverPending) {
    st.hoverPending = true;
    const e2 = { target: ev.target, clientX: ev.clientX, clientY: ev.clientY };
    requestAnimationFrame(() => { st.hoverPending = false; hover(st, e2); });
  }
}
export function onUp(st, ev) {
  const wasDrag = st.drag && st.drag.moved;
  st.drag = null;
  if (wasDrag) return;
  const out = ev.target && ev.target.dataset && ev.target.dataset.output;
  if (out !== undefined) return pickTarget(st, Number(out), ev.shiftKey || ev.ctrlKey || ev.metaKey);
  const hit = targetOf(st, ev);
  if (hit) select(st, hit);
}
export function onWheel(st, ev) {
  ev.preventDefault();
  const r = st.svg.getBoundingClientRect();
  const px = ev.clientX - r.left - MARGIN.left, py = ev.clientY - r.top - MARGIN.top;
  const f = Math.exp(-ev.deltaY * 0.0015);
  const zx = ev.altKey ? 1 : f;
  const zy = ev.shiftKey ? 1 : f;
  st.view.tx = px - (px - st.view.tx) * zx;
  st.view.ty = py - (py - st.view.ty) * zy;
  st.view.kx *= zx;
  st.view.ky *= zy;
  applyView(st);
}
export function hover(st, ev) {
  if (!st.graph) return;
  const hit = targetOf(st, ev);
  const out = ev.target && ev.target.dataset && ev.target.dataset.output;
  const tok = ev.target && ev.target.dataset && ev.target.dataset.token;
  let lines = null;
  if (out !== undefined || tok !== undefined) {
    const t = Number(out ?? tok);
    const o = (st.model.get("outputs") || [])[t];
    lines = [`token ${t}: ${quoted(st.graph.tokens[t])}`,
      o ? `predicts ${quoted(o.token)} · probability ${Number(o.prob).toFixed(3)}` : null,
      out !== undefined ? "click: target · shift-click: add/remove" : null];
  } else if (hit && hit.node) {
    const n = st.nodeByName.get(hit.node);
    const p = parseNode(hit.node);
    lines = [`${hit.node} · ${KIND_LABEL[p.kind]}`, `layer ${p.layer < 0 ? "emb" : p.layer} · token ${p.token} ${quoted(st.graph.tokens[p.token])}`];
    if (n && n.bias) lines.push(`bias share ${fmt(n.bias, 5)}`);
  } else if (hit && hit.edge) {
    const e = st.byKey.get(hit.edge);
    if (e) {
      const a = parseNode(e.source), b = parseNode(e.target);
      const mark = (st.model.get("marks") || {})[e.key];
      lines = [`${e.kind} edge · layer ${e.layer}`, `${e.source} ${quoted(st.graph.tokens[a.token])} → ${e.target} ${quoted(st.graph.tokens[b.token])}`, `weight ${fmt(e.weight, 6)}`, mark ? `change: ${MARK_LABEL[mark] || mark}` : null];
    }
  }
  if (!lines) { st.tooltip.style.display = "none"; return; }
  st.tooltip.replaceChildren(...lines.filter(Boolean).map((l) => h("div", { text: l })));
  const r = st.root.getBoundingClientRect();
  st.tooltip.style.display = "block";
  st.tooltip.style.left = `${ev.clientX - r.left + 14}px`;
  st.tooltip.style.top = `${ev.clientY - r.top + 12}px`;
}

export function select(st, hit) {
  const cur = st.model.get("selection") || {};
  const sel = hit.edge ? { edge: hit.edge } : { node: hit.node };
  if (hit.edge && cur.edge === hit.edge && Number.isInteger(cur.head)) sel.head = cur.head;
  st.commit({ selection: sel });
}

export function pickTarget(st, t, add) {
  let tg = (st.model.get("targets") || []).slice();
  if (add) {
    tg = tg.includes(t) ? tg.filter((x) => x !== t) : tg.concat([t]);
    if (!tg.length) tg = [t];
  } else tg = [t];
  st.commit({ targets: tg.sort((a, b) => a - b) });
}

/** Pointer and keyboard listeners of the graph's svg. */
export function wireGraph(st) {
  st.svg.addEventListener("pointerdown", (ev) => onDown(st, ev));
  st.svg.addEventListener("pointermove", (ev) => onMove(st, ev));
  st.svg.addEventListener("pointerup", (ev) => onUp(st, ev));
  st.svg.addEventListener("pointerleave", () => { st.tooltip.style.display = "none"; st.drag = null; });
  st.svg.addEventListener("wheel", (ev) => onWheel(st, ev), { passive: false });
  st.svg.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" && ev.key !== " ") return;
    const d = ev.target && ev.target.dataset;
    if (!d) return;
    if (d.output !== undefined) { ev.preventDefault(); pickTarget(st, Number(d.output), ev.shiftKey); }
    else if (d.node) { ev.preventDefault(); select(st, { node: d.node }); }
    else if (d.edge) { ev.preventDefault(); select(st, { edge: d.edge }); }
  });
  st.svg.addEventListener("dblclick", () => fit(st));
}
