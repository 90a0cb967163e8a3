"""The standalone HTML report: one self-contained file with the widget's own front end and data.

:func:`to_html` writes a page that works offline, without a kernel. It inlines the widget's ES
module and stylesheet unchanged and drives ``render()`` with a small in-page model
(``createModelShim`` + ``offlineKernel`` in ``graph.js``). Embedded:

* the pruned graph at the exported threshold in both threshold modes, and for every state the
  renormalize mode reaches, its raw parts at or above that threshold. Moving the threshold
  *up* re-prunes in the page (a JavaScript port of the backward reachability and of the
  renormalize mode), giving the graph ``trace.graph(...)`` gives. A threshold below the
  exported one, or targets outside the exported ones, need a live kernel and the page says so;
* the panels of everything in the exported graphs: top tokens of every state (with and without
  the final norm), every attention edge's head shares with the top heads' promoted tokens and
  heatmaps, every FFN node's top neurons.

Token strings are data, never markup: the JSON sits in a ``<script type="application/json">``
with ``<``, ``>`` and ``&`` escaped, and the page sets them with ``textContent`` only.

>>> import ltt                                                 # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("The capital of France is")   # doctest: +SKIP
>>> ltt.export.to_html(trace, "report.html", threshold=0.04)    # doctest: +SKIP
'report.html'
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any, Sequence

import numpy as np

from ltt import interpret
from ltt.graph import attribute, resolve_targets
from ltt.widget import panels
from ltt.widget import STATIC

__all__ = ["to_html", "report_data", "embed_json"]

_HEADS_AT_ONCE = 256  # head views computed per batch in the report (bounds their maps' memory)


def embed_json(data: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and the
    JavaScript line separators are written as ``\\uXXXX`` escapes, so no ``</script>`` or
    ``<!--`` can appear in it.

    >>> embed_json({"t": "</script><!--"})
    '{"t":"\\\\u003c/script\\\\u003e\\\\u003c!--"}'
    """
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _attention_states(graph: dict[str, Any], parallel: list[bool]) -> tuple[set, set]:
    """(l, t) of the attention states (A, or I of a parallel layer) and of the sequential FFN
    states (I) in a graph."""
    attn, ffn = set(), set()
    for n in graph["nodes"]:
        k, l, t = n["kind"], n["layer"], n["token"]
        if k == "A" or (k == "I" and parallel[l]):
            attn.add((l, t))
        elif k == "I":
            ffn.add((l, t))
    return attn, ffn


def _parts(trace: Any, graph: dict[str, Any], threshold: float, norm: int) -> dict[str, Any]:
    """Raw parts of every state of the renormalize-mode graph, enough to renormalize and prune
    at any higher threshold: the head parts >= threshold (and the largest one) in (head, source)
    order, and the single parts (residual, bias, FFN of a parallel layer)."""
    full = attribute(trace, norm)
    par = [bool(p) for p in full.parallel]
    attn_states, ffn_states = _attention_states(graph, par)
    out_attn: dict[str, Any] = {}
    sparse = threshold >= full.floor
    for l, t in sorted(attn_states):
        if sparse:  # the trace's parts above the floor (and each row's largest), (head, source) order
            p = full.parts[l]
            lo, hi = p.indptr[t], p.indptr[t + 1]
            v = p.values[lo:hi]
            keep = v >= threshold
            keep[int(np.argmax(v))] = True
            ks, ss, vs = p.heads[lo:hi][keep], p.sources[lo:hi][keep], v[keep]
        else:
            h = full.heads[l, :, t, : t + 1]  # [H, t+1]
            keep = h >= threshold
            keep[np.unravel_index(int(np.argmax(h)), h.shape)] = True
            ks, ss = np.nonzero(keep)  # row-major: (head, source) order
            vs = h[ks, ss]
        single = [float(full.attn_resid[l, t]), float(full.attn_bias[l, t])]
        if par[l]:
            single.append(float(full.ffn[l, t]))
        out_attn[f"{l},{t}"] = {
            "heads": [[int(s), int(k), float(v)] for k, s, v in zip(ks.tolist(), ss.tolist(), vs.tolist())],
            "single": single,
        }
    out_ffn = {f"{l},{t}": [float(full.ffn[l, t]), float(full.ffn_resid[l, t])] for l, t in sorted(ffn_states)}
    return {"attn": out_attn, "ffn": out_ffn}


def report_data(
    trace: Any,
    threshold: float = 0.04,
    renormalize: bool = True,
    targets: Sequence[int] | int | str | None = None,
    normalize: bool = True,
    k: int = 10,
    heads_per_edge: int = 3,
    max_map_bytes: int = 32 << 20,
    slider: Sequence[float] = (0.01, 0.10),
    with_panels: bool = True,
) -> dict[str, Any]:
    """Everything the report embeds, as plain data (see the module docstring). With
    ``with_panels=False`` (or a trace without a model) only the graphs are embedded."""
    tgt = resolve_targets(targets, len(trace.token_ids))
    g_renorm = trace.graph(threshold=threshold, renormalize=True, targets=tgt)
    g_raw = trace.graph(threshold=threshold, renormalize=False, targets=tgt)
    graphs = {"renorm": panels.graph_payload(trace, g_renorm), "raw": panels.graph_payload(trace, g_raw)}
    threshold = float(g_renorm.threshold)
    T = len(trace.token_ids)
    store: dict[str, Any] = {
        "exported": {"threshold": threshold, "targets": tgt, "renormalize": bool(renormalize)},
        "n_layers": len(trace.layers),
        "parallel": graphs["renorm"]["parallel"],
        "graphs": graphs,
        "parts": _parts(trace, graphs["renorm"], threshold, g_renorm.norm),
        "panels": {},
        "maps": {},
        "map_shape": [2, T, T],
    }
    P, maps = store["panels"], store["maps"]
    map_budget = int(max_map_bytes)
    nodes: dict[str, dict] = {}
    edges: dict[str, dict] = {}
    for g in graphs.values():
        for n in g["nodes"]:
            nodes.setdefault(n["name"], n)
        for e in g["edges"]:
            edges.setdefault(f"{e['source']}|{e['target']}|{e['kind']}", e)
    ffn_weight = {e["source"]: e["weight"] for e in edges.values() if e["kind"] == "ffn" and e["source"].startswith("M")}
    if not with_panels or getattr(trace, "model", None) is None:
        nodes, edges = {}, {}
    # Every panel's vocabulary projections are batched (interpret's *_many functions, the same
    # answers as single clicks): one logit lens per norm setting over all the states, one
    # projection of the FFN nodes' neurons and blocks, one of the attention blocks, one of the
    # heads. The panels keep the order in which they were filled one by one.
    ffn_nodes = [name for name, n in nodes.items() if n["kind"] == "M"]
    states = [name for name, n in nodes.items() if n["kind"] != "M"]
    ffn = iter(panels.ffn_panels(trace, ffn_nodes, [ffn_weight.get(name) for name in ffn_nodes], k=k))
    lens = {flag: iter(panels.state_panels(trace, states, normalize=bool(flag), k=k)) for flag in (1, 0)}
    for name, n in nodes.items():
        if n["kind"] == "M":
            P[f"ffn:{name}"] = next(ffn)
        else:
            for norm_flag in (1, 0):
                P[f"state:{name}:{norm_flag}"] = next(lens[norm_flag])
    targets = {key: panels.parse_node(panels.parse_edge(key)[1])[1:] for key, e in edges.items()
               if e["kind"] == "attention"}  # edge -> (layer, target token)
    where = sorted(set(targets.values()))
    blocks = dict(zip(where, interpret.promoted_many(trace, [(l, t, "attn") for l, t in where], k=k)))
    wanted: list[tuple[int, int, int]] = []  # (layer, head, target) of the head views, in order
    for key, e in edges.items():
        if e["kind"] == "residual":
            P[f"edge:{key}"] = panels.residual_panel(key, e["weight"])
        elif e["kind"] == "attention":
            layer, t = targets[key]
            panel, _ = panels.attention_panel(trace, key, e["weight"], k=k, with_head=False,
                                              block=blocks[(layer, t)])
            P[f"edge:{key}"] = panel
            for hs in panel["heads"][: max(1, heads_per_edge)]:
                hkey = f"hv:{layer}:{hs['head']}:{t}"
                if hkey not in P:
                    P[hkey] = None  # filled below, in this order
                    wanted.append((layer, hs["head"], t))
    for i in range(0, len(wanted), _HEADS_AT_ONCE):  # a few hundred [2, T, T] maps at a time
        some = wanted[i : i + _HEADS_AT_ONCE]
        for (layer, head, t), (view, m) in zip(some, panels.head_views(trace, some, k)):
            P[f"hv:{layer}:{head}:{t}"] = view
            mkey = f"{layer}:{head}"
            if mkey not in maps and m.nbytes <= map_budget:
                maps[mkey] = _b64(m)
                map_budget -= m.nbytes
    info = panels.model_info(trace, graphs["renorm"])
    prompt = str(getattr(trace, "prompt", "")) or "".join(trace.tokens)
    store["state"] = {
        "graph": graphs["renorm"] if renormalize else graphs["raw"],
        "threshold": threshold, "renormalize": bool(renormalize), "normalize": bool(normalize),
        "targets": tgt, "selection": {}, "panel": {}, "panel_maps": "", "panel_maps_shape": [],
        "prompts": [prompt], "prompt_index": 0, "model_info": info, "status": "", "error": "",
        "notice": "", "live": False, "slider": [float(slider[0]), float(slider[1])],
    }
    from ltt.faithfulness import report_line  # the exported graph's check, one batched rerun

    store["state"]["faithfulness"] = report_line(trace, g_renorm if renormalize else g_raw)
    return store


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ltt">
<title>{title}</title>
<style>
body {{ margin: 16px; background: #fafafa; }}
.ltt-report-title {{ font: 600 16px system-ui, sans-serif; margin: 0 0 4px; color: #1f2937; }}
.ltt-report-prompt {{ font: 13px ui-monospace, Menlo, Consolas, monospace; color: #374151; margin: 0 0 10px; white-space: pre-wrap; }}
{css}
</style>
</head>
<body>
<div class="ltt-report-title">{heading}</div>
<div class="ltt-report-prompt" id="ltt-prompt"></div>
<div id="ltt-app"></div>
<script type="application/json" id="ltt-data">{data}</script>
<script type="module">
{js}
// --- report bootstrap: the same render() as the widget, driven by the embedded data ---
const store = JSON.parse(document.getElementById("ltt-data").textContent);
document.getElementById("ltt-prompt").textContent = store.state.prompts[0];
const model = createModelShim(store.state, offlineKernel(store));
render({{ model, el: document.getElementById("ltt-app") }});
window.__ltt = {{ model, store }};
</script>
</body>
</html>
"""


def _inline_js(text: str) -> str:
    # The module goes inside <script>: no "</script" or "<!--" may appear in it.
    out = text.replace("</", "<\\/").replace("<!--", "<\\!--")
    return out


def to_html(
    trace: Any,
    path: str | os.PathLike | None = None,
    threshold: float = 0.04,
    renormalize: bool = True,
    targets: Sequence[int] | int | str | None = None,
    normalize: bool = True,
    k: int = 10,
    heads_per_edge: int = 3,
    max_map_bytes: int = 32 << 20,
    title: str | None = None,
    with_panels: bool = True,
) -> str:
    """Write the standalone report of ``trace`` to ``path`` and return the path (with
    ``path=None``, return the HTML text instead). ``heads_per_edge`` heads of each attention
    edge get their promoted tokens and heatmaps embedded (within ``max_map_bytes``); with
    ``with_panels=False`` only the graph is embedded (panels then need a live kernel).

    >>> to_html(trace, "report.html", threshold=0.05, targets=[-1])   # doctest: +SKIP
    'report.html'
    """
    store = report_data(trace, threshold, renormalize, targets, normalize, k, heads_per_edge,
                        max_map_bytes, with_panels=with_panels)
    model_name = store["state"]["model_info"].get("name", "model")
    heading = title or f"ltt · {model_name}"
    page = _PAGE.format(
        title=html.escape(heading),
        heading=html.escape(heading),
        css=(STATIC / "graph.css").read_text(encoding="utf-8").replace("</", "<\\/"),
        data=embed_json(store),
        js=_inline_js((STATIC / "graph.js").read_text(encoding="utf-8")),
    )
    if path is None:
        return page
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return os.fspath(path)
