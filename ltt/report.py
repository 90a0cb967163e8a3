"""The standalone HTML report: one self-contained file with the widget's own front end and data.

:func:`to_html` writes a page that works offline, without a kernel. It inlines the widget's ES
module and stylesheet unchanged and drives ``render()`` with a small in-page model
(``createModelShim`` + ``offlineKernel`` of ``report_kernel.js``, inlined after it). Embedded:

* **every carried target** (default: all token positions; ``carry=N`` keeps the last N): for
  every state, its raw parts at or above a ``floor`` (default 0.01, at most the exported
  threshold) in both threshold modes, as float32, so the page prunes the graph of any set of
  carried targets at any threshold from the floor up, in either mode, exactly as
  ``trace.graph(...)`` does (a JavaScript port of the backward reachability and of the
  renormalize mode). The targets given to :func:`to_html` are the ones shown first;
* every head's attention pattern and contribution map, 8 bits per value (steps of 1/255 of
  that map's largest value), within ``max_map_bytes``;
* the panels of everything in the first graphs (top tokens of every state with and without the
  final norm, every attention edge's head shares with the top heads' promoted tokens, every FFN
  node's top neurons), then the top tokens of the other carried targets' states, within
  ``max_extra_states``; a panel not embedded says it needs a live kernel.

The data travels deflate-compressed (JSON plus one binary buffer of typed arrays, each base64
in a ``<script>`` element); the page inflates it with the browser's ``DecompressionStream``.
``report["precision"]`` (shown in the page) says what the data holds. Token strings are data,
never markup: the page sets them with ``textContent`` only.

>>> import ltt                                                 # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("The capital of France is")   # doctest: +SKIP
>>> ltt.report.to_html(trace, "report.html", threshold=0.04)    # doctest: +SKIP
'report.html'
"""

from __future__ import annotations

import base64
import heapq
import html
import inspect
import json
import os
import re
import zlib
from typing import Any, Sequence

import numpy as np

from ltt.checks import DEFAULT_THRESHOLD, is_int
from ltt import interpret, kernels, report_panels
from ltt.graph import GraphSettings, resolve_targets
from ltt.output import check_output_path, write_whole
from ltt.progress import Steps
from ltt.nodes import Edge, Node, edge_key
from ltt.scores import SparseRows, attribute
from ltt.widget import panels
from ltt.widget import STATIC, bundle
from ltt.widget import state as widget_state

__all__ = ["to_html", "report_data", "embed_json", "pack"]

REPORT_LOWEST_THRESHOLD = 0.01  # the report's slider goes down to this threshold by default
REPORT_STEPS = 4  # the report's progress steps besides one per layer


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


_DTYPES = {"f4": "<f4", "u1": "u1", "u2": "<u2", "i4": "<i4"}


def pack(data: Any) -> tuple[str, str]:
    """``(json_b64, bin_b64)``: ``data`` as deflated JSON, its NumPy arrays moved into one deflated
    binary buffer (each replaced by ``{"$a": [dtype, byte offset, length]}``; dtypes f4, u1, u2,
    i4, little-endian, each aligned to 4 bytes), both base64. ``report_kernel.js``'s ``loadStore`` undoes it.

    >>> j, b = pack({"x": np.arange(3, dtype=np.float32)})
    >>> json.loads(zlib.decompress(base64.b64decode(j)))
    {'x': {'$a': ['f4', 0, 3]}}
    """
    chunks: list[bytes] = []
    offset = 0

    def walk(v: Any) -> Any:
        nonlocal offset
        if isinstance(v, np.ndarray):
            code = {np.dtype("float32"): "f4", np.dtype("uint8"): "u1", np.dtype("uint16"): "u2",
                    np.dtype("int32"): "i4"}.get(v.dtype)
            if code is None:
                raise TypeError(f"pack: arrays must be float32, uint8, uint16 or int32, got {v.dtype}")
            raw = np.ascontiguousarray(v.ravel(), dtype=_DTYPES[code]).tobytes()
            ref = {"$a": [code, offset, int(v.size)]}
            pad = (-len(raw)) % 4
            chunks.append(raw + b"\0" * pad)
            offset += len(raw) + pad
            return ref
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    plain = walk(data)
    text = json.dumps(plain, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    b64 = lambda raw: base64.b64encode(zlib.compress(raw, 6)).decode("ascii")  # noqa: E731
    return b64(text), b64(b"".join(chunks))


def _carried(carry: Any, T: int, shown: list[int]) -> list[int]:
    """Token positions whose graphs the report carries: ``"all"``, an int N (the last N), or a
    list; the shown targets are always among them."""
    if carry is None or (isinstance(carry, str) and carry == "all"):
        out = list(range(T))
    elif is_int(carry):
        if carry < 1:
            raise ValueError(f"carry must be 'all', a positive number of targets or a list of positions, got {carry!r}")
        out = list(range(max(0, T - int(carry)), T))
    else:
        out = resolve_targets(list(carry), T)
    return sorted(set(out) | set(shown))


def _quantise(m: np.ndarray) -> tuple[np.ndarray, float]:
    """A non-negative map as uint8 steps of its max/255 and that step (0 for an all-zero map)."""
    top = float(np.max(m)) if m.size else 0.0
    if not top > 0:
        return np.zeros(m.shape, np.uint8), 0.0
    return np.rint(np.clip(m, 0, None) * (255.0 / top)).astype(np.uint8), top / 255.0


def _head_maps(trace: Any, full: Any, layer: int, H: int, with_model: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """All heads' contribution maps ``[H, T, T]`` of a layer and, with a model, their attention
    patterns: each head's probabilities recomputed once and used for both (the kept dense
    shares when the trace holds them), without any vocabulary projection."""
    if not with_model:
        return np.stack([np.asarray(interpret.head_map(trace, layer, h), np.float32) for h in range(H)]), None
    lb = trace.layers[layer]
    whole = lb.resid_post if lb.parallel else lb.resid_mid
    G = lb.values.shape[1]
    dense = full.layer_dense(layer)[0] if full.dense_fits() else None
    contrib = np.empty((H, len(whole), len(whole)), np.float32)
    pattern = np.empty_like(contrib)
    for h in range(H):
        probs = np.asarray(lb.attn_head(h), np.float32)
        pattern[h] = np.tril(probs)
        if dense is not None:
            contrib[h] = dense[h]
            continue
        g = h // (H // G)
        contrib[h] = kernels.attn_head_map(
            0, whole, probs[None], np.ascontiguousarray(lb.values[:, g : g + 1]), lb.w_o[h : h + 1],
            full.attn_total[layer], norm=full.norm, **lb.attn_norm.core_args())
    return contrib, pattern


def _offline_data(trace: Any, carried: list[int], floor: float, norm: int, with_model: bool,
                  max_map_bytes: int, progress: Steps) -> dict[str, Any]:
    """What the page prunes from, for every state (l, t), as flat arrays (index l*T + t):

    * ``single``: the residual, bias and FFN shares of the states (raw, before any threshold);
    * ``heads``: the renormalize mode's head parts >= floor, and each state's largest, in (l, t,
      head, source) order: ``l``, ``t``, ``k``, ``s``, ``v``;
    * ``raw``: the attention edges of the raw-mode graph of the carried targets at the floor
      (every edge >= floor into each state it reaches, and the largest where none is);
    * ``maps``: per head, its attention pattern and contribution map, lower triangle, uint8 with
      a step per map: every head when they fit in ``max_map_bytes``, else the heads with the
      largest single share first."""
    T, L = len(trace.token_ids), len(trace.layers)
    full = attribute(trace, norm)
    single = {name: np.ascontiguousarray(getattr(full, name), np.float32).reshape(-1)
              for name in ("attn_resid", "attn_bias", "ffn", "ffn_resid")}
    H = panels.model_info(trace)["n_heads"]
    tri = np.tril_indices(T)
    per_head = 2 * len(tri[0])
    room = (max_map_bytes // per_head) if with_model else 0  # how many heads' maps fit
    best: list[tuple[float, int, str, dict]] = []  # a min-heap of the heads kept so far
    cols: dict[str, list[np.ndarray]] = {"l": [], "t": [], "k": [], "s": [], "v": []}
    maps: dict[str, Any] = {}
    row_sums: list[np.ndarray] = []
    for layer in range(L):
        contrib, pattern = _head_maps(trace, full, layer, H, with_model)
        row_sums.append(contrib.sum(axis=2))  # [H, T] float32, each row summed as contrib[h, t].sum()
        progress.step(f"head maps of layer {layer}")
        rows = SparseRows.from_dense(np.tril(contrib), floor)  # parts >= floor and each state's largest
        cols["l"].append(np.full(len(rows.values), layer, np.uint16))
        cols["t"].append(rows.rows.astype(np.uint16))
        cols["k"].append(rows.heads.astype(np.uint16))
        cols["s"].append(rows.sources.astype(np.uint16))
        cols["v"].append(rows.values)
        for h in range(H if room else 0):
            rank = (float(np.max(contrib[h])), -(layer * H + h))
            if len(best) >= room and rank <= best[0][:2]:
                continue
            qp, sp = _quantise(pattern[h][tri])
            qc, sc = _quantise(contrib[h][tri])
            entry = (*rank, f"{layer}:{h}", {"pattern": qp, "contribution": qc, "step": [sp, sc]})
            (heapq.heappush if len(best) < room else heapq.heapreplace)(best, entry)
    for _, order, key, m in sorted(best, key=lambda e: -e[1]):  # layer, head order
        maps[key] = m
    heads = {key: np.concatenate(v) if v else np.zeros(0, np.float32) for key, v in cols.items()}
    raw_graph = trace.graph(threshold=floor, renormalize=False, targets=carried)
    rl, rt, rs, rw = [], [], [], []
    for e in raw_graph.edges:
        if e.kind == "attention":
            rl.append(e.layer)
            rt.append(e.target_token)
            rs.append(e.source_token)
            rw.append(e.weight)
    raw = {"l": np.array(rl, np.uint16), "t": np.array(rt, np.uint16), "s": np.array(rs, np.uint16),
           "w": np.array(rw, np.float32)}
    return {"single": single, "heads": heads, "raw": raw, "maps": maps, "n_maps": [len(maps), L * H],
            "_row_sums": row_sums}


def report_data(
    trace: Any,
    threshold: float = DEFAULT_THRESHOLD,
    renormalize: bool = True,
    targets: Sequence[int] | int | str | None = None,
    normalize: bool = True,
    k: int = 10,
    heads_per_edge: int = 3,
    max_map_bytes: int = 12 << 20,
    slider: Sequence[float] = (0.01, 0.10),
    with_panels: bool = True,
    carry: Sequence[int] | int | str | None = "all",
    floor: float | None = None,
    max_extra_states: int = 1000,
    faithfulness: Any = None,
    _progress: Steps | None = None,
) -> dict[str, Any]:
    """Everything the report embeds, as plain data and NumPy arrays (see the module docstring).
    With ``with_panels=False`` (or a trace without a model) only the graphs are embedded.
    ``faithfulness``: the shown graph's :class:`ltt.faithfulness.Faithfulness` when already
    measured (``trace.faithfulness(graph)``, zero ablation, as ``ltt trace`` prints it), carried
    as the report's faithfulness line instead of a rerun of the model (8 random graphs).

    >>> store = report_data(trace, threshold=0.04, carry=10)   # doctest: +SKIP
    >>> store["exported"]["carried"][-1], store["precision"]   # doctest: +SKIP
    """
    T = len(trace.token_ids)
    settings = GraphSettings(threshold, renormalize, targets)  # every argument checked here, once
    if _progress is None:  # its own progress, closed (its watcher ended) however this ends
        with Steps(len(trace.layers) + REPORT_STEPS, "writing the report") as progress:
            return report_data(trace, threshold, renormalize, targets, normalize, k, heads_per_edge, max_map_bytes,
                               slider, with_panels, carry, floor, max_extra_states, faithfulness, _progress=progress)
    progress = _progress
    tgt, renormalize = settings.positions(T), settings.renormalize
    carried = _carried(carry, T, tgt)
    with_model = getattr(trace, "model", None) is not None
    # the model's prediction after every token, in one projection: the output markers' hover
    # text, the carried targets' predictions and the shown graphs' (kept on the trace)
    tops = interpret.predictions(trace) if with_model else []
    for t in carried if with_model else ():
        trace.predictions.setdefault(t, tops[t].token)
    g_renorm = trace.graph(threshold=threshold, renormalize=True, targets=tgt)
    g_raw = trace.graph(threshold=threshold, renormalize=False, targets=tgt)
    graphs = {"renorm": panels.graph_payload(trace, g_renorm), "raw": panels.graph_payload(trace, g_raw)}
    threshold = float(g_renorm.threshold)
    if faithfulness is not None:
        _check_measured(faithfulness, trace, g_renorm if renormalize else g_raw)
    floor = min(REPORT_LOWEST_THRESHOLD, threshold) if floor is None else float(floor)
    if not (0.0 <= floor <= threshold):
        raise ValueError(f"floor must be a number in [0, threshold={threshold}], got {floor!r}")
    offline = _offline_data(trace, carried, floor, g_renorm.norm, with_model, int(max_map_bytes), progress)
    predictions = {str(t): tops[t].token for t in carried} if with_model else {}
    store: dict[str, Any] = {
        "exported": {"threshold": threshold, "targets": tgt, "renormalize": bool(renormalize),
                     "carried": carried, "floor": floor},
        "n_layers": len(trace.layers),
        "n_tokens": T,
        "parallel": graphs["renorm"]["parallel"],
        "graphs": graphs,
        "predictions": predictions,
        "offline": offline,
        "panels": {},
        "panel_keys": dict(panels.PANEL_KEYS),  # report_kernel.js builds its keys from these
        "precision": _precision(floor, carried, T, offline["n_maps"]),
    }
    nodes: dict[str, Node] = {}
    edges: dict[str, Edge] = {}
    for g in (g_renorm, g_raw):
        for n in g.nodes:
            nodes.setdefault(n.name, n)
        for e in g.edges:
            edges.setdefault(edge_key(e.source, e.target, e.kind), e)
    panels_too = with_panels and with_model
    progress.step("the other targets' states")
    extra = report_panels.extra_states(trace, nodes, carried, tgt, threshold, renormalize, max_extra_states) if panels_too else []
    progress.step("panels")
    row_sums = offline.pop("_row_sums")  # [L][H, T]: each head's share of each state, from the maps
    if panels_too:
        store["panels"] = report_panels.embedded_panels(trace, nodes, edges, extra, k, heads_per_edge, row_sums)
    info = panels.model_info(trace, graphs["renorm"])
    prompt = str(getattr(trace, "prompt", "")) or "".join(trace.tokens)
    store["state"] = {**widget_state.initial(),  # every field of the one schema (ltt/widget/state.py)
        "graph": graphs["renorm"] if renormalize else graphs["raw"],
        "threshold": threshold, "renormalize": bool(renormalize), "normalize": bool(normalize),
        "targets": tgt, "prompts": [prompt], "model_info": info, "live": False,
        "slider": [float(min(slider[0], floor)), float(slider[1])],
    }
    from ltt.faithfulness import report_line  # the exported graph's check, one batched rerun

    progress.step("faithfulness check")
    store["state"]["faithfulness"] = report_line(trace, g_renorm if renormalize else g_raw, result=faithfulness)
    store["state"].update(faithfulness_for=tgt, faithfulness_state="current" if store["state"]["faithfulness"] else "",
                          outputs=panels.output_markers(tops))
    return store


def _check_measured(result: Any, trace: Any, graph: Any) -> None:
    """A ValueError naming ``faithfulness`` unless ``result`` is a zero-ablation measurement of
    ``graph`` (the same prompt, targets and number of edges and FFN blocks in every layer)."""
    from ltt.faithfulness import Faithfulness
    from ltt.graph_parts import graph_parts

    if not isinstance(result, Faithfulness):
        raise TypeError(f"faithfulness must be the shown graph's Faithfulness (trace.faithfulness(graph)), "
                        f"got {type(result).__name__}")
    edges, ffn = graph_parts(graph)
    L = graph.n_layers
    want = ([len(edges[l][0]) if l in edges else 0 for l in range(L)],
            [len(ffn[l]) if l in ffn else 0 for l in range(L)], [int(t) for t in graph.targets])
    got = (list(result.attention_edges), list(result.ffn_blocks), [int(t.position) for t in result.targets])
    plain = result.ablation == "zero" and result.counterfactual is None and result.reference is None
    if got != want or not plain or list(result.prompt_tokens) != [str(t) for t in trace.tokens]:
        raise ValueError(f"faithfulness: not a zero-ablation measurement of the shown graph (threshold "
                         f"{graph.threshold:g}, targets {list(graph.targets)}): its prompt, targets, parts or "
                         f"ablation differ (ablation {result.ablation!r}, targets "
                         f"{[t.position for t in result.targets]})")


def _precision(floor: float, carried: list[int], T: int, n_maps: list[int]) -> str:
    which = "every token" if len(carried) == T else f"{len(carried)} of the {T} tokens"
    text = (f"This report carries the graphs of {which} as targets, with thresholds from {floor:g} up "
            "(edge weights as float32, as computed)")
    kept, total = n_maps
    if kept:
        heads = "every head's" if kept == total else f"{kept} of the {total} heads' (the largest shares first)"
        text += (f"; {heads} attention pattern and contribution map with 8 bits per value (steps of 1/255 "
                 "of each map's largest value)")
    return text + "."


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="generator" content="ltt">
<title>{title}</title>
<style>
body {{ margin: 16px; background: #fafafa; color: #1f2937; }}
.ltt-report-title {{ font: 600 16px system-ui, sans-serif; margin: 0 0 4px; }}
.ltt-report-prompt {{ font: 13px ui-monospace, Menlo, Consolas, monospace; color: #374151; margin: 0 0 6px; white-space: pre-wrap; }}
.ltt-report-precision {{ font: 12px system-ui, sans-serif; color: #4b5563; margin: 0 0 10px; }}
@media (prefers-color-scheme: dark) {{
  body {{ background: #111418; color: #e5e7eb; }}
  .ltt-report-prompt {{ color: #d1d5db; }}
  .ltt-report-precision {{ color: #9ca3af; }}
}}
{css}
</style>
</head>
<body class="ltt-report">
<div class="ltt-report-title">{heading}</div>
<div class="ltt-report-prompt" id="ltt-prompt"></div>
<div class="ltt-report-precision" id="ltt-precision"></div>
<div id="ltt-app"></div>
<script type="application/octet-stream" id="ltt-data" data-encoding="deflate-base64">{data}</script>
<script type="application/octet-stream" id="ltt-bin" data-encoding="deflate-base64">{blob}</script>
<script type="module">
{js}
// --- report bootstrap: the same render() as the widget, driven by the embedded data ---
const store = await loadStore(document.getElementById("ltt-data"), document.getElementById("ltt-bin"));
document.getElementById("ltt-prompt").textContent = store.state.prompts[0];
document.getElementById("ltt-precision").textContent = store.precision || "";
const model = createModelShim(store.state, offlineKernel(store));
render({{ model, el: document.getElementById("ltt-app") }});
window.__ltt = {{ model, store }};
</script>
</body>
</html>
"""


_REPORT_MODULES = ("graph.js", "report_kernel.js")  # the view (ltt.widget.bundle joins it), then the offline kernel
_LOCAL_IMPORT = re.compile(r'^import \{[^}]*\} from "\./([\w.]+\.js)";[ \t]*\n', re.M)


def _report_js() -> str:
    """The report's one ES module: the widget's static modules one after the other, each import of
    an earlier one dropped (they share one scope). An import of anything else is an error."""
    parts = []
    for name in _REPORT_MODULES:
        text = bundle.script() if name == "graph.js" else (STATIC / name).read_text(encoding="utf-8")
        for m in _LOCAL_IMPORT.finditer(text):
            if m.group(1) not in _REPORT_MODULES[: _REPORT_MODULES.index(name)]:
                raise RuntimeError(f"{name} imports {m.group(1)!r}, which the report does not inline before it")
        if "\nimport " in "\n" + _LOCAL_IMPORT.sub("", text):
            raise RuntimeError(f"{name} has an import the report cannot inline")
        parts.append(f"// --- {name} ---\n" + _LOCAL_IMPORT.sub("", text))
    # The module goes inside <script>: no "</script" or "<!--" may appear in it.
    return "\n".join(parts).replace("</", "<\\/").replace("<!--", "<\\!--")


def to_html(trace: Any, path: str | os.PathLike | None = None, *, title: str | None = None, **options: Any) -> str:
    """Write the standalone report of ``trace`` to ``path`` and return the path (with
    ``path=None``, return the HTML text instead); ``title`` heads the page (default "ltt · model").
    ``options`` are :func:`report_data`'s keywords: it carries the graphs of every target in
    ``carry`` (default all tokens; an int N: the last N) from ``floor`` up, and shows
    ``targets`` (default the last token) at ``threshold`` first. ``heads_per_edge`` heads of
    each attention edge of that first graph get their promoted tokens embedded; every head's
    maps are embedded when they fit in ``max_map_bytes`` (else the heads with the largest
    shares); with ``with_panels=False`` only the graphs are (panels then need a live kernel).

    >>> to_html(trace, "report.html", threshold=0.05, targets=[-1], carry=20)   # doctest: +SKIP
    'report.html'
    """
    try:  # the keywords' names before any work (their values are report_data's to check)
        _OPTIONS.bind(trace, **options)
    except TypeError as exc:
        raise TypeError(f"to_html: {exc}") from None
    if path is not None:
        path = check_output_path(path, "path")  # before any work
    with Steps(len(trace.layers) + REPORT_STEPS, "writing the report") as progress:
        store = report_data(trace, **options, _progress=progress)
        progress.step("compressing and writing")
        model_name = store["state"]["model_info"].get("name", "model")
        heading = title or f"ltt · {model_name}"
        data, blob = pack(store)
        page = _PAGE.format(
            title=html.escape(heading),
            heading=html.escape(heading),
            css=(STATIC / "graph.css").read_text(encoding="utf-8").replace("</", "<\\/"),
            data=data,
            blob=blob,
            js=_report_js(),
        )
        if path is None:
            return page
        write_whole(path, page)
    return path


# report_data's keywords, without the private ones: what to_html passes through, and its signature
_OPTIONS = inspect.signature(report_data)
_OPTIONS = _OPTIONS.replace(parameters=[p for p in _OPTIONS.parameters.values() if not p.name.startswith("_")])
to_html.__signature__ = inspect.signature(to_html).replace(parameters=[  # type: ignore[attr-defined]
    *list(inspect.signature(to_html).parameters.values())[:3],
    *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in list(_OPTIONS.parameters.values())[1:]),
])
