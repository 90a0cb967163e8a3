"""Routes at scale: which heads and FFN blocks carry the predictions of a whole set of prompts.

One graph explains one prediction. :func:`trace_many` streams many prompts through
``trace -> graph -> summary`` and keeps only a small per-prompt summary (:class:`PromptRoutes`):
how much of the prediction flows through each attention head and each FFN block, and how much
comes from each input token. :class:`RouteSet` aggregates the summaries: how often each head or
FFN block is on the route and how much it carries when it is, which source-position pattern its
edges follow, and the prompts where it mattered most.

The importance measures, for one prompt's pruned graph ``g`` (threshold, threshold mode and
targets as in :func:`ltt.graph.build_graph`) with ``flow = g.flow()``:

* **head share** of head h in layer l: the sum over the kept attention edges ``e = (s -> t)``
  of layer l of ``frac_h(e) * weight(e) * flow(target(e))`` (``weighting="flow"``, the default)
  or ``frac_h(e) * weight(e)`` (``weighting="edge"``). ``frac_h(e)`` is head h's fraction of
  the edge's weight: with ``renormalize=False`` it is ``heads[l,h,t,s] / sum_h' heads[l,h',t,s]``;
  with ``renormalize=True`` only the head parts that survived the threshold count
  (``heads[l,h,t,s] >= threshold``, or the state's single largest part when none did), so it is
  that head's renormalised part over the edge's. With flow weighting, a head's share is the
  fraction of the targets' output that passes through that head on the pruned routes; the shares
  of one layer's heads, its residual edges and its bias add up to at most 1.
* **FFN share** of layer l: the sum over the kept FFN edges ``M{l}_t -> I{l}_t`` of
  ``weight(e) * flow(I{l}_t)`` (= the flow through the layer's FFN blocks), or of ``weight(e)``
  with ``weighting="edge"``.
* **source shares** ``[T]``: ``flow(X0_t)``, how much of the prediction each input token feeds
  (always flow, whatever the weighting).
* **source-position pattern** of a kept attention edge ``s -> t``: ``"same"`` (s = t),
  ``"previous"`` (s = t-1), ``"first"`` (s = 0), ``"other"``, first match in that order. Each
  head share is split over the four patterns (``PromptRoutes.patterns [L, H, 4]``).
* **prediction**: the model's most likely next token after the prompt and its probability
  (the last position, whatever the targets).

A head (FFN block) is *on the route* of a prompt when its share is > 0.

Prompts are traced one at a time: the hooks of :mod:`ltt.models` record batch row 0 and padding
would have to be threaded through every family's masks and positions; the attribution, not the
forward pass, dominates the time per prompt on small models anyway.

>>> import ltt                                                        # doctest: +SKIP
>>> model = ltt.load("smollm2-135m")                                  # doctest: +SKIP
>>> routes = model.trace_many(["The capital of France is", "2 + 2 ="], out="routes.jsonl")  # doctest: +SKIP
>>> routes.head_frequency.shape, routes.top_prompts(12, 3, k=1)      # doctest: +SKIP
>>> merged = ltt.routes.merge_shards("routes.jsonl")                 # after a sharded run  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ltt import routes_store as store
from ltt.attribution import check_threshold
from ltt.graph import ATTENTION, FFN, Graph, build_graph, resolve_targets
from ltt.scores import attribute, check_norm
from ltt.interpret import edge_head_shares

__all__ = [
    "PATTERNS",
    "PromptRoutes",
    "RouteSet",
    "summarize",
    "trace_many",
    "load_routes",
    "merge_shards",
    "shard_path",
    "shard_from_env",
]

#: Source-position patterns of an attention edge ``s -> t``, in the order they are tested.
PATTERNS = ("same", "previous", "first", "other")
FORMAT = store.FORMAT
VERSION = store.VERSION
_WEIGHTINGS = ("flow", "edge")


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


def _head_fractions(heads_lts: np.ndarray, threshold: float, renormalize: bool) -> np.ndarray:
    """``[H]``: each head's fraction of one attention edge's weight (see the module docstring)."""
    parts = np.asarray(heads_lts, dtype=np.float64)
    kept = np.where(parts >= threshold, parts, 0.0) if renormalize else parts
    total = kept.sum()
    if total <= 0.0:
        # Every head part of a kept edge fell below the threshold: the state kept its single
        # largest part (first head on ties), which is this edge's argmax head.
        out = np.zeros_like(parts)
        out[int(np.argmax(parts))] = 1.0
        return out
    return kept / total


def _check_weighting(weighting: str) -> str:
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    return weighting


def summarize(
    trace: Any,
    threshold: float = 0.04,
    renormalize: bool = True,
    targets: Sequence[int] | str | int | None = None,
    norm: int = 1,
    weighting: str = "flow",
    graph: Graph | None = None,
    index: int = 0,
) -> PromptRoutes:
    """Reduce the pruned graph of ``trace`` to component importance (module docstring).

    ``graph``: an already built ``trace.graph(threshold, renormalize, targets, norm)`` to reuse.

    >>> r = summarize(model.trace("The capital of France is"))     # doctest: +SKIP
    >>> r.heads.shape, float(r.sources.sum()) <= 1.0                # doctest: +SKIP
    ((30, 9), True)
    """
    _check_weighting(weighting)
    if graph is None:
        graph = build_graph(trace, threshold=threshold, renormalize=renormalize, targets=targets, norm=norm)
    full = attribute(trace, graph.norm)
    L, H, T = full.n_layers, full.n_heads, full.n_tokens
    flow = graph.flow()
    token = {n.name: n.token for n in graph.nodes}
    patterns = np.zeros((L, H, len(PATTERNS)))
    ffn = np.zeros(L)
    for e in graph.edges:
        scale = e.weight * (flow.get(e.target, 0.0) if weighting == "flow" else 1.0)
        if e.kind == ATTENTION:
            t, s = token[e.target], token[e.source]
            shares = edge_head_shares(trace, e.layer, t, s, graph.norm)
            frac = _head_fractions(shares, graph.threshold, graph.renormalize)
            patterns[e.layer, :, _pattern(t, s)] += frac * scale
        elif e.kind == FFN and e.target.startswith("I"):
            ffn[e.layer] += scale
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


# --------------------------------------------------------------------------------------------
# the set


def _pandas():
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("this table export needs pandas: pip install pandas") from exc
    return pd


@dataclass
class RouteSet:
    """The summaries of many prompts and their aggregates (module docstring for the measures).

    Per prompt (N prompts, in input order): ``heads [N, L, H]``, ``ffn [N, L]``, ``patterns
    [N, L, H, 4]``, ``records`` (the :class:`PromptRoutes`), ``errors`` (prompts skipped with
    ``on_error="skip"``: ``{"index", "key", "prompt", "error"}``).

    Aggregates: ``head_frequency [L, H]`` (fraction of prompts where the head is on the route),
    ``head_mean_share [L, H]`` (its mean share over those prompts; 0 where it never is),
    ``head_mean [L, H]`` (mean over all prompts), the same three for ``ffn_*`` ``[L]``,
    ``head_pattern_fractions [L, H, 4]`` (the head's total share split by pattern),
    ``head_pattern [L, H]`` (index of its dominant pattern in :data:`PATTERNS`, -1 when never on
    the route) and :meth:`pattern_counts`.

    >>> routes.head_frequency[12, 3], routes.top_prompts(12, 3, k=3)   # doctest: +SKIP
    >>> routes.to_frame("heads").sort_values("mean", ascending=False)  # doctest: +SKIP
    """

    model_name: str
    n_layers: int
    n_heads: int
    settings: dict[str, Any]
    records: list[PromptRoutes] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)
    #: the run's fingerprint (model, prompt list), see :mod:`ltt.routes_store`; None for old files
    fingerprint: dict[str, Any] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def _stack(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if not self.records:
            return np.zeros((0,) + shape)
        return np.stack([getattr(r, name) for r in self.records])

    # -- per prompt ------------------------------------------------------------------------

    @property
    def patterns(self) -> np.ndarray:
        return self._stack("patterns", (self.n_layers, self.n_heads, len(PATTERNS)))

    @property
    def heads(self) -> np.ndarray:
        return self.patterns.sum(axis=-1)

    @property
    def ffn(self) -> np.ndarray:
        return self._stack("ffn", (self.n_layers,))

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.records]

    @property
    def indices(self) -> list[int]:
        return [r.index for r in self.records]

    # -- aggregates --------------------------------------------------------------------------

    @staticmethod
    def _agg(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = x.shape[0]
        on = x > 0
        count = on.sum(axis=0)
        total = x.sum(axis=0)
        freq = count / n if n else np.zeros(x.shape[1:])
        mean_share = np.divide(total, count, out=np.zeros(x.shape[1:]), where=count > 0)
        mean = total / n if n else np.zeros(x.shape[1:])
        return freq, mean_share, mean

    @property
    def head_frequency(self) -> np.ndarray:
        return self._agg(self.heads)[0]

    @property
    def head_mean_share(self) -> np.ndarray:
        return self._agg(self.heads)[1]

    @property
    def head_mean(self) -> np.ndarray:
        return self._agg(self.heads)[2]

    @property
    def ffn_frequency(self) -> np.ndarray:
        return self._agg(self.ffn)[0]

    @property
    def ffn_mean_share(self) -> np.ndarray:
        return self._agg(self.ffn)[1]

    @property
    def ffn_mean(self) -> np.ndarray:
        return self._agg(self.ffn)[2]

    @property
    def head_pattern_fractions(self) -> np.ndarray:
        p = self.patterns.sum(axis=0)
        total = p.sum(axis=-1, keepdims=True)
        return np.divide(p, total, out=np.zeros_like(p), where=total > 0)

    @property
    def head_pattern(self) -> np.ndarray:
        p = self.patterns.sum(axis=0)
        return np.where(p.sum(axis=-1) > 0, p.argmax(axis=-1), -1)

    def pattern_counts(self) -> list[tuple[str, int]]:
        """How many (prompt, head on the route) pairs have each dominant source-position
        pattern, most frequent first.

        >>> routes.pattern_counts()                          # doctest: +SKIP
        [('first', 812), ('same', 640), ('previous', 201), ('other', 95)]
        """
        p = self.patterns
        on = p.sum(axis=-1) > 0
        dominant = p.argmax(axis=-1)[on]
        counts = np.bincount(dominant, minlength=len(PATTERNS))
        return sorted(((PATTERNS[i], int(c)) for i, c in enumerate(counts)), key=lambda kv: -kv[1])

    def source_positions(self) -> dict[str, float]:
        """Mean flow over the prompts reaching the first token, the last token and the rest."""
        first = last = other = 0.0
        for r in self.records:
            s = r.sources
            first += s[0]
            if len(s) > 1:
                last += s[-1]
                other += s[1:-1].sum()
        n = max(len(self.records), 1)
        return {"first": first / n, "last": last / n, "other": other / n}

    def top_prompts(self, layer: int, head: int | None = None, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` prompts where head ``head`` of ``layer`` (its FFN block when ``head`` is
        None) carried the largest share, largest first, only those where it is on the route:
        ``{"index", "prompt", "share", "prediction"}``.

        >>> routes.top_prompts(12, 3, k=5)[0]["prompt"]      # doctest: +SKIP
        """
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -self.n_layers <= layer < self.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.n_layers}), got {layer!r}")
        layer = int(layer) % self.n_layers
        if head is None:
            values = self.ffn[:, layer] if self.records else np.zeros(0)
        else:
            if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not 0 <= head < self.n_heads:
                raise ValueError(f"head must be an int in [0, {self.n_heads}) or None (the FFN), got {head!r}")
            values = self.heads[:, layer, int(head)] if self.records else np.zeros(0)
        order = np.argsort(-values, kind="stable")[: max(int(k), 0)]
        return [
            {"index": self.records[i].index, "prompt": self.records[i].prompt,
             "share": float(values[i]), "prediction": dict(self.records[i].prediction)}
            for i in order if values[i] > 0
        ]

    # -- tables ------------------------------------------------------------------------------

    def table(self, kind: str = "heads") -> dict[str, np.ndarray]:
        """A tidy table as a dict of equal-length columns (no pandas needed).

        * ``"heads"``: one row per (layer, head): ``layer, head, frequency, mean_share, mean``,
          ``pattern`` (dominant pattern name or ``""``) and one ``pattern_<name>`` fraction each;
        * ``"ffn"``: one row per layer: ``layer, frequency, mean_share, mean``;
        * ``"prompts"``: one row per (prompt, component on its route): ``index, component``
          (``"head"`` or ``"ffn"``), ``layer, head`` (-1 for the FFN), ``share``.

        >>> cols = routes.table("heads"); cols["mean"].shape       # doctest: +SKIP
        """
        L, H = self.n_layers, self.n_heads
        if kind == "heads":
            freq, mean_share, mean = self._agg(self.heads)
            frac = self.head_pattern_fractions
            dom = self.head_pattern
            cols: dict[str, np.ndarray] = {
                "layer": np.repeat(np.arange(L), H),
                "head": np.tile(np.arange(H), L),
                "frequency": freq.reshape(-1),
                "mean_share": mean_share.reshape(-1),
                "mean": mean.reshape(-1),
                "pattern": np.array([PATTERNS[d] if d >= 0 else "" for d in dom.reshape(-1)], dtype=object),
            }
            for i, name in enumerate(PATTERNS):
                cols[f"pattern_{name}"] = frac[..., i].reshape(-1)
            return cols
        if kind == "ffn":
            freq, mean_share, mean = self._agg(self.ffn)
            return {"layer": np.arange(L), "frequency": freq, "mean_share": mean_share, "mean": mean}
        if kind == "prompts":
            index, comp, layer, head, share = [], [], [], [], []
            for r in self.records:
                hv = r.heads
                for l, h in zip(*np.nonzero(hv > 0)):
                    index.append(r.index); comp.append("head"); layer.append(int(l)); head.append(int(h))
                    share.append(float(hv[l, h]))
                for l in np.nonzero(r.ffn > 0)[0]:
                    index.append(r.index); comp.append("ffn"); layer.append(int(l)); head.append(-1)
                    share.append(float(r.ffn[l]))
            return {"index": np.array(index, dtype=np.int64), "component": np.array(comp, dtype=object),
                    "layer": np.array(layer, dtype=np.int64), "head": np.array(head, dtype=np.int64),
                    "share": np.array(share, dtype=np.float64)}
        raise ValueError(f"kind must be 'heads', 'ffn' or 'prompts', got {kind!r}")

    def to_frame(self, kind: str = "heads"):
        """:meth:`table` as a ``pandas.DataFrame`` (ImportError with the pip command without pandas).

        >>> routes.to_frame("ffn").sort_values("mean").tail(3)     # doctest: +SKIP
        """
        pd = _pandas()
        return pd.DataFrame(self.table(kind))

    # -- files -------------------------------------------------------------------------------

    def header(self, shard: tuple[int, int] | None = None) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "model": self.model_name, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "settings": dict(self.settings),
                "shard": None if shard is None else [int(shard[0]), int(shard[1])],
                "fingerprint": self.fingerprint}

    def save(self, path: str | os.PathLike) -> str:
        """Write the set as one JSON-lines file (a header line, then one line per prompt and per
        skipped prompt); ``load_routes`` reads it back. An existing file at ``path`` is replaced
        only when it is an ltt routes file that no other process is writing.

        >>> routes.save("routes.jsonl")                           # doctest: +SKIP
        """
        path = os.fspath(path)
        recs = sorted([r.to_record() for r in self.records] + list(self.errors), key=lambda d: d["index"])
        store.replace(path, [self.header()] + recs)  # locked, atomic; refuses a file not ltt's
        return path

    def show(self, model: Any = None, metric: str = "frequency", k: int = 10):
        """The layers x heads heatmap (and FFN strip) of this set in Jupyter; clicking a cell lists
        the prompts where that component mattered most, clicking a prompt re-traces it with
        ``model`` (default: the model that made the set) and shows its graph.

        >>> routes.show()                                          # doctest: +SKIP
        """
        from ltt.widget.importance import ImportanceWidget, with_graph_output

        return with_graph_output(ImportanceWidget(self, model=model or self.model, metric=metric, k=k))

    @property
    def faithfulness(self) -> dict[str, Any] | None:
        """Means over the prompts recorded with ``trace_many(..., faithfulness=True)``: ``prompts``
        (how many), ``kept``, ``removed``, ``random`` (fractions of the predicted token's
        probability, :meth:`ltt.faithfulness.Faithfulness.summary`) and ``kl_kept``,
        ``kl_removed``, ``kl_random``; None when no prompt has it.

        >>> model.trace_many(prompts, faithfulness=True).faithfulness["kept"]   # doctest: +SKIP
        """
        recs = [r.faithfulness for r in self.records if r.faithfulness is not None]
        if not recs:
            return None
        out: dict[str, Any] = {"prompts": len(recs)}
        for key in ("kept", "removed", "random", "kl_kept", "kl_removed", "kl_random"):
            values = [r[key] for r in recs if r.get(key) is not None]
            out[key] = float(np.mean(values)) if values else None
        return out

    def __repr__(self) -> str:
        return (f"RouteSet(model={self.model_name!r}, prompts={len(self.records)}, errors={len(self.errors)}, "
                f"layers={self.n_layers}, heads={self.n_heads}, settings={self.settings})")


# --------------------------------------------------------------------------------------------
# input prompts


def _prompt_source(prompts: Any) -> tuple[Iterator[tuple[int, Any]], int | None, dict[str, Any] | None]:
    """``(iterator of (index, prompt), count or None, fingerprint or None)`` from a list, a file
    path or an iterable. A list, tuple or file is fingerprinted whole (:mod:`ltt.routes_store`);
    any other iterable is read lazily and fingerprinted as it goes (fingerprint None)."""
    if isinstance(prompts, (str, os.PathLike)):
        items = _read_prompt_file(os.fspath(prompts))
        return iter(items), len(items), store.prompts_fingerprint(items)
    if isinstance(prompts, (bytes, bytearray)):
        raise TypeError("prompts must be a list of strings, a text file path or an iterable of strings, got bytes")
    if prompts is None:
        raise TypeError("prompts must be a list of strings, a text file path or an iterable of strings, got None")
    try:
        count = len(prompts)
    except TypeError:
        count = None
    if count == 0:
        raise ValueError(f"prompts is empty ({prompts!r}): give at least one prompt")
    try:
        it = iter(prompts)
    except TypeError as exc:
        raise TypeError(f"prompts must be a list of strings, a text file path or an iterable of strings, "
                        f"got {type(prompts).__name__}") from exc
    if isinstance(prompts, (list, tuple)):
        items = list(enumerate(prompts))
        return iter(items), count, store.prompts_fingerprint(items)
    return enumerate(it), count, None


def _read_prompt_file(path: str) -> list[tuple[int, str]]:
    """``(line number from 0, prompt)`` of every non-blank line of a UTF-8 text file (a leading
    byte-order mark is dropped; bytes that are not UTF-8 are an error naming their line)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"prompts={path!r}: no such file (a string is read as a text file with one prompt "
            "per line; pass a list to give the prompts themselves)")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise type(exc)(exc.errno, f"prompts={path!r}: cannot read the file: {exc.strerror}") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # the UTF-8 byte-order mark some editors write: not part of the first prompt
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = (" (the file looks like UTF-16: save it as UTF-8)"
                if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "")
        raise ValueError(f"prompts={path!r}: line {line} is not valid UTF-8 (byte {column} of the line: "
                         f"{exc.reason}){hint}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    items = [(i, line.rstrip("\r")) for i, line in enumerate(lines) if line.rstrip("\r").strip()]
    if not items:
        raise ValueError(f"prompts={path!r}: the file holds no prompts (one prompt per line)")
    return items


# --------------------------------------------------------------------------------------------
# shards


def shard_from_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` from the environment (``torchrun``, ``accelerate launch``), or None
    when there is no world of more than one process.

    >>> shard_from_env()                                          # doctest: +SKIP
    (0, 2)
    """
    world = os.environ.get("WORLD_SIZE")
    rank = os.environ.get("RANK")
    if world is None or rank is None:
        return None
    try:
        n, i = int(world), int(rank)
    except ValueError as exc:
        raise ValueError(f"RANK={rank!r} and WORLD_SIZE={world!r} must be integers") from exc
    if n <= 1:
        return None
    if not 0 <= i < n:
        raise ValueError(f"RANK={i} is outside [0, WORLD_SIZE={n})")
    return i, n


def _check_shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return shard_from_env()
    try:
        i, n = shard
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (i, n))
    except (TypeError, ValueError):
        ok = False
    if not ok or not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with integers 0 <= i < n, got {shard!r}")
    return (int(i), int(n)) if n > 1 else None


def shard_path(path: str | os.PathLike, shard: tuple[int, int] | None) -> str:
    """The file a shard writes: ``routes.jsonl`` -> ``routes.shard0of2.jsonl``.

    >>> shard_path("out/routes.jsonl", (1, 4))
    'out/routes.shard1of4.jsonl'
    """
    path = os.fspath(path)
    if shard is None:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.shard{shard[0]}of{shard[1]}{ext}"


# --------------------------------------------------------------------------------------------
# the output file


def _parquet_modules():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Parquet output needs pyarrow: pip install pyarrow "
                          "(or write JSON lines: out='routes.jsonl')") from exc
    return pa, pq


def _write_parquet(path: str, header: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """One row per record; the header goes into the schema metadata. Written to a temporary file
    and renamed, under the lock of the file it replaces (:func:`ltt.routes_store.replace`)."""
    pa, pq = _parquet_modules()
    rows = [dict(r, prediction=json.dumps(r.get("prediction")), heads=json.dumps(r.get("heads")),
                 error=r.get("error")) for r in records]
    columns = ["index", "key", "prompt", "tokens", "prediction", "heads", "ffn", "sources", "error", "chain"]
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows],
                                 schema=pa.schema([("index", pa.int64()), ("key", pa.string()),
                                                   ("prompt", pa.string()), ("tokens", pa.list_(pa.string())),
                                                   ("prediction", pa.string()), ("heads", pa.string()),
                                                   ("ffn", pa.list_(pa.float64())),
                                                   ("sources", pa.list_(pa.float64())), ("error", pa.string()),
                                                   ("chain", pa.string())],
                                                  metadata={b"ltt-routes": json.dumps(header).encode()}))
    store.replace(path, write=lambda tmp: pq.write_table(table, tmp, compression="snappy"), option="out")


def _read_parquet(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _, pq = _parquet_modules()
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if b"ltt-routes" not in meta:
        raise ValueError(f"{path!r} is not an ltt routes Parquet file")
    header = json.loads(meta[b"ltt-routes"])
    records = []
    for row in table.to_pylist():
        if row.get("chain") is None:
            row.pop("chain", None)
        if row.get("error") is not None:
            records.append({k: row[k] for k in ("index", "key", "prompt", "error", "chain") if k in row})
        else:
            row.pop("error", None)
            row["prediction"] = json.loads(row["prediction"])
            row["heads"] = json.loads(row["heads"])
            records.append(row)
    return header, records


def _is_parquet(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq"))


def _partial(path: str) -> str:
    # Parquet cannot be appended to: a Parquet run streams into this JSON-lines file and writes
    # the Parquet file when it stops (finished or not).
    return path + ".partial.jsonl"


def _set_from(header: dict[str, Any], records: Iterable[dict[str, Any]], model: Any = None) -> RouteSet:
    L, H = int(header["n_layers"]), int(header["n_heads"])
    rs = RouteSet(str(header["model"]), L, H, dict(header["settings"]), model=model,
                  fingerprint=header.get("fingerprint"))
    latest: dict[int, dict[str, Any]] = {}
    for rec in records:
        latest[int(rec["index"])] = rec  # a re-run prompt replaces its old record
    for i in sorted(latest):
        rec = latest[i]
        if "error" in rec:
            rs.errors.append(rec)
        else:
            rs.records.append(PromptRoutes.from_record(rec, L, H))
    return rs


def _read_any(path: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    return _read_parquet(path) if _is_parquet(path) else store.read(path)


def load_routes(path: str | os.PathLike) -> RouteSet:
    """A :class:`RouteSet` from a file written by :func:`trace_many` or :meth:`RouteSet.save`
    (JSON lines, or Parquet with pyarrow). A truncated last line is ignored.

    >>> routes = load_routes("routes.jsonl")                      # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path={path!r}: no such routes file")
    header, records = _read_any(path)
    if header is None:
        raise ValueError(f"path={path!r} is empty: no routes header")
    return _set_from(header, records)


def merge_shards(paths: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                 allow_missing: bool = False) -> RouteSet:
    """Merge the files of a sharded run into one :class:`RouteSet` (sorted by prompt index).

    ``paths``: the ``out`` path the run was given (its ``.shard{i}of{n}`` files are found next
    to it), or an explicit list of shard files. Every shard must come from the same run: the same
    model (config, dtype, weights checksum, ltt version), settings and prompt list (compared when
    the run read a list or a file; a streamed iterable is fingerprinted per record only), or the
    merge is refused naming the files and what differs. A missing shard is an error unless
    ``allow_missing``. ``out``: also write the merged set there (JSON lines).

    >>> merged = merge_shards("routes.jsonl", out="routes.merged.jsonl")   # doctest: +SKIP
    """
    if isinstance(paths, (str, os.PathLike)):
        base = os.fspath(paths)
        root, ext = os.path.splitext(base)
        pattern = re.compile(re.escape(os.path.basename(root)) + r"\.shard(\d+)of(\d+)" + re.escape(ext) + "$")
        files = sorted(p for p in glob.glob(glob.escape(root) + ".shard*of*" + glob.escape(ext))
                       if pattern.search(os.path.basename(p)))
        if not files:
            raise FileNotFoundError(f"paths={base!r}: no shard files {root}.shard<i>of<n>{ext} found")
    else:
        files = [os.fspath(p) for p in paths]
        if not files:
            raise ValueError("paths is empty: give the run's out path or a list of shard files")
    headers: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    origin: dict[int, str] = {}
    for f in files:
        h, recs = _read_any(f)
        if h is None:
            raise ValueError(f"{f!r} is empty: no routes header")
        headers.append(h)
        records.extend(recs)
        origin.update((int(r["index"]), f) for r in recs)
    first = headers[0]
    for f, h in zip(files, headers):
        diffs = store.differences(first, h, where=(f"in {os.path.basename(files[0])}", f"in {os.path.basename(f)}"))
        if diffs:
            raise ValueError(f"{f!r} and {files[0]!r} are shards of different runs (" + "; ".join(diffs)
                             + "): merge only the shards of one run")
    shards = {tuple(h["shard"]) for h in headers if h.get("shard")}
    sizes = {n for _, n in shards}
    if len(sizes) > 1:
        raise ValueError(f"the files come from runs with different shard counts {sorted(sizes)}: {files}")
    if sizes and not allow_missing:
        n = sizes.pop()
        missing = sorted(set(range(n)) - {i for i, _ in shards})
        if missing:
            raise ValueError(f"shards {missing} of {n} are missing (found {files}); "
                             "pass allow_missing=True to merge what is there")
    if all(((h.get("fingerprint") or {}).get("prompts") or {}).get("sha256") is None for h in headers):
        _check_streamed_chain(records, origin)
    merged_header = dict(first, shard=None)
    rs = _set_from(merged_header, records)
    if out is not None:
        rs.save(out)
    return rs


def _check_streamed_chain(records: list[dict[str, Any]], origin: dict[int, str]) -> None:
    """Shards of a run read from an iterable (no whole-list hash): each record's chain hash must be
    the hash of the merged prompts 0..index, checked up to the first index no shard holds."""
    latest = {int(r["index"]): r for r in records}
    chain = store.PromptChain()
    for expect, i in enumerate(sorted(latest)):
        if i != expect:
            break  # a gap (an unfinished shard): nothing after it can be checked
        rec = latest[i]
        link = chain.update(i, rec.get("prompt"))
        if rec.get("chain") is not None and rec["chain"] != link:
            others = sorted({origin[j] for j in range(i) if origin.get(j) != origin[i]}) or [origin[i]]
            raise ValueError(
                f"{origin[i]!r} and {others[0]!r} are shards of different runs (the prompt list: prompts[{i}] "
                f"{rec.get('prompt')!r:.80} in {os.path.basename(origin[i])} was read after other prompts "
                "than those the other shards hold): merge only the shards of one run")


def _trace_one(model: Any, prompt: Any, index: int, prepend_bos: bool | None = None):
    """The trace of one prompt; a bad prompt raises naming ``prompts[index]``."""
    model._encode(prompt, argname=f"prompts[{index}]", prepend_bos=prepend_bos)
    return model.trace(prompt, prepend_bos=prepend_bos)


def _peek_header(path: str) -> dict[str, Any] | None:
    """The header of an existing routes file, or None (the locked writer validates it for real)."""
    try:
        header, _ = _read_any(path) if _is_parquet(path) else (store.parse(_first_line(path), path)[0], None)
        return header
    except (OSError, ValueError, ImportError):
        return None


def _first_line(path: str) -> bytes:
    with open(path, "rb") as fh:
        line = fh.readline(1 << 20)
    return line if line.endswith(b"\n") else line + b"\n"


def trace_many(
    model: Any,
    prompts: Any,
    *,
    threshold: float = 0.04,
    renormalize: bool = True,
    targets: Sequence[int] | str | int | None = None,
    norm: int = 1,
    weighting: str = "flow",
    out: str | os.PathLike | None = None,
    resume: bool = True,
    shard: tuple[int, int] | None = None,
    on_error: str = "raise",
    progress: bool | None = None,
    faithfulness: bool | int = False,
    prepend_bos: bool | None = None,
) -> RouteSet:
    """Trace every prompt, build its pruned graph and keep only its :class:`PromptRoutes`.

    * ``prompts``: a list of strings, a text file path (UTF-8, one prompt per line; blank lines
      are skipped, a prompt's index is its 0-based line number, a byte-order mark is dropped) or
      any iterable of strings (a generator, a ``datasets`` column), read lazily;
    * ``threshold``, ``renormalize``, ``targets``, ``norm``: the graph of each prompt
      (:func:`ltt.graph.build_graph`); ``weighting``: ``"flow"`` or ``"edge"`` (module docstring);
    * ``out``: a JSON-lines file (``.jsonl``) written one line per prompt as it goes, or a
      ``.parquet`` file (needs pyarrow; the run streams into ``<out>.partial.jsonl`` and writes
      the Parquet file when it stops). The file is locked while the run writes it (a second
      process given it is refused), and an existing file that is not an ltt routes file is
      refused untouched. Its header fingerprints the run (:mod:`ltt.routes_store`: the model's
      config, dtype and weights checksum, ltt's version, the settings, the prompt list). With
      ``resume`` (default) an existing file of the same run is continued: prompts already in it
      are not traced again, a truncated last line is dropped; a file of another run (another
      model, even of the same name, other settings, another prompt list) is refused, naming what
      differs. A list or file of prompts is compared whole; an iterable without a length is
      compared prompt by prompt as it is read (every prompt already in the file must come back
      at its index), and is read into a list first when the file's run was fingerprinted whole.
      ``resume=False`` replaces an existing ltt routes file;
    * ``shard=(i, n)``: trace only the prompts whose index is ``i`` modulo ``n``; by default
      taken from the ``RANK`` / ``WORLD_SIZE`` environment (``torchrun``, ``accelerate
      launch``). A sharded run writes ``out`` as :func:`shard_path` (``routes.shard0of2.jsonl``);
      :func:`merge_shards` joins the files;
    * ``on_error``: ``"raise"`` (default: stop at a bad prompt, naming ``prompts[i]``; the file
      keeps everything done before it) or ``"skip"`` (record the error and go on);
    * ``progress``: a tqdm bar (default: when stderr is a terminal);
    * ``faithfulness``: also rerun each prompt's graph through :func:`ltt.faithfulness.faithfulness`
      (True: 16 random graphs, an int: that many) and keep its summary in the record; off by default;
    * ``prepend_bos``: as in :meth:`ltt.models.Model.trace` (a prompt may also be a list of
      token ids); when given, it is one of the run's settings.

    Returns the :class:`RouteSet` of this process's prompts, in input order.

    >>> routes = model.trace_many("prompts.txt", out="routes.jsonl")   # doctest: +SKIP
    """
    threshold = check_threshold(threshold)
    if not isinstance(renormalize, (bool, np.bool_)):
        raise TypeError(f"renormalize must be True or False, got {renormalize!r}")
    norm = check_norm(norm)
    _check_weighting(weighting)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if targets is not None:
        resolve_targets(targets, 1 << 30)  # type and emptiness checks; ranges are per prompt
        if not isinstance(targets, str):
            targets = [int(t) for t in (targets if not isinstance(targets, (int, np.integer)) else [targets])]
    shard = _check_shard(shard)
    settings = {"threshold": threshold, "renormalize": bool(renormalize), "targets": targets,
                "norm": int(norm), "weighting": weighting}
    if faithfulness is not False:
        settings["faithfulness"] = _faithfulness_baselines(faithfulness)
    if prepend_bos is not None:
        if not isinstance(prepend_bos, (bool, np.bool_)):
            raise TypeError(f"prepend_bos must be None, True or False, got {prepend_bos!r}")
        settings["prepend_bos"] = bool(prepend_bos)
    routes = RouteSet(str(model.name), int(model.n_layers), int(model.n_heads), settings, model=model)
    source, count, prompts_fp = _prompt_source(prompts)
    final_path = write_path = None
    seed = None
    if out is not None:
        final_path = write_path = shard_path(out, shard)
        if os.path.isdir(final_path):
            raise IsADirectoryError(f"out={final_path!r} is a directory: give a file path")
        folder = os.path.dirname(os.path.abspath(final_path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"out={final_path!r}: the folder {folder!r} does not exist")
        if _is_parquet(final_path):
            _parquet_modules()  # fail before any work when pyarrow is missing
            store.check_ours(final_path)
            write_path = _partial(final_path)
            if resume and os.path.isfile(final_path):
                seed = _read_parquet(final_path)
        old = seed[0] if seed is not None else (_peek_header(write_path) if os.path.isfile(write_path) else None)
        if resume and prompts_fp is None and old and ((old.get("fingerprint") or {}).get("prompts") or {}).get("sha256"):
            # the file's run was fingerprinted whole: read this iterable whole to compare it first
            items = list(source)
            source, count, prompts_fp = iter(items), len(items), store.prompts_fingerprint(items)
            if not items:
                raise ValueError("prompts is empty: the iterable gave no prompts")
    routes.fingerprint = {"model": store.model_fingerprint(model),
                          "prompts": prompts_fp or {"count": None, "sha256": None}}
    writer = None
    if out is not None:
        by_index = None
        if prompts_fp is not None:
            items = list(source)
            source, by_index = iter(items), dict(items)
        writer = store.Writer(write_path, routes.header(shard), resume, seed=seed, prompts=by_index)
    done = writer.done if writer is not None else {}
    if count is not None and shard is not None:
        i, n = shard
        count = len(range(i, count, n)) if not isinstance(prompts, (str, os.PathLike)) else None
    bar = None
    completed = False
    try:
        if progress or (progress is None and not _quiet()):
            from tqdm.auto import tqdm

            bar = tqdm(total=count, desc="tracing prompts", unit="prompt")
        _run(model, routes, source, done, writer, shard, on_error,
             (threshold, renormalize, targets, norm, weighting), bar, settings.get("faithfulness"),
             prepend_bos)
        completed = True
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            try:
                if _is_parquet(final_path):
                    header, recs = writer.contents()
                    _write_parquet(final_path, header, recs)
                    if completed:
                        os.remove(writer.path)
            finally:
                writer.close()
    return routes


def _run(model, routes, source, done, writer, shard, on_error, graph_args, bar, faithfulness=None,
         prepend_bos=None) -> None:
    """The loop of :func:`trace_many`: each prompt from the file when it is there (its chain
    checked), else traced, summarised and written."""
    chain = store.PromptChain()
    seen = 0
    last = -1
    for index, prompt in source:
        seen += 1
        last = index
        link = chain.update(index, prompt)
        if shard is not None and index % shard[1] != shard[0]:
            continue
        key = prompt_key(prompt) if isinstance(prompt, str) else ""
        old = done.get(index)
        if old is not None:
            if old.get("chain") != link:
                raise ValueError(
                    f"prompts[{index}] or a prompt before it differs from the run in {writer.path!r} "
                    f"(there prompts[{index}] is {old.get('prompt')!r:.80}, here {prompt!r:.80}): another "
                    "prompt list is not resumed; give another out path, or resume=False to replace it")
            if "error" in old:
                routes.errors.append(old)
            else:
                routes.records.append(PromptRoutes.from_record(old, routes.n_layers, routes.n_heads))
        else:
            try:
                trace = _trace_one(model, prompt, index, prepend_bos)
                summary = summarize(trace, *graph_args, index=index)
                if faithfulness is not None:
                    graph = build_graph(trace, *graph_args[:4])
                    summary.faithfulness = trace.faithfulness(graph, baselines=faithfulness).summary()
                del trace
            except (ValueError, TypeError) as exc:
                if on_error == "raise" or not isinstance(prompt, str):
                    if f"prompts[{index}]" in str(exc) or type(exc) not in (ValueError, TypeError):
                        raise
                    raise type(exc)(f"prompts[{index}]: {exc}") from exc
                err = {"index": index, "key": key, "prompt": prompt, "error": f"{type(exc).__name__}: {exc}"}
                routes.errors.append(err)
                if writer is not None:
                    writer.write(dict(err, chain=link))
            else:
                routes.records.append(summary)
                if writer is not None:
                    writer.write(dict(summary.to_record(), chain=link))
        if bar is not None:
            bar.update(1)
    if seen == 0:
        raise ValueError("prompts is empty: the iterable gave no prompts")
    beyond = [i for i in done if i > last]
    if beyond:
        raise ValueError(f"the prompts end at index {last} but the file {writer.path!r} holds prompts up to "
                         f"index {max(beyond)}: another prompt list is not resumed; give another out path, "
                         "or resume=False to replace it")


def _faithfulness_baselines(value: Any) -> int:
    """The number of random graphs of ``trace_many(faithfulness=...)``: True -> 16, an int >= 0."""
    if value is True:
        return 16
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 4096:
        raise ValueError(f"faithfulness must be True, False or a number of random graphs in [0, 4096], got {value!r}")
    return int(value)


def _quiet() -> bool:
    from ltt.models import _quiet as quiet

    return quiet()
