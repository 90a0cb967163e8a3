"""The smallest circuit along a ranking that reaches a stated normalised faithfulness.

:func:`circuit` ranks the prompt's parts (:mod:`ltt.circuits.rankings`), then

1. measures a geometric grid of budgets in one batch and takes the first that reaches the level;
2. narrows the budget between the last grid point below and that one, eight budgets per batched
   pass, to the smallest measured budget reaching it (faithfulness need not grow with the
   budget; every kept budget is one that was measured);
3. greedily drops parts, the lowest-ranked first, whose removal keeps the level: each round
   measures every candidate dropped alone (one batch), then the candidates that passed
   dropped cumulatively (one batch), and keeps the longest prefix that still reaches the level
   (32 candidates a round, the 256 lowest-ranked parts at most).

The result is a :class:`ltt.graph.Graph` of the kept attention edges and FFN blocks (with the
residual edges of their tokens, which always act), and ``graph.faithfulness`` the
:class:`ltt.faithfulness.Faithfulness` re-measured on that graph. Without a counterfactual the
removed parts are mean-ablated over a built-in reference set (:data:`REFERENCE`) and the
result says so. A level no budget reaches raises a ValueError with the best level reached.

>>> g = trace.circuit(min_faithfulness=0.8, counterfactual=cf, tokens=[" Mary", " John"])   # doctest: +SKIP
>>> len(g.edges), g.faithfulness.normalized                        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ltt.circuits.curves import example, measure
from ltt.circuits.gradients import DEFAULT_STEPS
from ltt.circuits.rankings import check_ranking, n_parts, part_order, score_parts

__all__ = ["circuit", "REFERENCE"]

#: the reference set of the dataset mean ablation used when no counterfactual is given
REFERENCE = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "A quick brown fox jumps over the lazy dog; the dog sleeps.",
    "In 1998 the company moved its offices from Boston to Chicago.",
    "She opened the door, looked at the garden and smiled at the rain.",
    "The results of the experiment were published in a short paper.",
    "Tom bought three apples, two pears and a melon at the market.",
    "Water boils at one hundred degrees Celsius at sea level.",
)


def _check_level(level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)):
        raise TypeError(f"min_faithfulness must be a number in (0, 1], got {type(level).__name__}: {level!r}")
    if not 0.0 < float(level) <= 1.0:
        raise ValueError(f"min_faithfulness must be in (0, 1], got {level!r}")
    return float(level)


def _normalized(ld: np.ndarray, full: float, empty: float) -> np.ndarray:
    span = full - empty
    if span == 0:
        raise ValueError("the full model and the empty circuit give the same logit difference: "
                         "normalised faithfulness is undefined for this pair")
    return (ld - empty) / span


def _graph(trace: Any, keys: np.ndarray):
    """The Graph of the kept parts ``keys [k, 3]`` (``(l, t, s)``, ``s = -1``: an FFN block),
    with the residual edges of their tokens up to the target."""
    from ltt.graph import Graph
    from ltt.nodes import Edge, Node, Stage, parse_node
    from ltt.scores import attribute

    full = attribute(trace)
    parallel = [bool(p) for p in full.parallel]
    L, T = full.n_layers, trace.n_tokens
    target = T - 1
    edges: list[Edge] = []
    att = keys[keys[:, 2] >= 0]
    blk = keys[keys[:, 2] < 0]
    for l, t, s in att.tolist():
        w = float(full.layer_dense(l)[1][t, s])
        edges.append(Edge.make(Stage.ATTENTION, l, t, s, w, parallel[l]))
    for l, t, _ in blk.tolist():
        edges.append(Edge.make(Stage.FFN_IN, l, t, t, float(full.ffn[l, t]), parallel[l]))
        edges.append(Edge.make(Stage.FFN_OUT, l, t, t, float(full.ffn[l, t]), parallel[l]))
    # residual edges: each token that holds a part (and the target) keeps its residual stream
    # from its first part's layer up to the last layer where it is read or written
    tokens = {target: (0, L - 1)}
    for l, t, s in keys.tolist():
        for tok, lo in ((t, l), (s, 0) if s >= 0 else (t, l)):
            a, b = tokens.get(tok, (lo, l))
            tokens[tok] = (min(a, lo), max(b, l))
    for tok, (a, b) in tokens.items():
        hi = L - 1 if tok == target else b
        for l in range(a, hi + 1):
            edges.append(Edge.make(Stage.ATTENTION_RESIDUAL, l, tok, tok, float(full.attn_resid[l, tok]), parallel[l]))
            if not parallel[l]:
                edges.append(Edge.make(Stage.FFN_RESIDUAL, l, tok, tok, float(full.ffn_resid[l, tok]), False))
    names = {n for e in edges for n in (e.source, e.target)}
    nodes = []
    for name in names:
        kind, layer, token = parse_node(name)
        nodes.append(Node(name, layer, token, kind, 0.0))
    order = {"X": 0, "A": 1, "M": 2, "I": 3}
    nodes.sort(key=lambda n: (n.layer, order[n.kind], n.token))
    edges.sort(key=lambda e: (e.layer, e.target, e.source, e.kind))
    return Graph(tokens=list(trace.tokens), token_ids=[int(i) for i in trace.token_ids],
                 model_name=str(getattr(trace.model, "name", "model")), n_layers=L, threshold=0.0,
                 renormalize=False, targets=[target], norm=1, nodes=nodes, edges=edges)


def circuit(trace: Any, min_faithfulness: float = 0.8, counterfactual: Any = None, tokens: Any = None,
            ablation: str | None = None, ranking: str | None = None, *, steps: int = DEFAULT_STEPS,
            greedy: bool = True, max_parts: int | float | None = None, baselines: int = 8, seed: int = 0,
            max_batch_bytes: int = 1 << 30):
    """The smallest graph along ``ranking`` (None: ``"refined"`` with a counterfactual, the
    benchmark's winner; ``"routes"`` without, i.e. ``routes-paths``) whose measured normalised faithfulness reaches
    ``min_faithfulness`` (module docstring), with ``graph.faithfulness`` attached (re-measured,
    with ``baselines`` random graphs of the same size). ``counterfactual``: a prompt, trace or
    ids of the same token length (patching); None: dataset mean ablation over
    :data:`REFERENCE`. ``tokens``: ``[answer, counterfactual answer]`` (None: the two prompts'
    own predictions; needed without a counterfactual). ``greedy=False`` skips the pruning pass;
    ``max_parts``: the largest circuit considered (a count, or a fraction of all parts).

    >>> g = circuit(trace, 0.8, counterfactual="When Mary and John went to the store, Mary gave a drink to")  # doctest: +SKIP
    """
    from ltt.circuits.rankings import CIRCUIT_DEFAULT

    level = _check_level(min_faithfulness)
    if ranking is None:
        ranking = CIRCUIT_DEFAULT if counterfactual is not None else "routes"
    ranking = check_ranking(ranking, counterfactual is not None)
    reference = None
    if counterfactual is None and ablation in (None, "mean"):
        ablation, reference = "mean", list(REFERENCE)
    ex = example(trace, counterfactual, tokens, ablation, reference)
    if ranking not in ("routes-paths", "routes-edge", "random") and ex.cf_ids is None:
        raise ValueError(f"ranking {ranking!r} needs a counterfactual; without one use 'routes-paths' "
                         "(mean ablation over the reference set)")
    model = trace.model
    N = n_parts(model.n_layers, trace.n_tokens)
    cap = N
    if max_parts is not None:
        if isinstance(max_parts, bool) or not isinstance(max_parts, (int, float, np.integer, np.floating)) \
                or not 0 < max_parts <= (N if isinstance(max_parts, (int, np.integer)) else 1.0):
            raise ValueError(f"max_parts must be a count in [1, {N}] or a fraction in (0, 1], got {max_parts!r}")
        cap = int(max_parts) if isinstance(max_parts, (int, np.integer)) else max(1, int(round(max_parts * N)))
    sc = score_parts(trace, ranking, ex.cf_ids, ex.answer, ex.cf_answer, steps, seed, ex.cf_trace)
    order = part_order(sc)
    seen: dict[int, float] = {}

    def run(counts):
        todo = sorted({int(c) for c in counts} - set(seen))
        if todo:
            ld, full, empty = measure(ex, [order[:c] for c in todo], max_batch_bytes)
            for c, f in zip(todo, _normalized(ld, full, empty)):
                seen[c] = float(f)
        return [seen[int(c)] for c in counts]

    grid = np.unique(np.geomspace(1, cap, 16).round().astype(int))
    fs = run(grid)
    hits = [i for i, f in enumerate(fs) if f >= level]
    if not hits:
        best = int(np.argmax(fs))
        raise ValueError(f"min_faithfulness={level:g} is not reached along ranking {ranking!r}: the best "
                         f"measured is {max(fs):.3f} (at {grid[best]} of {N} parts, {ex.ablation} ablation"
                         + (f", at most {cap} parts)" if cap < N else ")"))
    hi = int(grid[hits[0]])
    lo = int(grid[hits[0] - 1]) if hits[0] > 0 else 0
    while hi - lo > 1:  # the smallest reaching budget in (lo, hi], 8 budgets a pass
        probe = np.unique(np.linspace(lo, hi, 10).round().astype(int)[1:-1])
        probe = probe[(probe > lo) & (probe < hi)]
        if probe.size == 0:
            break
        got = run(probe)
        ok = [p for p, f in zip(probe, got) if f >= level]
        below = [p for p, f in zip(probe, got) if f < level and (not ok or p < min(ok))]
        hi = int(min(ok)) if ok else hi
        lo = int(max(below)) if below else lo
    kept = order[:hi]
    if greedy:
        kept = _prune(ex, kept, level, max_batch_bytes)
    graph = _graph(trace, kept)
    from ltt.faithfulness import faithfulness

    graph.faithfulness = faithfulness(trace, graph, ablation=ex.ablation, baselines=baselines, seed=seed,
                                      tokens=[ex.answer, ex.cf_answer], counterfactual=ex.cf_ids,
                                      reference=reference, max_batch_bytes=max_batch_bytes)
    graph.circuit = {"ranking": ranking, "min_faithfulness": level, "parts": int(len(kept)), "of": N,
                     "ablation": ex.ablation, "reference": None if reference is None else len(reference),
                     "measured": seen}
    return graph


def _prune(ex: Any, kept: np.ndarray, level: float, max_batch_bytes: int, chunk: int = 32,
           limit: int = 256) -> np.ndarray:
    """The greedy pass: drop parts (lowest-ranked first, at most the ``limit`` lowest) whose
    removal keeps ``level``."""
    kept = kept.copy()
    pos = len(kept) - 1
    stop = len(kept) - limit
    while pos >= max(0, stop):
        cand = list(range(pos, max(-1, pos - chunk), -1))
        ld, full, empty = measure(ex, [np.delete(kept, i, axis=0) for i in cand], max_batch_bytes)
        ok = [i for i, f in zip(cand, _normalized(ld, full, empty)) if f >= level]
        if ok:
            prefixes = [np.delete(kept, ok[:j], axis=0) for j in range(1, len(ok) + 1)]
            ld, full, empty = measure(ex, prefixes, max_batch_bytes)
            good = 0
            for j, f in enumerate(_normalized(ld, full, empty), 1):
                if f < level:
                    break
                good = j
            if good:
                kept = np.delete(kept, ok[:good], axis=0)
        pos = cand[-1] - 1
    return kept
