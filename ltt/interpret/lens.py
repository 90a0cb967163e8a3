"""The logit lens of residual states: a state's top tokens under the model's output head, with rank changes against its predecessor.

>>> top_tokens(trace, "I29_5", k=3)                       # doctest: +SKIP
>>> state(trace, "A3_5").shape                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ltt.interpret.trace_indices import _k, _names, _parse_node, _state_name
from ltt.interpret.output import _top, output_head
from ltt.interpret.results import TokenScore, TopTokens
from ltt.nodes import input_state, node_name


def _predecessor(trace: Any, kind: str, layer: int) -> tuple[str, int] | None:
    """The residual state before ``(kind, layer)`` along the stream (None for the embeddings)."""
    if kind == "X":
        return None
    if kind == "I" and not trace.layers[layer].parallel:
        return "A", layer
    return input_state(layer, 0)[:2]


def _state_vector(trace: Any, kind: str, layer: int, token: int) -> np.ndarray:
    if kind == "X":
        return trace.layers[0].resid_pre[token]
    lb = trace.layers[layer]
    return (lb.resid_mid if kind == "A" else lb.resid_post)[token]


def state(trace: Any, node: str) -> np.ndarray:
    """The residual state vector ``[d]`` of a node ``X0_t``, ``A{l}_t`` or ``I{l}_t``.

    >>> state(trace, "X0_0").shape                           # doctest: +SKIP
    (576,)
    """
    kind, layer, token = _parse_node(trace, node)
    return _state_vector(trace, kind, layer, token)


def _softmax_at(z: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The probabilities of tokens ``ids`` under logits ``z [V]`` (softmax in float64)."""
    z = z.astype(np.float64)
    e = np.exp(z - z.max())
    return e[ids] / e.sum()


def _ranks(z: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """0-based rank of each id in logits ``z``: how many tokens score strictly higher."""
    return np.array([np.count_nonzero(z > v) for v in z[ids]], dtype=np.int64)


def _top_ranks(values: np.ndarray) -> np.ndarray:
    """:func:`_ranks` of a state's own top-k tokens from their logits ``values`` alone: every
    token that scores higher than one of the top k is itself among them."""
    return np.count_nonzero(values[None, :] > values[:, None], axis=1).astype(np.int64)


def _depth(kind: str, layer: int) -> int:
    """Order of a residual state along the stream: X0 < A0 < I0 < A1 < ..."""
    return 0 if kind == "X" else 2 * layer + (1 if kind == "A" else 2)


def top_tokens(trace: Any, node: str, k: int = 10, normalize: bool = True) -> TopTokens:
    """The logit lens of a residual state: its top-k tokens with logit, probability and rank
    change against the predecessor state.

    ``normalize=True`` applies the model's final norm before the unembedding (and any final
    logit softcap), as the model does for its last state; ``normalize=False`` unembeds the raw
    state. ``rank_change`` is ``prev_rank - rank``: positive when the token rose in this step.

    ``node``: a state's name, a ``Node`` of ``g.nodes``, or an ``Edge`` (its target state).

    >>> tt = top_tokens(trace, "I29_5", k=5)                 # doctest: +SKIP
    >>> tt.tokens[0].token, tt.tokens[0].prob                # doctest: +SKIP
    (' Paris', 0.41)
    """
    return top_tokens_many(trace, [_state_name(node)], k=k, normalize=normalize)[0]


def top_tokens_many(trace: Any, nodes: Sequence[str], k: int = 10, normalize: bool = True) -> list[TopTokens]:
    """:func:`top_tokens` of many nodes at once, in their order: the states and their
    predecessors are unembedded together, ``_ROWS`` per matrix product. Each result equals
    ``top_tokens(trace, node, k, normalize)``.

    >>> lens = top_tokens_many(trace, ["I28_5", "I29_5"], k=5)   # doctest: +SKIP
    >>> [t.node for t in lens]                               # doctest: +SKIP
    ['I28_5', 'I29_5']
    """
    k = _k(k)
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    parsed = [_parse_node(trace, node) for node in _names(nodes, "nodes")]
    if not parsed:
        return []
    head = output_head(trace)
    preds = {}  # state -> its predecessor state at the same token, or None
    for kind, layer, token in parsed:
        pred = _predecessor(trace, kind, layer)
        preds[(kind, layer, token)] = None if pred is None else (pred[0], pred[1], token)
    wanted = set(preds) | {p for p in preds.values() if p is not None}
    # Later states first: a node's row comes before its predecessor's, so the predecessor's
    # ranks are read as soon as its logits are there and no logits are kept across chunks.
    order = sorted(wanted, key=lambda s: (-_depth(s[0], s[1]), s[2]))
    waiting: dict[tuple, list] = {}  # predecessor -> the nodes that need ranks in it
    lens: dict[tuple, tuple] = {}  # node -> (ids, logits, probs, ranks)
    prev: dict[tuple, np.ndarray] = {}  # node -> the ranks of its ids in its predecessor
    rows = np.stack([_state_vector(trace, *s) for s in order])
    for start, z_chunk in head.logits_chunks(rows, bool(normalize)):
        for i, z in enumerate(z_chunk):
            s = order[start + i]
            if s in preds:
                ids = _top(z, k)
                lens[s] = (ids, z[ids], _softmax_at(z, ids), _top_ranks(z[ids]))
                if preds[s] is not None:
                    waiting.setdefault(preds[s], []).append(s)
            for node in waiting.pop(s, ()):
                prev[node] = _ranks(z, lens[node][0])
    out = []
    for kind, layer, token in parsed:
        s = (kind, layer, token)
        ids, logits, probs, ranks = lens[s]
        before = prev.get(s)
        items = []
        for i, tok in enumerate(ids.tolist()):
            pr = None if before is None else int(before[i])
            rank = int(ranks[i])
            items.append(TokenScore(head.decode(tok), tok, float(logits[i]), float(probs[i]), rank,
                                    pr, None if pr is None else pr - rank))
        pred = preds[s]
        out.append(TopTokens(
            node=node_name(kind, layer, token), layer=layer, position=token,
            position_token=str(trace.tokens[token]), normalize=bool(normalize),
            predecessor=node_name(*pred) if pred else None, tokens=items,
        ))
    return out


def predictions(trace: Any, positions: Sequence[int] | None = None) -> list[TokenScore]:
    """The model's top next-token prediction after each of ``positions`` (default: every token),
    in their order: the last layer's state there through the model's own output head, one
    batched projection of those states alone (no predecessors, no rank changes). Each answer's
    token, logit and probability equal ``top_tokens(trace, f"I{L-1}_{t}", k=1).tokens[0]``'s.

    >>> [p.token for p in predictions(trace, [0, -1])]      # doctest: +SKIP
    """
    from ltt.interpret.trace_indices import _token

    where = range(len(trace.token_ids)) if positions is None else [_token(trace, t) for t in positions]
    if not len(where):
        return []
    head = output_head(trace)
    L = len(trace.layers)
    rows = np.stack([_state_vector(trace, "I", L - 1, t) for t in where])
    out: list[TokenScore] = []
    for _, z_chunk in head.logits_chunks(rows, True):
        for z in z_chunk:
            ids = _top(z, 1)
            tok = int(ids[0])
            out.append(TokenScore(head.decode(tok), tok, float(z[tok]), float(_softmax_at(z, ids)[0]),
                                  int(_top_ranks(z[ids])[0])))
    return out
