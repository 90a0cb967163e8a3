"""The sparse-row kernels (``prune_sparse``, ``renormalize_sparse``) against their twins and the
dense kernels.

Edge weights and per-head shares are kept sparse above a floor (DESIGN.md, memory model): for
every target state the parts ``>= floor`` plus its single largest part (``_reference.sparsify``).
Contract checked here over a seeded zoo (T=1, odd sizes, parallel and sequential layers, ties
and weights exactly at the threshold, floor 0, rows with no entries, negative residuals):

* ``prune_sparse`` gives exactly ``prune`` on the dense equivalent (listed weights, 0 elsewhere),
  and, for rows made by ``sparsify(floor)``, exactly ``prune`` on the original dense weights for
  every threshold ``>= floor``;
* ``renormalize_sparse`` gives ``renormalize``'s ``single`` bitwise, and its ``edges`` when the
  returned parts are summed by (t, source) in float64, to within ``EDGE_RTOL`` (each head's term is
  rounded to float32 before the sum, the dense kernel rounds the sum once);
* C against the twin, both raise on the same bad inputs, messages name the argument, inputs are
  never mutated, threads do not change the result, repeat calls do not grow memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ltt import _reference as R
from ltt import kernels as A

EDGE_RTOL = 1e-6  # summed per-head float32 terms vs the dense kernel's one rounding (<= ~2 ulp)
TWIN = dict(atol=2e-7, rtol=1e-6)  # C (sequential double sums, p * (1/z)) vs the twin (p / z)


def _snapshot(kw: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}


def _unmutated(kw: dict, snap: dict) -> None:
    for k, before in snap.items():
        assert kw[k].dtype == before.dtype and np.array_equal(kw[k], before, equal_nan=True), f"mutated {k}"


def same_pruning(got: dict, want: dict, what: str) -> None:
    assert got["attn_edges"].dtype == np.int64, what
    np.testing.assert_array_equal(got["attn_edges"], want["attn_edges"].reshape(-1, 3), err_msg=what)
    for key in ("attn_resid", "ffn", "ffn_resid"):
        assert got[key].dtype == np.bool_, what
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{what}: {key}")


# --------------------------------------------------------------------------------------------
# sparsify: exactly the entries >= floor (in float64) and each row's first largest


@pytest.mark.parametrize("heads", [False, True])
@pytest.mark.parametrize("floor", [0.0, 0.02, 0.5])
def test_sparsify_lists_the_floor_and_the_largest(heads, floor):
    rng = np.random.default_rng(int(floor * 100) + heads)
    K, T = 3, 6
    d = (np.round(rng.random((K, T, T)) ** 2 * 50) / 100).astype(np.float32)  # ties, 0.02 hits
    d[0, 3, :] = 0.01  # a row (or part of one) all below the floor, tied
    sp = R.sparsify(d, floor, heads=heads)
    want = []  # (row, head, source, value), written out the slow way
    for row, (k, t) in enumerate([(None, t) for t in range(T)] if heads else
                                 [(k, t) for k in range(K) for t in range(T)]):
        cells = [(h, s) for h in range(K) for s in range(t + 1)] if heads else [(k, s) for s in range(t + 1)]
        vals = [float(d[h, t, s]) for h, s in cells]
        first_max = vals.index(max(vals))
        want += [(row, h, s, v) for i, ((h, s), v) in enumerate(zip(cells, vals)) if v >= floor or i == first_max]
    n_rows = T if heads else K * T
    assert sp["indptr"].tolist() == np.searchsorted([w[0] for w in want], np.arange(n_rows + 1)).tolist()
    assert sp["sources"].tolist() == [w[2] for w in want]
    assert (sp["parts"] if heads else sp["weights"]).tolist() == [np.float32(w[3]) for w in want]
    if heads:
        assert sp["heads"].tolist() == [w[1] for w in want]


# --------------------------------------------------------------------------------------------
# prune_sparse


def random_graph(rng, L, T, p_parallel, quantum=None, scale=0.3):
    def w(*shape):
        x = rng.random(shape) ** 2 * scale
        if quantum:
            x = np.round(x / quantum) * quantum
        return x.astype(np.float32)

    attn = np.tril(w(L, T, T)) + np.triu(np.full((T, T), 0.9, np.float32), 1)  # s > t never read
    return dict(attn=attn.astype(np.float32), attn_resid=w(L, T), ffn=w(L, T), ffn_resid=w(L, T),
                parallel=rng.random(L) < p_parallel)


def random_rows(rng, R_, T, density, heads=0, negative=False):
    """General sparse rows (not from sparsify): a random subset of each row, some rows empty,
    explicit zeros among the weights."""
    indptr, src, hd, val = [0], [], [], []
    for r in range(R_):
        t = r % T
        keys = [(h, s) for h in range(max(heads, 1)) for s in range(t + 1)]
        pick = [k for k in keys if rng.random() < density]
        for h, s in pick:
            hd.append(h)
            src.append(s)
            v = rng.random() ** 2 * 0.3 if rng.random() > 0.15 else 0.0
            val.append(-v if negative and rng.random() < 0.3 else v)
        indptr.append(len(src))
    return (np.array(indptr, np.int64), np.array(src, np.int32), np.array(hd, np.int16),
            np.array(val, np.float32))


PRUNE_ZOO = [
    # (L, T, p_parallel, quantum, floor, seed)
    (1, 1, 0.0, None, 0.0, 0),
    (1, 1, 1.0, None, 1e-3, 1),
    (2, 3, 0.5, None, 1e-3, 2),
    (3, 5, 0.0, None, 0.02, 3),
    (3, 5, 1.0, None, 0.02, 4),
    (4, 7, 0.5, None, 0.0, 5),  # floor 0: every s <= t listed
    (5, 9, 0.5, 0.02, 0.02, 6),  # ties, weights exactly at the floor and the thresholds
    (5, 9, 0.5, 0.05, 0.05, 7),
    (6, 11, 0.3, 0.01, 0.04, 8),
    (4, 13, 0.5, None, 0.1, 9),
]
THRESHOLDS = [0.0, 1e-3, 0.02, 0.04, 0.05, 0.1, 0.25, 0.95]


@pytest.mark.parametrize("L,T,p_par,quantum,floor,seed", PRUNE_ZOO)
def test_prune_sparse_equals_dense_from_sparsify(L, T, p_par, quantum, floor, seed):
    rng = np.random.default_rng(seed)
    g = random_graph(rng, L, T, p_par, quantum)
    sp = R.sparsify(g["attn"], floor)
    assert sp["indptr"].dtype == np.int64 and sp["sources"].dtype == np.int32
    dense_eq = R.densify(sp["indptr"], sp["sources"], sp["weights"], (L, T, T))
    rest = {k: g[k] for k in ("attn_resid", "ffn", "ffn_resid", "parallel")}
    for targets in ([T - 1], [0], sorted(set(rng.integers(0, T, 3).tolist())), list(range(T))):
        for threshold in [th for th in THRESHOLDS if th >= floor]:
            kw = dict(sp, **rest, targets=np.array(targets), threshold=threshold)
            snap = _snapshot(kw)
            got = A.prune_sparse(**kw)
            _unmutated(kw, snap)
            what = f"targets={targets} threshold={threshold}"
            same_pruning(got, A.prune(g["attn"], **rest, targets=targets, threshold=threshold),
                         f"C sparse vs C dense original, {what}")
            same_pruning(got, A.prune(dense_eq, **rest, targets=targets, threshold=threshold),
                         f"C sparse vs C dense equivalent, {what}")
            same_pruning(got, R.prune_sparse(**kw), f"C vs twin, {what}")


@pytest.mark.parametrize("seed", range(8))
def test_prune_sparse_general_rows_equal_dense_equivalent(seed):
    """Rows with no entries, explicit zeros, negative weights and residuals: the unlisted sources
    weigh 0 and take part in the keep-the-largest rule in the dense tie order."""
    rng = np.random.default_rng(100 + seed)
    L, T = int(rng.integers(1, 5)), int(rng.integers(1, 10))
    ip, src, _, w = random_rows(rng, L * T, T, density=rng.choice([0.0, 0.2, 0.6, 1.0]),
                                negative=seed % 2 == 1)
    sign = -1 if seed % 4 == 3 else 1  # negative residuals and FFN: unlisted 0s can win
    rest = dict(attn_resid=sign * rng.random((L, T)).astype(np.float32) * 0.2,
                ffn=sign * rng.random((L, T)).astype(np.float32) * 0.2,
                ffn_resid=rng.random((L, T)).astype(np.float32) * 0.2,
                parallel=rng.random(L) < 0.5)
    dense = R.densify(ip, src, w, (L, T, T))
    for threshold in (0.0, 0.01, 0.05, 0.2, 0.9):
        for targets in ([T - 1], list(range(T))):
            kw = dict(indptr=ip, sources=src, weights=w, **rest, targets=np.array(targets),
                      threshold=threshold)
            got = A.prune_sparse(**kw)
            same_pruning(got, A.prune(dense, **rest, targets=targets, threshold=threshold),
                         f"threshold={threshold} targets={targets}")
            same_pruning(got, R.prune_sparse(**kw), "twin")


def _one_row(listed: dict, T: int, resid: float, threshold: float, ffn: float = 0.0,
             parallel: bool = False):
    """One layer; the row of target T-1 lists {source: weight}, every other row is empty."""
    L = 1
    src = np.array(sorted(listed), np.int32)
    w = np.array([listed[s] for s in sorted(listed)], np.float32)
    ip = np.zeros(L * T + 1, np.int64)
    ip[T:] = len(src)
    ar = np.zeros((L, T), np.float32)
    ar[0, T - 1] = resid
    f = np.zeros((L, T), np.float32)
    f[0, T - 1] = ffn
    kw = dict(indptr=ip, sources=src, weights=w, attn_resid=ar, ffn=f, ffn_resid=np.ones((L, T), np.float32),
              parallel=np.array([parallel]), targets=np.array([T - 1]), threshold=threshold)
    dense = R.densify(ip, src, w, (L, T, T))
    want = A.prune(dense, ar, f, kw["ffn_resid"], kw["parallel"], kw["targets"], threshold)
    got = A.prune_sparse(**kw)
    same_pruning(got, want, f"listed={listed} resid={resid} threshold={threshold}")
    same_pruning(R.prune_sparse(**kw), want, "twin")
    return got


def test_prune_sparse_tie_rule_with_unlisted_zeros_by_hand():
    # all listed below the threshold, residual 0: the residual wins the tie with the unlisted 0s
    got = _one_row({0: 0.0, 2: 0.0}, T=3, resid=0.0, threshold=0.5)
    assert got["attn_edges"].shape == (0, 3) and got["attn_resid"][0, 2]
    # negative residual, nothing listed: the first unlisted source (0) is the largest
    got = _one_row({}, T=3, resid=-0.1, threshold=0.5)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 2, 0]])
    # negative residual, listed 0 at s=1 and negatives: source 0 (unlisted 0) comes first
    got = _one_row({1: 0.0, 2: -0.3}, T=3, resid=-0.1, threshold=0.5)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 2, 0]])
    # a listed 0 at s=0 ties the unlisted 0 at s=1: the smaller source, listed, wins
    got = _one_row({0: 0.0, 2: -0.2}, T=3, resid=-0.1, threshold=0.5)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 2, 0]])
    # negative listed weights, the unlisted 0 at s=1 is the largest
    got = _one_row({0: -0.2, 2: -0.1}, T=3, resid=-0.5, threshold=0.5)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 2, 1]])
    # a positive listed weight below the threshold beats the unlisted 0s and a negative residual
    got = _one_row({2: 0.01}, T=3, resid=-0.1, threshold=0.5)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 2, 2]])
    # fully listed row of negatives: no unlisted 0, the largest listed weight wins
    got = _one_row({0: -0.3, 1: -0.2, 2: -0.25}, T=3, resid=-0.5, threshold=0.5)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 2, 1]])
    # parallel: FFN 0 ties the unlisted 0s after a negative residual: the FFN wins
    got = _one_row({}, T=3, resid=-0.1, threshold=0.5, ffn=0.0, parallel=True)
    assert got["attn_edges"].shape == (0, 3) and got["ffn"][0, 2]
    # threshold 0 keeps every source, the unlisted ones (weight 0) included, negatives not
    got = _one_row({1: -0.1, 3: 0.2}, T=5, resid=0.1, threshold=0.0)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 4, 0], [0, 4, 2], [0, 4, 3], [0, 4, 4]])


def test_prune_sparse_threshold_compared_in_double():
    w = np.float32(0.04)  # float32(0.04) < 0.04: not kept at threshold 0.04, as in prune
    assert float(w) < 0.04
    got = _one_row({0: float(w), 1: 0.5}, T=2, resid=0.5, threshold=0.04)
    np.testing.assert_array_equal(got["attn_edges"], [[0, 1, 1]])
    # sparsify compares with the floor in double too: float32(0.04) is not listed at floor 0.04
    sp = R.sparsify(np.array([[[0.5, 0.0], [w, 0.5]]], np.float32), 0.04)
    assert sp["sources"].tolist() == [0, 1]


def test_prune_sparse_float64_weights_lists_and_strided():
    rng = np.random.default_rng(3)
    g = random_graph(rng, 3, 6, 0.5, 0.02)
    sp = R.sparsify(g["attn"], 0.02)
    rest = {k: g[k] for k in ("attn_resid", "ffn", "ffn_resid", "parallel")}
    want = A.prune(g["attn"], **rest, targets=[5, 1], threshold=0.04)
    strided = {k: np.repeat(v, 2)[::2] for k, v in sp.items()}
    assert not strided["sources"].flags.c_contiguous or strided["sources"].size <= 1
    for what, sp2 in [("strided", strided), ("float64 weights", dict(sp, weights=sp["weights"].astype(np.float64)))]:
        same_pruning(A.prune_sparse(**sp2, **rest, targets=[5, 1], threshold=0.04), want, what)


def test_prune_sparse_targets_as_prune_takes_them():
    kw = _prune_kw()
    T = kw["attn_resid"].shape[1]
    last = A.prune_sparse(**dict(kw, targets=np.array([T - 1])))
    for targets in ([-1], -1, [T - 1, -1], np.array([T - 1], np.uint8), (T - 1,)):
        same_pruning(A.prune_sparse(**dict(kw, targets=targets)), last, f"targets={targets!r}")
    none = A.prune_sparse(**dict(kw, targets=np.array([], np.int64)))
    assert none["attn_edges"].shape == (0, 3) and not any(none[k].any() for k in ("attn_resid", "ffn", "ffn_resid"))
    same_pruning(A.prune_sparse(**dict(kw, parallel=kw["parallel"].astype(np.int8))), A.prune_sparse(**kw), "int8 flags")


# --------------------------------------------------------------------------------------------
# renormalize_sparse


def head_shares(rng, H, T, E, quantum=None, zero=False):
    """Per-head shares [H, T, T] (0 above the diagonal) and single parts [E, T], each target's
    parts summing to 1; quantised for ties and values exactly at the threshold."""
    raw = rng.random((H, T, T)) ** 3 * np.tril(np.ones((T, T)))[None]
    single = rng.random((E, T)) ** 3
    z = raw.sum(axis=(0, 2)) + single.sum(axis=0)
    raw, single = raw / z[None, :, None], single / z[None]
    if quantum:
        raw, single = np.round(raw / quantum) * quantum, np.round(single / quantum) * quantum
    if zero:
        raw[...] = 0
        single[...] = 0
    return raw.astype(np.float32), single.astype(np.float32)


def edges_from_parts(sp: dict, parts: np.ndarray, T: int) -> np.ndarray:
    """The lead's sum by (t, source): float64 bincount, then float32."""
    t = np.repeat(np.arange(T), np.diff(sp["indptr"]))
    key = t * T + sp["sources"].astype(np.int64)
    return np.bincount(key, weights=parts.astype(np.float64), minlength=T * T).reshape(T, T).astype(np.float32)


def check_renorm(sp: dict, single: np.ndarray, dense: np.ndarray, threshold: float, what: str):
    T = single.shape[1]
    kw = dict(sp, single=single, threshold=threshold)
    snap = _snapshot(kw)
    got = A.renormalize_sparse(**kw)
    _unmutated(kw, snap)
    assert got["parts"].dtype == np.float32 and got["parts"].shape == sp["parts"].shape
    assert got["single"].dtype == np.float32 and got["single"].shape == single.shape
    want = A.renormalize(dense, single, threshold)
    np.testing.assert_array_equal(got["single"], want["single"], err_msg=f"{what}: single (bitwise)")
    np.testing.assert_allclose(edges_from_parts(sp, got["parts"], T), want["edges"], rtol=EDGE_RTOL,
                               atol=0, err_msg=f"{what}: edges")
    twin = R.renormalize_sparse(**kw)
    np.testing.assert_allclose(got["parts"], twin["parts"], **TWIN, err_msg=f"{what}: parts vs twin")
    np.testing.assert_allclose(got["single"], twin["single"], **TWIN, err_msg=f"{what}: single vs twin")
    # kept parts are rescaled copies, dropped ones exactly 0
    kept = got["parts"] != 0
    assert np.all(got["parts"][kept] > 0) and np.all(got["parts"][~kept] == 0)
    return got


RENORM_ZOO = [
    # (H, T, E, quantum, floor, seed)
    (1, 1, 1, None, 0.0, 0),
    (1, 1, 0, None, 1e-3, 1),
    (2, 3, 2, None, 1e-3, 2),
    (4, 5, 1, None, 0.0, 3),  # floor 0: every (h, s <= t) listed
    (3, 7, 3, None, 0.02, 4),
    (4, 6, 2, 0.05, 0.05, 5),  # ties, parts exactly at the floor and the thresholds
    (9, 11, 1, None, 1e-3, 6),
    (5, 9, 2, 0.01, 0.01, 7),
    (2, 4, 2, None, 0.0, 8, True),  # all zero
]


@pytest.mark.parametrize("case", RENORM_ZOO)
def test_renormalize_sparse_equals_dense_from_sparsify(case):
    H, T, E, quantum, floor, seed = case[:6]
    rng = np.random.default_rng(seed)
    heads, single = head_shares(rng, H, T, E, quantum, zero=len(case) > 6)
    sp = R.sparsify(heads, floor, heads=True)
    assert set(sp) == {"indptr", "sources", "heads", "parts"}
    assert sp["heads"].dtype == np.int16 and sp["sources"].dtype == np.int32
    dense_eq = R.densify(sp["indptr"], sp["sources"], sp["parts"], (H, T, T), heads=sp["heads"])
    for threshold in [th for th in [0.0, 1e-3, 0.01, 0.02, 0.04, 0.05, 0.1, 0.3, 0.5, 0.99] if th >= floor]:
        got = check_renorm(sp, single, heads, threshold, f"original, threshold={threshold}")
        check_renorm(sp, single, dense_eq, threshold, f"equivalent, threshold={threshold}")
        if not (len(case) > 6):
            s = edges_from_parts(sp, got["parts"], T).astype(np.float64).sum(1) + got["single"].sum(0)
            np.testing.assert_allclose(s, 1.0, atol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_renormalize_sparse_general_rows(seed):
    """Random subsets (rows with no entries, explicit zeros), E = 0 included; negative singles are
    refused by the core, its twin and the dense kernel alike (shares are >= 0)."""
    rng = np.random.default_rng(200 + seed)
    H, T, E = int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(0, 3))
    ip, src, hd, p = random_rows(rng, T, T, density=rng.choice([0.0, 0.3, 0.7, 1.0]), heads=H)
    single = (rng.random((E, T)) * 0.4).astype(np.float32)
    sp = dict(indptr=ip, sources=src, heads=hd, parts=p)
    dense = R.densify(ip, src, p, (H, T, T), heads=hd)
    for threshold in (0.0, 0.01, 0.05, 0.2, 0.9):
        check_renorm(sp, single, dense, threshold, f"seed={seed} threshold={threshold}")
    if E:
        single[0, -1] = -0.1
        for fn in (A.renormalize_sparse, R.renormalize_sparse):
            with pytest.raises(ValueError, match="single"):
                fn(**sp, single=single, threshold=0.05)


def test_renormalize_sparse_largest_part_tie_order_by_hand():
    # target 1, threshold 0.5, nothing kept: 0.3 at (head 0, source 1) and (head 1, source 0) tie;
    # the first in (head, source) order wins, and a single part equal to it loses
    sp = dict(indptr=np.array([0, 0, 3]), sources=np.array([1, 0, 1], np.int32),
              heads=np.array([0, 1, 1], np.int16), parts=np.array([0.3, 0.3, 0.1], np.float32))
    single = np.array([[0.0, 0.3]], np.float32)
    got = A.renormalize_sparse(**sp, single=single, threshold=0.5)
    np.testing.assert_array_equal(got["parts"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(got["single"], [[0.0, 0.0]])  # target 0: all zero, share 0
    np.testing.assert_array_equal(R.renormalize_sparse(**sp, single=single, threshold=0.5)["parts"],
                                  got["parts"])
    # a larger single part wins
    got = A.renormalize_sparse(**sp, single=np.array([[0.0, 0.31]], np.float32), threshold=0.5)
    np.testing.assert_array_equal(got["parts"], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(got["single"], [[0.0, 1.0]])
    # a part exactly at the threshold is kept; float32(0.04) < 0.04 is not
    w = np.float32(0.04)
    sp2 = dict(indptr=np.array([0, 2]), sources=np.array([0, 0], np.int32),
               heads=np.array([0, 1], np.int16), parts=np.array([0.25, w], np.float32))
    got = A.renormalize_sparse(**sp2, single=np.array([[0.25]], np.float32), threshold=0.25)
    np.testing.assert_array_equal(got["parts"], [0.5, 0.0])
    got = A.renormalize_sparse(**sp2, single=np.array([[0.25]], np.float32), threshold=0.04)
    assert got["parts"][1] == 0.0


def test_renormalize_sparse_edge_error_is_a_few_ulp():
    """The stated tolerance is not loose: over many multi-head edges the worst case is <= 2 ulp."""
    rng = np.random.default_rng(11)
    H, T = 12, 40
    heads, single = head_shares(rng, H, T, 2)
    sp = R.sparsify(heads, 0.0, heads=True)
    got = A.renormalize_sparse(**sp, single=single, threshold=0.0)
    want = A.renormalize(heads, single, 0.0)["edges"]
    mine = edges_from_parts(sp, got["parts"], T)
    nz = want > 0
    ulps = np.abs(mine[nz].view(np.int32).astype(np.int64) - want[nz].view(np.int32).astype(np.int64))
    assert ulps.max() <= 2, f"max {ulps.max()} ulp"
    assert np.array_equal(mine[~nz], want[~nz])


# --------------------------------------------------------------------------------------------
# bad inputs: a clear exception naming the argument; the twin raises as well


def _prune_kw():
    rng = np.random.default_rng(0)
    g = random_graph(rng, 2, 3, 0.5)
    sp = R.sparsify(g["attn"], 0.05)
    return dict(sp, attn_resid=g["attn_resid"], ffn=g["ffn"], ffn_resid=g["ffn_resid"],
                parallel=g["parallel"], targets=np.array([2]), threshold=0.1)


def _renorm_kw():
    heads, single = head_shares(np.random.default_rng(1), 2, 3, 1)
    return dict(R.sparsify(heads, 0.05, heads=True), single=single, threshold=0.1)


def _set(kw, key, index, value):
    kw = dict(kw)
    kw[key] = kw[key].copy()
    kw[key][index] = value
    return kw


BAD = [
    # (kernel, change, exception, words the message must contain)
    ("prune", lambda k: dict(k, indptr=k["indptr"].astype(np.int32)), TypeError, ["indptr", "int64"]),
    ("prune", lambda k: dict(k, sources=k["sources"].astype(np.int64)), TypeError, ["sources", "int32"]),
    ("prune", lambda k: dict(k, sources=k["sources"].astype(np.float32)), TypeError, ["sources"]),
    ("prune", lambda k: dict(k, weights=k["weights"].astype(np.int32)), TypeError, ["weights"]),
    ("prune", lambda k: dict(k, indptr=k["indptr"][:-1]), ValueError, ["indptr", "(L * T + 1,)"]),
    ("prune", lambda k: _set(k, "indptr", 0, 1), ValueError, ["indptr[0] = 1"]),
    ("prune", lambda k: _set(k, "indptr", 3, -1), ValueError, ["indptr[3] = -1"]),
    ("prune", lambda k: _set(k, "indptr", -1, 99), ValueError, ["indptr[6] = 99"]),
    ("prune", lambda k: _set(k, "sources", 0, 1), ValueError, ["sources[0] = 1", "[0, 0]"]),
    ("prune", lambda k: _set(k, "sources", 0, -1), ValueError, ["sources[0] = -1"]),
    ("prune", lambda k: dict(k, weights=k["weights"][:-1]), ValueError, ["weights", "nnz"]),
    ("prune", lambda k: _set(k, "weights", 0, np.nan), ValueError, ["weights", "NaN"]),
    ("prune", lambda k: _set(k, "weights", 1, np.inf), ValueError, ["weights", "inf"]),
    ("prune", lambda k: dict(k, ffn=k["ffn"][:, :2]), ValueError, ["ffn", "(L, T)"]),
    ("prune", lambda k: dict(k, attn_resid=k["attn_resid"][0]), ValueError, ["attn_resid"]),
    ("prune", lambda k: _set(k, "ffn_resid", (0, 0), np.nan), ValueError, ["ffn_resid"]),
    ("prune", lambda k: dict(k, parallel=k["parallel"][:1]), ValueError, ["parallel"]),
    ("prune", lambda k: dict(k, targets=np.array([3])), ValueError, ["targets", "3"]),
    ("prune", lambda k: dict(k, targets=np.array([2**64 - 1], np.uint64)), ValueError, ["targets"]),
    ("prune", lambda k: dict(k, targets=np.array([1.0])), TypeError, ["targets"]),
    ("prune", lambda k: dict(k, threshold=1.0), ValueError, ["threshold"]),
    ("prune", lambda k: dict(k, threshold=-0.1), ValueError, ["threshold"]),
    ("prune", lambda k: dict(k, threshold=float("nan")), ValueError, ["threshold"]),
    ("renorm", lambda k: dict(k, heads=k["heads"].astype(np.int32)), TypeError, ["heads", "int16"]),
    ("renorm", lambda k: dict(k, sources=k["sources"].astype(np.int64)), TypeError, ["sources"]),
    ("renorm", lambda k: dict(k, indptr=k["indptr"].astype(np.float64)), TypeError, ["indptr"]),
    ("renorm", lambda k: dict(k, parts=k["parts"].astype(np.int64)), TypeError, ["parts"]),
    ("renorm", lambda k: dict(k, indptr=np.append(k["indptr"], k["indptr"][-1])), ValueError, ["indptr", "(T + 1,)"]),
    ("renorm", lambda k: _set(k, "sources", -1, 3), ValueError, ["sources[", "= 3", "[0, 2]"]),
    ("renorm", lambda k: _set(k, "heads", 0, -2), ValueError, ["heads[0] = -2"]),
    ("renorm", lambda k: dict(k, heads=k["heads"][::-1].copy()), ValueError, ["strictly increase"]),
    ("renorm", lambda k: dict(k, heads=k["heads"][:-1]), ValueError, ["heads"]),
    ("renorm", lambda k: _set(k, "parts", 0, -0.5), ValueError, ["parts", "-0.5", ">= 0"]),
    ("renorm", lambda k: _set(k, "parts", 0, np.nan), ValueError, ["parts", "NaN"]),
    ("renorm", lambda k: dict(k, single=k["single"][0]), ValueError, ["single", "(E, T)"]),
    ("renorm", lambda k: dict(k, single=np.zeros((1, 0), np.float32)), ValueError, ["single"]),
    ("renorm", lambda k: dict(k, threshold=1.5), ValueError, ["threshold"]),
    ("renorm", lambda k: dict(k, threshold="0.1"), TypeError, ["threshold"]),
]


@pytest.mark.parametrize("kernel,change,exc,words", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_raises_naming_the_argument(kernel, change, exc, words):
    kw = change(_prune_kw() if kernel == "prune" else _renorm_kw())
    fn, twin = (A.prune_sparse, R.prune_sparse) if kernel == "prune" else (A.renormalize_sparse, R.renormalize_sparse)
    snap = _snapshot(kw)
    with pytest.raises(exc) as info:
        fn(**kw)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
    _unmutated(kw, snap)
    if exc is ValueError and not any(w in ("threshold", "targets", "parallel") for w in words):
        with pytest.raises((ValueError, IndexError)):
            twin(**kw)


def test_duplicate_source_in_a_row_is_refused():
    kw = _prune_kw()
    ip = np.array([0, 1, 3, 5, 6, 8, 10], np.int64)  # every row of target 1 or 2 lists 2 entries
    src = np.array([0, 0, 1, 1, 1, 0, 1, 1, 0, 2], np.int32)  # row 2: sources 1, 1
    kw = dict(kw, indptr=ip, sources=src, weights=np.full(10, 0.2, np.float32))
    with pytest.raises(ValueError, match=r"strictly increase in sources; entry 4 in the row of layer 0, target t = 2"):
        A.prune_sparse(**kw)
    with pytest.raises(ValueError):
        R.prune_sparse(**kw)


# --------------------------------------------------------------------------------------------
# threads, memory


def test_threads_do_not_change_results():
    """Every row threaded (LTT_PAR_MIN_WORK=0) on 1 and 3 threads: the same bytes."""
    code = textwrap.dedent("""
        import hashlib
        import numpy as np
        from ltt import _reference as R, kernels as A
        rng = np.random.default_rng(5)
        H, T = 6, 120
        raw = rng.random((H, T, T)) ** 3 * np.tril(np.ones((T, T)))[None]
        single = rng.random((2, T)) ** 3
        z = raw.sum(axis=(0, 2)) + single.sum(0)
        heads, single = (raw / z[None, :, None]).astype(np.float32), (single / z).astype(np.float32)
        sp = R.sparsify(heads, 1e-3, heads=True)
        r = A.renormalize_sparse(**sp, single=single, threshold=0.01)
        print(hashlib.sha256(r["parts"].tobytes() + r["single"].tobytes()).hexdigest())
    """)
    digests = []
    for n in ("1", "3"):
        env = dict(os.environ, LTT_PAR_MIN_WORK="0", LTT_QUIET="1", OMP_NUM_THREADS=n)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        digests.append(proc.stdout.strip())
    assert digests[0] == digests[1], "the thread count changed the result"


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_repeat_calls_do_not_grow_rss():
    pk, rk = _prune_kw(), _renorm_kw()
    bad = _set(rk, "parts", 0, np.nan)

    def calls():
        A.prune_sparse(**pk)
        A.renormalize_sparse(**rk)
        try:
            A.renormalize_sparse(**bad)
        except ValueError:
            pass

    for _ in range(200):
        calls()
    before = _rss()
    for _ in range(2000):
        calls()
    grown = _rss() - before
    assert grown < 2 * 2**20, f"RSS grew by {grown / 2**20:.2f} MiB over 2000 calls"


def test_sparse_rows_from_a_dense_stack_match_the_head_by_head_path():
    """``SparseRows.from_dense`` (entries found in (target, head, source) order at once) keeps the
    same entries, order, dtypes and each row's largest as ``from_heads`` (one head at a time):
    ties, rows with nothing above the floor, one map or a stack."""
    from ltt.scores import SparseRows

    rng = np.random.default_rng(3)
    for trial in range(120):
        H, T = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        d = rng.random((H, T, T)).astype(np.float32) * rng.choice([0.01, 1.0])
        d[rng.random(d.shape) < 0.3] = 0.5  # ties within and across heads
        if trial % 5 == 0:
            d[:, rng.integers(0, T)] = 0.0  # a row with nothing at all
        floor = float(rng.choice([0.001, 0.3, 0.6]))
        for dense in (d, d[0]):
            fast = SparseRows.from_dense(dense, floor)
            slow = SparseRows.from_heads(dense if dense.ndim == 3 else [dense], floor, per_head=dense.ndim == 3)
            for name in ("indptr", "sources", "values", "heads"):
                a, b = getattr(fast, name), getattr(slow, name)
                assert (a is None) == (b is None), name
                if a is not None:
                    assert a.dtype == b.dtype, name
                    np.testing.assert_array_equal(a, b, err_msg=f"{name} (trial {trial})")
