// ltt graph view: a trace's pruned contribution graph as a token x layer grid, its controls and its
// panels (top tokens, heads, neurons), with anywidget's render({ model, el }) contract. The parts
// live in page/*.js (layout, state, drawing, axes, interaction, maps, panels, controls, view); the
// Jupyter widget, ltt serve and the report load them joined into one module, graph.js, joined in
// memory by ltt/widget/bundle.py (no build step). Token strings only ever reach the page as textContent.

import { MARGIN } from "./layout.js";
import { h, createState } from "./state.js";
import { axes, marks_, highlight, pinHeaders } from "./axes.js";
import { draw, fit } from "./drawing.js";
import { wireGraph } from "./interaction.js";
import { renderPanel } from "./panels.js";
import { buildPage, facts_, prompts_, controls_, wireControls, showError, faith_ } from "./controls.js";

/** anywidget's render(). `promptBar: false` leaves the view's own prompt box, BOS and Run out:
 *  ltt serve's toolbar holds the page's one prompt bar (its picker of traced prompts stays). */
export function render({ model, el, promptBar = true }) {
  const st = createState(model, el);
  st.ownPrompt = promptBar;
  st.root = h("div", { class: "ltt-root" });
  el.append(st.root);
  buildPage(st);
  wireGraph(st);
  wireControls(st);

  // -- model events
  const onGraph = () => {
    const first = !st.lay;
    const prevT = st.graph ? st.graph.tokens.length : -1;
    const prevW = st.lay ? st.lay.width : -1;
    dropStale(st);
    draw(st); controls_(st); facts_(st); faith_(st);
    // a new prompt, or columns that moved (a compact layout of other targets): fit again
    if (first || st.graph.tokens.length !== prevT || Math.abs(st.lay.width - prevW) > 1e-6) fit(st);
  };
  st.on("change:graph", onGraph);
  for (const name of ["threshold", "renormalize", "normalize", "targets", "slider"]) st.on(`change:${name}`, () => controls_(st));
  st.on("change:selection", () => highlight(st));
  st.on("change:marks", () => { marks_(st); highlight(st); });
  st.on("change:panel", () => renderPanel(st));
  st.on("change:panel_maps", () => renderPanel(st));
  st.on("change:model_info", () => facts_(st));
  for (const name of ["prompts", "prompt_index", "live"]) st.on(`change:${name}`, () => prompts_(st));
  st.on("change:status", () => { st.status.textContent = st.model.get("status") || ""; st.root.classList.toggle("ltt-busy", !!st.model.get("status")); });
  st.on("change:error", () => showError(st, st.model.get("error")));
  st.on("change:notice", () => { st.notice.textContent = st.model.get("notice") || ""; st.notice.style.display = st.model.get("notice") ? "block" : "none"; });
  // the faithfulness figure next to the threshold (controls.js faith_)
  for (const k of ["faithfulness", "faithfulness_state", "faithfulness_for", "targets", "counterfactual", "live"]) st.on(`change:${k}`, () => faith_(st));
  st.on("change:outputs", () => axes(st));
  faith_(st);

  const ro = typeof ResizeObserver !== "undefined" ? new ResizeObserver(() => {
    const w = Math.floor(st.graphBox.clientWidth);
    if (w > 0 && Math.abs(w - st.size.w) > 2) { st.size.w = w; if (st.graph) fit(st); }
  }) : null;
  if (ro) ro.observe(st.graphBox);

  st.size.w = Math.max(320, Math.floor(el.clientWidth * 0.66) || 640);
  const L0 = (st.model.get("graph") || {}).n_layers || 12;
  st.size.h = Math.max(380, Math.min(720, L0 * 22 + MARGIN.top + MARGIN.bottom + 40));
  facts_(st);
  prompts_(st);
  draw(st);
  controls_(st);
  renderPanel(st);
  showError(st, st.model.get("error"));
  st.notice.textContent = st.model.get("notice") || "";
  st.notice.style.display = st.model.get("notice") ? "block" : "none";
  requestAnimationFrame(() => { const w = Math.floor(st.graphBox.clientWidth); if (w > 0) st.size.w = w; fit(st); });
  // the token labels in view whatever scrolls (any element's scroll reaches a capturing listener)
  st.pin = pinHeaders(st); // also placed again after every redraw of the labels (axes.js)
  let pinFrame = 0;
  const onScroll = () => { if (!pinFrame) pinFrame = requestAnimationFrame(() => { pinFrame = 0; st.pin(); }); };
  document.addEventListener("scroll", onScroll, { capture: true, passive: true });
  // the reader switches the scheme: the accents and the maps' pixels follow at once
  const dark = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  const onScheme = () => { draw(st); renderPanel(st); };
  if (dark && dark.addEventListener) dark.addEventListener("change", onScheme);

  return () => {
    for (const [ev, cb] of st.listeners) st.model.off(ev, cb);
    document.removeEventListener("scroll", onScroll, { capture: true });
    if (dark && dark.removeEventListener) dark.removeEventListener("change", onScheme);
    if (ro) ro.disconnect();
    st.root.remove();
  };
}

/** A selection the new graph no longer holds (nor marks) is cleared, with its panel: the side
 *  panel never keeps an edge of an old graph. (A live kernel does the same on its side.) */
function dropStale(st) {
  const g = st.model.get("graph") || {};
  const sel = st.model.get("selection") || {};
  if (!sel.node && !sel.edge) return;
  const marks = st.model.get("marks") || {};
  const here = sel.node ? (g.nodes || []).some((n) => n.name === sel.node)
    : (g.edges || []).some((e) => `${e.source}|${e.target}|${e.kind}` === sel.edge) || sel.edge in marks;
  if (!here) st.commit({ selection: {} });
}

export default { render };
