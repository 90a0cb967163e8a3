"""Per-layer attribution scores of a Trace: every part of every state, kept sparse above a floor.

:func:`attribute_layer` scores one layer in the C core (per head and source token, residual,
bias, FFN) and keeps the parts at or above :data:`CONTRIBUTION_FLOOR` as :class:`SparseRows`;
:func:`attribute` gives a trace's :class:`TraceScores` (all layers, one norm), cached on the
trace. :mod:`ltt.graph` prunes a TraceScores to a prediction's routes.

>>> full = attribute(trace)                              # doctest: +SKIP
>>> full.edges[0].to_dense().shape                       # doctest: +SKIP
(5, 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ltt import config, kernels
from ltt.checks import check_norm
from ltt.plan import CONTRIBUTION_FLOOR, dense_nbytes, make_plan

#: Process-wide overrides of the budgets of :mod:`ltt.config` (None: read the environment
#: variable at each trace). Thresholds below :data:`CONTRIBUTION_FLOOR` are answered from an exact dense
#: recomputation when it fits the dense budget (``LTT_DENSE_BUDGET``); a layer whose per-head
#: shares ``[H, T, T]`` exceed ``LTT_HEAD_CHUNK_BYTES`` is scored head by head; one whose
#: probabilities exceed ``LTT_STREAM_BYTES`` streams its heads (:func:`_attribute_streamed`).
#: The policy itself is decided once per trace, in :mod:`ltt.plan`.
DENSE_BUDGET: int | None = None
HEAD_CHUNK_BYTES: int | None = None
STREAM_BYTES: int | None = None


def dense_budget() -> int:
    return config.dense_budget() if DENSE_BUDGET is None else int(DENSE_BUDGET)


def budgets() -> dict[str, int]:
    """The three byte budgets of the memory modes, read now (overrides first)."""
    return {
        "dense": dense_budget(),
        "head_chunk": config.head_chunk_bytes() if HEAD_CHUNK_BYTES is None else int(HEAD_CHUNK_BYTES),
        "stream": config.stream_bytes() if STREAM_BYTES is None else int(STREAM_BYTES),
    }


@dataclass
class SparseRows:
    """One layer's entries per target row t (CSR): ``sources[indptr[t]:indptr[t+1]]`` with
    ``values`` (and ``heads`` for per-head parts), sorted by (head, source) within a row."""

    indptr: np.ndarray  # [T + 1] int64
    sources: np.ndarray  # [n] int32
    values: np.ndarray  # [n] float32
    heads: np.ndarray | None = None  # [n] int16

    @property
    def rows(self) -> np.ndarray:
        """``[n]`` int64: the target row of each entry."""
        return np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.sources, self.values, self.heads) if a is not None)

    @classmethod
    def from_dense(cls, dense: np.ndarray, floor: float) -> "SparseRows":
        """``dense [T, S]`` (edges) or ``[H, T, S]`` (per-head parts): every entry ``>= floor``
        plus each row's largest (the first in (head, source) order), so that the threshold
        modes' "keep the largest" rules stay exact above the floor. No copy of a C-contiguous
        ``dense`` is made (a boolean mask, its (target, head, source) copy and the kept entries).

        >>> SparseRows.from_dense(np.array([[0.5, 0.0], [0.25, 0.0005]], np.float32), 0.01).values.tolist()
        [0.5, 0.25]
        """
        per_head = dense.ndim == 3
        stack = np.ascontiguousarray(dense if per_head else dense[None])  # [H, T, S]
        H, T, S = stack.shape
        # the kept entries found in (target, head, source) order, already the rows' order: one
        # flat index each (a boolean mask read in that order), split into its three parts
        flat = np.flatnonzero((stack >= floor).transpose(1, 0, 2))
        t, rest = np.divmod(flat, H * S)
        h, s = np.divmod(rest, S)
        v = stack.reshape(-1)[(h * T + t) * S + s].astype(np.float32)
        best_s = stack.argmax(axis=2)  # [H, T], each head's first largest
        best_v = np.take_along_axis(stack, best_s[:, :, None], axis=2)[:, :, 0]
        rows = np.arange(T)
        best_h = best_v.argmax(axis=0)  # each row's first largest: the first head holding its max
        value = best_v[best_h, rows]
        missing = value < floor  # a row with nothing at or above the floor: its largest alone
        if missing.any():
            t = np.concatenate([t, rows[missing]])
            order = np.argsort(t, kind="stable")
            t = t[order]
            h = np.concatenate([h, best_h[missing]])[order]
            s = np.concatenate([s, best_s[best_h, rows][missing]])[order]
            v = np.concatenate([v, value[missing].astype(np.float32)])[order]
        indptr = np.zeros(T + 1, np.int64)
        np.cumsum(np.bincount(t, minlength=T), out=indptr[1:])
        return cls(indptr, s.astype(np.int32), v, h.astype(np.int16) if per_head else None)

    @classmethod
    def from_heads(cls, maps: Any, floor: float, per_head: bool = True) -> "SparseRows":
        """:meth:`from_dense` of per-head maps ``[T, S]`` given one at a time, in head order (a
        long layer's heads are scored one by one and never held together)."""
        hs, ts, ss, vs, best_s, best_v = [], [], [], [], [], []
        for h, m in enumerate(maps):
            t, s = np.nonzero(m >= floor)
            hs.append(np.full(len(t), h, np.int64))
            ts.append(t)
            ss.append(s)
            vs.append(m[t, s].astype(np.float32))
            bs = m.argmax(axis=1)
            best_s.append(bs)
            best_v.append(m[np.arange(m.shape[0]), bs])
        best_sa, best_va = np.stack(best_s), np.stack(best_v)  # [H, T]
        T = best_sa.shape[1]
        rows = np.arange(T)
        best_h = best_va.argmax(axis=0)  # each row's first largest: the first head holding its max
        value = best_va[best_h, rows]
        missing = value < floor  # listed already unless below the floor
        h = np.concatenate(hs + [best_h[missing]])
        t = np.concatenate(ts + [rows[missing]])
        s = np.concatenate(ss + [best_sa[best_h, rows][missing]])
        v = np.concatenate(vs + [value[missing].astype(np.float32)])
        order = np.lexsort((s, h, t))  # by target row, then (head, source)
        h, t, s, v = h[order], t[order], s[order], v[order]
        indptr = np.zeros(T + 1, np.int64)
        np.cumsum(np.bincount(t, minlength=T), out=indptr[1:])
        return cls(indptr, s.astype(np.int32), v, h.astype(np.int16) if per_head else None)

    def to_dense(self, T: int, H: int | None = None) -> np.ndarray:
        """The dense equivalent (listed entries, zero elsewhere)."""
        if self.heads is None:
            out = np.zeros((T, T), np.float32)
            out[self.rows, self.sources] = self.values
        else:
            out = np.zeros((H, T, T), np.float32)
            out[self.heads, self.rows, self.sources] = self.values
        return out

    def lookup(self, t: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Values at ``(t[i], s[i])`` (edges only; 0 where not listed)."""
        t = np.asarray(t, np.int64)
        s = np.asarray(s, np.int64)
        out = np.zeros(len(t), np.float32)
        for i, (ti, si) in enumerate(zip(t.tolist(), s.tolist())):
            lo, hi = self.indptr[ti], self.indptr[ti + 1]
            j = lo + np.searchsorted(self.sources[lo:hi], si)
            if j < hi and self.sources[j] == si:
                out[i] = self.values[j]
        return out


@dataclass
class LayerScores:
    """One layer's compact attribution (what a trace keeps per layer): single shares ``[T]``,
    the normalisers, and the attention edges and per-head parts above the floor."""

    attn_resid: np.ndarray
    attn_bias: np.ndarray
    ffn: np.ndarray
    ffn_resid: np.ndarray
    total: np.ndarray
    parallel: bool
    edges: SparseRows | None  # None when only the dense arrays are kept (sparsified on demand)
    parts: SparseRows | None
    n_heads: int
    dense_heads: np.ndarray | None = None  # [H, T, T] when the caller keeps it
    dense_edges: np.ndarray | None = None


class LayerProbs:
    """One layer's attention probabilities as :func:`attribute_layer` reads them: ``held``
    ``[H, T, T]`` (taken once with :meth:`take`, after which this object no longer refers to
    it, so a long trace frees it before sparsifying), or ``of_heads``, a function of a list of
    heads giving their probabilities ``[n, T, T]`` recomputed on demand
    (:meth:`ltt.buffers.LayerBuffers.attn_heads`; the ``"stream"`` mode needs it)."""

    def __init__(self, held: Any = None, of_heads: Any = None):
        if held is None and of_heads is None:
            raise ValueError("LayerProbs needs held probabilities or of_heads")
        self._held, self._of_heads = held, of_heads

    def take(self) -> Any:
        """All heads ``[H, T, T]``: the held array, released here (taken once)."""
        if self._held is None:
            raise RuntimeError("these probabilities are given per head only (the 'stream' mode)")
        held, self._held = self._held, None
        return held

    def heads(self, heads: Sequence[int]) -> Any:
        """Some heads' probabilities ``[len(heads), T, T]``."""
        if self._of_heads is not None:
            return self._of_heads(list(heads))
        return self._held[list(heads)]

    @property
    def streamed(self) -> bool:
        return self._held is None


def attribute_layer(lb: Any, probs: Any, mode: str = "layer", norm: int = 1, floor: float = CONTRIBUTION_FLOOR,
                    backend: Any = None) -> LayerScores:
    """Score one layer (buffers ``lb``, probabilities ``probs``: a :class:`LayerProbs` or an
    array ``[H, T, T]``) in the memory ``mode`` of the trace's plan (:data:`ltt.plan.MODES`):
    ``"dense"`` keeps the dense shares (sparse rows made when first asked for), ``"layer"``
    sparsifies the layer's shares at once, ``"heads"`` scores and sparsifies head by head,
    ``"stream"`` also takes each head's probabilities on demand (:func:`_attribute_streamed`).
    ``backend``: None for the C core, or the torch backend (:mod:`ltt.backends`).

    >>> scores = attribute_layer(trace.layers[0], trace.layers[0].attn)   # doctest: +SKIP
    """
    if not isinstance(probs, LayerProbs):
        probs = LayerProbs(held=probs)
    if backend is not None:
        return backend.attribute_layer(lb, probs, mode, norm, floor)
    if mode == "stream":
        if not probs.streamed:
            held = probs.take()
            probs = LayerProbs(of_heads=lambda hs: held[list(hs)])
        return _attribute_streamed(lb, probs.heads, norm, floor)
    whole = lb.resid_post if lb.parallel else lb.resid_mid
    attn = probs.take()
    H, T = attn.shape[0], attn.shape[1]
    keep_dense = mode == "dense"
    by_head = mode == "heads"
    post = dict(lb.attn_norm.core_args(), norm=norm)
    out = kernels.attn_contrib(
        lb.resid_pre, whole, attn, lb.values, lb.w_o, bias=lb.attn_bias,
        extra=lb.ffn_out[None] if lb.parallel else None, keep_heads=not by_head, **post,
    )  # fmt: skip
    if by_head:  # a long layer: each head's shares scored and sparsified on its own
        w_o = lb.w_o
        parts = SparseRows.from_heads(
            (kernels.attn_head_map(h, whole, attn, lb.values, w_o, out["total"], **post) for h in range(H)),
            floor)
    del attn
    if not by_head:
        parts = None if keep_dense else SparseRows.from_dense(out["heads"], floor)
    if lb.parallel:
        ffn, ffn_resid = out["extra"][0], np.zeros(T, np.float32)
    else:
        block = kernels.contributions(np.stack([lb.resid_mid, lb.ffn_out]), lb.resid_post, norm=norm)
        ffn_resid, ffn = block[0], block[1]
    return LayerScores(
        attn_resid=out["resid"], attn_bias=out["bias"], ffn=ffn, ffn_resid=ffn_resid,
        total=out["total"], parallel=bool(lb.parallel),
        edges=None if keep_dense else SparseRows.from_dense(out["edges"], floor), parts=parts, n_heads=int(H),
        dense_heads=out["heads"] if keep_dense else None, dense_edges=out["edges"] if keep_dense else None,
    )


def _attribute_streamed(lb: Any, probs_of: Any, norm: int, floor: float) -> LayerScores:
    """:func:`attribute_layer` with the probabilities given per head (recomputed on demand): a
    first pass scores each kv group's heads for the normalisers (the single parts' raws are the
    same in every group's call), a second scores each head alone with the layer's normalisers.
    Memory: one group's ``[H/G, T, T]`` at a time and the edges ``[T, T]``. Shares agree with the
    one-call path to float32 rounding."""
    whole = lb.resid_post if lb.parallel else lb.resid_mid
    values, w_o = lb.values, lb.w_o
    H, G, T = int(w_o.shape[0]), int(values.shape[1]), lb.n_tokens
    per = H // G
    post = dict(lb.attn_norm.core_args(), norm=norm)
    extra = lb.ffn_out[None] if lb.parallel else None
    singles = None  # raws of the residual, bias and extra parts [2 + E, T] float64
    head_raws = np.zeros(T)
    for g in range(G):
        out = kernels.attn_contrib(
            lb.resid_pre, whole, probs_of(range(g * per, (g + 1) * per)), values[:, g : g + 1],
            w_o[g * per : (g + 1) * per], bias=lb.attn_bias, extra=extra, **post,
        )  # fmt: skip
        shares = np.vstack([out["resid"], out["bias"], out["extra"]]).astype(np.float64)
        raws = shares * out["total"]
        singles = raws if singles is None else singles
        head_raws += out["total"] - raws.sum(axis=0)
    total = singles.sum(axis=0) + head_raws
    edges = np.zeros((T, T), np.float32)

    def head_maps():
        for h in range(H):
            g = h // per
            m = kernels.attn_head_map(0, whole, probs_of([h]), values[:, g : g + 1], w_o[h : h + 1], total, **post)
            np.add(edges, m, out=edges)
            yield m

    parts = SparseRows.from_heads(head_maps(), floor)
    single = (singles / total).astype(np.float32)
    if lb.parallel:
        ffn, ffn_resid = single[2], np.zeros(T, np.float32)
    else:
        block = kernels.contributions(np.stack([lb.resid_mid, lb.ffn_out]), lb.resid_post, norm=norm)
        ffn_resid, ffn = block[0], block[1]
    return LayerScores(
        attn_resid=single[0], attn_bias=single[1], ffn=ffn, ffn_resid=ffn_resid, total=total,
        parallel=bool(lb.parallel), edges=SparseRows.from_dense(edges, floor), parts=parts, n_heads=H,
    )


class TraceScores:
    """Every contribution of a trace (L layers, H heads, T tokens), kept compactly:

    * ``attn_resid [L, T]``, ``attn_bias [L, T]``: residual and bias shares of the state after
      attention of target t (the layer output for a parallel layer);
    * ``ffn [L, T]``, ``ffn_resid [L, T]``: FFN and residual shares of the layer output (for a
      parallel layer ``ffn`` is the FFN output's share of the one-step decomposition and
      ``ffn_resid`` is unused, zero);
    * ``attn_total [L, T]``: the normalisers, to recompute any head's shares on demand;
    * ``edges[l]``, ``parts[l]``: :class:`SparseRows` of the attention edge weights (summed over
      heads) and of the per-head shares, every entry ``>= floor`` plus each row's largest;
    * ``parallel [L]``.

    The dense ``attn [L, T, T]`` and ``heads [L, H, T, T]`` are properties: recomputed exactly
    from the trace's layers when first asked for and kept only while they fit in
    :data:`DENSE_BUDGET`; a long trace never holds them.
    """

    def __init__(self, scores: Sequence[LayerScores], norm: int, floor: float, source: Any = None):
        self.attn_resid = np.stack([s.attn_resid for s in scores])
        self.attn_bias = np.stack([s.attn_bias for s in scores])
        self.ffn = np.stack([s.ffn for s in scores])
        self.ffn_resid = np.stack([s.ffn_resid for s in scores])
        self.attn_total = np.stack([s.total for s in scores])
        self.parallel = np.array([s.parallel for s in scores])
        self._edges = [s.edges for s in scores]
        self._parts = [s.parts for s in scores]
        self.n_heads = scores[0].n_heads
        self.norm = norm
        self.floor = floor
        self._source = source  # the trace, to recompute the dense arrays
        self._dense: tuple[np.ndarray, np.ndarray] | None = None
        self._layer_dense: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if all(s.dense_heads is not None for s in scores):
            self._dense = (np.stack([s.dense_heads for s in scores]), np.stack([s.dense_edges for s in scores]))

    @property
    def n_layers(self) -> int:
        return len(self.parallel)

    @property
    def holds_dense(self) -> bool:
        """Whether the dense ``heads``/``attn`` arrays are held (a trace within the dense budget)."""
        return self._dense is not None

    @property
    def edges(self) -> list[SparseRows]:
        """Per layer, the attention edge weights at or above the floor (:class:`SparseRows`)."""
        return self._sparse(self._edges, 1)

    @property
    def parts(self) -> list[SparseRows]:
        """Per layer, the per-head shares at or above the floor (:class:`SparseRows` with heads)."""
        return self._sparse(self._parts, 0)

    def _sparse(self, rows: list, which: int) -> list[SparseRows]:
        for l, r in enumerate(rows):
            if r is None:  # kept dense only: sparsified once, on first use
                rows[l] = SparseRows.from_dense(self.layer_dense(l)[which], self.floor)
        return rows

    @property
    def n_tokens(self) -> int:
        return int(self.attn_resid.shape[1])

    def nbytes(self) -> int:
        """Bytes held (the sparse rows and the per-state arrays; dense arrays when kept)."""
        total = sum(a.nbytes for a in (self.attn_resid, self.attn_bias, self.ffn, self.ffn_resid, self.attn_total))
        total += sum(r.nbytes for r in self._edges + self._parts if r is not None)
        if self._dense is not None:
            total += self._dense[0].nbytes + self._dense[1].nbytes
        return total

    def dense_fits(self) -> bool:
        return dense_nbytes(self.n_layers, self.n_heads, self.n_tokens) <= dense_budget()

    def layer_dense(self, l: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer ``l``'s dense per-head shares ``[H, T, T]`` and edge weights ``[T, T]``,
        recomputed exactly from the trace's layer on first use and kept (the whole trace must
        fit :data:`DENSE_BUDGET`).

        >>> heads, edges = attribute(trace).layer_dense(0)       # doctest: +SKIP
        """
        if self._dense is not None:
            return self._dense[0][l], self._dense[1][l]
        if l not in self._layer_dense:
            L, H, T = self.n_layers, self.n_heads, self.n_tokens
            need, budget = dense_nbytes(L, H, T), dense_budget()
            if need > budget or self._source is None:
                raise ValueError(
                    f"the dense per-head shares [L={L}, H={H}, T={T}, T] would take {need / 2**30:.2f} GiB, "
                    f"over the dense budget of {budget / 2**30:.2f} GiB (LTT_DENSE_BUDGET): use "
                    f"thresholds >= the floor {self.floor} and the on-demand head functions "
                    "(trace.head_shares, trace.head_view), or raise LTT_DENSE_BUDGET"
                )
            lb = self._source.layers[l]
            s = attribute_layer(lb, lb.attn, "dense", self.norm, self.floor, backend=_backend_of(self._source))
            self._layer_dense[l] = (s.dense_heads, s.dense_edges)
        return self._layer_dense[l]

    def _dense_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._dense is None:
            per_layer = [self.layer_dense(l) for l in range(self.n_layers)]
            self._dense = (np.stack([h for h, _ in per_layer]), np.stack([e for _, e in per_layer]))
            self._layer_dense.clear()
        return self._dense

    @property
    def heads(self) -> np.ndarray:
        """``[L, H, T, T]`` per-head share of source s in the state of target t (dense,
        recomputed on first use; refused over :data:`DENSE_BUDGET`)."""
        return self._dense_arrays()[0]

    @property
    def attn(self) -> np.ndarray:
        """``[L, T, T]`` attention edge weights, the per-head shares summed (dense, as
        :attr:`heads`)."""
        return self._dense_arrays()[1]


def attribute(trace: Any, norm: int = 1) -> TraceScores:
    """Every contribution of ``trace`` (a :class:`TraceScores`), computed by the C core once per
    ``norm`` and kept on the trace. A trace from :meth:`ltt.models.Model.trace` is attributed
    during its forward pass for ``norm=1``; other norms are computed here from the layers.

    >>> full = attribute(trace)                              # doctest: +SKIP
    >>> np.allclose(full.attn.sum(-1) + full.attn_resid + full.attn_bias, 1, atol=1e-4)  # doctest: +SKIP
    True
    """
    norm = check_norm(norm)
    cache = getattr(trace, "full_graphs", None)  # a trace-like object without one is not cached
    if cache is not None and norm in cache:
        return cache[norm]
    layers = trace.layers
    H, T = int(layers[0].w_o.shape[0]), int(layers[0].resid_pre.shape[0])
    plan = make_plan(len(layers), H, T, budgets=budgets())
    backend = _backend_of(trace)
    mode = "heads" if plan.mode(0) == "stream" else plan.mode(0)  # lb.attn holds every head already
    scores = [attribute_layer(lb, lb.attn, mode, norm, plan.floor, backend) for lb in layers]
    full = TraceScores(scores, norm, plan.floor, source=trace)
    if cache is not None:
        cache[norm] = full
    return full


def _backend_of(trace: Any) -> Any:
    """The torch backend the trace's model was loaded with (:mod:`ltt.backends`), or None (the
    C core)."""
    return getattr(getattr(trace, "model", None), "backend", None)
