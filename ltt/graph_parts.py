"""The parts of a graph as removal sets, and random graphs of the same size: what
:func:`ltt.faithfulness.faithfulness` keeps, removes and compares against.

>>> edges, ffn = graph_parts(trace.graph(threshold=0.04))              # doctest: +SKIP
>>> random_parts(edges, ffn, T=14, rng=np.random.default_rng(0))         # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from ltt.graph import ATTENTION, Graph

__all__ = ["graph_parts", "random_parts"]


def graph_parts(graph: Graph) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, np.ndarray]]:
    """``(edges, ffn)``: per layer, the attention edges of ``graph`` as ``(targets, sources)``
    token arrays and its FFN blocks as a token array (layers without any are left out).

    >>> edges, ffn = graph_parts(trace.graph(threshold=0.04))         # doctest: +SKIP
    >>> sum(len(t) for t, _ in edges.values()), sum(map(len, ffn.values()))   # doctest: +SKIP
    """
    names = {n.name for n in graph.nodes}
    edges: dict[int, list[tuple[int, int]]] = {}
    for e in graph.edges:
        if e.kind != ATTENTION:
            continue
        if e.source not in names or e.target not in names:
            raise ValueError(f"graph holds the edge {e.source} -> {e.target} but not both of its nodes")
        edges.setdefault(int(e.layer), []).append((e.target_token, e.source_token))
    ffn: dict[int, list[int]] = {}
    for n in graph.nodes:
        if n.kind == "M":
            ffn.setdefault(int(n.layer), []).append(int(n.token))
    out_e = {l: (np.array([t for t, _ in v], np.int64), np.array([s for _, s in v], np.int64))
             for l, v in edges.items()}
    out_f = {l: np.array(sorted(set(v)), np.int64) for l, v in ffn.items()}
    return out_e, out_f


def random_parts(edges: dict[int, tuple[np.ndarray, np.ndarray]], ffn: dict[int, np.ndarray], T: int,
                 rng: np.random.Generator, mode: str = "uniform"):
    """One random graph of the same size as ``(edges, ffn)`` (``mode``: see :mod:`ltt.faithfulness`).

    >>> edges, ffn = random_parts(*graph_parts(g), T=14, rng=np.random.default_rng(0))  # doctest: +SKIP
    """
    out_e: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for l in sorted(edges):
        tgt, _ = edges[l]
        if mode == "uniform":
            pairs = rng.choice(T * (T + 1) // 2, size=len(tgt), replace=False)
            # pair index k <-> (t, s) with k = t (t + 1) / 2 + s, 0 <= s <= t
            t = np.floor((np.sqrt(8.0 * pairs + 1.0) - 1.0) / 2.0).astype(np.int64)
            t = np.where(t * (t + 1) // 2 > pairs, t - 1, t)
            t = np.where((t + 1) * (t + 2) // 2 <= pairs, t + 1, t)
            out_e[l] = (t, pairs - t * (t + 1) // 2)
        else:
            ts, ss = [], []
            for t, count in zip(*np.unique(tgt, return_counts=True)):
                ts.append(np.full(count, t, np.int64))
                ss.append(rng.choice(int(t) + 1, size=int(count), replace=False).astype(np.int64))
            out_e[l] = (np.concatenate(ts), np.concatenate(ss))
    out_f = {l: np.sort(rng.choice(T, size=len(v), replace=False)).astype(np.int64) for l, v in sorted(ffn.items())}
    return out_e, out_f
