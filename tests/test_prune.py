"""Pruning (``ltt.kernels.prune``) against a plain breadth-first search written here.

The search below does not share the layer-by-layer sweep of ``ltt._reference.prune``: it builds
the full graph of DESIGN.md explicitly (nodes ``X0_t``, ``A{l}_t``, ``M{l}_t``, ``I{l}_t``, each
with its list of incoming edges in the tie order of the contract), then walks it backwards from
the targets with a queue. Rules, from the contract: a reached node keeps every incoming edge of
weight >= threshold and reaches its source; when none reaches the threshold it keeps its largest
incoming edge (ties: residual, then FFN, then attention sources in increasing s).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from ltt import _reference as R
from ltt import kernels as A


def _state(l: int, t: int):
    """The residual state after layer l at token t (``I{l}_t``); before layer 0 it is ``X0_t``."""
    return ("X", 0, t) if l < 0 else ("I", l, t)


def build_graph(attn, attn_resid, ffn, ffn_resid, parallel):
    """Incoming edges of every node: ``node -> [(weight, source, key)]`` in tie order, where key
    names the output entry the edge belongs to."""
    L, T = attn_resid.shape
    incoming: dict[tuple, list] = {}
    for l in range(L):
        for t in range(T):
            prev = _state(l - 1, t)
            att = [(float(attn[l, t, s]), _state(l - 1, s), ("attn", l, t, s)) for s in range(t + 1)]
            if parallel[l]:
                incoming[("I", l, t)] = ([(float(attn_resid[l, t]), prev, ("attn_resid", l, t)),
                                          (float(ffn[l, t]), ("M", l, t), ("ffn", l, t))] + att)
                incoming[("M", l, t)] = [(float(ffn[l, t]), prev, ("ffn_in", l, t))]
            else:
                incoming[("A", l, t)] = [(float(attn_resid[l, t]), prev, ("attn_resid", l, t))] + att
                incoming[("I", l, t)] = [(float(ffn_resid[l, t]), ("A", l, t), ("ffn_resid", l, t)),
                                         (float(ffn[l, t]), ("M", l, t), ("ffn", l, t))]
                incoming[("M", l, t)] = [(float(ffn[l, t]), ("A", l, t), ("ffn_in", l, t))]
    return incoming


def bfs_prune(attn, attn_resid, ffn, ffn_resid, parallel, targets, threshold):
    attn = np.asarray(attn, np.float64)
    attn_resid = np.asarray(attn_resid, np.float64)
    ffn = np.asarray(ffn, np.float64)
    ffn_resid = np.asarray(ffn_resid, np.float64)
    L, T = attn_resid.shape
    incoming = build_graph(attn, attn_resid, ffn, ffn_resid, parallel)
    start = [("I", L - 1, int(t)) for t in targets]
    seen = set(start)
    queue = deque(start)
    kept = set()
    while queue:
        node = queue.popleft()
        edges = incoming.get(node, [])  # X0 nodes have none
        if not edges:
            continue
        chosen = [e for e in edges if e[0] >= threshold]
        if not chosen:
            best = edges[0]
            for e in edges[1:]:
                if e[0] > best[0]:  # strictly larger: the first in tie order wins
                    best = e
            chosen = [best]
        for _, src, key in chosen:
            kept.add(key)
            if src not in seen:
                seen.add(src)
                queue.append(src)
    out = {
        "attn_edges": np.array(sorted(k[1:] for k in kept if k[0] == "attn"), np.int64).reshape(-1, 3),
        "attn_resid": np.zeros((L, T), bool),
        "ffn": np.zeros((L, T), bool),
        "ffn_resid": np.zeros((L, T), bool),
    }
    for key in kept:
        if key[0] in ("attn_resid", "ffn", "ffn_resid"):
            out[key[0]][key[1], key[2]] = True
    # the two edges of an FFN route are kept together: a reached M node always keeps its input
    ffn_in = np.zeros((L, T), bool)
    for key in kept:
        if key[0] == "ffn_in":
            ffn_in[key[1], key[2]] = True
    assert np.array_equal(ffn_in, out["ffn"])
    return out, seen


def assert_same_pruning(got, want, what):
    assert set(want) <= set(got), f"{what}: missing outputs {set(want) - set(got)}"
    ge = np.asarray(got["attn_edges"])
    assert ge.dtype == np.int64, f"{what}: attn_edges dtype {ge.dtype}"
    assert ge.shape == want["attn_edges"].shape, f"{what}: {ge.shape} vs {want['attn_edges'].shape} edges"
    np.testing.assert_array_equal(ge, want["attn_edges"], err_msg=f"{what}: attn_edges")
    for key in ("attn_resid", "ffn", "ffn_resid"):
        g = np.asarray(got[key])
        assert g.dtype == np.bool_, f"{what}: {key} dtype {g.dtype}"
        np.testing.assert_array_equal(g, want[key], err_msg=f"{what}: {key}")


def random_graph(rng, L, T, *, p_parallel=0.5, quantum=None, scale=0.3):
    """Edge weights like shares: float32, mostly small, with ties when quantised."""
    def w(*shape):
        x = rng.random(shape) ** 2 * scale
        if quantum:
            x = np.round(x / quantum) * quantum
        return x.astype(np.float32)

    attn = np.tril(w(L, T, T)) + np.triu(np.full((T, T), 0.9, np.float32), 1)  # s > t never read
    return dict(attn=attn.astype(np.float32), attn_resid=w(L, T), ffn=w(L, T), ffn_resid=w(L, T),
                parallel=rng.random(L) < p_parallel)


GRAPHS = [
    # (L, T, p_parallel, quantum, threshold, seed)
    (1, 1, 0.0, None, 0.1, 0),
    (1, 1, 1.0, None, 0.1, 1),
    (2, 3, 0.5, None, 0.05, 2),
    (3, 5, 0.0, None, 0.1, 3),
    (3, 5, 1.0, None, 0.1, 4),
    (4, 7, 0.5, None, 0.04, 5),
    (5, 9, 0.5, 0.02, 0.1, 6),  # ties and weights exactly at the threshold
    (5, 9, 0.5, 0.05, 0.25, 7),  # mostly nothing above threshold: the largest-edge rule
    (6, 8, 0.3, 0.1, 0.0, 8),  # threshold 0 keeps everything reachable
    (4, 10, 0.5, None, 0.95, 9),  # almost nothing passes
    (8, 12, 0.5, 0.01, 0.06, 10),
]


@pytest.mark.parametrize("L,T,p_par,quantum,threshold,seed", GRAPHS)
def test_prune_equals_bfs_and_twin(L, T, p_par, quantum, threshold, seed):
    rng = np.random.default_rng(seed)
    g = random_graph(rng, L, T, p_parallel=p_par, quantum=quantum)
    target_sets = [[T - 1], [0], sorted(set(rng.integers(0, T, 3).tolist())), list(range(T))]
    for targets in target_sets:
        args = dict(g, targets=np.array(targets, np.int64), threshold=threshold)
        snap = {k: np.array(v, copy=True) for k, v in args.items() if isinstance(v, np.ndarray)}
        want, reached = bfs_prune(**args)
        ref = R.prune(**args)
        assert_same_pruning(ref, want, f"twin vs BFS, targets={targets}")
        got = A.prune(**args)
        assert_same_pruning(got, want, f"C vs BFS, targets={targets}")
        for k, v in snap.items():
            assert np.array_equal(args[k], v), f"prune mutated {k}"
        # every reached node connects back to the embeddings
        assert any(n[0] == "X" for n in reached)


def test_prune_large_graph_equals_twin():
    rng = np.random.default_rng(42)
    L, T = 16, 40
    g = random_graph(rng, L, T, p_parallel=0.25, scale=0.15)
    for targets, threshold in [([T - 1], 0.04), ([0, 5, T - 1], 0.08), (list(range(0, T, 3)), 0.1)]:
        args = dict(g, targets=np.array(targets), threshold=threshold)
        assert_same_pruning(A.prune(**args), R.prune(**args), f"targets={targets}")
        assert_same_pruning(A.prune(**args), bfs_prune(**args)[0], f"BFS targets={targets}")


def test_prune_layouts_and_float64():
    rng = np.random.default_rng(5)
    g = random_graph(rng, 5, 7, quantum=0.01)
    args = dict(g, targets=np.array([6, 2]), threshold=0.05)
    want = R.prune(**args)
    strided = dict(args)
    for k in ("attn", "attn_resid", "ffn", "ffn_resid"):
        x = args[k]
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        big[..., ::2] = x
        strided[k] = big[..., ::2]
    strided["attn"] = np.ascontiguousarray(args["attn"].transpose(0, 2, 1)).transpose(0, 2, 1)
    strided["targets"] = np.array([6, 0, 2, 0])[::2]
    assert_same_pruning(A.prune(**strided), want, "strided")
    as64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v)
            for k, v in args.items()}
    assert_same_pruning(A.prune(**as64), want, "float64 weights")
    assert_same_pruning(A.prune(**dict(args, targets=[6, 2])), want, "targets as a list")


def test_prune_duplicate_targets_are_a_union():
    rng = np.random.default_rng(9)
    g = random_graph(rng, 4, 6)
    once = A.prune(**g, targets=np.array([5, 1]), threshold=0.1)
    twice = A.prune(**g, targets=np.array([1, 5, 5, 1]), threshold=0.1)
    assert_same_pruning(twice, once, "duplicates")


def test_prune_tie_rules_by_hand():
    # one sequential layer, T=3, target 2, nothing reaches the threshold 0.5
    L, T = 1, 3
    attn = np.zeros((L, T, T), np.float32)
    attn_resid = np.zeros((L, T), np.float32)
    ffn = np.zeros((L, T), np.float32)
    ffn_resid = np.zeros((L, T), np.float32)
    # I0_2: residual 0.2 ties FFN 0.2 -> the residual A0_2 -> I0_2 is kept
    ffn_resid[0, 2] = ffn[0, 2] = 0.2
    # A0_2: attention from s=0 and s=1 both 0.3 beat the residual 0.1 -> s=0 is kept
    attn_resid[0, 2] = 0.1
    attn[0, 2, 0] = attn[0, 2, 1] = 0.3
    args = dict(attn=attn, attn_resid=attn_resid, ffn=ffn, ffn_resid=ffn_resid,
                parallel=np.array([False]), targets=np.array([2]), threshold=0.5)
    got = A.prune(**args)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 2, 0]])
    np.testing.assert_array_equal(got["ffn_resid"], [[False, False, True]])
    assert not got["ffn"].any() and not got["attn_resid"].any()
    assert_same_pruning(got, bfs_prune(**args)[0], "BFS")
    # residual ties attention in A0_2 -> the residual wins
    attn_resid[0, 2] = 0.3
    got = A.prune(**args)
    assert got["attn_edges"].shape == (0, 3)
    np.testing.assert_array_equal(got["attn_resid"], [[False, False, True]])
    # parallel layer: FFN ties attention -> FFN wins; residual smaller
    args["parallel"] = np.array([True])
    attn_resid[0, 2] = 0.1
    ffn[0, 2] = 0.3
    got = A.prune(**args)
    np.testing.assert_array_equal(got["ffn"], [[False, False, True]])
    assert got["attn_edges"].shape == (0, 3) and not got["attn_resid"].any()
    assert_same_pruning(got, bfs_prune(**args)[0], "BFS parallel")


def test_prune_weight_at_threshold_is_kept():
    attn = np.array([[[0.0, 0.0], [0.25, 0.5]]], np.float32)
    args = dict(attn=attn, attn_resid=np.array([[1.0, 0.25]], np.float32),
                ffn=np.array([[0.0, 0.25]], np.float32), ffn_resid=np.array([[1.0, 0.75]], np.float32),
                parallel=np.array([False]), targets=np.array([1]), threshold=0.25)
    got = A.prune(**args)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(got["ffn"], [[False, True]])
    np.testing.assert_array_equal(got["attn_resid"], [[False, True]])
    assert_same_pruning(got, R.prune(**args), "twin")


def test_prune_threshold_compared_in_double():
    # float32(0.04) < 0.04: the twin drops that edge, and so must the core
    w = np.float32(0.04)
    args = dict(attn=np.array([[[0.0, 0.0], [w, 0.5]]], np.float32),
                attn_resid=np.array([[1.0, 0.5]], np.float32), ffn=np.array([[0.0, 0.5]], np.float32),
                ffn_resid=np.array([[1.0, 0.5]], np.float32), parallel=np.array([False]),
                targets=np.array([1]), threshold=0.04)
    assert_same_pruning(A.prune(**args), R.prune(**args), "twin")
