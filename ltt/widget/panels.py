"""What the explorer's panels show, as plain JSON-ready data: one function per panel.

The widget calls these for whatever is clicked; the HTML report calls them for everything in
the exported graph. Heatmaps come back as a separate float32 array ``[2, T, T]`` (attention
pattern, contribution map) so they can travel as bytes.

>>> from ltt.widget.panels import state_panel               # doctest: +SKIP
>>> state_panel(trace, "I1_3", normalize=True)["tokens"][0]["token"]   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ltt import interpret
from ltt.nodes import parse_edge, parse_node

MAP_NAMES = ["attention pattern", "contribution map"]

#: The panel protocol: every panel kind a click can ask for and the key of its payload in the
#: report (``store["panels"]``). The widget, the report and the report's kernel
#: (``report_kernel.js`` reads these templates from ``store["panel_keys"]``) all use these.
PANEL_KEYS = {
    "state": "state:{node}:{normalize}",  # a residual state's logit lens, normalize 1 or 0
    "ffn": "ffn:{node}",                   # an FFN node's neurons
    "edge": "edge:{edge}",                 # an attention or residual edge (edge_key)
    "head": "hv:{layer}:{head}:{target}",  # one head's view at one target
}


def panel_key(kind: str, **fields: Any) -> str:
    """The report's key of a panel (:data:`PANEL_KEYS`); a bool field is written 1 or 0.

    >>> panel_key("state", node="I3_5", normalize=True), panel_key("head", layer=2, head=1, target=5)
    ('state:I3_5:1', 'hv:2:1:5')
    """
    if kind not in PANEL_KEYS:
        raise ValueError(f"kind must be one of {sorted(PANEL_KEYS)}, got {kind!r}")
    return PANEL_KEYS[kind].format(**{k: int(v) if isinstance(v, bool) else v for k, v in fields.items()})


def choose(selection: Any) -> tuple[str, dict[str, Any]]:
    """Which panel a selection shows, as ``(kind, fields)``: ``("none", {})``, ``("state", {node})``,
    ``("ffn", {node[, edge]})`` (an FFN node, or the FFN node of an FFN edge), ``("attention",
    {edge, head})`` or ``("residual", {edge})``. The one rule for the widget and the report.

    >>> choose({"edge": "A3_5|M3_5|ffn"}), choose({"node": "I3_5"})
    (('ffn', {'node': 'M3_5', 'edge': 'A3_5|M3_5|ffn'}), ('state', {'node': 'I3_5'}))
    """
    if not selection or not (selection.get("node") or selection.get("edge")):
        return "none", {}
    if selection.get("node"):
        node = selection["node"]
        return ("ffn" if parse_node(node)[0] == "M" else "state"), {"node": node}
    edge = selection["edge"]
    src, dst, kind = parse_edge(edge)
    if kind == "ffn":  # the edge's own weight goes with it
        return "ffn", {"node": src if parse_node(src)[0] == "M" else dst, "edge": edge}
    if kind == "attention":
        return "attention", {"edge": edge, "head": selection.get("head")}
    return "residual", {"edge": edge}


def graph_payload(trace: Any, graph: Any) -> dict[str, Any]:
    """``graph.to_dict()`` plus what the view needs: per-layer ``parallel`` flags and each target's
    top prediction (``predictions``: position -> token string)."""
    data = graph.to_dict()
    data["parallel"] = [bool(lb.parallel) for lb in trace.layers]
    # Every re-prune asks again: the top predictions are kept on the trace once computed.
    known = getattr(trace, "predictions", None)
    known = {} if known is None else known
    missing = [t for t in graph.targets if t not in known]
    try:
        tops = interpret.predictions(trace, missing) if missing else []
    except Exception:  # no model attached (synthetic traces): no predictions shown
        tops = None
    if tops is None:
        data["predictions"] = {}
    else:
        known.update((t, top.token) for t, top in zip(missing, tops))
        data["predictions"] = {str(t): known[t] for t in graph.targets}
    return data


def output_markers(predictions: list[Any]) -> list[dict[str, Any]]:
    """The output markers' hover data, ``[{"token", "id", "prob"}]``, from
    :func:`ltt.interpret.predictions` (one per token)."""
    return [{"token": p.token, "id": int(p.token_id), "prob": round(float(p.prob), 6)} for p in predictions]


def n_heads(trace: Any) -> int:
    """Attention heads per layer, read from the output projection's per-head slices ``w_o [H,
    d_h, d]`` (the attention probabilities need not be kept on the trace).

    >>> n_heads(trace)                                      # doctest: +SKIP
    9
    """
    lb = trace.layers[0]
    w_o = getattr(lb, "w_o", None)
    return int(np.shape(w_o)[0]) if w_o is not None else int(lb.attn.shape[0])


def model_info(trace: Any, graph: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model facts shown in the header: name, family, layers, heads, d_model, vocabulary."""
    m = getattr(trace, "model", None)
    lb = trace.layers[0]
    info = {
        "name": str(getattr(m, "name", None) or (graph or {}).get("model", "model")),
        "family": getattr(m, "family", None),
        "n_layers": len(trace.layers),
        "n_heads": n_heads(trace),
        "n_kv_heads": int(lb.values.shape[1]),
        "d_model": int(lb.resid_pre.shape[1]),
        "d_ffn": int(lb.act.shape[1]),
        "vocab_size": getattr(m, "vocab_size", None),
    }
    return {k: v for k, v in info.items() if v is not None}


def state_panel(trace: Any, node: str, normalize: bool = True, k: int = 10) -> dict[str, Any]:
    """Top tokens of a residual state (``X0_t``, ``A{l}_t``, ``I{l}_t``) with rank changes."""
    return state_panels(trace, [node], normalize, k)[0]


BLOCK_K = 5  # promoted / suppressed tokens of the block before a state, in its panel


def block_before(trace: Any, node: str) -> tuple[int, int, str] | None:
    """``(layer, token, block)`` of the update that made a state: the attention block before
    ``A{l}_t``, the FFN block before ``I{l}_t`` (a parallel layer's FFN); None for ``X0_t``.

    >>> block_before(trace, "I3_5"), block_before(trace, "X0_2")   # doctest: +SKIP
    ((3, 5, 'ffn'), None)
    """
    kind, layer, token = parse_node(node)
    if kind == "A":
        return layer, token, "attn"
    if kind == "I":
        return layer, token, "ffn"
    return None


def state_panels(trace: Any, nodes: list[str], normalize: bool = True, k: int = 10,
                 blocks: list[Any] | None = None) -> list[dict[str, Any]]:
    """:func:`state_panel` of many states at once (one batched logit lens and one batched
    projection of the blocks before them), in their order. Each panel's ``block`` holds what the
    block that made the state promoted and suppressed (the original tool's view beside the logit
    lens); ``blocks`` passes those when already computed (one per node, None for ``X0_t``)."""
    out = []
    if blocks is None:
        blocks = state_blocks(trace, nodes)
    for tt, block in zip(interpret.top_tokens_many(trace, nodes, k=k, normalize=bool(normalize)), blocks):
        panel = tt.to_dict()
        panel["type"] = "state"
        if block is not None:
            panel["block"] = block
        out.append(panel)
    return out


def state_blocks(trace: Any, nodes: list[str]) -> list[dict[str, Any] | None]:
    """For each state, ``{"what", "promoted", "suppressed"}`` of the block before it (None for
    an embedding), in one batched projection.

    >>> state_blocks(trace, ["A2_4", "X0_1"])[0]["what"]    # doctest: +SKIP
    'attention block of layer 2'
    """
    where = [block_before(trace, n) for n in nodes]
    specs = [w for w in where if w is not None]
    found = iter(interpret.promoted_many(trace, specs, k=BLOCK_K) if specs else [])
    return [None if w is None else block_effects(w, next(found)) for w in where]


def block_effects(where: tuple[int, int, str], promoted: Any) -> dict[str, Any]:
    """A state panel's ``block`` entry: ``{"what", "promoted", "suppressed"}`` of the update
    ``where`` (:func:`block_before`) from its :func:`ltt.interpret.promoted` (k = BLOCK_K)."""
    layer, _, block = where
    what = f"attention block of layer {layer}" if block == "attn" else f"FFN block of layer {layer}"
    return {"what": what, **effects(promoted)}


def effects(p: Any) -> dict[str, Any]:
    d = p.to_dict()
    return {"promoted": d["promoted"], "suppressed": d["suppressed"]}


def head_view(trace: Any, layer: int, head: int, target: int, k: int = 10) -> tuple[dict[str, Any], np.ndarray]:
    """One head at one target: its promoted/suppressed tokens, and its maps ``[2, T, T]``."""
    return head_views(trace, [(layer, head, target)], k)[0]


def head_views(trace: Any, heads: list[tuple[int, int, int]], k: int = 10) -> list[tuple[dict[str, Any], np.ndarray]]:
    """:func:`head_view` of many ``(layer, head, target)`` at once (one batched projection)."""
    out = []
    for hv in interpret.head_view_many(trace, heads, k=k):
        maps = np.stack([np.asarray(hv.pattern, np.float32), np.asarray(hv.contribution, np.float32)])
        view = effects(hv.promoted)
        view["head"] = int(hv.head)
        view["share_of_state"] = float(np.asarray(hv.contribution)[hv.target].sum())
        out.append((view, maps))
    return out


def head_effects(trace: Any, heads: list[tuple[int, int, int]], shares: Any, k: int = 10,
                 found: list[Any] | None = None) -> list[dict[str, Any]]:
    """:func:`head_view`'s panel without its maps, for many ``(layer, head, target)`` at once: the
    promoted and suppressed tokens in one batched projection (``found``: those heads'
    :func:`ltt.interpret.promoted` when already computed), ``share_of_state`` read from
    ``shares(layer, head, target)`` (the head's contribution row sum, as the report has it from
    the maps it computes anyway)."""
    if found is None:
        found = interpret.promoted_many(trace, [(layer, t, "attn", head) for layer, head, t in heads], k=k)
    out = []
    for (layer, head, t), p in zip(heads, found):
        view = effects(p)
        view["head"] = int(head)
        view["share_of_state"] = float(shares(layer, head, t))
        out.append(view)
    return out


def attention_panel(
    trace: Any, edge: str, weight: float | None = None, head: int | None = None, k: int = 10,
    with_head: bool = True, block: Any = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The heads panel of an attention edge: each head's share, the selected head (default: the
    largest) with its maps and promoted tokens, and the whole attention block's view (``block``:
    that block's :func:`ltt.interpret.promoted` when already computed, as the report batches
    them)."""
    src, dst, kind = parse_edge(edge)
    if kind != "attention":
        raise ValueError(f"not an attention edge: {edge!r}")
    _, _, s = parse_node(src)
    tkind, layer, t = parse_node(dst)
    eh = interpret.edge_heads(trace, layer, t, s)
    heads = [{"head": int(h.head), "share": float(h.share)} for h in eh.heads]
    if head is None:
        head = heads[0]["head"]
    panel = {
        "type": "attention", "edge": edge, "layer": layer, "source": s, "target": t,
        "source_node": src, "target_node": dst, "source_token": eh.source_token,
        "target_token": eh.target_token, "weight": float(eh.weight if weight is None else weight),
        "raw_weight": float(eh.weight), "heads": heads, "head": int(head), "maps": list(MAP_NAMES),
        "block": effects(block if block is not None else interpret.promoted(trace, layer, t, block="attn", k=k)),
    }
    maps = None
    if with_head:
        panel["head_view"], maps = head_view(trace, layer, int(head), t, k)
    return panel, maps


def ffn_panel(trace: Any, node: str, weight: float | None = None, k: int = 10, k_tokens: int = 5) -> dict[str, Any]:
    """The neurons panel of an FFN node ``M{l}_t``: top neurons by share with their promoted and
    suppressed tokens, and the whole block's direct effect."""
    return ffn_panels(trace, [node], [weight], k, k_tokens)[0]


def ffn_panels(
    trace: Any, nodes: list[str], weights: list[float | None] | None = None, k: int = 10, k_tokens: int = 5,
    blocks: list[Any] | None = None,
) -> list[dict[str, Any]]:
    """:func:`ffn_panel` of many FFN nodes at once (their neurons and blocks in one batched
    projection each), in their order; ``weights`` is one edge weight or None per node;
    ``blocks`` the blocks' :func:`ltt.interpret.promoted` (k = ``k``) when already computed."""
    weights = [None] * len(nodes) if weights is None else list(weights)
    if len(weights) != len(nodes):
        raise ValueError(f"weights must hold one entry per node ({len(nodes)}), got {len(weights)}")
    where = []
    for node in nodes:
        kind, layer, t = parse_node(node)
        if kind != "M":
            raise ValueError(f"not an FFN node (M{{l}}_t): {node!r}")
        where.append((layer, t))
    neurons = interpret.top_neurons_many(trace, where, k=k, k_tokens=k_tokens)
    if blocks is None:
        blocks = interpret.promoted_many(trace, [(layer, t, "ffn") for layer, t in where], k=k)
    out = []
    for node, weight, tn, block in zip(nodes, weights, neurons, blocks):
        panel = tn.to_dict()
        panel.update(type="ffn", node=node, block=effects(block))
        layer, t = parse_node(node)[1:]
        if getattr(trace.layers[layer], "moe", None) is not None:  # a mixture of experts
            from ltt.models.moe import router_panel

            panel["router"] = router_panel(trace, layer, t, panel.get("neurons"))
        if weight is not None:
            panel["weight"] = float(weight)
        out.append(panel)
    return out


def residual_panel(edge: str, weight: float | None) -> dict[str, Any]:
    """A residual edge; ``weight`` None when the edge is not in the current graph (the panel
    then says so instead of showing a number)."""
    src, dst, _ = parse_edge(edge)
    layer = parse_node(dst)[1]
    panel = {"type": "residual", "edge": edge, "source": src, "target": dst, "layer": layer}
    if weight is not None:
        panel["weight"] = float(weight)
    return panel
