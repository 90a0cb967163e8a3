"""The routes of a set of prompts: :class:`RouteSet`, its aggregates over the prompts and its tables.

:class:`RouteSet` holds the :class:`ltt.routes.summary.PromptRoutes` of many prompts (in input
order) and aggregates them: how often each head or FFN block is on the route and how much it
carries when it is, which source-position pattern its edges follow, and the prompts where it
mattered most. :func:`ltt.routes.trace_many` makes one; :func:`ltt.routes.load_routes` reads
one back.

>>> routes = model.trace_many(["The capital of France is", "2 + 2 ="])   # doctest: +SKIP
>>> routes.head_frequency.shape, routes.top_prompts(12, 3, k=1)          # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltt.checks import is_int
from ltt.routes import store
from ltt.routes.summary import PATTERNS, PromptRoutes


def _pandas():
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("this table export needs pandas: pip install pandas") from exc
    return pd


def _aggregate(per_prompt: str, which: int, doc: str) -> property:
    """A :class:`RouteSet` aggregate: item ``which`` of ``RouteSet._agg`` of ``per_prompt``."""
    return property(lambda self: self._agg(getattr(self, per_prompt))[which], doc=doc)


@dataclass
class RouteSet:
    """The summaries of many prompts and their aggregates (:mod:`ltt.routes.summary` for the measures).

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
    #: the run's fingerprint (model, prompt list), see :mod:`ltt.routes.fingerprint`; None for old files
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

    head_frequency = _aggregate("heads", 0, "``[L, H]``: fraction of prompts where the head is on the route")
    head_mean_share = _aggregate("heads", 1, "``[L, H]``: mean share over the prompts where it is on the route")
    head_mean = _aggregate("heads", 2, "``[L, H]``: mean share over all prompts")
    ffn_frequency = _aggregate("ffn", 0, "``[L]``: fraction of prompts where the FFN block is on the route")
    ffn_mean_share = _aggregate("ffn", 1, "``[L]``: mean share over the prompts where it is on the route")
    ffn_mean = _aggregate("ffn", 2, "``[L]``: mean share over all prompts")

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
        if not is_int(layer) or not -self.n_layers <= layer < self.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.n_layers}), got {layer!r}")
        layer = int(layer) % self.n_layers
        if head is None:
            values = self.ffn[:, layer] if self.records else np.zeros(0)
        else:
            if not is_int(head) or not 0 <= head < self.n_heads:
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
        return {"format": store.FORMAT, "version": store.VERSION, "model": self.model_name, "n_layers": self.n_layers,
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
