"""Attention heads: each head's share of an edge, a head's contribution map and attention pattern, and what its output promotes.

>>> edge_heads(trace, 5, -1, 0).heads[0]                  # doctest: +SKIP
>>> head_view(trace, 5, 2).contribution.shape             # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ltt import backends
from ltt.interpret.trace_indices import _attention_edge, _edge, _index, _k, _layer, _n_heads, _names, _token
from ltt.interpret.effects import _effects_many, _probs_head, _probs_row, head_output
from ltt.interpret.results import EdgeHeads, HeadShare, HeadView, Promoted
from ltt.scores import attribute


def _whole(lb: Any) -> np.ndarray:
    return lb.resid_post if lb.parallel else lb.resid_mid


def edge_head_shares(trace: Any, layer: int, target: int, source: int, norm: int = 1,
                     dense: bool | None = None) -> np.ndarray:
    """Every head's share ``[H]`` of one attention edge (checked indices), by the C core on the
    one- or two-token sub-problem (source, target) with the layer's true normalisers: the same
    arithmetic as the full layer, without any ``[T, T]`` array. ``dense=None`` reads the dense
    per-head array instead when the trace fits the dense budget (``True``: always).

    >>> edge_head_shares(trace, 5, trace.n_tokens - 1, 0).shape   # doctest: +SKIP
    (9,)
    """
    full = attribute(trace, norm)
    if dense or (dense is None and full.dense_fits()):
        return np.array(full.layer_dense(layer)[0][:, target, source], dtype=np.float32)
    lb = trace.layers[layer]
    idx = [target] if source == target else [source, target]
    n = len(idx)
    a = np.zeros((_n_heads(trace), n, n), np.float32)
    a[:, n - 1, 0] = _probs_row(lb, target)[:, source]
    return backends.of(trace).attn_edge_heads(
        n - 1, 0, _whole(lb)[idx], a, lb.values[idx], lb.w_o, full.attn_total[layer][idx],
        norm=full.norm, **lb.attn_norm.core_args(rows=idx),
    )


def _head_contribution(trace: Any, layer: int, head: int) -> np.ndarray:
    """One head's share map ``[T, T]``: the kept dense array when the trace fits the dense
    budget, else the C core on the head alone (its probabilities, values group and output
    projection slice) with the layer's true normalisers."""
    full = attribute(trace)
    if full.dense_fits():
        return np.array(full.layer_dense(layer)[0][head])
    return _head_map(trace, full, layer, head)


def _head_map(trace: Any, full: Any, layer: int, head: int) -> np.ndarray:
    lb = trace.layers[layer]
    G = lb.values.shape[1]
    g = head // (_n_heads(trace) // G)
    return backends.of(trace).attn_head_map(
        0, _whole(lb), _probs_head(lb, head)[None], np.ascontiguousarray(lb.values[:, g : g + 1]),
        lb.w_o[head : head + 1], full.attn_total[layer], norm=full.norm, **lb.attn_norm.core_args(),
    )


def head_shares(trace: Any, layer: Any, target: int | None = None, source: int | None = None) -> np.ndarray:
    """Each head's share ``[H]`` (head order) of the attention edge ``source -> target`` of
    ``layer`` (or of an attention ``Edge`` from ``g.edges``, given alone); the shares sum to the
    edge's weight before any threshold.

    >>> trace.head_shares(5, -1, 0).argmax()                 # doctest: +SKIP
    >>> trace.head_shares(g.edges[0])                        # doctest: +SKIP
    """
    layer, target, source = _edge(trace, *_attention_edge(layer, target, source))
    return edge_head_shares(trace, layer, target, source)


def edge_heads(trace: Any, layer: Any, target: int | None = None, source: int | None = None) -> EdgeHeads:
    """Every head's share of the attention edge ``source -> target`` of ``layer`` (or of an
    attention ``Edge`` from ``g.edges``, given alone), largest first.

    >>> eh = edge_heads(trace, 5, -1, 0)                     # doctest: +SKIP
    >>> eh.heads[0].head, eh.heads[0].share                  # doctest: +SKIP
    >>> edge_heads(trace, g.edges[0]).weight == g.edges[0].weight   # doctest: +SKIP
    """
    layer, target, source = _edge(trace, *_attention_edge(layer, target, source))
    full = attribute(trace)
    shares = edge_head_shares(trace, layer, target, source)
    order = np.argsort(-shares, kind="stable")
    weight = (full.layer_dense(layer)[1][target, source] if full.dense_fits()
              else full.edges[layer].lookup([target], [source])[0])
    if not full.dense_fits() and weight == 0:  # below the floor: the heads' shares are exact
        weight = shares.astype(np.float64).sum()
    return EdgeHeads(
        layer=layer, target=target, source=source, target_token=str(trace.tokens[target]),
        source_token=str(trace.tokens[source]), weight=float(weight),
        heads=[HeadShare(int(h), float(shares[h])) for h in order],
    )


def head_view(trace: Any, layer: int, head: int, target: int | None = None, k: int = 10) -> HeadView:
    """One head of ``layer``: its contribution map and attention pattern ``[T, T]``, its output
    vector at ``target`` (default: the last token) and the k tokens it promotes and suppresses
    there.

    >>> hv = head_view(trace, 5, 2)                          # doctest: +SKIP
    >>> hv.contribution.shape, hv.promoted.promoted[0].token # doctest: +SKIP
    """
    return head_view_many(trace, [(layer, head, target)], k=k)[0]


def head_view_many(trace: Any, heads: Sequence[Any], k: int = 10) -> list[HeadView]:
    """:func:`head_view` of many heads at once, in their order: each is ``(layer, head)`` or
    ``(layer, head, target)``; their outputs are unembedded ``_ROWS`` per matrix product. Each
    result equals the :func:`head_view` call.

    >>> hvs = head_view_many(trace, [(5, 2), (5, 3, 4)])     # doctest: +SKIP
    """
    k = _k(k)
    specs = []
    for item in _names(heads, "heads"):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"a head must be (layer, head) or (layer, head, target), got {item!r}")
        layer, head, target = (list(item) + [None])[:3]
        layer = _layer(trace, layer)
        head = _index("head", head, _n_heads(trace), "heads per layer")
        target = len(trace.token_ids) - 1 if target is None else _token(trace, target, "target")
        specs.append((layer, head, target))
    outs = [head_output(trace, layer, head, target) for layer, head, target in specs]
    found = _effects_many(trace, outs, [spec[2] for spec in specs], k)
    views = []
    for (layer, head, target), out, (up, down) in zip(specs, outs, found):
        lb = trace.layers[layer]
        prom = Promoted(layer, target, str(trace.tokens[target]), "attn", head, None, False, up, down)
        views.append(HeadView(
            layer=layer, head=head, target=target, target_token=str(trace.tokens[target]),
            tokens=[str(t) for t in trace.tokens], contribution=_head_contribution(trace, layer, head),
            pattern=np.tril(np.asarray(_probs_head(lb, head), dtype=np.float32)), output=out, promoted=prom,
        ))
    return views


def head_map(trace: Any, layer: int, head: int) -> np.ndarray:
    """One head's contribution map ``[T, T]`` recomputed in the C core from the kept normalisers
    (equal to ``attribute(trace).heads[layer, head]``).

    >>> head_map(trace, 5, 2).shape                          # doctest: +SKIP
    """
    layer = _layer(trace, layer)
    head = _index("head", head, _n_heads(trace), "heads per layer")
    return _head_map(trace, attribute(trace), layer, head)
