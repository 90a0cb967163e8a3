"""Contrastive graphs: what changes in the routes between two prompts (``ltt.diff``).

:func:`diff` builds the pruned graph of each trace with the same settings and compares them on
the positions of ``trace_a``: two prompts of the same length are compared token by token, others
through an ``align`` mapping from positions of ``trace_a`` to positions of ``trace_b``.

* **Edges**: the union of the two pruned graphs' edges (an FFN route ``A -> M -> I`` appears
  once, as its ``M -> I`` edge). For each: ``weight_a``, ``weight_b``, the edge's weight in each
  trace's threshold mode before pruning (so an edge pruned on one side still has its weight
  there), ``delta = weight_b - weight_a``; ``flow_a``, ``flow_b``, the flow through the edge in
  each pruned graph (``weight * flow(target)``, 0 where the edge was pruned), ``flow_delta``.
  Sorted by ``|flow_delta|`` (``by="flow"``) or ``|delta|`` (``by="weight"``). Edges with an
  endpoint that the alignment leaves without a counterpart are counted in ``unmatched``.
* **Components**: the head, FFN and source-token shares of :func:`ltt.routes.summarize` for each
  side, and their differences (b - a), largest first in :meth:`TraceDiff.top_components`.

The result is a typed object with an HTML table view in Jupyter (``_repr_html_``); the two
graphs side by side with these changes marked are ``ltt.DiffWidget(trace_a, trace_b)``
(:mod:`ltt.widget.diff`).

The module is named ``contrast`` rather than ``diff`` so that the function ``ltt.diff`` is never
shadowed by a submodule of the same name once that submodule has been imported.

>>> import ltt                                                      # doctest: +SKIP
>>> model = ltt.load("smollm2-135m")                                # doctest: +SKIP
>>> a = model.trace("When Mary and John went to the store, John gave a drink to")   # doctest: +SKIP
>>> b = model.trace("When Mary and John went to the store, Mary gave a drink to")   # doctest: +SKIP
>>> d = ltt.diff(a, b); d.edges[0], d.top_components(3)            # doctest: +SKIP
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ltt.checks import DEFAULT_THRESHOLD, Targets, check_norm, is_int
from ltt.graph import GraphSettings, ModeWeights, build, mode_weights
from ltt.interpret import edge_head_shares
from ltt.nodes import Stage, endpoint_names
from ltt.scores import attribute
from ltt.routes import summarize

__all__ = ["diff", "TraceDiff", "EdgeChange"]


class EdgeChange(NamedTuple):
    """One edge of either pruned graph, named by the positions of ``trace_a`` (``source``,
    ``target``) and of ``trace_b`` (``source_b``, ``target_b``); typed: its ``stage`` and the
    token positions of its ends in each trace (``target_token``, ``source_token``,
    ``target_token_b``, ``source_token_b``; source and target agree but for attention)."""

    source: str
    target: str
    kind: str
    layer: int
    source_b: str
    target_b: str
    weight_a: float
    weight_b: float
    delta: float
    flow_a: float
    flow_b: float
    flow_delta: float
    stage: Stage
    target_token: int
    source_token: int
    target_token_b: int
    source_token_b: int

    def to_dict(self) -> dict[str, Any]:
        """The exported fields: the names, kind, layer, weights and flows (not the typed ones)."""
        return {k: getattr(self, k) for k in self._fields[:12]}


@dataclass
class TraceDiff:
    """The result of :func:`diff`: changed edges and components between two traces.

    ``heads_a``, ``heads_b`` ``[L, H]``, ``ffn_a``, ``ffn_b`` ``[L]``: component shares;
    ``sources_a [T_a]`` and ``sources_b [T_a]`` (b's flow at the aligned positions, 0 where a
    position has no counterpart); ``align``: b's position for each of a's (-1 for none).
    """

    tokens_a: list[str]
    tokens_b: list[str]
    align: list[int]
    prediction_a: dict[str, Any]
    prediction_b: dict[str, Any]
    edges: list[EdgeChange]
    heads_a: np.ndarray
    heads_b: np.ndarray
    ffn_a: np.ndarray
    ffn_b: np.ndarray
    sources_a: np.ndarray
    sources_b: np.ndarray
    unmatched: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def heads_delta(self) -> np.ndarray:
        return self.heads_b - self.heads_a

    @property
    def ffn_delta(self) -> np.ndarray:
        return self.ffn_b - self.ffn_a

    @property
    def sources_delta(self) -> np.ndarray:
        return self.sources_b - self.sources_a

    def top_edges(self, k: int = 10, by: str = "flow") -> list[EdgeChange]:
        """The ``k`` edges whose flow (``by="flow"``) or weight (``by="weight"``) changes most."""
        if by not in ("flow", "weight"):
            raise ValueError(f"by must be 'flow' or 'weight', got {by!r}")
        key = (lambda e: -abs(e.flow_delta)) if by == "flow" else (lambda e: -abs(e.delta))
        return sorted(self.edges, key=key)[: max(int(k), 0)]

    def top_components(self, k: int = 10) -> list[dict[str, Any]]:
        """Heads and FFN blocks whose share changes most, with signs (b - a), largest ``|delta|``
        first: ``{"component": "head"|"ffn", "layer", "head" (None for FFN), "a", "b", "delta"}``.

        >>> d.top_components(3)[0]["delta"]                       # doctest: +SKIP
        """
        rows = []
        L, H = self.heads_a.shape
        for l in range(L):
            for h in range(H):
                a, b = float(self.heads_a[l, h]), float(self.heads_b[l, h])
                if a or b:
                    rows.append({"component": "head", "layer": l, "head": h, "a": a, "b": b, "delta": b - a})
            a, b = float(self.ffn_a[l]), float(self.ffn_b[l])
            if a or b:
                rows.append({"component": "ffn", "layer": l, "head": None, "a": a, "b": b, "delta": b - a})
        rows.sort(key=lambda r: -abs(r["delta"]))
        return rows[: max(int(k), 0)]

    def to_dict(self, k: int | None = None) -> dict[str, Any]:
        """Plain JSON data (all edges and components, or the top ``k`` of each)."""
        edges = self.edges if k is None else self.top_edges(k)
        comps = self.top_components(len(self.heads_a.reshape(-1)) + len(self.ffn_a) if k is None else k)
        return {
            "tokens_a": list(self.tokens_a), "tokens_b": list(self.tokens_b), "align": list(self.align),
            "prediction_a": dict(self.prediction_a), "prediction_b": dict(self.prediction_b),
            "edges": [e.to_dict() for e in edges], "components": comps,
            "sources_a": [float(v) for v in self.sources_a], "sources_b": [float(v) for v in self.sources_b],
            "unmatched": self.unmatched, "settings": dict(self.settings),
        }

    def __repr__(self) -> str:
        top = self.top_components(1)
        what = ""
        if top:
            c = top[0]
            name = f"L{c['layer']}H{c['head']}" if c["component"] == "head" else f"L{c['layer']} FFN"
            what = f", top change {name} {c['delta']:+.3f}"
        return (f"TraceDiff(tokens={len(self.tokens_a)} vs {len(self.tokens_b)}, edges={len(self.edges)}, "
                f"prediction {self.prediction_a.get('token')!r} -> {self.prediction_b.get('token')!r}{what})")

    def _repr_html_(self, k: int = 10) -> str:
        esc = html.escape

        def signed(v: float) -> str:
            colour = "#1a7f37" if v > 0 else "#cf222e" if v < 0 else "inherit"
            return f'<td style="color:{colour};text-align:right">{v:+.4f}</td>'

        def pred(p: dict[str, Any]) -> str:
            return f"{esc(repr(p.get('token')))} ({p.get('prob', 0.0):.3f})"

        out = ['<div class="ltt-diff" style="font-family:sans-serif;font-size:13px">',
               f"<div><b>a</b>: {esc(''.join(self.tokens_a))} &rarr; {pred(self.prediction_a)}</div>",
               f"<div><b>b</b>: {esc(''.join(self.tokens_b))} &rarr; {pred(self.prediction_b)}</div>",
               "<div style='margin-top:6px'><b>components</b> (share b &minus; a)</div>",
               "<table><tr><th>component</th><th>a</th><th>b</th><th>&Delta;</th></tr>"]
        for c in self.top_components(k):
            name = f"layer {c['layer']} head {c['head']}" if c["component"] == "head" else f"layer {c['layer']} FFN"
            out.append(f"<tr><td>{esc(name)}</td><td style='text-align:right'>{c['a']:.4f}</td>"
                       f"<td style='text-align:right'>{c['b']:.4f}</td>{signed(c['delta'])}</tr>")
        out.append("</table><div style='margin-top:6px'><b>edges</b> (flow b &minus; a)</div>"
                   "<table><tr><th>edge</th><th>tokens</th><th>kind</th><th>weight a</th><th>weight b</th>"
                   "<th>&Delta; weight</th><th>&Delta; flow</th></tr>")
        for e in self.top_edges(k):
            toks = f"{esc(repr(self.tokens_a[e.source_token]))} &rarr; {esc(repr(self.tokens_a[e.target_token]))}"
            out.append(f"<tr><td>{esc(e.source)} &rarr; {esc(e.target)}</td><td>{toks}</td>"
                       f"<td>{esc(e.kind)}</td><td style='text-align:right'>{e.weight_a:.4f}</td>"
                       f"<td style='text-align:right'>{e.weight_b:.4f}</td>{signed(e.delta)}{signed(e.flow_delta)}</tr>")
        out.append("</table>")
        if self.unmatched:
            out.append(f"<div>{self.unmatched} edge(s) touch tokens without a counterpart and are not listed.</div>")
        out.append("</div>")
        return "".join(out)


def _alignment(align: Any, Ta: int, Tb: int) -> list[int]:
    """b's position for each of a's positions (-1: none) from ``align``."""
    if align is None:
        if Ta != Tb:
            raise ValueError(
                f"trace_a has {Ta} tokens and trace_b has {Tb}: diff compares prompts of the same "
                "length token by token; for other prompts pass align= (b's position for each of "
                "a's positions, or a dict {position in a: position in b})")
        return list(range(Ta))
    out = [-1] * Ta
    if isinstance(align, Mapping):
        pairs = list(align.items())
    else:
        try:
            items = list(align)
        except TypeError as exc:
            raise TypeError(f"align must be a sequence of b positions (one per token of trace_a) or a dict, "
                            f"got {type(align).__name__}") from exc
        if len(items) != Ta:
            raise ValueError(f"align has {len(items)} entries, trace_a has {Ta} tokens: give one b position "
                             "(or None) per token of trace_a, or a dict")
        pairs = [(i, j) for i, j in enumerate(items) if j is not None and j != -1]
    for i, j in pairs:
        for name, v, T in (("a", i, Ta), ("b", j, Tb)):
            if not is_int(v):
                raise TypeError(f"align holds {v!r}, not an integer position in trace_{name}")
            if not -T <= v < T:
                raise ValueError(f"align holds {int(v)}, outside the {T} tokens of trace_{name}")
        out[int(i) % Ta] = int(j) % Tb
    used = [j for j in out if j >= 0]
    if len(set(used)) != len(used):
        raise ValueError("align maps two positions of trace_a to the same position of trace_b")
    if not used:
        raise ValueError("align maps no position of trace_a to trace_b")
    return out


def _key(edge) -> tuple | None:
    """A position-free identity of a graph edge, ``(stage, layer, target, source)``, or None for
    the first half (``-> M``) of an FFN route."""
    if edge.stage is Stage.FFN_IN:
        return None
    return (edge.stage, edge.layer, edge.target_token, edge.source_token)


def _weight(key: tuple, mw: ModeWeights, trace: Any, norm: int) -> float:
    """The weight of the edge ``key`` in one trace's threshold mode, before pruning. An attention
    edge that a long trace's sparse rows do not list is, with ``renormalize=False``, a raw share
    below the floor: it is recomputed exactly from its heads (the one-edge sub-problem)."""
    stage, l, t, s = key
    w = mw.weights
    if stage is Stage.ATTENTION:
        if mw.sparse and not mw.renormalize and not mw.listed(l, t, s):
            return float(np.asarray(edge_head_shares(trace, l, t, s, norm, dense=False), np.float64).sum())
        return mw.attention(l, t, s)
    if stage is Stage.ATTENTION_RESIDUAL:
        return float(w.attn_resid[l, t])
    if stage is Stage.FFN_RESIDUAL:
        return float(w.ffn_resid[l, t])
    return float(w.ffn[l, t])


def _remap(key: tuple, pos: list[int]) -> tuple | None:
    mapped = [pos[p] if 0 <= p < len(pos) else -1 for p in key[2:]]
    if any(p < 0 for p in mapped):
        return None
    return key[:2] + tuple(mapped)


# The keywords of DiffWidget's own signature (ltt/widget/diff.py), which passes them through.
def diff(
    trace_a: Any,
    trace_b: Any,
    *,
    align: Sequence[int | None] | Mapping[int, int] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    renormalize: bool = True,
    targets: Targets = None,
    norm: int = 1,
) -> TraceDiff:
    """Compare the routes of two traces (module docstring): which edges and components change
    most from ``trace_a`` to ``trace_b``, with signs (b - a).

    ``align``: for prompts of different lengths, b's position for each of a's positions (None
    for none), or a dict ``{position in a: position in b}``. ``targets`` are resolved in each
    trace on its own (default: each prompt's last token).

    >>> d = ltt.diff(model.trace("The cat sat"), model.trace("The dog sat"))   # doctest: +SKIP
    >>> d.top_edges(5)                                                          # doctest: +SKIP
    """
    for name, tr in (("trace_a", trace_a), ("trace_b", trace_b)):
        if not (hasattr(tr, "layers") and hasattr(tr, "tokens") and hasattr(tr, "token_ids")):
            raise TypeError(f"{name} must be a Trace (model.trace(prompt)), got {type(tr).__name__}")
    La, Lb = len(trace_a.layers), len(trace_b.layers)
    # the heads from each trace's scores (no probabilities recomputed; a saved trace has none)
    Ha, Hb = attribute(trace_a, check_norm(norm)).n_heads, attribute(trace_b, check_norm(norm)).n_heads
    if (La, Ha) != (Lb, Hb):
        raise ValueError(f"trace_b comes from a model with {Lb} layers and {Hb} heads, trace_a from one with "
                         f"{La} layers and {Ha} heads: diff needs traces of the same architecture")
    Ta, Tb = len(trace_a.token_ids), len(trace_b.token_ids)
    pos = _alignment(align, Ta, Tb)
    inverse = [-1] * Tb
    for i, j in enumerate(pos):
        if j >= 0:
            inverse[j] = i
    settings = GraphSettings(threshold, renormalize, targets, norm)
    graphs, weights, flows, sums = [], [], [], []
    for tr in (trace_a, trace_b):
        g = build(tr, settings)
        graphs.append(g)
        weights.append(mode_weights(attribute(tr, settings.norm), g.threshold, g.renormalize))
        flows.append(g.flow())
        sums.append(summarize(tr, graph=g))
    parallel_a = attribute(trace_a, settings.norm).parallel
    parallel_b = attribute(trace_b, settings.norm).parallel
    kept: list[dict[tuple, float]] = [{}, {}]
    for side in (0, 1):
        for e in graphs[side].edges:
            key = _key(e)
            if key is not None:
                kept[side][key] = e.weight * flows[side].get(e.target, 0.0)
    keys: dict[tuple, None] = dict.fromkeys(kept[0])
    unmatched = 0
    b_in_a: dict[tuple, tuple] = {}
    for kb in kept[1]:
        ka = _remap(kb, inverse)
        if ka is None:
            unmatched += 1
            continue
        b_in_a[ka] = kb
        keys.setdefault(ka, None)
    edges: list[EdgeChange] = []
    for ka in keys:
        kb = b_in_a.get(ka) or _remap(ka, pos)
        if kb is None:
            unmatched += 1
            continue
        stage, layer, t, s = ka
        src, tgt = endpoint_names(stage, layer, t, s, bool(parallel_a[layer]))
        src_b, tgt_b = endpoint_names(stage, layer, kb[2], kb[3], bool(parallel_b[layer]))
        wa = _weight(ka, weights[0], trace_a, settings.norm)
        wb = _weight(kb, weights[1], trace_b, settings.norm)
        fa, fb = kept[0].get(ka, 0.0), kept[1].get(kb, 0.0)
        edges.append(EdgeChange(src, tgt, stage.kind, layer, src_b, tgt_b, wa, wb, wb - wa, fa, fb, fb - fa,
                                stage, t, s, kb[2], kb[3]))
    edges.sort(key=lambda e: (-abs(e.flow_delta), -abs(e.delta)))
    sa, sb = sums
    sources_b = np.array([sb.sources[j] if j >= 0 else 0.0 for j in pos])
    return TraceDiff(
        tokens_a=list(trace_a.tokens), tokens_b=list(trace_b.tokens), align=pos,
        prediction_a=sa.prediction, prediction_b=sb.prediction, edges=edges,
        heads_a=sa.heads, heads_b=sb.heads, ffn_a=sa.ffn, ffn_b=sb.ffn,
        sources_a=sa.sources, sources_b=sources_b, unmatched=unmatched,
        settings={"threshold": graphs[0].threshold, "renormalize": graphs[0].renormalize,
                  "targets_a": graphs[0].targets, "targets_b": graphs[1].targets, "norm": settings.norm},
    )
