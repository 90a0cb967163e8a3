"""One prompt's routes reduced to component importance: :class:`PromptRoutes` and :func:`summarize`.

For one prompt's pruned graph ``g`` (threshold, threshold mode and targets as in
:func:`ltt.graph.build_graph`) with ``flow = g.flow()``:

* **head share** of head h in layer l: the sum over the kept attention edges ``e = (s -> t)``
  of layer l of ``frac_h(e) * weight(e) * flow(target(e))``. ``frac_h(e)`` is head h's fraction
  of the edge's weight, from the C core's own per-head parts: with ``renormalize=False`` the raw
  parts ``heads[l,h,t,s] / sum_h' heads[l,h',t,s]``; with ``renormalize=True`` the parts after
  the threshold mode (:func:`ltt.kernels.renormalize_sparse`: the parts of the state at or
  above the threshold, or its single largest part when none is), that head's renormalised part
  over the edge's. A head's share is the fraction of the targets' output that passes through
  that head on the pruned routes; the shares of one layer's heads, its residual edges and its
  bias add up to at most 1.
* **FFN share** of layer l: the sum over the kept FFN edges ``M{l}_t -> I{l}_t`` of
  ``weight(e) * flow(I{l}_t)`` (= the flow through the layer's FFN blocks).
* **source shares** ``[T]``: ``flow(X0_t)``, how much of the prediction each input token feeds.
* **source-position pattern** of a kept attention edge ``s -> t``: ``"same"`` (s = t),
  ``"previous"`` (s = t-1), ``"first"`` (s = 0), ``"other"``, first match in that order. Each
  head share is split over the four patterns (``PromptRoutes.patterns [L, H, 4]``).
* **prediction**: the model's most likely next token after the prompt and its probability
  (the last position, whatever the targets).

A head (FFN block) is *on the route* of a prompt when its share is > 0.

>>> r = summarize(model.trace("The capital of France is"))     # doctest: +SKIP
>>> r.heads.shape, float(r.sources.sum()) <= 1.0                # doctest: +SKIP
((30, 9), True)
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np

from ltt.checks import DEFAULT_THRESHOLD, Targets
from ltt.graph import Graph, GraphSettings, build, sparse_edge_weights
from ltt.interpret import edge_head_shares
from ltt.nodes import Stage
from ltt.scores import TraceScores, SparseRows, attribute

#: Source-position patterns of an attention edge ``s -> t``, in the order they are tested.
PATTERNS = ("same", "previous", "first", "other")


def prompt_key(prompt: str) -> str:
    """The first 16 hex digits of the prompt's SHA-1: with its index, a record's resume key."""
    return hashlib.sha1(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _pattern(t: int, s: int) -> int:
    if s == t:
        return 0
    if s == t - 1:
        return 1
    if s == 0:
        return 2
    return 3


# --------------------------------------------------------------------------------------------
# one prompt


class PromptRoutes:
    """The routes of one prompt reduced to component importance (see the module docstring).

    * ``index``: the prompt's position in the input; ``key``: :func:`prompt_key`;
    * ``patterns [L, H, 4]``: each head's share split by source-position pattern
      (:data:`PATTERNS`); ``heads [L, H]`` is their sum. Only the heads on the route are
      stored (a pruned graph holds few), so many summaries stay small in memory;
    * ``ffn [L]``: each FFN block's share; ``sources [T]``: the flow reaching each ``X0_t``;
    * ``prediction``: ``{"token", "id", "prob"}`` of the most likely next token;
    * ``faithfulness``: :meth:`ltt.faithfulness.Faithfulness.summary` of the prompt's graph when
      :func:`trace_many` was asked for it, else None.
    """

    __slots__ = ("index", "prompt", "key", "tokens", "ffn", "sources", "prediction", "_shape", "_where", "_values",
                 "faithfulness")

    def __init__(self, index: int, prompt: str, key: str, tokens: list[str], patterns: np.ndarray,
                 ffn: np.ndarray, sources: np.ndarray, prediction: dict[str, Any]):
        self.index, self.prompt, self.key, self.tokens = index, prompt, key, tokens
        self.ffn, self.sources, self.prediction = ffn, sources, prediction
        self.faithfulness: dict[str, Any] | None = None
        patterns = np.asarray(patterns, dtype=np.float64)
        self._shape = patterns.shape
        on = np.nonzero(patterns.sum(axis=-1) > 0)
        self._where = np.stack(on, axis=1).astype(np.int32)  # [K, 2] (layer, head)
        self._values = patterns[on]  # [K, 4]

    @property
    def patterns(self) -> np.ndarray:
        out = np.zeros(self._shape)
        out[self._where[:, 0], self._where[:, 1]] = self._values
        return out

    @property
    def heads(self) -> np.ndarray:
        return self.patterns.sum(axis=-1)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def to_record(self) -> dict[str, Any]:
        """Plain JSON data; heads are stored sparsely as ``[layer, head, same, previous, first,
        other]`` rows for the heads on the route."""
        rows = [[int(l), int(h)] + [float(v) for v in vals] for (l, h), vals in zip(self._where, self._values)]
        rec = {
            "index": int(self.index),
            "key": self.key,
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "prediction": dict(self.prediction),
            "heads": rows,
            "ffn": [float(v) for v in self.ffn],
            "sources": [float(v) for v in self.sources],
        }
        if self.faithfulness is not None:
            rec["faithfulness"] = dict(self.faithfulness)
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any], n_layers: int, n_heads: int) -> "PromptRoutes":
        patterns = np.zeros((n_layers, n_heads, len(PATTERNS)))
        for row in rec["heads"]:
            patterns[int(row[0]), int(row[1])] = row[2:]
        out = cls(
            index=int(rec["index"]),
            prompt=str(rec["prompt"]),
            key=str(rec["key"]),
            tokens=[str(t) for t in rec["tokens"]],
            patterns=patterns,
            ffn=np.asarray(rec["ffn"], dtype=np.float64),
            sources=np.asarray(rec["sources"], dtype=np.float64),
            prediction=dict(rec["prediction"]),
        )
        out.faithfulness = rec.get("faithfulness")
        return out

    def __repr__(self) -> str:
        text = self.prompt if len(self.prompt) <= 40 else self.prompt[:37] + "..."
        return (f"PromptRoutes(index={self.index}, prompt={text!r}, heads_on_route="
                f"{int((self.heads > 0).sum())}, prediction={self.prediction.get('token')!r})")


def _kept_head_parts(full: TraceScores, threshold: float,
                     edges: dict[int, list[tuple[int, int]]]) -> dict[int, np.ndarray]:
    """``{layer: [E, H]}``: the per-head parts, after the ``renormalize=True`` threshold mode as
    the C core applies it, of the attention edges ``(t, s)`` of each layer in ``edges``.

    Thresholds below the trace's floor are answered from the layer's exact dense parts, listed
    down to the threshold (the trace's sparse rows keep only the parts at or above the floor)."""
    if threshold < full.floor:
        tiny = float(np.finfo(np.float32).tiny)  # every part > 0: masked positions are not parts
        parts = [SparseRows.from_dense(full.layer_dense(l)[0], max(threshold, tiny)) if l in edges
                 else full.parts[l] for l in range(full.n_layers)]
        # a shallow copy whose per-head rows list down to the threshold: ``parts`` is a read-only
        # property over ``_parts``, and the trace's own TraceScores keeps its rows at the floor
        full = copy.copy(full)
        full._parts = parts
    kept = sparse_edge_weights(full, threshold, True).parts
    T, H = full.n_tokens, full.n_heads
    out: dict[int, np.ndarray] = {}
    for l, pairs in edges.items():
        rows = full.parts[l]
        want = np.array([t * T + s for t, s in pairs], np.int64)
        order = np.argsort(want)
        key = rows.rows * T + rows.sources
        at = np.minimum(np.searchsorted(want[order], key), len(want) - 1)
        hit = want[order][at] == key
        parts = np.zeros((len(pairs), H))
        parts[order[at[hit]], rows.heads[hit].astype(np.int64)] = kept[l][hit]
        out[l] = parts
    return out


# The graph settings' keywords, as build_graph takes them (checked by GraphSettings).
def summarize(
    trace: Any,
    threshold: float = DEFAULT_THRESHOLD,
    renormalize: bool = True,
    targets: Targets = None,
    norm: int = 1,
    graph: Graph | None = None,
    index: int = 0,
) -> PromptRoutes:
    """Reduce the pruned graph of ``trace`` to component importance (module docstring).

    ``graph``: an already built ``trace.graph(threshold, renormalize, targets, norm)`` to reuse.

    >>> r = summarize(model.trace("The capital of France is"))     # doctest: +SKIP
    >>> r.heads.shape, float(r.sources.sum()) <= 1.0                # doctest: +SKIP
    ((30, 9), True)
    """
    if graph is None:
        graph = build(trace, GraphSettings(threshold, renormalize, targets, norm))
    full = attribute(trace, graph.norm)
    L, H, T = full.n_layers, full.n_heads, full.n_tokens
    flow = graph.flow()
    attention = [(e, e.target_token, e.source_token) for e in graph.edges if e.stage is Stage.ATTENTION]
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for e, t, s in attention:
        by_layer.setdefault(e.layer, []).append((t, s))
    if graph.renormalize:
        kept = _kept_head_parts(full, graph.threshold, by_layer)
        row = {l: 0 for l in by_layer}
    patterns = np.zeros((L, H, len(PATTERNS)))
    for e, t, s in attention:
        if graph.renormalize:
            parts = kept[e.layer][row[e.layer]]
            row[e.layer] += 1
        else:  # the raw parts, exactly (the sparse rows leave out the ones below the floor)
            parts = np.asarray(edge_head_shares(trace, e.layer, t, s, graph.norm), dtype=np.float64)
        total = parts.sum()
        if total > 0:
            patterns[e.layer, :, _pattern(t, s)] += parts / total * (e.weight * flow.get(e.target, 0.0))
    ffn = np.zeros(L)
    for e in graph.edges:
        if e.stage is Stage.FFN_OUT:
            ffn[e.layer] += e.weight * flow.get(e.target, 0.0)
    sources = np.zeros(T)
    for n in graph.nodes:
        if n.kind == "X":
            sources[n.token] = flow.get(n.name, 0.0)
    logits = np.asarray(trace.logits, dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = int(np.argmax(probs))
    model = getattr(trace, "model", None)
    tok = getattr(model, "tokenizer", None)
    text = tok.decode([top]) if tok is not None else str(top)
    return PromptRoutes(
        index=int(index),
        prompt=str(trace.prompt),
        key=prompt_key(str(trace.prompt)),
        tokens=[str(t) for t in trace.tokens],
        patterns=patterns,
        ffn=ffn,
        sources=sources,
        prediction={"token": text, "id": top, "prob": float(probs[top])},
    )
