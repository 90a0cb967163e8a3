// The page's header and controls: model facts, prompt bar, threshold, targets, focus; their wiring.

import { MARK_LABEL, edgeStyle, parseTargets } from "./layout.js";
import { h, s, quoted } from "./state.js";
import { axes } from "./axes.js";
import { draw, fit } from "./drawing.js";

/** The header, controls and main area's elements, made once and kept on the view state. */
export function buildPage(st) {
  // -- header: model facts, prompt box and picker, notices
  st.facts = h("div", { class: "ltt-facts" });
  st.promptInput = h("input", { class: "ltt-prompt", type: "text", placeholder: "a new prompt…", "aria-label": "prompt" });
  st.runBtn = h("button", { class: "ltt-run", text: "Run" });
  // BOS for a new prompt: indeterminate = the tokenizer's choice; checked/unchecked force it.
  st.bosBox = h("input", { class: "ltt-bos", type: "checkbox", "aria-label": "prepend BOS" });
  st.bosBox.indeterminate = true;
  st.bosLabel = h("label", { class: "ltt-bos-label", title: "BOS first (dash: as the tokenizer does)" }, st.bosBox, "BOS");
  st.picker = h("select", { class: "ltt-picker", "aria-label": "prompt picker", title: "the prompts traced in this view: pick one to show it again" });
  st.status = h("span", { class: "ltt-status" });
  st.notice = h("div", { class: "ltt-notice" });
  st.errorBox = h("div", { class: "ltt-error" });
  st.root.append(h("div", { class: "ltt-header" }, st.facts, h("div", { class: "ltt-promptbar" }, st.picker,
    ...(st.ownPrompt === false ? [] : [st.promptInput, st.bosLabel, st.runBtn]), st.status)), st.notice, st.errorBox);

  // -- controls
  st.slider = h("input", { class: "ltt-threshold-slider", type: "range", step: "0.005", "aria-label": "threshold" });
  st.thrBox = h("input", { class: "ltt-threshold", type: "number", step: "0.001", min: "0", max: "0.999", "aria-label": "threshold value" });
  st.renormBox = h("input", { class: "ltt-renormalize", type: "checkbox" });
  st.normBox = h("input", { class: "ltt-normalize", type: "checkbox" });
  st.targetBox = h("input", { class: "ltt-targets", type: "text", size: "10", "aria-label": "targets", title: "token positions, e.g. -1, 5 (negative counts from the end)" });
  st.fromBox = h("input", { class: "ltt-from", type: "number", min: "0", "aria-label": "focus from" });
  st.toBox = h("input", { class: "ltt-to", type: "number", min: "0", "aria-label": "focus to" });
  st.focusBtn = h("button", { class: "ltt-focus", text: "Focus" });
  st.fitBtn = h("button", { class: "ltt-fit", text: "Fit" });
  st.allBox = h("input", { class: "ltt-all-positions", type: "checkbox" });
  st.numBox = h("input", { class: "ltt-numbers", type: "checkbox" });
  st.cfBox = h("input", { class: "ltt-counterfactual", type: "text", size: "28", "aria-label": "counterfactual prompt",
    placeholder: "counterfactual prompt (patching)…", title: "a prompt of the same token length to patch removed edges from; empty: zero ablation" });
  st.faith = h("span", { class: "ltt-faithfulness", role: "status" });
  st.root.append(
    h("div", { class: "ltt-controls" },
      h("label", { class: "ltt-ctl" }, h("span", { text: "threshold" }), st.slider, st.thrBox),
      h("span", { class: "ltt-ctl ltt-faith-ctl" }, h("span", { text: "faithfulness" }), st.faith, st.cfBox),
      h("label", { class: "ltt-ctl" }, st.renormBox, h("span", { text: "renormalize" })),
      h("label", { class: "ltt-ctl", title: "apply the final norm before unembedding in the top-token panels" }, st.normBox, h("span", { text: "normalize before unembedding" })),
      h("label", { class: "ltt-ctl" }, h("span", { text: "targets" }), st.targetBox),
      h("span", { class: "ltt-ctl" }, h("span", { text: "tokens" }), st.fromBox, h("span", { text: "–" }), st.toBox, st.focusBtn, st.fitBtn),
      h("label", { class: "ltt-ctl", title: "number every token label (repeated tokens are always numbered)" }, st.numBox, h("span", { text: "position numbers" })),
      h("label", { class: "ltt-ctl", title: "give every token a full column, the ones without nodes greyed (long prompts show only the columns that carry nodes)" }, st.allBox, h("span", { text: "all positions" }))),
  );

  // -- main: graph and side panel
  st.graphBox = h("div", { class: "ltt-graph" });
  st.panel = h("div", { class: "ltt-panel" });
  st.tooltip = h("div", { class: "ltt-tooltip" });
  st.colbar = h("div", { class: "ltt-colbar", "aria-hidden": "true" });
  st.root.append(st.colbar, h("div", { class: "ltt-main" }, st.graphBox, st.panel), st.tooltip, legend());

  st.svg = s("svg", { class: "ltt-svg", role: "group" });
  st.plot = s("svg", { class: "ltt-plot", overflow: "hidden" });
  st.bg = s("rect", { class: "ltt-bg", x: 0, y: 0, width: "100%", height: "100%" });
  st.content = s("g", { class: "ltt-content" });
  st.gBands = s("g", { class: "ltt-bands" });
  st.gEdges = s("g", { class: "ltt-edges" });
  st.gMarks = s("g", { class: "ltt-marks" });
  st.gHi = s("g", { class: "ltt-highlight" });
  st.gNodes = s("g", { class: "ltt-nodes" });
  st.content.append(st.gBands, st.gEdges, st.gMarks, st.gHi, st.gNodes);
  st.plot.append(st.bg, st.content);
  st.axisX = s("g", { class: "ltt-axis-x" });
  st.axisY = s("g", { class: "ltt-axis-y" });
  st.axisTop = s("g", { class: "ltt-axis-top" });
  st.svg.append(st.plot, st.axisX, st.axisY, st.axisTop);
  st.canvas = h("canvas", { class: "ltt-canvas" });
  st.graphBox.append(st.canvas, st.svg);
}

export function facts_(st) {
  const info = st.model.get("model_info") || {};
  const g = st.model.get("graph") || {};
  st.facts.replaceChildren();
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
    st.facts.append(h("span", { class: "ltt-fact" }, h("b", { text: k }), " ", String(v)));
  }
  if (st.model.get("live") === false) st.facts.append(h("span", { class: "ltt-offline", text: "offline report" }));
}

export function prompts_(st) {
  const list = st.model.get("prompts") || [];
  st.picker.replaceChildren();
  list.forEach((p, i) => st.picker.append(h("option", { value: String(i), text: p.length > 60 ? p.slice(0, 57) + "…" : p })));
  st.picker.value = String(st.model.get("prompt_index") || 0);
  st.picker.style.display = list.length > 1 ? "" : "none";
  const live = st.model.get("live") !== false;
  st.promptInput.disabled = !live;
  st.runBtn.disabled = !live;
  st.bosBox.disabled = !live;
  st.promptInput.placeholder = live ? "a new prompt…" : "new prompts need a live kernel";
}

export function controls_(st) {
  const [lo, hi] = st.model.get("slider") || [0.01, 0.1];
  st.slider.min = String(lo);
  st.slider.max = String(hi);
  const thr = Number(st.model.get("threshold"));
  st.slider.value = String(Math.min(hi, Math.max(lo, thr)));
  // a box being edited keeps what the user is typing
  const editing = (box) => box.getRootNode && box.getRootNode().activeElement === box;
  if (!editing(st.thrBox)) st.thrBox.value = String(thr);
  st.renormBox.checked = !!st.model.get("renormalize");
  st.normBox.checked = !!st.model.get("normalize");
  const T = st.graph ? st.graph.tokens.length : 0;
  if (!editing(st.targetBox)) st.targetBox.value = (st.model.get("targets") || []).join(", ");
  st.fromBox.max = st.toBox.max = String(Math.max(0, T - 1));
}


/** Listeners of the controls. */
export function wireControls(st) {
  st.slider.addEventListener("input", () => { st.thrBox.value = st.slider.value; });
  st.slider.addEventListener("change", () => setThreshold(st.slider.value));
  st.thrBox.addEventListener("change", () => setThreshold(st.thrBox.value));
  function setThreshold(v) {
    const x = Number(v);
    if (!(x >= 0 && x < 1)) { showError(st, `threshold must be a number in [0, 1), got ${JSON.stringify(v)}`); controls_(st); return; }
    showError(st, "");
    st.commit({ threshold: x });
  }
  st.renormBox.addEventListener("change", () => st.commit({ renormalize: st.renormBox.checked }));
  st.normBox.addEventListener("change", () => st.commit({ normalize: st.normBox.checked }));
  st.targetBox.addEventListener("change", () => {
    try {
      const tg = parseTargets(st.targetBox.value, st.graph ? st.graph.tokens.length : 0);
      showError(st, "");
      st.commit({ targets: tg });
    } catch (err) { showError(st, err.message); controls_(st); }
  });
  st.focusBtn.addEventListener("click", () => fit(st, Number(st.fromBox.value || 0), st.toBox.value === "" ? null : Number(st.toBox.value)));
  st.fitBtn.addEventListener("click", () => { st.fromBox.value = ""; st.toBox.value = ""; fit(st); });
  const run = () => {
    const p = st.promptInput.value;
    if (!p.trim()) { showError(st, "prompt: type a prompt first"); return; }
    showError(st, "");
    st.model.send({ type: "run", prompt: p, bos: st.bosBox.indeterminate ? null : st.bosBox.checked });
  };
  st.runBtn.addEventListener("click", run);
  st.promptInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") run(); });
  st.picker.addEventListener("change", () => st.commit({ prompt_index: Number(st.picker.value) }));
  st.allBox.addEventListener("change", () => { draw(st); fit(st); });
  st.numBox.addEventListener("change", () => axes(st));
  st.cfBox.addEventListener("change", () => st.commit({ counterfactual: st.cfBox.value }));
}

export function showError(st, msg) {
  st.errorBox.textContent = msg || "";
  st.errorBox.style.display = msg ? "block" : "none";
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

/** The faithfulness figure next to the threshold: the kernel's line, marked stale while it is
 *  recomputed for the graph shown (never shown as current), and naming the targets it holds for
 *  when they are not the selected ones (the offline report's figure is of the exported graph). */
export function faith_(st) {
  const line = st.model.get("faithfulness") || "";
  const state = st.model.get("faithfulness_state") || "";
  const holds = st.model.get("faithfulness_for") || [];
  const now = (st.model.get("targets") || []).slice().sort((a, b) => a - b);
  const other = holds.length > 0 && holds.slice().sort((a, b) => a - b).join(",") !== now.join(",");
  const toks = (st.graph && st.graph.tokens) || [];
  const stale = state === "computing";
  st.faith.classList.toggle("ltt-stale", stale || other);
  st.faith.classList.toggle("ltt-failed", state === "failed");
  st.faith.dataset.state = stale ? "stale" : other ? "other-targets" : state || "none";
  let text = line || (stale ? "computing…" : "—");
  if (stale && line) text = `stale (recomputing for this graph) · ${line}`;
  else if (other) text = `${line} — holds for target${holds.length > 1 ? "s" : ""} ${holds.map((t) => `${t} ${quoted(toks[t] ?? "")}`).join(", ")}, not the selected one${now.length > 1 ? "s" : ""}`;
  st.faith.textContent = text;
  st.faith.title = text; // the whole line, where the controls' row cuts it short
  if (document.activeElement !== st.cfBox) st.cfBox.value = st.model.get("counterfactual") || "";
  st.cfBox.style.display = st.model.get("live") === false ? "none" : "";
}
