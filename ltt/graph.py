"""The contribution graph: attribute every layer of a Trace, then prune to a prediction's routes.

Two steps, both in the C core:

1. :func:`attribute` scores every part of every state of a trace (per head and source token,
   residual, bias, FFN) into compact per-layer arrays, a :class:`FullGraph`. It runs once per
   trace and norm and is cached on the trace.
2. :func:`build_graph` applies a threshold mode (DESIGN.md) and prunes backwards from the chosen
   target tokens, giving a :class:`Graph` of named nodes (``X0_t``, ``A{l}_t``, ``M{l}_t``,
   ``I{l}_t``) and weighted edges, exportable as JSON or networkx.

>>> import ltt                                           # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("The capital of France is")   # doctest: +SKIP
>>> g = trace.graph(threshold=0.04)                      # doctest: +SKIP
>>> len(g.edges) > 0                                     # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

from ltt import attribution

# Edge kinds, as the networkx export keys them.
ATTENTION, RESIDUAL, FFN = "attention", "residual", "ffn"


#: Contributions below this floor are not kept by a trace (sparse storage); thresholds below it
#: are answered from an exact dense recomputation when it fits in :data:`DENSE_BUDGET` bytes.
FLOOR = 1e-3
DENSE_BUDGET = int(os.environ.get("LTT_DENSE_BUDGET", 64 * 2**20))
#: A layer whose per-head shares ``[H, T, T]`` would take more bytes than this is scored head
#: by head (twice the core's work, an H-th of the memory).
HEAD_CHUNK_BYTES = int(os.environ.get("LTT_HEAD_CHUNK_BYTES", 256 * 2**20))


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
        modes' "keep the largest" rules stay exact above the floor. No copy of ``dense`` is
        made (a boolean mask and the kept entries only).

        >>> SparseRows.from_dense(np.array([[0.5, 0.0], [0.25, 0.0005]], np.float32), 0.01).values.tolist()
        [0.5, 0.25]
        """
        if dense.ndim == 2:
            return cls.from_heads([dense], floor, per_head=False)
        return cls.from_heads(dense, floor)

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
    edges: SparseRows
    parts: SparseRows
    n_heads: int
    dense_heads: np.ndarray | None = None  # [H, T, T] when the caller keeps it
    dense_edges: np.ndarray | None = None


def attribute_layer(lb: Any, probs: np.ndarray | list, norm: int = 1, floor: float = FLOOR,
                    keep_dense: bool = False) -> LayerScores:
    """Score one layer (buffers ``lb``, probabilities ``probs [H, T, T]``) with the C core.
    ``probs`` may be given in a one-item list, which is emptied once the core has read it (so
    a long trace frees the probabilities before it sparsifies the per-head shares).

    >>> scores = attribute_layer(trace.layers[0], trace.layers[0].attn)   # doctest: +SKIP
    """
    whole = lb.resid_post if lb.parallel else lb.resid_mid
    attn = probs.pop() if isinstance(probs, list) else probs
    H, T = attn.shape[0], attn.shape[1]
    by_head = not keep_dense and 4 * H * T * T > HEAD_CHUNK_BYTES
    post = dict(row_scale=lb.attn_row_scale, col_scale=lb.attn_col_scale, center=lb.attn_center, norm=norm)
    out = attribution.attn_contrib(
        lb.resid_pre, whole, attn, lb.values, lb.w_o, bias=lb.attn_bias,
        extra=lb.ffn_out[None] if lb.parallel else None, keep_heads=not by_head, **post,
    )  # fmt: skip
    if by_head:  # a long layer: each head's shares scored and sparsified on its own
        w_o = lb.w_o
        parts = SparseRows.from_heads(
            (attribution.attn_head_map(h, whole, attn, lb.values, w_o, out["total"], **post) for h in range(H)),
            floor)
    del attn
    if not by_head:
        parts = SparseRows.from_dense(out["heads"], floor)
    if lb.parallel:
        ffn, ffn_resid = out["extra"][0], np.zeros(T, np.float32)
    else:
        block = attribution.contributions(np.stack([lb.resid_mid, lb.ffn_out]), lb.resid_post, norm=norm)
        ffn_resid, ffn = block[0], block[1]
    return LayerScores(
        attn_resid=out["resid"], attn_bias=out["bias"], ffn=ffn, ffn_resid=ffn_resid,
        total=out["total"], parallel=bool(lb.parallel),
        edges=SparseRows.from_dense(out["edges"], floor), parts=parts, n_heads=int(H),
        dense_heads=out["heads"] if keep_dense else None, dense_edges=out["edges"] if keep_dense else None,
    )


def _dense_nbytes(L: int, H: int, T: int) -> int:
    return 4 * L * (H + 1) * T * T


class FullGraph:
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
        self.edges = [s.edges for s in scores]
        self.parts = [s.parts for s in scores]
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
    def n_tokens(self) -> int:
        return int(self.attn_resid.shape[1])

    def nbytes(self) -> int:
        """Bytes held (the sparse rows and the per-state arrays; dense arrays when kept)."""
        total = sum(a.nbytes for a in (self.attn_resid, self.attn_bias, self.ffn, self.ffn_resid, self.attn_total))
        total += sum(e.nbytes + p.nbytes for e, p in zip(self.edges, self.parts))
        if self._dense is not None:
            total += self._dense[0].nbytes + self._dense[1].nbytes
        return total

    def dense_fits(self) -> bool:
        return _dense_nbytes(self.n_layers, self.n_heads, self.n_tokens) <= DENSE_BUDGET

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
            need = _dense_nbytes(L, H, T)
            if need > DENSE_BUDGET or self._source is None:
                raise ValueError(
                    f"the dense per-head shares [L={L}, H={H}, T={T}, T] would take {need / 2**30:.2f} GiB, "
                    f"over the dense budget of {DENSE_BUDGET / 2**30:.2f} GiB (LTT_DENSE_BUDGET): use "
                    f"thresholds >= the floor {self.floor} and the on-demand head functions "
                    "(trace.head_shares, trace.head_view), or raise LTT_DENSE_BUDGET"
                )
            lb = self._source.layers[l]
            s = attribute_layer(lb, lb.attn, self.norm, self.floor, keep_dense=True)
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


def attribute(trace: Any, norm: int = 1) -> FullGraph:
    """Every contribution of ``trace`` (a :class:`FullGraph`), computed by the C core once per
    ``norm`` and kept on the trace. A trace from :meth:`ltt.models.Model.trace` is attributed
    during its forward pass for ``norm=1``; other norms are computed here from the layers.

    >>> full = attribute(trace)                              # doctest: +SKIP
    >>> np.allclose(full.attn.sum(-1) + full.attn_resid + full.attn_bias, 1, atol=1e-4)  # doctest: +SKIP
    True
    """
    norm = check_norm(norm)
    cache = getattr(trace, "full_graphs", None)
    if cache is None:  # a trace-like object (tests build synthetic ones)
        cache = trace.__dict__.setdefault("full_graphs", {})
    if norm in cache:
        return cache[norm]
    layers = trace.layers
    H, T = int(layers[0].w_o.shape[0]), int(layers[0].resid_pre.shape[0])
    keep = _dense_nbytes(len(layers), H, T) <= DENSE_BUDGET
    scores = [attribute_layer(lb, lb.attn, norm, FLOOR, keep_dense=keep) for lb in layers]
    full = FullGraph(scores, norm, FLOOR, source=trace)
    cache[norm] = full
    return full


class Node(NamedTuple):
    """A state or block of the graph: ``name`` is ``X0_t``, ``A{l}_t``, ``M{l}_t`` or ``I{l}_t``.

    ``layer`` is -1 for embeddings; ``kind`` is the name's letter; ``bias`` is the share of the
    state that no edge carries (a bias), 0 where there is none."""

    name: str
    layer: int
    token: int
    kind: str
    bias: float = 0.0


class Edge(NamedTuple):
    """A weighted edge ``source -> target`` of ``kind`` attention, residual or ffn, in ``layer``."""

    source: str
    target: str
    kind: str
    weight: float
    layer: int


def node_name(kind: str, layer: int, token: int) -> str:
    """``node_name("I", 3, 5) == "I3_5"``; the embeddings are ``X0_t`` (layer -1)."""
    return f"X0_{token}" if kind == "X" else f"{kind}{layer}_{token}"


def _input_name(layer: int, token: int) -> str:
    return node_name("X", -1, token) if layer == 0 else node_name("I", layer - 1, token)


@dataclass
class Graph:
    """A pruned contribution graph: the routes to the chosen target tokens.

    >>> g = trace.graph(threshold=0.04, targets=[-1])        # doctest: +SKIP
    >>> g.nodes[0].name, g.edges[0].kind                     # doctest: +SKIP
    ('X0_0', 'attention')
    """

    tokens: list[str]
    token_ids: list[int]
    model_name: str
    n_layers: int
    threshold: float
    renormalize: bool
    targets: list[int]
    norm: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The graph as plain Python data (what :meth:`to_json` writes)."""
        return {
            "model": self.model_name,
            "n_layers": self.n_layers,
            "tokens": list(self.tokens),
            "token_ids": [int(i) for i in self.token_ids],
            "settings": {
                "threshold": self.threshold,
                "renormalize": self.renormalize,
                "targets": list(self.targets),
                "norm": self.norm,
            },
            "nodes": [n._asdict() for n in self.nodes],
            "edges": [e._asdict() for e in self.edges],
        }

    def to_json(self, path: str | None = None, indent: int | None = None) -> str:
        """The graph as JSON text; also written to ``path`` when given.

        >>> data = json.loads(g.to_json())                   # doctest: +SKIP
        """
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    def to_networkx(self):
        """A ``networkx.MultiDiGraph``: nodes with ``layer``, ``token``, ``kind``, ``bias``;
        edges keyed by kind with ``weight`` and ``kind`` (needs the ``networkx`` extra).

        >>> G = g.to_networkx()                              # doctest: +SKIP
        >>> G.edges["I0_1", "A1_1", "residual"]["weight"]    # doctest: +SKIP
        """
        try:
            import networkx as nx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Graph.to_networkx needs networkx: pip install 'ltt[networkx]'"
            ) from exc
        G = nx.MultiDiGraph(model=self.model_name, tokens=list(self.tokens), threshold=self.threshold)
        for n in self.nodes:
            G.add_node(n.name, layer=n.layer, token=n.token, kind=n.kind, bias=n.bias)
        for e in self.edges:
            G.add_edge(e.source, e.target, key=e.kind, weight=e.weight, kind=e.kind, layer=e.layer)
        return G

    def flow(self) -> dict[str, float]:
        """How much of the targets' output states each node carries, through the kept edges.

        Each target's output has flow 1 (split evenly over several targets); a node's flow is
        the sum over its outgoing edges of the edge weight times the flow of the edge's end. The
        FFN share is counted once on the route ``-> M -> I``: an edge into an FFN block passes
        the block's flow on unscaled.
        ``X0_t`` flows say how much each input token feeds the prediction.

        >>> flows = g.flow(); max(flows, key=flows.get)      # doctest: +SKIP
        """
        out_edges: dict[str, list[Edge]] = {}
        for e in self.edges:
            out_edges.setdefault(e.source, []).append(e)
        flow: dict[str, float] = {}
        order = {"X": 0, "A": 1, "M": 2, "I": 3}
        last = self.n_layers - 1
        for n in sorted(self.nodes, key=lambda n: (n.layer, order[n.kind]), reverse=True):
            if n.kind == "I" and n.layer == last and n.token in self.targets:
                flow[n.name] = 1.0 / len(self.targets)
            else:
                flow[n.name] = sum(
                    (1.0 if e.target.startswith("M") else e.weight) * flow.get(e.target, 0.0)
                    for e in out_edges.get(n.name, ())
                )
        return flow

    def __repr__(self) -> str:
        return (
            f"Graph({self.model_name!r}, tokens={len(self.tokens)}, layers={self.n_layers}, "
            f"nodes={len(self.nodes)}, edges={len(self.edges)}, threshold={self.threshold}, "
            f"renormalize={self.renormalize}, targets={self.targets})"
        )


def resolve_targets(targets: Sequence[int] | str | int | None, n_tokens: int) -> list[int]:
    """Token positions from ``targets``: None (the last token), ``"all"``, an int or a list of ints
    (negative counts from the end); out-of-range positions raise a ValueError naming them."""
    if targets is None:
        return [n_tokens - 1]
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets must be a list of token positions or 'all', got {targets!r}")
        return list(range(n_tokens))
    if isinstance(targets, (bool, np.bool_)) or isinstance(targets, Mapping) or not (
        isinstance(targets, (int, np.integer)) or isinstance(targets, Iterable)
    ):
        # issue 11: a dict passed its keys as positions, True passed as token 1
        raise TypeError(f"targets must be an int, a list of int token positions or 'all', got "
                        f"{type(targets).__name__} {targets!r}"[:300])
    if isinstance(targets, (int, np.integer)):
        targets = [int(targets)]
    out: list[int] = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"targets must hold integer token positions, got {t!r}")
        p = int(t) + n_tokens if t < 0 else int(t)
        if not 0 <= p < n_tokens:
            raise ValueError(f"targets holds {int(t)}, outside the {n_tokens} tokens of the prompt")
        if p not in out:
            out.append(p)
    if not out:
        raise ValueError("targets is empty: give at least one token position")
    return sorted(out)


@dataclass
class EdgeWeights:
    """The edge weights of one threshold mode, before pruning (same layout as :class:`FullGraph`)."""

    attn: np.ndarray
    attn_resid: np.ndarray
    attn_bias: np.ndarray
    ffn: np.ndarray
    ffn_resid: np.ndarray


def edge_weights(full: FullGraph, threshold: float, renormalize: bool) -> EdgeWeights:
    """Dense edge weights of a threshold mode: the raw head-summed shares (``renormalize=False``),
    or per state: drop every part below ``threshold``, rescale the rest to 1, then sum heads.
    Needs the dense arrays (:attr:`FullGraph.heads`), so only for traces within the dense budget;
    :func:`build_graph` works from the sparse rows instead."""
    if not renormalize:
        return EdgeWeights(full.attn, full.attn_resid, full.attn_bias, full.ffn, full.ffn_resid)
    L, T = full.attn_resid.shape
    attn = np.empty_like(full.attn)
    attn_resid = np.empty_like(full.attn_resid)
    attn_bias = np.empty_like(full.attn_bias)
    ffn = np.empty_like(full.ffn)
    ffn_resid = np.zeros_like(full.ffn_resid)
    for l in range(L):
        r = attribution.renormalize(full.heads[l], _singles(full, l), threshold)
        attn[l], attn_resid[l], attn_bias[l] = r["edges"], r["single"][0], r["single"][1]
        ffn[l], ffn_resid[l] = _ffn_renormalized(full, l, r, threshold)
    return EdgeWeights(attn, attn_resid, attn_bias, ffn, ffn_resid)


def _singles(full: FullGraph, l: int) -> np.ndarray:
    # The non-edge parts of the state the attention edges enter: residual, bias (and the FFN
    # output in a parallel layer, where attention and FFN share one decomposition).
    if full.parallel[l]:
        return np.stack([full.attn_resid[l], full.attn_bias[l], full.ffn[l]])
    return np.stack([full.attn_resid[l], full.attn_bias[l]])


def _ffn_renormalized(full: FullGraph, l: int, r: dict[str, np.ndarray], threshold: float):
    if full.parallel[l]:
        return r["single"][2], np.zeros_like(full.ffn_resid[l])
    b = attribution.renormalize(full.ffn[l][None, :, None], full.ffn_resid[l][None], threshold)
    return b["edges"][:, 0], b["single"][0]


@dataclass
class SparseEdgeWeights:
    """Edge weights of a threshold mode for thresholds >= the floor: attention edges as one
    :class:`SparseRows` per layer, the rest ``[L, T]``."""

    edges: list[SparseRows]
    attn_resid: np.ndarray
    attn_bias: np.ndarray
    ffn: np.ndarray
    ffn_resid: np.ndarray


def _renormalize_rows(parts: SparseRows, single: np.ndarray, threshold: float) -> tuple[SparseRows, np.ndarray]:
    """The renormalize rule on one layer's sparse per-head parts: the kept parts summed per
    (target, source), and the renormalised single parts."""
    T = len(parts.indptr) - 1
    r = attribution.renormalize_sparse(parts.indptr, parts.sources, parts.heads, parts.values, single, threshold)
    kept = r["parts"]
    nz = kept != 0
    key = parts.rows[nz] * T + parts.sources[nz]
    uniq, inv = np.unique(key, return_inverse=True)
    vals = np.zeros(len(uniq), np.float64)  # float64 sums: within 2 ulp of the dense kernel
    np.add.at(vals, inv, kept[nz].astype(np.float64))
    indptr = np.zeros(T + 1, np.int64)
    np.cumsum(np.bincount(uniq // T, minlength=T), out=indptr[1:])
    return SparseRows(indptr, (uniq % T).astype(np.int32), vals.astype(np.float32)), r["single"]


def sparse_edge_weights(full: FullGraph, threshold: float, renormalize: bool) -> SparseEdgeWeights:
    """Edge weights of a threshold mode from the sparse rows (``threshold >= full.floor``);
    equal to :func:`edge_weights` on the listed entries.

    >>> w = sparse_edge_weights(attribute(trace), 0.04, renormalize=True)   # doctest: +SKIP
    >>> w.edges[0].lookup([3], [1])                                      # doctest: +SKIP
    """
    if not renormalize:
        return SparseEdgeWeights(full.edges, full.attn_resid, full.attn_bias, full.ffn, full.ffn_resid)
    L = full.n_layers
    edges: list[SparseRows] = []
    attn_resid = np.empty_like(full.attn_resid)
    attn_bias = np.empty_like(full.attn_bias)
    ffn = np.empty_like(full.ffn)
    ffn_resid = np.zeros_like(full.ffn_resid)
    for l in range(L):
        e, single = _renormalize_rows(full.parts[l], _singles(full, l), threshold)
        edges.append(e)
        attn_resid[l], attn_bias[l] = single[0], single[1]
        ffn[l], ffn_resid[l] = _ffn_renormalized(full, l, {"single": single}, threshold)
    return SparseEdgeWeights(edges, attn_resid, attn_bias, ffn, ffn_resid)


def _prune_sparse(w: SparseEdgeWeights, parallel: np.ndarray, targets: list[int], threshold: float):
    L, T = w.attn_resid.shape
    indptr = np.zeros(L * T + 1, np.int64)
    offset = 0
    for l, e in enumerate(w.edges):
        indptr[l * T + 1 : (l + 1) * T + 1] = e.indptr[1:] + offset
        offset += int(e.indptr[-1])
    sources = np.concatenate([e.sources for e in w.edges])
    values = np.concatenate([e.values for e in w.edges])
    return attribution.prune_sparse(indptr, sources, values, w.attn_resid, w.ffn, w.ffn_resid,
                                    parallel, np.array(targets, np.int64), threshold)
def check_norm(norm: Any) -> int:
    """``norm`` as the int 1 or 2: a float or bool (equal to 1, and a cache key of 1) is a TypeError."""
    if isinstance(norm, (bool, np.bool_)) or not isinstance(norm, (int, np.integer)):
        raise TypeError(f"norm must be the int 1 or 2, got {type(norm).__name__} {norm!r}")
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm!r}")
    return int(norm)


def build_graph(
    trace: Any,
    threshold: float = 0.04,
    renormalize: bool = True,
    targets: Sequence[int] | str | int | None = None,
    norm: int = 1,
) -> Graph:
    """The pruned contribution graph of ``trace`` for the predictions at ``targets``.

    Every edge reachable backwards from the outputs ``I{L-1}_t`` of the targets through edges of
    weight ``>= threshold`` is kept (DESIGN.md). With ``threshold=0.0, renormalize=False`` every
    edge is kept with its raw contribution. Thresholds at or above :data:`FLOOR` are answered
    from the trace's sparse rows; lower ones from the dense arrays, recomputed when the trace
    fits in :data:`DENSE_BUDGET` and refused with a message otherwise.

    >>> g = build_graph(trace, threshold=0.04, renormalize=True, targets=[-1])  # doctest: +SKIP
    """
    threshold = attribution.check_threshold(threshold)
    if not isinstance(renormalize, (bool, np.bool_)):
        raise TypeError(f"renormalize must be True or False, got {renormalize!r}")
    norm = check_norm(norm)
    T = len(trace.token_ids)
    tgt = resolve_targets(targets, T)
    full = attribute(trace, norm)
    if threshold >= full.floor:
        w = sparse_edge_weights(full, threshold, bool(renormalize))
        kept = _prune_sparse(w, full.parallel, tgt, threshold)
        edge_at = lambda l, t, s: float(w.edges[l].lookup([t], [s])[0])  # noqa: E731
    else:
        if not full.dense_fits():
            raise ValueError(
                f"threshold={threshold!r} is below the floor {full.floor} under which this trace keeps "
                f"no contributions, and its dense arrays do not fit the dense budget "
                f"({DENSE_BUDGET / 2**30:.2f} GiB, LTT_DENSE_BUDGET): choose threshold >= {full.floor}"
            )
        w = edge_weights(full, threshold, bool(renormalize))
        kept = attribution.prune(w.attn, w.attn_resid, w.ffn, w.ffn_resid, full.parallel,
                                 np.array(tgt, np.int64), threshold)
        edge_at = lambda l, t, s: float(w.attn[l, t, s])  # noqa: E731
    return _assemble(trace, full, w, kept, edge_at, threshold, bool(renormalize), tgt, norm)


def _assemble(trace, full, w, kept, edge_at, threshold, renormalize, targets, norm) -> Graph:
    L = len(full.parallel)
    edges: list[Edge] = []
    nodes: dict[str, Node] = {}

    def add_node(kind: str, layer: int, token: int) -> str:
        # A bias is a share of the state the attention edges enter: A{l}_t, or I{l}_t when
        # layer l is a parallel block.
        name = node_name(kind, layer, token)
        if name not in nodes:
            has_bias = kind == "A" or (kind == "I" and full.parallel[layer])
            bias = float(w.attn_bias[layer, token]) if has_bias else 0.0
            nodes[name] = Node(name, layer, token, kind, bias)
        return name

    def attn_state(l: int, t: int) -> str:
        # The state the attention edges of layer l enter: A{l}_t, or I{l}_t in a parallel layer.
        return add_node("I" if full.parallel[l] else "A", l, t)

    def add_input(l: int, t: int) -> str:
        return add_node("X", -1, t) if l == 0 else add_node("I", l - 1, t)

    for l, t, s in kept["attn_edges"].tolist():
        edges.append(Edge(add_input(l, s), attn_state(l, t), ATTENTION, edge_at(l, t, s), l))
    for l, t in zip(*np.nonzero(kept["attn_resid"])):
        l, t = int(l), int(t)
        edges.append(Edge(add_input(l, t), attn_state(l, t), RESIDUAL, float(w.attn_resid[l, t]), l))
    for l, t in zip(*np.nonzero(kept["ffn"])):
        l, t = int(l), int(t)
        src = add_input(l, t) if full.parallel[l] else attn_state(l, t)
        out = add_node("I", l, t)
        mid = add_node("M", l, t)
        weight = float(w.ffn[l, t])
        edges.append(Edge(src, mid, FFN, weight, l))
        edges.append(Edge(mid, out, FFN, weight, l))
    for l, t in zip(*np.nonzero(kept["ffn_resid"])):
        l, t = int(l), int(t)
        edges.append(Edge(attn_state(l, t), add_node("I", l, t), RESIDUAL, float(w.ffn_resid[l, t]), l))
    for t in targets:
        add_node("I", L - 1, t)

    kind_order = {"X": 0, "A": 1, "M": 2, "I": 3}
    node_list = sorted(nodes.values(), key=lambda n: (n.layer, kind_order[n.kind], n.token))
    edges.sort(key=lambda e: (e.layer, e.target, e.source, e.kind))
    model = getattr(trace, "model", None)
    return Graph(
        tokens=list(trace.tokens),
        token_ids=[int(i) for i in trace.token_ids],
        model_name=str(getattr(model, "name", "model")),
        n_layers=L,
        threshold=threshold,
        renormalize=renormalize,
        targets=targets,
        norm=norm,
        nodes=node_list,
        edges=edges,
    )
