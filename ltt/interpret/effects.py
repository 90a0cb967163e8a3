"""Updates of the residual stream (attention block, head, FFN block, neuron) and their direct effects on the final logits: promoted and suppressed tokens.

>>> promoted(trace, 20, 5, block="attn", head=3)           # doctest: +SKIP
>>> direct_effect(trace, update_vector(trace, 3, -1, block="ffn"), -1).shape   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ltt.interpret.trace_indices import (_check_block, _index, _k, _layer, _n_heads, _names, _token,
                                         _update_of)
from ltt.interpret.output import OutputHead, _top, output_head
from ltt.interpret.results import Promoted, TokenEffect


def _probs_row(lb: Any, target: int) -> np.ndarray:
    """``[H, T]`` every head's probabilities at one target row (recomputed, not kept)."""
    if hasattr(lb, "attn_rows"):
        return lb.attn_rows([target])[:, 0]
    return np.asarray(lb.attn[:, target])


def _probs_head(lb: Any, head: int) -> np.ndarray:
    """``[T, T]`` one head's probabilities (recomputed, not kept)."""
    if hasattr(lb, "attn_head"):
        return lb.attn_head(head)
    return np.asarray(lb.attn[head])


def head_output(trace: Any, layer: int, head: int, target: int) -> np.ndarray:
    """Head ``head``'s output at ``target`` in the residual space ``[d]`` float32:
    ``row_scale[t] * T(sum_s A[h,t,s] * values[s, g(h)] @ W_O^h)``, with T the post-branch norm's
    linear part (identity in most models). The heads' outputs and the attention bias sum to the
    attention update.

    >>> head_output(trace, 3, 0, -1).shape                   # doctest: +SKIP
    (576,)
    """
    layer = _layer(trace, layer)
    H = _n_heads(trace)
    head = _index("head", head, H, "heads per layer")
    target = _token(trace, target, "target")
    lb = trace.layers[layer]
    G = lb.values.shape[1]
    g = head // (H // G)
    a = np.asarray(_probs_row(lb, target)[head, : target + 1], dtype=np.float64)
    mixed = a @ np.asarray(lb.values[: target + 1, g, :], dtype=np.float64)  # [d_h]
    out = mixed @ np.asarray(lb.w_o[head], dtype=np.float64)  # [d]
    return (lb.attn_norm.linear(out) * lb.attn_norm.row(target)).astype(np.float32)


def _neuron_vectors(lb: Any, token: int, neurons: np.ndarray) -> np.ndarray:
    """``a_{t,i} * T(w_i)`` for the given neurons: ``[n, d]`` float32."""
    w = np.asarray(lb.w_down[neurons], dtype=np.float32)
    w = lb.ffn_norm.linear(w)
    a = np.asarray(lb.act[token, neurons], dtype=np.float32)
    if lb.ffn_norm.row_scale is not None:
        a = a * np.float32(lb.ffn_norm.row_scale[token])
    return a[:, None] * w


def update_vector(
    trace: Any, layer: int, token: int, block: str = "attn", head: int | None = None,
    neuron: int | None = None,
) -> np.ndarray:
    """An update of the residual stream at ``token`` in ``layer``, ``[d]`` float32: the attention
    block's (heads and bias), one head's, the FFN block's, or one neuron's ``a_{t,i} * w_i``.

    >>> v = update_vector(trace, 3, -1, block="ffn", neuron=17)   # doctest: +SKIP
    """
    block = _check_block(block, head, neuron)
    layer = _layer(trace, layer)
    token = _token(trace, token)
    lb = trace.layers[layer]
    if block == "attn":
        if head is not None:
            return head_output(trace, layer, head, token)
        end = lb.resid_post[token] - lb.ffn_out[token] if lb.parallel else lb.resid_mid[token]
        return (np.asarray(end, np.float64) - lb.resid_pre[token]).astype(np.float32)
    if neuron is not None:
        neuron = _index("neuron", neuron, lb.act.shape[1], "FFN neurons per layer")
        return _neuron_vectors(lb, token, np.array([neuron]))[0]
    return np.asarray(lb.ffn_out[token], dtype=np.float32)


def direct_effect(trace: Any, vectors: np.ndarray, token: int, raw: bool = False) -> np.ndarray:
    """The direct effect on the final logits at ``token`` of update vectors ``[..., d]``:
    ``unembed(gamma * r_t * center(v))`` with the final norm's scale ``r_t`` frozen from the last
    layer's state at ``token`` (``raw=True``: ``unembed(v)``, no norm). ``[..., V]`` float32.

    >>> effect = direct_effect(trace, update_vector(trace, 3, -1), -1)   # doctest: +SKIP
    """
    token = _token(trace, token)
    head = output_head(trace)
    v = np.asarray(vectors, dtype=np.float32)
    return head.project(v if raw else head.frozen(v, token))


def _effects(head: OutputHead, z: np.ndarray, k: int) -> tuple[list[TokenEffect], list[TokenEffect]]:
    up = [TokenEffect(head.decode(i), int(i), float(z[i])) for i in _top(z, k).tolist()]
    down = [TokenEffect(head.decode(i), int(i), float(z[i])) for i in _top(z, k, largest=False).tolist()]
    return up, down


def _effects_many(
    trace: Any, vectors: Sequence[np.ndarray], tokens: Sequence[int], k: int, raw: bool = False,
) -> list[tuple[list[TokenEffect], list[TokenEffect]]]:
    """The k most promoted and suppressed tokens of each update vector ``[d]`` at its token (the
    vectors' :func:`direct_effect`), unembedded ``_ROWS`` per matrix product."""
    return [found[0] for found in _effects_at_ks(trace, vectors, tokens, [(k,)] * len(vectors), raw)]


def _effects_at_ks(
    trace: Any, vectors: Sequence[np.ndarray], tokens: Sequence[int], ks: Sequence[Sequence[int]], raw: bool = False,
) -> list[list[tuple[list[TokenEffect], list[TokenEffect]]]]:
    """:func:`_effects_many` with several k per vector: each vector projected once, its top
    tokens read at each of its ``ks[i]`` (the same answers as one call per k)."""
    if not len(vectors):
        return []
    head = output_head(trace)
    rows = np.stack([np.asarray(v, dtype=np.float32) if raw else head.frozen(v, t)
                     for v, t in zip(vectors, tokens)])
    out = []
    for start, z_chunk in head.project_chunks(rows):
        out.extend([_effects(head, z, k) for k in ks[start + i]] for i, z in enumerate(z_chunk))
    return out


_UPDATE_KEYS = ("layer", "token", "block", "head", "neuron")


def _update_spec(trace: Any, spec: Any) -> tuple[int, int, str, int | None, int | None]:
    """``(layer, token, block, head, neuron)`` of one update of :func:`promoted_many`, checked."""
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(_UPDATE_KEYS))
        if unknown or "layer" not in spec or "token" not in spec:
            raise ValueError(f"an update must have the keys layer, token and optionally block, head, "
                             f"neuron, got {spec!r}")
        args = [spec["layer"], spec["token"], spec.get("block", "attn"), spec.get("head"), spec.get("neuron")]
    elif isinstance(spec, (tuple, list)) and 2 <= len(spec) <= 5:
        args = list(spec) + ["attn", None, None][len(spec) - 2:]
    else:
        raise TypeError(f"an update must be (layer, token[, block[, head[, neuron]]]) or a dict of "
                        f"those, got {spec!r}")
    layer, token, block, head, neuron = args
    block = _check_block(block, head, neuron)
    layer, token = _layer(trace, layer), _token(trace, token)
    if head is not None:
        head = _index("head", head, _n_heads(trace), "heads per layer")
    if neuron is not None:
        neuron = _index("neuron", neuron, trace.layers[layer].act.shape[1], "FFN neurons per layer")
    return layer, token, block, head, neuron


def promoted(
    trace: Any, layer: Any, token: int | None = None, block: str = "attn", head: int | None = None,
    neuron: int | None = None, k: int = 10, raw: bool = False,
) -> Promoted:
    """The tokens an update promotes and suppresses most at ``token``: the attention block
    (``block="attn"``), one of its heads (``head=h``), the FFN block (``block="ffn"``) or one
    neuron (``neuron=i``, its output ``a_{t,i} * w_i`` so a negative activation flips it).

    Scores are direct effects on the final logits (:func:`direct_effect`); ``raw=True`` projects
    the update through the unembedding without the final norm.

    The update may also be named by a graph's ``Edge`` (an attention edge: the attention block
    at its target; an FFN edge: the FFN block) or node (``"A{l}_t"``, ``"M{l}_t"`` or a Node),
    given alone in place of ``layer`` and ``token``.

    >>> p = promoted(trace, 20, -1, block="attn", head=3, k=5)   # doctest: +SKIP
    >>> [t.token for t in p.promoted]                        # doctest: +SKIP
    >>> promoted(trace, "M3_5")                              # doctest: +SKIP
    """
    layer, token, block = _update_of(trace, layer, token, block)
    return promoted_many(trace, [(layer, token, block, head, neuron)], k=k, raw=raw)[0]


def promoted_many(trace: Any, updates: Sequence[Any], k: int | Sequence[int] = 10, raw: bool = False) -> list[Promoted]:
    """:func:`promoted` of many updates at once, in their order, unembedded ``_ROWS`` per matrix
    product. Each update is ``(layer, token[, block[, head[, neuron]]])`` (promoted's arguments
    in order) or a dict with those keys; ``k`` is one number, or one per update. An update given
    twice is projected once. Each result equals the :func:`promoted` call.

    >>> ps = promoted_many(trace, [(20, -1), (20, -1, "attn", 3), {"layer": 5, "token": -1, "block": "ffn"}])  # doctest: +SKIP
    >>> [p.what for p in ps]                                 # doctest: +SKIP
    ['attention block of layer 20', 'head 3 of layer 20', 'FFN block of layer 5']
    """
    specs = [_update_spec(trace, u) for u in _names(updates, "updates")]
    if isinstance(k, (list, tuple, np.ndarray)):
        if len(k) != len(specs):
            raise ValueError(f"k must be one number or one per update ({len(specs)}), got {len(k)} numbers")
        ks = [_k(x) for x in k]
    else:
        ks = [_k(k)] * len(specs)
    wanted: dict[tuple, dict[int, Any]] = {}  # each distinct update -> its k's (filled below)
    for spec, kk in zip(specs, ks):
        wanted.setdefault(spec, {})[kk] = None
    distinct = list(wanted)
    found_at = _effects_at_ks(trace, [update_vector(trace, *spec) for spec in distinct],
                              [spec[1] for spec in distinct], [list(wanted[s]) for s in distinct], raw=bool(raw))
    for spec, answers in zip(distinct, found_at):
        wanted[spec] = dict(zip(wanted[spec], answers))
    found = [wanted[spec][kk] for spec, kk in zip(specs, ks)]
    return [
        Promoted(layer=layer, position=token, position_token=str(trace.tokens[token]), block=block,
                 head=head, neuron=neuron, raw=bool(raw), promoted=up, suppressed=down)
        for (layer, token, block, head, neuron), (up, down) in zip(specs, found)
    ]
