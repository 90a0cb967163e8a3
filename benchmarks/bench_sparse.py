"""Benchmark of the sparse-row kernels (``prune_sparse``, ``renormalize_sparse``) against the dense ones.

Inputs: shares shaped like a trace's at SmolLM2-135M sizes (30 layers, 9 heads): per head a
causal softmax with peaked scores (a few sources take most of the mass, as real attention does),
scaled so that the heads take about half of each target and the residual and the FFN the rest.
The edge weights are the head-summed shares. The sparse form keeps, per target, the parts
``>= floor`` plus the largest (``ltt._reference.sparsify``). Both sides answer the same question
(checked here: identical pruning, single shares bitwise, edges within 1e-6 relative).

Time: median wall time (``time.perf_counter``) over the repeats, sparse validation included.
Memory: the bytes each form keeps resident.

    python benchmarks/bench_sparse.py --quick   # T=256, a few seconds
    python benchmarks/bench_sparse.py           # T=1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ltt import _reference as R
from ltt import kernels as A


def head_shares(rng: np.random.Generator, H: int, T: int, sharp: float) -> np.ndarray:
    """Per-head shares [H, T, T] of one layer, about half of each target's mass."""
    out = np.empty((H, T, T), np.float32)
    upper = np.triu(np.ones((T, T), bool), 1)
    for h in range(H):
        s = rng.standard_normal((T, T)) * sharp
        s[upper] = -np.inf
        s = np.exp(s - s.max(axis=1, keepdims=True))
        out[h] = 0.5 / H * s / s.sum(axis=1, keepdims=True)
    return out


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def nbytes(sp: dict) -> int:
    return sum(v.nbytes for v in sp.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--T", type=int, default=None)
    ap.add_argument("--floor", type=float, default=1e-3)
    ap.add_argument("--threshold", type=float, default=0.04)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    L, H = 30, 9
    T = args.T or (256 if args.quick else 1024)
    rng = np.random.default_rng(0)

    # one layer's head shares: renormalize
    heads = head_shares(rng, H, T, sharp=3.0)
    single = np.stack([0.3 * np.ones(T), 0.2 * np.ones(T)]).astype(np.float32)
    sph = R.sparsify(heads, args.floor, heads=True)
    dense_r = A.renormalize(heads, single, args.threshold)
    sparse_r = A.renormalize_sparse(**sph, single=single, threshold=args.threshold)
    t_of = np.repeat(np.arange(T), np.diff(sph["indptr"]))
    key = t_of * T + sph["sources"].astype(np.int64)

    def edges_sum():
        return np.bincount(key, weights=sparse_r["parts"], minlength=T * T).reshape(T, T).astype(np.float32)

    assert np.array_equal(sparse_r["single"], dense_r["single"])
    np.testing.assert_allclose(edges_sum(), dense_r["edges"], rtol=1e-6, atol=0)
    t_dense_r = median_time(lambda: A.renormalize(heads, single, args.threshold), args.repeats)
    t_sparse_r = median_time(lambda: A.renormalize_sparse(**sph, single=single, threshold=args.threshold),
                             args.repeats)
    t_sum = median_time(edges_sum, args.repeats)
    print(f"one layer, H={H}, T={T}, floor={args.floor}: {len(sph['parts'])} parts listed of "
          f"{H * T * (T + 1) // 2} ({100 * len(sph['parts']) / (H * T * (T + 1) / 2):.2f}%)")
    print(f"  memory: dense heads {heads.nbytes / 2**20:.1f} MiB, sparse {nbytes(sph) / 2**20:.2f} MiB")
    print(f"  renormalize: dense {1e3 * t_dense_r:.2f} ms, sparse {1e3 * t_sparse_r:.2f} ms "
          f"(+ float64 bincount of edges {1e3 * t_sum:.2f} ms)")

    # every layer's edge weights: prune
    attn = np.empty((L, T, T), np.float32)
    for l in range(L):
        attn[l] = head_shares(rng, H, T, sharp=3.0).sum(axis=0)
    rest = dict(attn_resid=np.full((L, T), 0.3, np.float32), ffn=np.full((L, T), 0.2, np.float32),
                ffn_resid=np.full((L, T), 0.8, np.float32), parallel=np.zeros(L, bool))
    spa = R.sparsify(attn, args.floor)
    for targets in ([T - 1], list(range(T))):
        kw = dict(rest, targets=targets, threshold=args.threshold)
        want, got = A.prune(attn, **kw), A.prune_sparse(**spa, **kw)
        assert all(np.array_equal(want[k], got[k]) for k in want)
        t_dense = median_time(lambda: A.prune(attn, **kw), args.repeats)
        t_sparse = median_time(lambda: A.prune_sparse(**spa, **kw), args.repeats)
        print(f"prune L={L}, T={T}, {len(targets)} target(s), threshold={args.threshold}: "
              f"{len(got['attn_edges'])} edges; dense {1e3 * t_dense:.2f} ms, sparse {1e3 * t_sparse:.2f} ms")
    print(f"  memory: dense edge weights {attn.nbytes / 2**20:.1f} MiB, sparse {nbytes(spa) / 2**20:.2f} MiB "
          f"({len(spa['weights'])} weights listed)")


if __name__ == "__main__":
    main()
