// Importance heatmap of a prompt set (ltt.widget.importance): layers x heads plus an FFN strip;
// clicking a cell lists the prompts where that component mattered most, clicking a prompt asks
// the kernel to re-trace it and show its graph. Plain ES module, no build step, no framework.

export const METRICS = {
  frequency: "on the route (fraction of prompts)",
  mean_share: "mean share when on the route",
  mean: "mean share over all prompts",
};

/** Bytes as they come from a model (DataView, ArrayBuffer, typed array) to a Float32Array. */
export function toFloat32(bytes) {
  if (!bytes) return new Float32Array(0);
  if (bytes instanceof ArrayBuffer) return new Float32Array(bytes.slice(0, bytes.byteLength & ~3));
  const u8 = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return new Float32Array(u8.slice().buffer, 0, u8.length >> 2);
}

/** White to blue for v in [0, max]; max <= 0 gives white. */
export function cellColour(v, max) {
  const x = max > 0 && Number.isFinite(v) ? Math.min(Math.max(v / max, 0), 1) : 0;
  const mix = (a, b) => Math.round(a + (b - a) * x);
  return `rgb(${mix(255, 33)}, ${mix(255, 102)}, ${mix(255, 172)})`;
}

/** Readable text for a cell's value. */
export function formatValue(v) {
  if (!Number.isFinite(v)) return "-";
  return v === 0 ? "0" : v >= 0.01 ? v.toFixed(3) : v.toExponential(1);
}

/** The largest value of a Float32Array (0 when empty). */
export function maxOf(a) {
  let m = 0;
  for (const v of a) if (v > m) m = v;
  return m;
}

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(e.style, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

export function render({ model, el }) {
  const root = h("div", { class: "ltt-importance", style: { font: "12px sans-serif", display: "flex", gap: "16px" } });
  const left = h("div");
  const right = h("div", { style: { minWidth: "260px", maxWidth: "520px" } });
  root.append(left, right);
  el.append(root);

  function drawGrid() {
    left.replaceChildren();
    const info = model.get("info") || {};
    const [L, H] = model.get("heads_shape") || [0, 0];
    const heads = toFloat32(model.get("heads"));
    const ffn = toFloat32(model.get("ffn"));
    const max = Math.max(maxOf(heads), maxOf(ffn));
    const select = h("select", {
      onchange: (ev) => { model.set("metric", ev.target.value); model.save_changes(); },
    });
    for (const [k, label] of Object.entries(METRICS)) {
      const o = h("option", { value: k }, label);
      if (k === model.get("metric")) o.selected = true;
      select.append(o);
    }
    left.append(h("div", { style: { marginBottom: "6px" } },
      `${info.model || "model"}: ${info.prompts ?? 0} prompts `, select, ` (max ${formatValue(max)})`));
    const grid = h("div", {
      style: { display: "grid", gridTemplateColumns: `3em repeat(${H}, 18px) 8px 28px`, gap: "1px" },
    });
    grid.append(h("div"));
    for (let j = 0; j < H; j++) grid.append(h("div", { style: { textAlign: "center" } }, String(j)));
    grid.append(h("div"), h("div", { style: { textAlign: "center" } }, "FFN"));
    const sel = model.get("selection") || {};
    const cell = (v, layer, head, title) => h("div", {
      title,
      style: {
        background: cellColour(v, max), height: "14px", cursor: "pointer",
        outline: sel.layer === layer && (sel.head ?? null) === head ? "2px solid #d4a017" : "none",
      },
      onclick: () => { model.set("selection", { layer, head }); model.save_changes(); },
    });
    for (let l = 0; l < L; l++) {
      grid.append(h("div", { style: { textAlign: "right", paddingRight: "4px" } }, `L${l}`));
      for (let j = 0; j < H; j++) {
        const v = heads[l * H + j];
        grid.append(cell(v, l, j, `layer ${l} head ${j}: ${formatValue(v)}`));
      }
      grid.append(h("div"));
      grid.append(cell(ffn[l], l, null, `layer ${l} FFN: ${formatValue(ffn[l])}`));
    }
    left.append(grid);
  }

  function drawList() {
    right.replaceChildren();
    const sel = model.get("selection") || {};
    const info = model.get("info") || {};
    const err = model.get("error");
    const status = model.get("status");
    if (err) right.append(h("div", { style: { color: "#cf222e" } }, err));
    if (status) right.append(h("div", { style: { color: "#57606a" } }, status));
    if (sel.layer === undefined) {
      right.append(h("div", {}, "Click a cell to list the prompts where that component mattered most."));
      return;
    }
    const name = sel.head === null || sel.head === undefined ? `layer ${sel.layer} FFN` : `layer ${sel.layer} head ${sel.head}`;
    right.append(h("div", { style: { fontWeight: "bold", marginBottom: "4px" } }, name));
    const top = model.get("top") || [];
    if (!top.length) right.append(h("div", {}, "Not on the route of any prompt."));
    const list = h("ol", { style: { paddingLeft: "1.5em", margin: 0 } });
    for (const row of top) {
      const pred = row.prediction ? ` \u2192 ${JSON.stringify(row.prediction.token)}` : "";
      const item = h("li", { style: { marginBottom: "3px" } },
        h("span", { style: { fontFamily: "monospace" } }, formatValue(row.share)), " ",
        h("span", {}, row.prompt), h("span", { style: { color: "#57606a" } }, pred));
      if (info.can_open) {
        item.append(" ", h("button", {
          style: { fontSize: "11px" },
          onclick: () => model.send({ type: "open", index: row.index }),
        }, "graph"));
      }
      list.append(item);
    }
    right.append(list);
  }

  drawGrid();
  drawList();
  const listeners = [
    ["change:heads", drawGrid], ["change:ffn", drawGrid], ["change:selection", drawGrid],
    ["change:selection", drawList], ["change:top", drawList], ["change:status", drawList], ["change:error", drawList],
  ].map(([ev, draw]) => [ev, () => draw()]);
  for (const [ev, cb] of listeners) model.on(ev, cb);
  return () => {
    for (const [ev, cb] of listeners) model.off(ev, cb);
    root.remove();
  };
}

export default { render };
