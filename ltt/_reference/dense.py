"""The dense twins: the proximity primitive, attention and FFN contributions, renormalize, prune,
the running exactness check.

Part of :mod:`ltt._reference` (read its docstring for the conventions every twin shares).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

EPS = 1e-5

# The twins of the dense C entry points. Each twin repeats its entry point's signature on
# purpose (same names, same arguments), so the partial views' signatures look alike.
KERNELS = ("contributions", "attn_contrib", "attn_head_map", "attn_edge_heads", "ffn_neuron_contrib",
           "renormalize", "prune", "probe_check")


def _norm(x: np.ndarray, norm: int, axis: int = -1) -> np.ndarray:
    if norm == 1:
        return np.abs(x).sum(axis=axis)
    return np.sqrt((x * x).sum(axis=axis))


def _raw(whole: np.ndarray, part: np.ndarray, norm: int) -> np.ndarray:
    """``max(||whole|| - ||whole - part||, EPS)`` over the last axis (broadcasting)."""
    return np.maximum(_norm(whole, norm) - _norm(whole - part, norm), EPS)


def contributions(parts: np.ndarray, whole: np.ndarray, norm: int = 1) -> np.ndarray:
    """Proximity shares of ``parts [K, ..., d]`` in ``whole [..., d]``: ``[K, ...]``, summing to 1 over K.

    >>> contributions(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 1.0])).tolist()
    [0.5, 0.5]
    """
    p = np.asarray(parts, dtype=np.float64)
    w = np.asarray(whole, dtype=np.float64)
    raw = _raw(w[None], p, norm)
    return (raw / raw.sum(axis=0, keepdims=True)).astype(np.float32)


def head_vectors(
    values: np.ndarray,
    w_o: np.ndarray,
    col_scale: np.ndarray | None = None,
    center: bool = False,
) -> np.ndarray:
    """Per-head value-to-output vectors ``u[h, s] = values[s, g(h)] @ w_o[h]``: ``[H, T, d]``.

    ``values`` is ``[T, G, d_h]``, ``w_o`` is ``[H, d_h, d]``, head h reads kv group
    ``g(h) = h // (H // G)``. With ``center`` each vector has its mean removed, then with
    ``col_scale [d]`` it is multiplied coordinate-wise (a post-branch norm's gamma): the
    frozen-scale linearisation of a norm applied to the branch output.
    """
    v = np.asarray(values, dtype=np.float64)
    wo = np.asarray(w_o, dtype=np.float64)
    H, G = wo.shape[0], v.shape[1]
    per_group = H // G
    u = np.stack([v[:, h // per_group, :] @ wo[h] for h in range(H)])
    if center:
        u = u - u.mean(axis=-1, keepdims=True)
    if col_scale is not None:
        u = u * np.asarray(col_scale, dtype=np.float64)
    return u


def _attn_raws(
    resid, whole, attn, values, w_o, bias, extra, row_scale, col_scale, center, norm
):
    """Raws of every part of every target: heads ``[H,T,T]`` (0 above the diagonal), resid ``[T]``,
    bias ``[T]`` (0 when absent), extra ``[E,T]``."""
    x = np.asarray(resid, dtype=np.float64)
    w = np.asarray(whole, dtype=np.float64)
    a = np.asarray(attn, dtype=np.float64)
    H, T = a.shape[0], a.shape[1]
    if row_scale is not None:
        a = a * np.asarray(row_scale, dtype=np.float64)[None, :, None]
    u = head_vectors(values, w_o, col_scale, center)
    heads = np.zeros((H, T, T))
    for t in range(T):
        for h in range(H):
            parts = a[h, t, : t + 1, None] * u[h, : t + 1]  # [t+1, d]
            heads[h, t, : t + 1] = _raw(w[t][None], parts, norm)
    res = _raw(w, x, norm)
    if bias is None:
        b = np.zeros(T)
    else:
        bb = np.broadcast_to(np.asarray(bias, dtype=np.float64), w.shape)
        b = _raw(w, bb, norm)
    if extra is None:
        ex = np.zeros((0, T))
    else:
        ex = np.stack([_raw(w, np.asarray(e, dtype=np.float64), norm) for e in extra]).reshape(-1, T)
    return heads, res, b, ex


def attn_contrib(
    resid: np.ndarray,
    whole: np.ndarray,
    attn: np.ndarray,
    values: np.ndarray,
    w_o: np.ndarray,
    bias: np.ndarray | None = None,
    extra: np.ndarray | None = None,
    row_scale: np.ndarray | None = None,
    col_scale: np.ndarray | None = None,
    center: bool = False,
    norm: int = 1,
    keep_heads: bool = False,
) -> dict[str, np.ndarray]:
    """Contributions of one attention layer (or one whole parallel block) to its output states.

    Inputs (T tokens, H query heads, G kv groups, d_h head width, d model width, E extra parts):

    * ``resid [T, d]``: the residual entering the layer (x_t), one part of each whole.
    * ``whole [T, d]``: the state the parts sum to (after attention, or the layer output for a
      parallel block).
    * ``attn [H, T, T]``: attention probabilities ``A[h, t, s]``; only ``s <= t`` is read.
    * ``values [T, G, d_h]``, ``w_o [H, d_h, d]``: see :func:`head_vectors`.
    * ``bias``: ``[d]`` or ``[T, d]``, a part of its own already in the output space (b_O, or
      the transformed bias and beta of a post-branch norm); a node share, not an edge.
    * ``extra [E, T, d]``: further parts per target (the FFN output of a parallel block).
    * ``row_scale [T]``: a per-target factor on every head part (a post-branch norm's 1/rms).
    * ``col_scale [d]``, ``center``: see :func:`head_vectors`.

    The part of (head h, source s <= t) in target t is ``row_scale[t] * A[h,t,s] * u[h,s]``.

    Returns a dict:

    * ``edges [T, T]`` float32: head-summed shares ``sum_h c[h,t,s]``, zero above the diagonal;
    * ``resid [T]``, ``bias [T]`` (zeros without a bias), ``extra [E, T]`` float32 shares;
    * ``total [T]`` float64: the normaliser Z_t, the sum of every raw of target t;
    * ``heads [H, T, T]`` float32 per-head shares, only with ``keep_heads``.

    Every target's shares (edges row, resid, bias, extra) sum to 1.
    """
    heads, res, b, ex = _attn_raws(
        resid, whole, attn, values, w_o, bias, extra, row_scale, col_scale, center, norm
    )
    total = heads.sum(axis=(0, 2)) + res + ex.sum(axis=0) + (b if bias is not None else 0.0)
    shares = heads / total[None, :, None]
    out = {
        "edges": shares.sum(axis=0).astype(np.float32),
        "resid": (res / total).astype(np.float32),
        "bias": (b / total).astype(np.float32) if bias is not None else np.zeros(len(total), np.float32),
        "extra": (ex / total[None]).astype(np.float32),
        "total": total,
    }
    if keep_heads:
        out["heads"] = shares.astype(np.float32)
    return out


def attn_head_map(
    head: int,
    whole: np.ndarray,
    attn: np.ndarray,
    values: np.ndarray,
    w_o: np.ndarray,
    total: np.ndarray,
    row_scale: np.ndarray | None = None,
    col_scale: np.ndarray | None = None,
    center: bool = False,
    norm: int = 1,
) -> np.ndarray:
    """One head's share map ``[T, T]`` recomputed from the kept normalisers ``total [T]``.

    Equals ``attn_contrib(..., keep_heads=True)["heads"][head]`` for the same inputs, without
    keeping the ``[H, T, T]`` tensor: the trace keeps ``total`` and asks for a head on demand.
    """
    w = np.asarray(whole, dtype=np.float64)
    a = np.asarray(attn, dtype=np.float64)[head]
    T = a.shape[0]
    if row_scale is not None:
        a = a * np.asarray(row_scale, dtype=np.float64)[:, None]
    u = head_vectors(values, w_o, col_scale, center)[head]
    out = np.zeros((T, T))
    for t in range(T):
        out[t, : t + 1] = _raw(w[t][None], a[t, : t + 1, None] * u[: t + 1], norm) / total[t]
    return out.astype(np.float32)


def attn_edge_heads(target: int, source: int, *head_map_args: Any, **head_map_kwargs: Any) -> np.ndarray:
    """Every head's share ``[H]`` of the edge ``source -> target`` (``source <= target``),
    recomputed from the kept normalisers ``total [T]``; their sum is ``edges[target, source]``
    of :func:`attn_contrib`. By definition each head's :func:`attn_head_map` at ``[target,
    source]``: the arguments after ``head`` are the head map's (``whole, attn, values, w_o,
    total, row_scale=None, col_scale=None, center=False, norm=1``)."""
    args = inspect.signature(attn_head_map).bind(0, *head_map_args, **head_map_kwargs).arguments
    H = np.shape(args["attn"])[0]
    return np.array([attn_head_map(h, *head_map_args, **head_map_kwargs)[target, source] for h in range(H)],
                    dtype=np.float32)


def ffn_neuron_contrib(
    act: np.ndarray,
    w_down: np.ndarray,
    resid: np.ndarray,
    whole: np.ndarray,
    bias: np.ndarray | None = None,
    row_scale: np.ndarray | None = None,
    col_scale: np.ndarray | None = None,
    center: bool = False,
    norm: int = 1,
) -> dict[str, np.ndarray]:
    """Per-neuron contributions of FFN blocks to their output states, for N tokens.

    * ``act [N, F]``: activations entering the down projection (a_{t,i});
    * ``w_down [F, d]``: row i is neuron i's output vector w_i (any strides: a transposed
      ``[d, F]`` torch Linear weight is accepted as its ``.T`` view without copying);
    * ``resid [N, d]``: the state entering the FFN (m_t), ``whole [N, d]``: its output (y_t);
    * ``bias``: ``[d]`` or ``[N, d]`` in the output space (b_down, transformed by a post-norm);
    * ``row_scale [N]``, ``col_scale [d]``, ``center``: a post-branch norm, as in
      :func:`head_vectors`; the part of neuron i is ``row_scale[n] * act[n,i] * T(w_i)``.

    Returns ``neurons [N, F]``, ``resid [N]``, ``bias [N]`` float32 shares summing to 1 per token,
    and ``total [N]`` float64.
    """
    a = np.asarray(act, dtype=np.float64)
    w = np.asarray(whole, dtype=np.float64)
    x = np.asarray(resid, dtype=np.float64)
    wd = np.asarray(w_down, dtype=np.float64)
    if center:
        wd = wd - wd.mean(axis=-1, keepdims=True)
    if col_scale is not None:
        wd = wd * np.asarray(col_scale, dtype=np.float64)
    if row_scale is not None:
        a = a * np.asarray(row_scale, dtype=np.float64)[:, None]
    N = a.shape[0]
    neurons = np.stack([_raw(w[n][None], a[n, :, None] * wd, norm) for n in range(N)])
    res = _raw(w, x, norm)
    if bias is None:
        b = np.zeros(N)
    else:
        b = _raw(w, np.broadcast_to(np.asarray(bias, dtype=np.float64), w.shape), norm)
    total = neurons.sum(axis=1) + res + (b if bias is not None else 0.0)
    return {
        "neurons": (neurons / total[:, None]).astype(np.float32),
        "resid": (res / total).astype(np.float32),
        "bias": (b / total).astype(np.float32) if bias is not None else np.zeros(N, np.float32),
        "total": total,
    }


def renormalize(heads: np.ndarray, single: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The method's ``renormalize=True`` threshold mode, per target state.

    * ``heads [K, T, S]``: shares of the parts that become token edges after summing over K
      (per-head attention shares; K=1 for a plain matrix);
    * ``single [E, T]``: the other parts of each target (residual, bias, FFN, ...).

    For every target t, each part (every ``heads[k,t,s]`` and ``single[e,t]``) below
    ``threshold`` is dropped and the rest are rescaled to sum to 1. When every part of t falls
    below the threshold, only its largest part is kept (the first in the order heads by
    (k, s), then single, on ties), at share 1 (at 0 when that part is 0: an all-zero state stays
    zero). Shares are never negative: a negative part in ``heads`` or ``single`` is a
    ``ValueError`` (here and in the C core). Returns ``edges [T, S]`` (the kept head parts summed
    over K) and ``single [E, T]``, float32.

    >>> r = renormalize(np.array([[[0.05, 0.15], [0.05, 0.05]]]), np.array([[0.8, 0.9]]), 0.1)
    >>> np.round(r["edges"].astype(float), 6).tolist(), np.round(r["single"].astype(float), 6).tolist()
    ([[0.0, 0.157895], [0.0, 0.0]], [[0.842105, 1.0]])
    """
    h = np.asarray(heads, dtype=np.float64)
    e = np.asarray(single, dtype=np.float64)
    for name, x in (("heads", h), ("single", e)):
        if (x < 0).any():
            raise ValueError(f"{name} holds a negative share ({x[x < 0].flat[0]!r}); shares are >= 0")
    K, T, S = h.shape
    E = e.shape[0]
    edges = np.zeros((T, S))
    out_single = np.zeros((E, T))
    for t in range(T):
        parts = np.concatenate([h[:, t, :].reshape(-1), e[:, t]])
        keep = parts >= threshold
        if not keep.any():
            keep[int(np.argmax(parts))] = True
        kept = np.where(keep, parts, 0.0)
        z = kept.sum()
        kept = kept / z if z > 0 else kept  # z == 0: the kept parts are all 0 and stay 0
        edges[t] = kept[: K * S].reshape(K, S).sum(axis=0)
        out_single[:, t] = kept[K * S :]
    return {"edges": edges.astype(np.float32), "single": out_single.astype(np.float32)}


def _kept(candidates: list[tuple[object, float]], threshold: float) -> list[object]:
    """The incoming edges of a reached node that are kept: those ``>= threshold``, or else the
    largest (the first of the largest, in the order given)."""
    kept = [key for key, weight in candidates if weight >= threshold]
    return kept or [max(candidates, key=lambda kw: kw[1])[0]]


def prune(
    attn: np.ndarray,
    attn_resid: np.ndarray,
    ffn: np.ndarray,
    ffn_resid: np.ndarray,
    parallel: np.ndarray,
    targets: np.ndarray,
    threshold: float,
) -> dict[str, np.ndarray]:
    """Prune the full graph to the edges reachable backwards from the target outputs.

    The full graph of L layers and T tokens, as in DESIGN.md:

    * ``attn [L, T, T]``: attention edge ``I{l-1}_s -> A{l}_t`` (``-> I{l}_t`` when
      ``parallel[l]``), weight ``attn[l, t, s]``, only ``s <= t``; ``I{-1}`` is ``X0``;
    * ``attn_resid [L, T]``: residual ``I{l-1}_t -> A{l}_t`` (``-> I{l}_t`` when parallel);
    * ``ffn [L, T]``: the FFN route ``A{l}_t -> M{l}_t -> I{l}_t`` (``I{l-1}_t -> M{l}_t ->
      I{l}_t`` when parallel), both edges with this weight;
    * ``ffn_resid [L, T]``: residual ``A{l}_t -> I{l}_t`` (not read when parallel);
    * ``parallel [L]`` bool; ``targets``: token positions in ``[0, T)``.

    Starting from ``I{L-1}_t`` for every target, walk backwards layer by layer, keeping every
    incoming edge of a reached node with weight ``>= threshold`` and reaching its source. A
    reached node none of whose incoming edges reaches the threshold keeps its largest incoming
    edge (ties: residual, then FFN, then attention sources in increasing s), so a reached
    node always connects back to the embeddings.

    Returns the kept edges: ``attn_edges [n, 3]`` int64 rows ``(l, t, s)`` sorted, and bool
    masks ``attn_resid [L, T]``, ``ffn [L, T]``, ``ffn_resid [L, T]``.
    """
    a = np.asarray(attn, dtype=np.float64)
    ar = np.asarray(attn_resid, dtype=np.float64)
    f = np.asarray(ffn, dtype=np.float64)
    fr = np.asarray(ffn_resid, dtype=np.float64)
    L, T = ar.shape
    keep_ar = np.zeros((L, T), bool)
    keep_f = np.zeros((L, T), bool)
    keep_fr = np.zeros((L, T), bool)
    kept_attn: list[tuple[int, int, int]] = []
    tg = np.asarray(targets)
    if tg.dtype.kind == "u" and (tg > np.iinfo(np.int64).max).any():
        raise ValueError(f"targets holds {int(tg.max())}, which does not fit in int64")
    reached_out = np.zeros(T, bool)  # I{l}_t reached
    reached_out[tg.astype(np.int64)] = True
    for l in range(L - 1, -1, -1):
        reached_in = np.zeros(T, bool)  # I{l-1}_t reached
        if parallel[l]:
            for t in np.flatnonzero(reached_out):
                cand = [("r", ar[l, t]), ("f", f[l, t])] + [(s, a[l, t, s]) for s in range(t + 1)]
                kept = _kept(cand, threshold)
                for k in kept:
                    if k == "r":
                        keep_ar[l, t] = True
                        reached_in[t] = True
                    elif k == "f":
                        keep_f[l, t] = True
                        reached_in[t] = True
                    else:
                        kept_attn.append((l, t, k))
                        reached_in[k] = True
        else:
            reached_mid = np.zeros(T, bool)  # A{l}_t reached
            for t in np.flatnonzero(reached_out):
                cand = [("r", fr[l, t]), ("f", f[l, t])]
                kept = _kept(cand, threshold)
                for k in kept:
                    (keep_fr if k == "r" else keep_f)[l, t] = True
                reached_mid[t] = True
            for t in np.flatnonzero(reached_mid):
                cand = [("r", ar[l, t])] + [(s, a[l, t, s]) for s in range(t + 1)]
                kept = _kept(cand, threshold)
                for k in kept:
                    if k == "r":
                        keep_ar[l, t] = True
                        reached_in[t] = True
                    else:
                        kept_attn.append((l, t, k))
                        reached_in[k] = True
        reached_out = reached_in
    edges = np.array(sorted(kept_attn), dtype=np.int64).reshape(-1, 3)
    return {"attn_edges": edges, "attn_resid": keep_ar, "ffn": keep_f, "ffn_resid": keep_fr}


def probe_check(
    rows: np.ndarray,
    probs: np.ndarray,
    values: np.ndarray,
    o: np.ndarray,
    down: np.ndarray,
    z: np.ndarray,
    resid_pre: np.ndarray,
    resid_mid: np.ndarray | None,
    resid_post: np.ndarray,
    ffn_out: np.ndarray,
    act: np.ndarray,
    attn_row_scale: np.ndarray | None = None,
    attn_bias: np.ndarray | None = None,
    ffn_row_scale: np.ndarray | None = None,
    ffn_bias: np.ndarray | None = None,
) -> dict[str, float]:
    """The running exactness check of one layer of a trace, at target ``rows [R]`` and along
    directions ``z [d, k]`` of the residual stream (Freivalds' check).

    Inputs: ``probs [H, R, T]`` the rows' attention probabilities, ``values [T, G, d_h]``,
    ``o [H, d_h, k]`` each head's ``w_o[h]`` along the directions pulled back through the
    attention's post-norm, ``down [F, k]`` the same of ``w_down``; the states ``[T, d]``
    (``resid_mid`` None for a parallel block), ``act [T, F]``; each branch's optional row scale
    ``[T]`` and bias ``[T, d]`` (already through its post-norm).

    Per row and direction the rebuilt branch is compared with the state it must equal,
    ``|lhs . z_c - state . z_c| / ||state||_2``, and the max over rows and directions is kept:

    * ``attn``: ``resid_pre + row_scale * sum_h probs[h] @ (values[:, g(h)] @ w_o[h]) + bias``
      against ``resid_mid`` (a parallel block: plus ``ffn_out``, against ``resid_post``);
    * ``ffn`` (sequential only, in full): ``max_i |resid_mid + ffn_out - resid_post|_i /
      max_i |resid_post|_i``;
    * ``neurons``: ``row_scale * act @ w_down + bias`` against ``ffn_out``.

    An error ``e`` of a row shows as ``|e|_2 / |state|_2`` times a standard normal factor per
    direction for standard normal ``z``.
    """
    idx = np.asarray(rows, dtype=np.int64)
    f64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)  # noqa: E731
    read = dict(probs=probs, values=values, o=o, down=down, z=z)  # read whole; the states at rows
    states = dict(resid_pre=resid_pre, resid_mid=resid_mid, resid_post=resid_post, ffn_out=ffn_out,
                  act=act, attn_row_scale=attn_row_scale, attn_bias=attn_bias,
                  ffn_row_scale=ffn_row_scale, ffn_bias=ffn_bias)
    for name, arr in [*read.items(), *((k, None if v is None else f64(v)[idx]) for k, v in states.items())]:
        if arr is not None and not np.isfinite(f64(arr)).all():
            raise ValueError(f"{name} contains NaN or inf")
    z = f64(z)
    p, v, o = f64(probs), f64(values), f64(o)
    H, G = p.shape[0], v.shape[1]

    def along(a: np.ndarray) -> np.ndarray:
        return f64(a)[idx] @ z

    def rel(lhs: np.ndarray, state: np.ndarray) -> float:
        s = f64(state)[idx]
        return float((np.abs(lhs - s @ z).max(axis=-1) / (np.sqrt((s * s).sum(axis=-1)) + 1e-12)).max())

    attn = np.zeros((len(idx), z.shape[1]))
    for h in range(H):
        attn += p[h] @ (v[:, h // (H // G)] @ o[h])
    if attn_row_scale is not None:
        attn *= f64(attn_row_scale)[idx][:, None]
    if attn_bias is not None:
        attn += along(attn_bias)
    lhs = along(resid_pre) + attn
    out: dict[str, float] = {}
    if resid_mid is None:
        out["attn"] = rel(lhs + along(ffn_out), resid_post)
    else:
        out["attn"] = rel(lhs, resid_mid)
        post = f64(resid_post)[idx]
        rebuilt = f64(resid_mid)[idx] + f64(ffn_out)[idx]
        out["ffn"] = float((np.abs(rebuilt - post).max(axis=-1) / (np.abs(post).max(axis=-1) + 1e-12)).max())
    neurons = f64(act)[idx] @ f64(down)
    if ffn_row_scale is not None:
        neurons *= f64(ffn_row_scale)[idx][:, None]
    if ffn_bias is not None:
        neurons += along(ffn_bias)
    out["neurons"] = rel(neurons, ffn_out)
    return out
