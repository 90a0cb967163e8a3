"""Argument checks of the interpret functions: indices into a trace, node names, counts; every message names the argument and its value.

>>> _layer(trace, -1) == trace.n_layers - 1              # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Any

from ltt.checks import is_int
from ltt.nodes import split_name



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
