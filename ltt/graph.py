"""The contribution graph: prune a trace's scores to a prediction's routes, under one GraphSettings.

Two steps, both in the C core:

1. :func:`ltt.scores.attribute` scores every part of every state of a trace (per head and
   source token, residual, bias, FFN) into compact per-layer arrays, a :class:`TraceScores`. It
   runs once per trace and norm and is cached on the trace.
2. :func:`build` (keyword face: :func:`build_graph`) applies a threshold mode (DESIGN.md) and
   prunes backwards from the chosen target tokens, giving a :class:`Graph` of nodes (``X0_t``,
   ``A{l}_t``, ``M{l}_t``, ``I{l}_t``) and typed edges (:mod:`ltt.nodes`), exportable as JSON
   or networkx. Its settings are one frozen :class:`GraphSettings`, validated once.

>>> import ltt                                           # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("The capital of France is")   # doctest: +SKIP
>>> g = trace.graph(threshold=0.04)                      # doctest: +SKIP
>>> len(g.edges) > 0                                     # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltt import kernels, scores
from ltt.checks import (DEFAULT_THRESHOLD, Targets, check_norm, check_renormalize, check_targets, check_threshold,
                        resolve_targets)
from ltt.nodes import ATTENTION, FFN, RESIDUAL, Edge, Node, Stage, attention_state, endpoints, node_name
from ltt.output import check_output_path, write_whole
from ltt.scores import TraceScores, SparseRows, attribute

__all__ = ["GraphSettings", "Graph", "Node", "Edge", "Stage", "build", "build_graph", "edge_weights",
           "sparse_edge_weights", "mode_weights", "ModeWeights", "resolve_targets", "ATTENTION", "RESIDUAL", "FFN"]


@dataclass(frozen=True)
class GraphSettings:
    """What a pruned graph is built with, validated once here: ``threshold`` in [0, 1),
    ``renormalize`` (the threshold mode), ``targets`` (None for the last token, ``"all"``, or
    token positions, negative counting from the end; :meth:`positions` resolves them against a
    prompt) and ``norm`` (1 or 2). Bad values raise naming the argument (:mod:`ltt.checks`).

    >>> s = GraphSettings(threshold=0.1, targets=[-1])
    >>> s.targets, s.positions(5), s.renormalize
    ((-1,), [4], True)
    """

    threshold: float = DEFAULT_THRESHOLD
    renormalize: bool = True
    targets: tuple[int, ...] | str | None = None
    norm: int = 1

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        put("threshold", check_threshold(self.threshold))
        put("renormalize", check_renormalize(self.renormalize))
        put("norm", check_norm(self.norm))
        put("targets", check_targets(self.targets))

    def positions(self, n_tokens: int) -> list[int]:
        """The target token positions in a prompt of ``n_tokens`` (sorted, no repeats)."""
        return resolve_targets(self.targets, n_tokens)


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

    @property
    def settings(self) -> GraphSettings:
        """The settings this graph was built with, its targets resolved to positions."""
        return GraphSettings(self.threshold, self.renormalize, tuple(self.targets), self.norm)

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
            "edges": [e.to_dict() for e in self.edges],
        }

    def to_json(self, path: str | None = None, indent: int | None = None) -> str:
        """The graph as JSON text; also written to ``path`` when given.

        >>> data = json.loads(g.to_json())                   # doctest: +SKIP
        """
        path = None if path is None else check_output_path(path, "path")  # before any work
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            write_whole(path, text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Graph":
        """The Graph that :meth:`to_dict` gave ``data`` (equal to the original, typed edges
        included: each edge's stage and tokens are read from its kind and its end nodes).

        >>> Graph.from_dict(g.to_dict()) == g                # doctest: +SKIP
        True
        """
        try:
            st = data["settings"]
            nodes = [Node(str(n["name"]), int(n["layer"]), int(n["token"]), str(n["kind"]), float(n["bias"]))
                     for n in data["nodes"]]
            by_name = {n.name: n for n in nodes}
            edges = []
            for e in data["edges"]:
                src, dst = by_name[e["source"]], by_name[e["target"]]
                stage = _stage_of(str(e["kind"]), src.kind, dst.kind)
                edges.append(Edge(src.name, dst.name, stage.kind, float(e["weight"]), int(e["layer"]), stage,
                                  dst.token, src.token))
            return cls(tokens=[str(t) for t in data["tokens"]], token_ids=[int(i) for i in data["token_ids"]],
                       model_name=str(data["model"]), n_layers=int(data["n_layers"]),
                       threshold=check_threshold(st["threshold"]), renormalize=check_renormalize(st["renormalize"]),
                       targets=[int(t) for t in st["targets"]], norm=check_norm(st["norm"]), nodes=nodes, edges=edges)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"data is not a graph written by Graph.to_dict/to_json: {type(exc).__name__} {exc}") from exc

    @classmethod
    def from_json(cls, text_or_path: str) -> "Graph":
        """The Graph of :meth:`to_json`'s text, or of the file at that path.

        >>> Graph.from_json(g.to_json()) == g               # doctest: +SKIP
        True
        """
        if not isinstance(text_or_path, str):
            import os

            text_or_path = os.fspath(text_or_path)
            with open(text_or_path, encoding="utf-8") as fh:
                text = fh.read()
        elif text_or_path.lstrip().startswith("{"):
            text = text_or_path
        else:
            with open(text_or_path, encoding="utf-8") as fh:
                text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"text_or_path holds no JSON graph: {exc}") from exc
        return cls.from_dict(data)

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
                    (1.0 if e.stage is Stage.FFN_IN else e.weight) * flow.get(e.target, 0.0)
                    for e in out_edges.get(n.name, ())
                )
        return flow

    def __repr__(self) -> str:
        return (
            f"Graph({self.model_name!r}, tokens={len(self.tokens)}, layers={self.n_layers}, "
            f"nodes={len(self.nodes)}, edges={len(self.edges)}, threshold={self.threshold}, "
            f"renormalize={self.renormalize}, targets={self.targets})"
        )


def _stage_of(kind: str, source_kind: str, target_kind: str) -> Stage:
    """The stage of an exported edge from its kind and its end nodes' letters (the residual
    around an FFN leaves ``A{l}_t``; the one around attention leaves ``I{l-1}_t`` or ``X0_t``)."""
    if kind == ATTENTION:
        return Stage.ATTENTION
    if kind == RESIDUAL:
        return Stage.FFN_RESIDUAL if source_kind == "A" else Stage.ATTENTION_RESIDUAL
    if kind == FFN:
        return Stage.FFN_IN if target_kind == "M" else Stage.FFN_OUT
    raise ValueError(f"an edge has kind {kind!r}: expected 'attention', 'residual' or 'ffn'")


@dataclass
class EdgeWeights:
    """The edge weights of one threshold mode, before pruning (same layout as :class:`TraceScores`)."""

    attn: np.ndarray
    attn_resid: np.ndarray
    attn_bias: np.ndarray
    ffn: np.ndarray
    ffn_resid: np.ndarray


def edge_weights(full: TraceScores, threshold: float, renormalize: bool) -> EdgeWeights:
    """Dense edge weights of a threshold mode: the raw head-summed shares (``renormalize=False``),
    or per state: drop every part below ``threshold``, rescale the rest to 1, then sum heads.
    Needs the dense arrays (:attr:`TraceScores.heads`), so only for traces within the dense budget;
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
        r = kernels.renormalize(full.heads[l], _singles(full, l), threshold)
        attn[l], attn_resid[l], attn_bias[l] = r["edges"], r["single"][0], r["single"][1]
        ffn[l], ffn_resid[l] = _ffn_renormalized(full, l, r, threshold)
    return EdgeWeights(attn, attn_resid, attn_bias, ffn, ffn_resid)


def _singles(full: TraceScores, l: int) -> np.ndarray:
    # The non-edge parts of the state the attention edges enter: residual, bias (and the FFN
    # output in a parallel layer, where attention and FFN share one decomposition).
    if full.parallel[l]:
        return np.stack([full.attn_resid[l], full.attn_bias[l], full.ffn[l]])
    return np.stack([full.attn_resid[l], full.attn_bias[l]])


def _ffn_renormalized(full: TraceScores, l: int, r: dict[str, np.ndarray], threshold: float):
    if full.parallel[l]:
        return r["single"][2], np.zeros_like(full.ffn_resid[l])
    b = kernels.renormalize(full.ffn[l][None, :, None], full.ffn_resid[l][None], threshold)
    return b["edges"][:, 0], b["single"][0]


@dataclass
class SparseEdgeWeights:
    """Edge weights of a threshold mode for thresholds >= the floor: attention edges as one
    :class:`SparseRows` per layer, the rest ``[L, T]``. ``parts[l]``: the per-head parts of
    ``TraceScores.parts[l]`` after the threshold mode (kept ones rescaled, the others 0; the raw
    values for ``renormalize=False``)."""

    edges: list[SparseRows]
    attn_resid: np.ndarray
    attn_bias: np.ndarray
    ffn: np.ndarray
    ffn_resid: np.ndarray
    parts: list[np.ndarray] = field(default_factory=list)


def _renormalize_rows(parts: SparseRows, single: np.ndarray, threshold: float):
    """The renormalize rule on one layer's sparse per-head parts: the kept parts summed per
    (target, source), the renormalised single parts, and the kept parts themselves."""
    T = len(parts.indptr) - 1
    r = kernels.renormalize_sparse(parts.indptr, parts.sources, parts.heads, parts.values, single, threshold)
    kept = r["parts"]
    nz = kept != 0
    key = parts.rows[nz] * T + parts.sources[nz]
    uniq, inv = np.unique(key, return_inverse=True)
    vals = np.zeros(len(uniq), np.float64)  # float64 sums: within 2 ulp of the dense kernel
    np.add.at(vals, inv, kept[nz].astype(np.float64))
    indptr = np.zeros(T + 1, np.int64)
    np.cumsum(np.bincount(uniq // T, minlength=T), out=indptr[1:])
    return SparseRows(indptr, (uniq % T).astype(np.int32), vals.astype(np.float32)), r["single"], kept


def sparse_edge_weights(full: TraceScores, threshold: float, renormalize: bool) -> SparseEdgeWeights:
    """Edge weights of a threshold mode from the sparse rows (``threshold >= full.floor``);
    equal to :func:`edge_weights` on the listed entries.

    >>> w = sparse_edge_weights(attribute(trace), 0.04, renormalize=True)   # doctest: +SKIP
    >>> w.edges[0].lookup([3], [1])                                      # doctest: +SKIP
    """
    if not renormalize:
        return SparseEdgeWeights(full.edges, full.attn_resid, full.attn_bias, full.ffn, full.ffn_resid,
                                 [p.values for p in full.parts])
    L = full.n_layers
    edges: list[SparseRows] = []
    attn_resid = np.empty_like(full.attn_resid)
    attn_bias = np.empty_like(full.attn_bias)
    ffn = np.empty_like(full.ffn)
    ffn_resid = np.zeros_like(full.ffn_resid)
    parts: list[np.ndarray] = []
    for l in range(L):
        e, single, kept = _renormalize_rows(full.parts[l], _singles(full, l), threshold)
        edges.append(e)
        parts.append(kept)
        attn_resid[l], attn_bias[l] = single[0], single[1]
        ffn[l], ffn_resid[l] = _ffn_renormalized(full, l, {"single": single}, threshold)
    return SparseEdgeWeights(edges, attn_resid, attn_bias, ffn, ffn_resid, parts)


def _prune_sparse(w: SparseEdgeWeights, parallel: np.ndarray, targets: list[int], threshold: float):
    L, T = w.attn_resid.shape
    indptr = np.zeros(L * T + 1, np.int64)
    offset = 0
    for l, e in enumerate(w.edges):
        indptr[l * T + 1 : (l + 1) * T + 1] = e.indptr[1:] + offset
        offset += int(e.indptr[-1])
    sources = np.concatenate([e.sources for e in w.edges])
    values = np.concatenate([e.values for e in w.edges])
    return kernels.prune_sparse(indptr, sources, values, w.attn_resid, w.ffn, w.ffn_resid,
                                    parallel, np.array(targets, np.int64), threshold)


@dataclass
class ModeWeights:
    """The edge weights of one threshold mode, before pruning, as :func:`build` reads them: dense
    :class:`EdgeWeights` for a trace that holds its dense arrays (or a threshold below the floor,
    recomputed within the dense budget), else :class:`SparseEdgeWeights` from the sparse rows.
    ``attention(l, t, s)`` is one attention edge's weight either way; the per-state arrays
    ``attn_resid``, ``attn_bias``, ``ffn``, ``ffn_resid [L, T]`` are on ``weights``.

    On the sparse rows an attention edge that is not listed reads 0: with ``renormalize=True``
    that is exact (a part under the floor is under the threshold too, and each state's largest
    part is always listed); with ``renormalize=False`` its raw weight is below the floor
    (``listed`` tells which, for a caller that needs the exact value)."""

    weights: EdgeWeights | SparseEdgeWeights
    sparse: bool
    renormalize: bool

    def attention(self, l: int, t: int, s: int) -> float:
        if self.sparse:
            return float(self.weights.edges[l].lookup([t], [s])[0])
        return float(self.weights.attn[l, t, s])

    def listed(self, l: int, t: int, s: int) -> bool:
        """Whether the weight of attention edge ``(l, t, s)`` is held (always, when dense)."""
        if not self.sparse:
            return True
        rows = self.weights.edges[l]
        lo, hi = rows.indptr[t], rows.indptr[t + 1]
        return bool(np.any(rows.sources[lo:hi] == s))


def mode_weights(full: TraceScores, threshold: float, renormalize: bool) -> ModeWeights:
    """The edge weights of ``full`` under one threshold mode, from the sparse rows when the
    threshold is at or above the floor and the trace holds no dense arrays, else from the dense
    arrays (refused with a message naming the threshold when they do not fit the dense budget).

    >>> mw = mode_weights(attribute(trace), 0.04, True); mw.attention(0, 3, 1)   # doctest: +SKIP
    """
    if threshold >= full.floor and not full.holds_dense:  # a short trace prunes its dense arrays
        return ModeWeights(sparse_edge_weights(full, threshold, renormalize), True, renormalize)
    if not full.dense_fits():
        raise ValueError(
            f"threshold={threshold!r} is below the floor {full.floor} under which this trace keeps "
            f"no contributions, and its dense arrays do not fit the dense budget "
            f"({scores.dense_budget() / 2**30:.2f} GiB, LTT_DENSE_BUDGET): choose threshold >= {full.floor}"
        )
    return ModeWeights(edge_weights(full, threshold, renormalize), False, renormalize)


# The public keyword signature of the four graph settings; summarize, diff and the exports repeat
# it on purpose (a researcher's IDE shows each option) and hand it to GraphSettings at once.
def build_graph(
    trace: Any,
    threshold: float = DEFAULT_THRESHOLD,
    renormalize: bool = True,
    targets: Targets = None,
    norm: int = 1,
) -> Graph:
    """The pruned contribution graph of ``trace`` for the predictions at ``targets``: the
    keyword face of :func:`build` (what ``trace.graph(...)`` calls).

    Every edge reachable backwards from the outputs ``I{L-1}_t`` of the targets through edges of
    weight ``>= threshold`` is kept (DESIGN.md). With ``threshold=0.0, renormalize=False`` every
    edge is kept with its raw contribution. Thresholds at or above the trace's floor are answered
    from its sparse rows; lower ones from the dense arrays, recomputed when the trace fits in
    :data:`ltt.scores.DENSE_BUDGET` and refused with a message otherwise.

    >>> g = build_graph(trace, threshold=0.04, renormalize=True, targets=[-1])  # doctest: +SKIP
    """
    return build(trace, GraphSettings(threshold, renormalize, targets, norm))


def build(trace: Any, settings: GraphSettings) -> Graph:
    """The pruned contribution graph of ``trace`` under ``settings`` (see :func:`build_graph`).

    >>> g = build(trace, GraphSettings(threshold=0.04, targets="all"))   # doctest: +SKIP
    """
    if not isinstance(settings, GraphSettings):
        raise TypeError(f"settings must be a GraphSettings, got {type(settings).__name__}")
    threshold, renormalize = settings.threshold, settings.renormalize
    settings = dataclasses.replace(settings, targets=tuple(settings.positions(len(trace.token_ids))))
    full = attribute(trace, settings.norm)
    mw = mode_weights(full, threshold, renormalize)
    if mw.sparse:
        kept = _prune_sparse(mw.weights, full.parallel, list(settings.targets), threshold)
    else:
        w = mw.weights
        kept = kernels.prune(w.attn, w.attn_resid, w.ffn, w.ffn_resid, full.parallel,
                                 np.array(settings.targets, np.int64), threshold)
    w, edge_at = mw.weights, mw.attention
    return _assemble(trace, full, w, kept, edge_at, settings)


def _assemble(trace, full, w, kept, edge_at, settings: GraphSettings) -> Graph:
    """The Graph of the kept edges (``settings.targets``: resolved positions)."""
    L = len(full.parallel)
    edges: list[Edge] = []
    nodes: dict[str, Node] = {}

    parallel = [bool(p) for p in full.parallel]
    names: dict[tuple[str, int, int], str] = {}

    def add(stage: Stage, l: int, t: int, s: int, weight: float) -> None:
        src, dst = endpoints(stage, l, t, s, parallel[l])
        edges.append(Edge(add_node(*src), add_node(*dst), stage.kind, weight, l, stage, t, s))

    def add_node(kind: str, layer: int, token: int) -> str:
        # A bias is a share of the state the attention edges enter (A{l}_t, or I{l}_t when
        # layer l is a parallel block).
        name = names.get((kind, layer, token))
        if name is None:
            name = names[kind, layer, token] = node_name(kind, layer, token)
            has_bias = layer >= 0 and (kind, layer, token) == attention_state(layer, token, parallel[layer])
            bias = float(w.attn_bias[layer, token]) if has_bias else 0.0
            nodes[name] = Node(name, layer, token, kind, bias)
        return name

    for l, t, s in kept["attn_edges"].tolist():
        add(Stage.ATTENTION, l, t, s, edge_at(l, t, s))
    for l, t in zip(*np.nonzero(kept["attn_resid"])):
        add(Stage.ATTENTION_RESIDUAL, int(l), int(t), int(t), float(w.attn_resid[l, t]))
    for l, t in zip(*np.nonzero(kept["ffn"])):
        l, t = int(l), int(t)
        add(Stage.FFN_IN, l, t, t, float(w.ffn[l, t]))
        add(Stage.FFN_OUT, l, t, t, float(w.ffn[l, t]))
    for l, t in zip(*np.nonzero(kept["ffn_resid"])):
        add(Stage.FFN_RESIDUAL, int(l), int(t), int(t), float(w.ffn_resid[l, t]))
    for t in settings.targets:
        add_node("I", L - 1, t)

    kind_order = {"X": 0, "A": 1, "M": 2, "I": 3}
    node_list = sorted(nodes.values(), key=lambda n: (n.layer, kind_order[n.kind], n.token))
    edges.sort(key=lambda e: (e.layer, e.target, e.source, e.kind))
    model = getattr(trace, "model", None)
    return Graph(
        tokens=list(trace.tokens),
        token_ids=[int(i) for i in trace.token_ids],
        model_name=str(getattr(model, "name", None) or getattr(trace, "model_name", None) or "model"),
        n_layers=L,
        threshold=settings.threshold,
        renormalize=settings.renormalize,
        targets=list(settings.targets),
        norm=settings.norm,
        nodes=node_list,
        edges=edges,
    )
