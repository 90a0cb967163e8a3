"""Rankings of a prompt's parts (attention edges per layer, source, target; FFN blocks per layer,
token) for circuits and faithfulness curves.

A ranking gives every part a score (:class:`ltt.circuits.gradients.PartScores`); parts are kept
in order of decreasing ``|score|``. The part space of a prompt of ``T`` tokens and ``L`` layers
has ``L (T (T + 1) / 2 + T)`` parts: every causal pair ``s <= t`` per layer and every FFN block.

Rankings (``ranking=``):

* ``"routes"``: ltt's contributions in their best form: ``routes-contrast`` with a
  counterfactual, ``routes-paths`` without (``DEFAULT``, ``DEFAULT_NO_CF``);
* ``"routes-paths"``: the total influence of a part on the target over every path of the
  contribution graph (its shares renormalised per state: each state's parts sum to 1):
  ``inf(I_{L-1, target}) = 1``, a state's influence is the sum over the states it enters of
  share x influence, an edge's score its share times its target's influence (the
  cumulative-influence order by which circuit-tracer prunes);
* ``"routes-edge"``: the edge's share in its target state alone;
* ``"routes-contrast"``: the weight of the paths from the tokens where the counterfactual differs,
  through the part, to the target (:func:`route_flow`; parts that no changed token reaches
  cannot change a patched run);
* ``"eap"``, ``"eap-ig"``: edge attribution patching and its integrated-gradients form
  (:mod:`ltt.circuits.gradients`);
* ``"routes+eap-ig"``: the rank average of ``routes-contrast`` and ``eap-ig``;
* ``"refined"``: routes refined by measured effects: the best ``REFINE_CANDIDATES`` parts of
  ``routes-contrast`` and of ``eap-ig`` each, re-ordered by their exact patching effect (each
  part patched alone from the counterfactual, all in one batch: ``|LD(full) - LD(part
  patched)|``), then every other part in ``eap-ig`` order;
* ``"best"``: routes and EAP-IG refined by measured effects: per prompt, whichever of
  ``routes-contrast`` and ``eap-ig`` has the larger measured area under its faithfulness curve
  at MIB's fractions (both curves in one batched pass);
* ``"random"``: a uniformly random order (``seed``).

:func:`component_scores` aggregates part scores to MIB's component level (attention heads and
MLPs, averaged over positions and examples).

>>> s = score_parts(trace, "routes", counterfactual=cf_trace, tokens=[" Mary", " John"])  # doctest: +SKIP
>>> order = part_order(s)                                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ltt.circuits.gradients import DEFAULT_STEPS, PartScores, eap, eap_ig

__all__ = ["RANKINGS", "DEFAULT", "score_parts", "part_order", "n_parts", "parts_of", "component_scores",
           "route_influence"]

RANKINGS = ("routes", "routes-paths", "routes-edge", "routes-contrast", "eap", "eap-ig", "routes+eap-ig",
            "refined", "best", "random")
#: the pool that ``"refined"`` orders by measured effects: EAP-IG's best and routes-contrast's best
REFINE_IG = 32
REFINE_ROUTES = 8
#: what ``"routes"`` means: ltt's best routes form with a counterfactual (benchmarks/bench_circuits.py)
DEFAULT = "routes-contrast"
#: what ``"routes"`` means without one (mean ablation: no changed tokens to flow from)
DEFAULT_NO_CF = "routes-paths"
#: the default ranking of :func:`ltt.circuits.search.circuit` with a counterfactual: EAP-IG and
#: routes refined by measured effects, which reaches 0.8 and 0.9 with fewer parts than EAP-IG
#: in the benchmark (docs/circuits.md)
CIRCUIT_DEFAULT = "refined"


def check_ranking(ranking: Any, counterfactual: bool = True) -> str:
    if not isinstance(ranking, str) or ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if ranking == "routes":
        return DEFAULT if counterfactual else DEFAULT_NO_CF
    return ranking


def n_parts(L: int, T: int) -> int:
    """How many parts a prompt has: ``L (T (T + 1) / 2 + T)`` (attention edges + FFN blocks)."""
    return L * (T * (T + 1) // 2 + T)


def _flat(scores: PartScores) -> tuple[np.ndarray, np.ndarray]:
    """Every part's score and its key, in a fixed order: attention edges (l, t, s) with s <= t,
    then FFN blocks (l, t). Keys: ``[N, 3]`` rows ``(l, t, s)``, ``s = -1`` for a block."""
    L, T = scores.ffn.shape
    t, s = np.tril_indices(T)
    ls = np.repeat(np.arange(L), len(t))
    keys_a = np.stack([ls, np.tile(t, L), np.tile(s, L)], 1)
    vals_a = scores.attn[:, t, s].reshape(-1)
    keys_f = np.stack([np.repeat(np.arange(L), T), np.tile(np.arange(T), L), np.full(L * T, -1)], 1)
    return np.concatenate([vals_a, scores.ffn.reshape(-1)]), np.concatenate([keys_a, keys_f])


def part_order(scores: PartScores) -> np.ndarray:
    """Part keys ``[N, 3]`` (``(l, t, s)``, ``s = -1`` for an FFN block) by decreasing ``|score|``
    (ties: the fixed order of :func:`_flat`, so a ranking is deterministic)."""
    vals, keys = _flat(scores)
    order = np.argsort(-np.abs(vals), kind="stable")
    return keys[order]


def parts_of(keys: np.ndarray):
    """``(edges, ffn)`` of :class:`ltt.interventions.PartSet` for part keys ``[k, 3]``."""
    edges: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    ffn: dict[int, np.ndarray] = {}
    if len(keys) == 0:
        return edges, ffn
    att = keys[keys[:, 2] >= 0]
    blk = keys[keys[:, 2] < 0]
    for l in np.unique(att[:, 0]):
        m = att[:, 0] == l
        edges[int(l)] = (att[m, 1].astype(np.int64), att[m, 2].astype(np.int64))
    for l in np.unique(blk[:, 0]):
        ffn[int(l)] = np.sort(blk[blk[:, 0] == l, 1]).astype(np.int64)
    return edges, ffn


# --------------------------------------------------------------------------------------------
# ltt's routes


def _shares(trace: Any) -> tuple[np.ndarray, ...]:
    from ltt.scores import attribute

    full = attribute(trace)
    return full.attn.astype(np.float64), full.attn_resid.astype(np.float64), full.ffn.astype(np.float64), \
        full.ffn_resid.astype(np.float64), np.asarray(full.parallel, bool)


def route_influence(attn: np.ndarray, attn_resid: np.ndarray, ffn: np.ndarray, ffn_resid: np.ndarray,
                    parallel: np.ndarray, target: int, score_attn: np.ndarray | None = None,
                    score_ffn: np.ndarray | None = None) -> PartScores:
    """Path scores (module docstring, ``routes-paths``) from dense shares ``attn [L, T, T]``,
    ``attn_resid``, ``ffn``, ``ffn_resid [L, T]``: an edge's share times the total weight of all
    paths from its target state to the output of ``target``; an FFN block's share likewise.
    ``score_attn`` / ``score_ffn``: other per-part weights to multiply the target states'
    influence with (``routes-contrast``); the influence itself always flows through the shares.

    >>> route_influence(*shares, target=T - 1).attn[L - 1, T - 1].sum()   # doctest: +SKIP
    """
    L, T = ffn.shape
    sa = attn if score_attn is None else score_attn
    sf = ffn if score_ffn is None else score_ffn
    inf_out = np.zeros(T)
    inf_out[target] = 1.0  # I_{L-1}: the output state of the target
    e_scores = np.zeros((L, T, T))
    f_scores = np.zeros((L, T))
    intos = np.zeros((L, T))
    for l in range(L - 1, -1, -1):
        inf_m = ffn[l] * inf_out  # influence through the FFN block's output
        f_scores[l] = sf[l] * inf_out
        into = inf_out if parallel[l] else ffn_resid[l] * inf_out + inf_m  # influence of A{l}
        e_scores[l] = sa[l] * into[:, None]
        intos[l] = into
        below = (attn[l] * into[:, None]).sum(0) + attn_resid[l] * into
        inf_out = below + (inf_m if parallel[l] else 0.0)  # a parallel FFN reads I{l-1}
    out = PartScores(e_scores, f_scores, "routes-paths")
    out.into = intos  # the influence of each layer's attention target states [L, T]
    return out


def route_flow(attn: np.ndarray, attn_resid: np.ndarray, ffn: np.ndarray, ffn_resid: np.ndarray,
               parallel: np.ndarray, target: int, changed: np.ndarray) -> PartScores:
    """Contrast scores (``routes-contrast``): the total weight of the paths that start at a
    changed token's embedding (``changed [T]`` bool), pass through the part and end at the output
    of ``target``, i.e. ``reach(source state) x share x influence(target state)``, where
    ``reach`` is the share of a state that flows from the changed tokens (1 at their embeddings,
    then propagated forward through the shares) and ``influence`` as in :func:`route_influence`.
    Parts no changed token reaches score 0: patching them changes nothing."""
    L, T = ffn.shape
    back = route_influence(attn, attn_resid, ffn, ffn_resid, parallel, target)
    reach = changed.astype(np.float64)  # the state entering layer 0
    e_scores = np.zeros((L, T, T))
    f_scores = np.zeros((L, T))
    for l in range(L):
        with np.errstate(divide="ignore", invalid="ignore"):
            into = np.where(attn[l] != 0, back.attn[l] / attn[l], 0.0).max(axis=1)  # influence of the target
        e_scores[l] = attn[l] * reach[None, :] * into[:, None]
        mid = (attn[l] * reach[None, :]).sum(1) + attn_resid[l] * reach  # reach of A{l} (or the attention part of I{l})
        block_in = reach if parallel[l] else mid
        with np.errstate(divide="ignore", invalid="ignore"):
            out_inf = np.where(ffn[l] != 0, back.ffn[l] / ffn[l], 0.0)  # influence of I{l}
        f_scores[l] = ffn[l] * block_in * out_inf
        reach = mid + ffn[l] * block_in if parallel[l] else ffn_resid[l] * mid + ffn[l] * mid
    return PartScores(e_scores, f_scores, "routes-contrast")


def routes(trace: Any, form: str, cf_ids: Any = None, target: int | None = None) -> PartScores:
    """ltt's route scores of ``trace`` (``form``: ``"paths"``, ``"edge"`` or ``"contrast"``,
    which needs the counterfactual's ids ``cf_ids``)."""
    sh = _shares(trace)
    T = sh[0].shape[-1]
    target = T - 1 if target is None else target
    if form == "edge":
        return PartScores(sh[0].copy(), sh[2].copy(), "routes-edge")
    if form == "paths":
        out = route_influence(*sh, target=target)
        from ltt.scores import attribute

        full = attribute(trace)  # per-head shares times their target's influence: the heads' scores
        out.heads = np.stack([(full.layer_dense(l)[0] * out.into[l][None, :, None]).sum((1, 2))
                              for l in range(full.n_layers)])
        return out
    if cf_ids is None:
        raise ValueError("ranking 'routes-contrast' needs a counterfactual")
    changed = np.array([int(a) != int(b) for a, b in zip(trace.token_ids, cf_ids)])
    return route_flow(*sh, target=target, changed=changed)


# --------------------------------------------------------------------------------------------
# the dispatcher


def _rank_average(a: PartScores, b: PartScores, method: str) -> PartScores:
    va, _ = _flat(a)
    vb, _ = _flat(b)
    N = len(va)
    ra = np.empty(N)
    rb = np.empty(N)
    ra[np.argsort(-np.abs(va), kind="stable")] = np.arange(N)
    rb[np.argsort(-np.abs(vb), kind="stable")] = np.arange(N)
    score = 1.0 - (ra + rb) / (2.0 * N)  # higher is better, in (0, 1]
    L, T = a.ffn.shape
    n_attn = L * T * (T + 1) // 2
    attn = np.zeros((L, T, T))
    t, s = np.tril_indices(T)
    attn[:, t, s] = score[:n_attn].reshape(L, -1)
    return PartScores(attn, score[n_attn:].reshape(L, T), method)


def score_parts(trace: Any, ranking: str, counterfactual: Any = None, answer: int | None = None,
                cf_answer: int | None = None, steps: int = DEFAULT_STEPS, seed: int = 0,
                cf_trace: Any = None) -> PartScores:
    """Scores of every part of ``trace`` under ``ranking`` (module docstring). ``counterfactual``:
    the counterfactual's token ids (for the gradient rankings and ``routes-contrast``);
    ``answer`` / ``cf_answer``: the logit difference's token ids; ``steps``: EAP-IG's."""
    ranking = check_ranking(ranking, counterfactual is not None)
    model = trace.model
    ids = [int(i) for i in trace.token_ids]
    L, T = model.n_layers, len(ids)
    target = T - 1
    if ranking == "random":
        rng = np.random.default_rng(seed)
        return PartScores(np.tril(rng.random((L, T, T))) + np.tril(np.ones((L, T, T))) * 1e-12,
                          rng.random((L, T)), "random")
    if ranking in ("routes-paths", "routes-edge"):
        return routes(trace, ranking.split("-")[1], target=target)
    if counterfactual is None:
        raise ValueError(f"ranking {ranking!r} needs a counterfactual prompt")
    if ranking == "routes-contrast":
        return routes(trace, "contrast", counterfactual, target=target)
    if answer is None or cf_answer is None:
        raise ValueError(f"ranking {ranking!r} needs the logit difference's two tokens")
    if ranking == "eap":
        return eap(model, ids, counterfactual, target, answer, cf_answer)
    ig = eap_ig(model, ids, counterfactual, target, answer, cf_answer, steps)
    if ranking == "eap-ig":
        return ig
    if ranking == "refined":
        return refined(trace, counterfactual, answer, cf_answer, ig, routes(trace, "contrast", counterfactual))
    if ranking == "best":
        return best(trace, counterfactual, answer, cf_answer, [routes(trace, "contrast", counterfactual), ig])
    return _rank_average(routes(trace, "contrast", counterfactual, target=target), ig, "routes+eap-ig")


def _lds(trace: Any, cf_ids: Any, answer: int, cf_answer: int, kept: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """Logit differences of the circuits keeping only each key array of ``kept`` (the rest
    patched from ``cf_ids``), one batched pass: ``(LD [len(kept)], LD(full), LD(empty))``."""
    from ltt.ablations import RunSpec
    from ltt.interventions import PartSet, run_batched

    ids = [int(i) for i in trace.token_ids]
    spec = RunSpec("patch", cf_ids=list(cf_ids))
    rows = [PartSet(*parts_of(k), only=True) for k in kept]
    lg = run_batched(trace.model, ids, rows, [len(ids) - 1], "patch", spec=spec)
    ld = lg[:, 0, answer] - lg[:, 0, cf_answer]
    cf = np.asarray(spec.cf_logits, np.float64).reshape(-1, lg.shape[-1])[0]
    return ld[1:], float(ld[0]), float(cf[answer] - cf[cf_answer])


def refined(trace: Any, cf_ids: Any, answer: int, cf_answer: int, ig: PartScores, rt: PartScores,
            k_ig: int = REFINE_IG, k_rt: int = REFINE_ROUTES) -> PartScores:
    """The ``"refined"`` ranking (module docstring) from EAP-IG scores ``ig`` and route scores ``rt``.

    The pool (EAP-IG's best ``k_ig`` parts and routes-contrast's best ``k_rt``) is ordered by
    backward elimination measured in context: the circuit keeping the pool's survivors ``S`` is
    run with each survivor removed in turn (one batch of ``|S| + 1`` rows), the half whose
    removal lowers the logit difference least (towards the counterfactual's) is ranked below the
    other half, and the other half goes on; ``~2 |pool|`` patched rows in ``log2 |pool|``
    passes. The parts outside the pool follow in EAP-IG order."""
    cand = [part_order(ig)[:k_ig], part_order(rt)[:k_rt]]
    pool = np.concatenate(cand)
    _, first = np.unique(pool, axis=0, return_index=True)
    pool = pool[np.sort(first)]  # EAP-IG's best first, then routes' new ones
    alive = np.arange(len(pool))
    low_first: list[int] = []  # pool indices, least needed first
    sign = None
    while len(alive) > 1:
        kept = [pool[alive]] + [pool[np.delete(alive, i)] for i in range(len(alive))]
        ld, full, empty = _lds(trace, cf_ids, answer, cf_answer, kept)
        if sign is None:
            sign = 1.0 if full >= empty else -1.0
        drop = (ld[0] - ld[1:]) * sign  # how much removing each survivor moves LD away from full
        order = np.argsort(drop, kind="stable")
        out = len(alive) // 2
        low_first.extend(int(i) for i in alive[order[:out]])
        alive = alive[order[out:]]
    low_first.extend(int(i) for i in alive)
    vals, _ = _flat(ig)
    top = float(np.abs(vals).max()) + 1.0
    attn, ffn = np.abs(ig.attn) / top, np.abs(ig.ffn) / top  # below 1: after every pool part
    for rank, i in enumerate(low_first):  # later in low_first: more needed, higher score
        l, t, s_ = pool[i]
        if s_ >= 0:
            attn[l, t, s_] = 1.0 + rank
        else:
            ffn[l, t] = 1.0 + rank
    return PartScores(attn, ffn, "refined")


def best(trace: Any, cf_ids: Any, answer: int, cf_answer: int, candidates: list[PartScores]) -> PartScores:
    """The ``"best"`` ranking: the candidate ranking with the larger measured area under its
    normalised faithfulness curve at MIB's fractions (all candidates' circuits in one batch)."""
    from ltt.ablations import RunSpec
    from ltt.interventions import PartSet, run_batched

    ids = [int(i) for i in trace.token_ids]
    N = n_parts(trace.model.n_layers, len(ids))
    fracs = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    counts = np.maximum(1, np.round(fracs * N).astype(int))
    rows = [PartSet(*parts_of(part_order(c)[:k]), only=True) for c in candidates for k in counts]
    rows.append(PartSet({}, {}, only=True))
    lg = run_batched(trace.model, ids, rows, [len(ids) - 1], "patch", spec=RunSpec("patch", cf_ids=list(cf_ids)))
    ld = lg[:, 0, answer] - lg[:, 0, cf_answer]
    span = ld[0] - ld[-1]
    f = (ld[1:-1] - ld[-1]) / (span if span != 0 else 1.0)
    area = [float(np.trapezoid(f[i * len(counts):(i + 1) * len(counts)], counts / N)) for i in range(len(candidates))]
    pick = candidates[int(np.argmax(area))]
    return PartScores(pick.attn, pick.ffn, f"best ({pick.method})", pick.heads)


def component_scores(scores: Sequence[PartScores]) -> dict[str, np.ndarray]:
    """MIB's component level, over a task set: per layer, the attention block's score (its
    edges' ``|score|`` summed over sources, averaged over target positions), each head's
    (``|heads|``, where the ranking scores heads: EAP, EAP-IG, routes-paths) and the MLP's
    (``|score|`` averaged over positions), each averaged over the examples. Returns
    ``{"attn": [L], "heads": [L, H] or None, "mlp": [L]}``.

    >>> component_scores([score_parts(tr, "eap-ig", cf, a, b) for tr, cf, a, b in pairs])  # doctest: +SKIP
    """
    if not scores:
        raise ValueError("scores: give at least one example's PartScores")
    attn = np.mean([np.abs(s.attn).sum(-1).mean(-1) for s in scores], axis=0)
    mlp = np.mean([np.abs(s.ffn).mean(-1) for s in scores], axis=0)
    heads = None
    if all(s.heads is not None for s in scores):
        heads = np.mean([np.abs(s.heads) for s in scores], axis=0)
    return {"attn": attn, "heads": heads, "mlp": mlp}
