"""Argument checks of the interpret functions: indices into a trace, node names, counts; every message names the argument and its value.

>>> _layer(trace, -1) == trace.n_layers - 1              # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Any

from ltt.checks import is_int
from ltt.nodes import Edge, Node, Stage, split_name



def _index(name: str, value: Any, n: int, what: str) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    p = v + n if v < 0 else v
    if not 0 <= p < n:
        raise ValueError(f"{name}={value!r} is out of range: the trace has {n} {what} (0..{n - 1})")
    return p


def _layer(trace: Any, layer: Any) -> int:
    return _index("layer", layer, len(trace.layers), "layers")


def _token(trace: Any, token: Any, name: str = "token") -> int:
    return _index(name, token, len(trace.token_ids), "tokens")


def _k(k: Any, name: str = "k") -> int:
    if not is_int(k):
        raise TypeError(f"{name} must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _n_heads(trace: Any) -> int:
    return int(trace.layers[0].w_o.shape[0])


def _names(value: Any, what: str) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be a list, got {value!r}")
    return list(value)


def _check_block(block: Any, head: Any, neuron: Any) -> str:
    if block not in ("attn", "ffn"):
        raise ValueError(f"block must be 'attn' or 'ffn', got {block!r}")
    if head is not None and block != "attn":
        raise ValueError(f"head={head!r} is given with block={block!r}: a head belongs to block='attn'")
    if neuron is not None and block != "ffn":
        raise ValueError(f"neuron={neuron!r} is given with block={block!r}: a neuron belongs to block='ffn'")
    return block


def _edge(trace: Any, layer: Any, target: Any, source: Any) -> tuple[int, int, int]:
    layer = _layer(trace, layer)
    target = _token(trace, target, "target")
    source = _token(trace, source, "source")
    if source > target:
        raise ValueError(
            f"source={source} comes after target={target}: attention only reads earlier tokens "
            "(source <= target)"
        )
    return layer, target, source


def _parallel_error(layer: int) -> ValueError:
    return ValueError(f"layer {layer} is a parallel block: it has no after-attention state")


def _parse_node(trace: Any, node: Any) -> tuple[str, int, int]:
    """``(kind, layer, token)`` of a residual state node name; layer is -1 for ``X0_t``."""
    if not isinstance(node, str):
        raise TypeError(f"node must be a node name such as 'I3_5', got {node!r}")
    parts = split_name(node)
    if parts is None:
        raise ValueError(
            f"node={node!r} is not a node name: expected 'X0_t' (embedding), 'A{{l}}_t' (after "
            "attention) or 'I{l}_t' (layer output), e.g. 'I3_5'"
        )
    kind, layer_s, token_s = parts
    T, L = len(trace.token_ids), len(trace.layers)
    if token_s < 0 or token_s >= T:
        raise ValueError(f"node={node!r}: token {token_s} is out of range, the trace has {T} tokens (0..{T - 1})")
    if kind == "X":
        if layer_s != 0:
            raise ValueError(f"node={node!r}: the embedding state is named X0_t (X takes no layer)")
        return "X", -1, token_s
    if kind == "M":
        raise ValueError(
            f"node={node!r} is an FFN block, not a residual state: read its update with "
            f"trace.promoted({layer_s}, {token_s}, block='ffn') or its neurons with "
            f"trace.top_neurons({layer_s}, {token_s})"
        )
    if kind not in ("A", "I"):
        raise ValueError(f"node={node!r}: unknown node kind {kind!r}; residual states are X0_t, A{{l}}_t, I{{l}}_t")
    if layer_s < 0 or layer_s >= L:
        raise ValueError(f"node={node!r}: layer {layer_s} is out of range, the trace has {L} layers (0..{L - 1})")
    if kind == "A" and trace.layers[layer_s].parallel:
        raise _parallel_error(layer_s)
    return kind, layer_s, token_s


# -- a graph's edges and nodes where (layer, target, source) or (layer, token) are asked for ------


def _attention_edge(layer: Any, target: Any, source: Any) -> tuple[Any, Any, Any]:
    """``(layer, target, source)`` of an attention edge given as an :class:`ltt.nodes.Edge` (from
    ``g.edges``; ``target`` and ``source`` then left out) or as the three indices."""
    if isinstance(layer, Edge):
        if target is not None or source is not None:
            raise TypeError(f"an Edge names its own target and source: give it alone, got target={target!r}, "
                            f"source={source!r} too")
        if layer.stage is not Stage.ATTENTION:
            raise ValueError(f"edge {layer.source} -> {layer.target} is a {layer.kind} edge: head shares belong "
                             "to attention edges")
        return layer.layer, layer.target_token, layer.source_token
    if target is None or source is None:
        raise TypeError(f"give an attention Edge (from g.edges), or layer, target and source; got layer={layer!r}, "
                        f"target={target!r}, source={source!r}")
    return layer, target, source


def _ffn_block(trace: Any, layer: Any, token: Any) -> tuple[Any, Any]:
    """``(layer, token)`` of an FFN block given as an FFN :class:`Edge`, its node (a
    :class:`Node` or a name ``"M{l}_t"``), or the two indices."""
    if isinstance(layer, Edge):
        if layer.kind != "ffn":
            raise ValueError(f"edge {layer.source} -> {layer.target} is a {layer.kind} edge, not an FFN edge")
        what, layer = (layer.layer, layer.target_token), None
    elif isinstance(layer, Node) or (isinstance(layer, str) and token is None):
        name = layer.name if isinstance(layer, Node) else layer
        parts = split_name(name)
        if parts is None or parts[0] != "M":
            raise ValueError(f"node={name!r} is not an FFN block: FFN nodes are named M{{l}}_t, e.g. 'M3_5'")
        what = (parts[1], parts[2])
    else:
        if token is None:
            raise TypeError(f"give an FFN Edge or node ('M3_5'), or layer and token; got layer={layer!r}, token=None")
        return layer, token
    if token is not None:
        raise TypeError(f"an FFN edge or node names its own token: give it alone, got token={token!r} too")
    return what


def _update_of(trace: Any, layer: Any, token: Any, block: Any) -> tuple[Any, Any, Any]:
    """``(layer, token, block)`` of an update given as an Edge (an attention edge: the attention
    block at its target; an FFN edge: the FFN block), a node (``"A{l}_t"``: the attention block,
    ``"M{l}_t"``: the FFN block) or the indices."""
    if isinstance(layer, Edge):
        if layer.kind == "residual":
            raise ValueError(f"edge {layer.source} -> {layer.target} is a residual edge: it carries no update")
        return layer.layer, layer.target_token, "attn" if layer.stage is Stage.ATTENTION else "ffn"
    if isinstance(layer, Node) or (isinstance(layer, str) and token is None):  # a name stands alone
        name = layer.name if isinstance(layer, Node) else layer
        parts = split_name(name)
        if parts is None or parts[0] not in ("A", "M"):
            raise ValueError(f"node={name!r} is not an update: give 'A{{l}}_t' (the attention block) or "
                             "'M{l}_t' (the FFN block)")
        return parts[1], parts[2], "attn" if parts[0] == "A" else "ffn"
    if token is None:
        raise TypeError(f"give an Edge, a node ('A3_5', 'M3_5') or layer and token; got layer={layer!r}, token=None")
    return layer, token, block


def _state_name(node: Any) -> Any:
    """A residual state's name from a :class:`Node`, or an :class:`Edge`'s target state."""
    if isinstance(node, Node):
        return node.name
    if isinstance(node, Edge):
        if node.stage is Stage.FFN_IN:
            raise ValueError(f"edge {node.source} -> {node.target} ends in an FFN block, not a state: read the "
                             f"block with promoted(...) or top_neurons(...)")
        return node.target
    return node
