"""The sparse twins: edge weights and head shares kept as rows above a floor, pruned and renormalised.

Part of :mod:`ltt._reference` (read its docstring for the conventions every twin shares).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from ltt._reference.dense import prune

# The twins of the sparse C entry points; prune_sparse repeats prune's signature on purpose.
KERNELS = ("prune_sparse", "renormalize_sparse")

def sparsify(dense: np.ndarray, floor: float, heads: bool = False) -> dict[str, np.ndarray]:
    """The sparse form of edge weights or head shares kept above ``floor``, plus each row's largest.

    * ``heads=False``: ``dense [L, T, T]`` edge weights; row ``l * T + t`` lists the sources
      ``s <= t`` of target (l, t). Returns ``indptr [L*T + 1]`` int64, ``sources`` int32,
      ``weights`` float32: the arguments of :func:`prune_sparse`.
    * ``heads=True``: ``dense [H, T, T]`` per-head shares of one layer; row ``t`` lists the parts
      ``(h, s)``, ``s <= t``, in (h, s) order. Returns ``indptr [T + 1]``, ``sources`` int32,
      ``heads`` int16, ``parts`` float32: the arguments of :func:`renormalize_sparse`.

    A row lists every entry ``>= floor`` (compared in float64, as the kernels compare with a
    threshold) and, whatever its value, its largest entry (the first in row order), so that for
    every threshold ``>= floor`` the sparse kernels give what the dense ones give on ``dense``.
    Entries above the diagonal (``s > t``) are not edges nor parts and are never listed.

    >>> sp = sparsify(np.array([[[0.5, 0.0], [0.25, 0.001]]]), 0.01)
    >>> sp["indptr"].tolist(), sp["sources"].tolist(), sp["weights"].tolist()
    ([0, 1, 2], [0, 0], [0.5, 0.25])
    """
    d = np.asarray(dense, dtype=np.float32)
    if d.ndim != 3 or d.shape[1] != d.shape[2]:
        raise ValueError(f"dense must have shape (L or H, T, T), got {d.shape}")
    K, T = d.shape[0], d.shape[1]
    if heads:  # row t: every (h, s), in (h, s) order
        rows = d.transpose(1, 0, 2).reshape(T, K * T)
        src_of, head_of, t_of = np.tile(np.arange(T), K), np.repeat(np.arange(K), T), np.arange(T)
    else:  # row l * T + t: every s
        rows = d.reshape(K * T, T)
        src_of, head_of, t_of = np.arange(T), np.zeros(T, np.int64), np.tile(np.arange(T), K)
    causal = src_of[None, :] <= t_of[:, None]
    keep = causal & (rows.astype(np.float64) >= floor)
    largest = np.argmax(np.where(causal, rows, -np.inf), axis=1)  # the first of each row's largest
    keep[np.arange(len(rows)), largest] = True
    r, c = np.nonzero(keep)  # row by row, each row in column order
    out = {
        "indptr": np.concatenate([[0], np.cumsum(np.bincount(r, minlength=len(rows)))]).astype(np.int64),
        "sources": src_of[c].astype(np.int32),
    }
    if heads:
        out["heads"] = head_of[c].astype(np.int16)
        out["parts"] = rows[r, c]
    else:
        out["weights"] = rows[r, c]
    return out


def _check_rows(indptr, sources, heads, R: int, T: int) -> None:
    """ValueError unless the rows are well formed (see :func:`sparsify`); row r is target r % T."""
    ip = np.asarray(indptr)
    src = np.asarray(sources)
    if ip.shape != (R + 1,) or src.ndim != 1 or (heads is not None and np.shape(heads) != src.shape):
        raise ValueError("indptr, sources (and heads) have inconsistent shapes")
    if ip[0] != 0 or ip[-1] != len(src) or np.any(np.diff(ip) < 0):
        raise ValueError("indptr must start at 0, never decrease and end at len(sources)")
    for r in range(R):
        s = src[ip[r] : ip[r + 1]].astype(np.int64)
        h = np.zeros_like(s) if heads is None else np.asarray(heads)[ip[r] : ip[r + 1]].astype(np.int64)
        if np.any(s < 0) or np.any(s > r % T) or np.any(h < 0):
            raise ValueError(f"a source or head of row {r} is out of range")
        key = h * T + s
        if np.any(np.diff(key) <= 0):
            raise ValueError(f"the entries of row {r} do not strictly increase")


def densify(indptr, sources, values, shape, heads=None) -> np.ndarray:
    """The dense equivalent of sparse rows: the listed values, 0 elsewhere (float32).

    ``shape`` is ``(L, T, T)`` for edge weights (row ``l * T + t``) or, with ``heads``,
    ``(H, T, T)`` for one layer's head shares (row ``t``).
    """
    ip = np.asarray(indptr, dtype=np.int64)
    out = np.zeros(shape, np.float32)
    T = shape[1]
    for r in range(len(ip) - 1):
        for j in range(ip[r], ip[r + 1]):
            if heads is None:
                out[r // T, r % T, sources[j]] = values[j]
            else:
                out[heads[j], r, sources[j]] = values[j]
    return out


def prune_sparse(indptr: np.ndarray, sources: np.ndarray, weights: np.ndarray, *prune_args: Any,
                 **prune_kwargs: Any) -> dict[str, np.ndarray]:
    """:func:`prune` with the attention weights as sparse rows: by definition, ``prune`` of the
    dense equivalent (:func:`densify`), where an unlisted source has weight 0.

    The edges into target (l, t) are ``sources[j]`` with weight ``weights[j]`` for ``j`` in
    ``indptr[l*T + t] : indptr[l*T + t + 1]``, sources strictly increasing and ``<= t``. An
    unlisted source weighs 0, so it is kept at threshold 0 and, when nothing of a node reaches
    the threshold, it can be its largest incoming edge: with a negative residual (and FFN) and
    no listed weight above 0, the first unlisted source s wins (tie order: residual, FFN, then
    attention sources in increasing s, listed or not). The other arguments (``attn_resid, ffn,
    ffn_resid, parallel, targets, threshold``) and the result are
    those of :func:`prune`; ``sparsify`` makes rows for which this equals ``prune`` of the
    original dense weights for every threshold ``>= floor``.
    """
    args = inspect.signature(prune).bind(None, *prune_args, **prune_kwargs).arguments
    L, T = np.shape(args["attn_resid"])
    _check_rows(indptr, sources, None, L * T, T)
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != np.shape(sources):
        raise ValueError("weights must have one entry per source")
    for name in ("weights", "attn_resid", "ffn", "ffn_resid"):
        if not np.all(np.isfinite(np.asarray(w if name == "weights" else args[name], dtype=np.float32))):
            raise ValueError(f"{name} contains NaN or inf")
    return prune(densify(indptr, np.asarray(sources), w, (L, T, T)), *prune_args, **prune_kwargs)


def renormalize_sparse(
    indptr: np.ndarray,
    sources: np.ndarray,
    heads: np.ndarray,
    parts: np.ndarray,
    single: np.ndarray,
    threshold: float,
) -> dict[str, np.ndarray]:
    """:func:`renormalize` on one layer's head shares kept as sparse rows, part by part.

    Target t's head parts are ``parts[j]`` (source ``sources[j] <= t``, head ``heads[j] >= 0``)
    for ``j`` in ``indptr[t] : indptr[t + 1]``, in (head, source) order; ``parts >= 0``; an
    unlisted part is 0. ``single [E, T]`` as in :func:`renormalize`. The rule is renormalize's:
    each part below ``threshold`` is dropped, the rest rescaled to sum to 1; when none is kept,
    the largest part alone (first in (head, source) then single order) gets share 1 — unless
    it is 0, when every share is 0. An unlisted part (0) is never the largest of a row with a
    part above 0 and a kept 0 adds nothing, so whether a row has unlisted parts (H is not
    given) never changes the result.

    Returns ``parts [P]`` (each listed part after the rule) and ``single [E, T]``, float32.
    Summing the returned parts by (t, source) gives renormalize's ``edges`` on the dense
    equivalent up to the float32 rounding of each head's term (the dense kernel rounds the sum
    once): within ``rtol=1e-6`` when summed in float64 (``np.bincount``); ``single`` is exact.
    """
    s = np.asarray(single, dtype=np.float64)
    E, T = s.shape
    _check_rows(indptr, sources, heads, T, T)
    p = np.asarray(parts, dtype=np.float64)
    if p.shape != np.shape(sources) or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("parts must be finite shares >= 0, one per source")
    if np.any(s < 0):  # as renormalize: shares only
        raise ValueError(f"single holds a negative share ({s[s < 0].flat[0]!r}); shares are >= 0")
    ip = np.asarray(indptr, dtype=np.int64)
    out_parts = np.zeros(len(p))
    out_single = np.zeros((E, T))
    for t in range(T):
        row = np.concatenate([p[ip[t] : ip[t + 1]], s[:, t]])
        keep = row >= threshold
        if not keep.any() and len(row):
            keep[int(np.argmax(row))] = True
        kept = np.where(keep, row, 0.0)
        # all kept parts 0 (or, with nothing listed, a negative single the largest: the unlisted
        # 0s are larger then, and every share is 0)
        kept = kept / kept.sum() if kept.sum() > 0 else np.zeros_like(kept)
        out_parts[ip[t] : ip[t + 1]] = kept[: ip[t + 1] - ip[t]]
        out_single[:, t] = kept[ip[t + 1] - ip[t] :]
    return {"parts": out_parts.astype(np.float32), "single": out_single.astype(np.float32)}
