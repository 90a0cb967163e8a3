// The side panel: what the selected state, edge or FFN block holds (top tokens, heads, neurons).

import { KIND_LABEL, parseNode, visibleToken, toFloat32 } from "./layout.js";
import { h, fmt, quoted, scheme } from "./state.js";
import { heatmap, bar, cssRGB } from "./maps.js";

export function renderPanel(st) {
  scheme(st);
  const p = st.model.get("panel") || {};
  st.panel.replaceChildren();
  if (!p.type) {
    st.panel.append(h("div", { class: "ltt-help" },
      h("p", { text: "Click a state (circle) for its top tokens, an attention edge for its heads, an FFN block (square) for its neurons." }),
      h("p", { text: "Drag to pan, wheel to zoom (shift: tokens only, alt: layers only), double-click to fit. Click a marker above the graph to pick the target token; shift-click adds one." })));
    return;
  }
  if (p.type === "state") panelState(st, p);
  else if (p.type === "attention") panelAttention(st, p);
  else if (p.type === "ffn") panelFfn(st, p);
  else if (p.type === "residual") panelResidual(st, p);
  else st.panel.append(h("div", { class: "ltt-panel-note", text: p.message || "" }));
}

export function title(st, text, sub) {
  st.panel.append(h("div", { class: "ltt-panel-title", text }));
  if (sub) st.panel.append(h("div", { class: "ltt-panel-sub", text: sub }));
}

export function tokenTable(st, rows, cols) {
  const table = h("table", { class: "ltt-table" });
  table.append(h("tr", {}, ...cols.map((c) => h("th", { text: c[0] }))));
  for (const r of rows) table.append(h("tr", {}, ...cols.map((c) => c[1](r))));
  return table;
}

export function panelState(st, p) {
  const what = KIND_LABEL[parseNode(p.node).kind];
  title(st, `${p.node} · ${what}`, `layer ${p.layer < 0 ? "emb" : p.layer} · token ${p.position} ${quoted(p.position_token)} · ${p.normalize ? "final norm applied" : "no final norm"}${p.predecessor ? ` · rank change vs ${p.predecessor}` : ""}`);
  st.panel.append(tokenTable(st, p.tokens || [], [
    ["rank", (r) => h("td", { class: "ltt-num", text: String(r.rank) })],
    ["token", (r) => h("td", { class: "ltt-tok", text: visibleToken(r.token) })],
    ["prob", (r) => h("td", { class: "ltt-num" }, bar(st, r.prob, 1, "#2f6fdf"), h("span", { text: fmt(r.prob, 3) }))],
    ["logit", (r) => h("td", { class: "ltt-num", text: fmt(r.logit, 2) })],
    ["Δrank", (r) => h("td", { class: `ltt-num ${r.rank_change > 0 ? "ltt-up" : r.rank_change < 0 ? "ltt-down" : ""}`, text: r.rank_change === null || r.rank_change === undefined ? "" : r.rank_change > 0 ? `▲${r.rank_change}` : r.rank_change < 0 ? `▼${-r.rank_change}` : "=" })],
  ]));
  if (p.block) st.panel.append(effects(st, `what the ${p.block.what} added here promoted (direct effect on the logits)`, p.block));
}


export function effects(st, label, p) {
  const box = h("div", { class: "ltt-effects" });
  box.append(h("div", { class: "ltt-sub", text: label }));
  const col = (name, items, cls) => h("div", { class: `ltt-effect-col ${cls}` }, h("div", { class: "ltt-effect-head", text: name }),
    ...(items || []).map((t) => h("div", { class: "ltt-effect", title: `effect ${fmt(t.effect, 4)}` }, h("span", { class: "ltt-tok", text: visibleToken(t.token) }), h("span", { class: "ltt-num", text: fmt(t.effect, 2) }))));
  box.append(h("div", { class: "ltt-effect-cols" }, col("promoted", p && p.promoted, "ltt-up"), col("suppressed", p && p.suppressed, "ltt-down")));
  return box;
}

export function panelAttention(st, p) {
  const changed = p.raw_weight !== undefined && p.weight !== undefined && Math.abs(p.raw_weight - p.weight) > 5e-7;
  title(st, `attention edge · layer ${p.layer}`, `${p.source_node} ${quoted(p.source_token)} → ${p.target_node} ${quoted(p.target_token)}\nweight ${fmt(p.weight, 4)}${changed ? ` (raw share ${fmt(p.raw_weight, 4)} before renormalisation)` : ""}`);
  const heads = (p.heads || []).slice().sort((a, b) => b.share - a.share || a.head - b.head);
  const max = Math.max(1e-9, ...heads.map((x) => x.share));
  const chart = h("div", { class: "ltt-heads", role: "listbox", "aria-label": "heads by share" });
  for (const x of heads) {
    const selected = x.head === p.head;
    const row = h("div", { class: `ltt-head${selected ? " ltt-head-selected" : ""}`, "data-head": x.head, title: `head ${x.head}: share ${x.share}`,
      tabindex: 0, role: "option", "aria-selected": selected ? "true" : "false", "aria-label": `head ${x.head}, share ${fmt(x.share, 4)}${selected ? ", selected" : ""}` },
      h("span", { class: "ltt-head-mark", text: selected ? "▶" : "" }),
      h("span", { class: "ltt-head-label", text: `h${x.head}` }), bar(st, x.share, max, "var(--ltt-attn)"), h("span", { class: "ltt-num ltt-head-share", text: fmt(x.share, 4) }));
    const choose = () => st.commit({ selection: { ...(st.model.get("selection") || {}), head: x.head } });
    row.addEventListener("click", choose);
    row.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); choose(); } });
    chart.append(row);
  }
  st.panel.append(h("div", { class: "ltt-sub", text: "heads, largest share first (each head's raw share of the target state; click one)" }), chart);
  if (p.head !== undefined && p.head !== null) {
    st.panel.append(h("div", { class: "ltt-sub ltt-head-title", text: `head ${p.head}` }));
    const maps = toFloat32(st.model.get("panel_maps"));
    const shape = st.model.get("panel_maps_shape") || [];
    if (shape.length === 3 && maps.length === shape[0] * shape[1] * shape[2]) {
      const row = h("div", { class: "ltt-maps" });
      const names = p.maps || [];
      for (let i = 0; i < shape[0]; i++) {
        row.append(heatmap(st, maps.subarray(i * shape[1] * shape[2], (i + 1) * shape[1] * shape[2]), shape[1], shape[2], names[i] || `map ${i}`, p.target, p.source, cssRGB(st, i === 0 ? "--ltt-attn" : "--ltt-ffn")));
      }
      st.panel.append(row);
    } else if (st.model.get("live") === false) {
      st.panel.append(h("div", { class: "ltt-panel-note", text: "this head's maps were not exported: they need a live kernel" }));
    }
    if (p.head_view) st.panel.append(effects(st, "this head's output at the target: direct effect on the logits", p.head_view));
    else if (st.model.get("live") === false) st.panel.append(h("div", { class: "ltt-panel-note", text: "this head's promoted tokens need a live kernel" }));
  }
  if (p.block) st.panel.append(effects(st, "the whole attention block at the target", p.block));
}


export function panelFfn(st, p) {
  title(st, `${p.node} · FFN block`, `layer ${p.layer} · token ${p.position} ${quoted(p.position_token)}${p.weight !== undefined ? ` · FFN share ${fmt(p.weight, 4)}` : ""} · residual ${fmt(p.resid_share, 4)} · bias ${fmt(p.bias_share, 4)}`);
  const neurons = p.neurons || [];
  if (p.router) {  // a mixture of experts: the chosen experts, their gates and shares
    const r = p.router;
    const rmax = Math.max(1e-9, ...r.experts.map((e) => e.share));
    const box = h("div", { class: "ltt-router" }, h("div", { class: "ltt-sub", text: `router: ${r.experts.length} of ${r.n_experts} experts${r.shared !== null ? ` · shared ${fmt(r.shared, 4)}` : ""}` }));
    for (const e of r.experts) box.append(h("div", { class: "ltt-neuron-head", "data-expert": e.expert }, h("b", { text: `expert ${e.expert}` }), bar(st, e.share, rmax, "#7b5ea7"), h("span", { class: "ltt-num", text: `share ${fmt(e.share, 4)}` }), h("span", { class: "ltt-num", text: `gate ${fmt(e.gate, 3)}` })));
    st.panel.append(box);
  }
  const max = Math.max(1e-9, ...neurons.map((n) => n.share));
  const list = h("div", { class: "ltt-neurons" });
  for (const n of neurons) {
    const label = n.expert === undefined ? `n${n.neuron}` : `${n.expert === "shared" ? "shared" : `e${n.expert}`}·n${n.local}`;
    const row = h("div", { class: "ltt-neuron", "data-neuron": n.neuron },
      h("div", { class: "ltt-neuron-head" }, h("b", { text: label }), bar(st, n.share, max, "#e8891c"), h("span", { class: "ltt-num", text: `share ${fmt(n.share, 4)}` }), h("span", { class: "ltt-num", text: `act ${fmt(n.activation, 3)}` })),
      h("div", { class: "ltt-neuron-tokens" },
        h("span", { class: "ltt-up", text: "▲ " }), ...(n.promoted || []).map((t) => h("span", { class: "ltt-chip", text: visibleToken(t.token), title: `effect ${fmt(t.effect, 4)}` })),
        h("span", { class: "ltt-down", text: " ▼ " }), ...(n.suppressed || []).map((t) => h("span", { class: "ltt-chip", text: visibleToken(t.token), title: `effect ${fmt(t.effect, 4)}` }))));
    list.append(row);
  }
  st.panel.append(h("div", { class: "ltt-sub", text: "top neurons by share of the FFN output state" }), list);
  if (p.block) st.panel.append(effects(st, "the whole FFN block (direct effect on the logits)", p.block));
}

export function panelResidual(st, p) {
  title(st, `residual edge · layer ${p.layer}`, `${p.source} → ${p.target} · ${p.weight !== undefined ? `weight ${fmt(p.weight, 4)}` : "not in this graph at this threshold"}`);
  st.panel.append(h("div", { class: "ltt-panel-note", text: "The residual stream carried this share of the state unchanged. Click either end for its top tokens." }));
}

