"""The C core's thread count: ltt.set_num_threads / get_num_threads, and results bitwise the same
on 1, 2 and 3 threads for every entry point (each reduction runs in a fixed order).

The inputs are large enough to pass the core's small-work cutoff (1e6 element operations), so
the threaded paths run: attention heads taken a group at a time and shared in row bands, neuron
blocks, sgemm blocks, target rows.
"""

from __future__ import annotations

import numpy as np
import pytest

import ltt
from ltt import _reference as R
from ltt import kernels as A

from test_core_reference import attn_case, ffn_case
from test_probe_check import probe_case


@pytest.fixture
def restore_threads():
    before = ltt.get_num_threads()
    yield
    ltt.set_num_threads(before)


def _shares(rng, K: int, T: int, E: int) -> tuple[np.ndarray, np.ndarray]:
    raw = rng.random((K, T, T)) ** 3 * np.tril(np.ones((T, T)))[None]
    single = rng.random((E, T)) ** 3
    z = raw.sum(axis=(0, 2)) + single.sum(0)
    return (raw / z[None, :, None]).astype(np.float32), (single / z).astype(np.float32)


def _calls() -> dict:
    """One call per entry point (some several ways), each large enough to be threaded."""
    # attention: 5 heads (groups of 2 + 2 + 1 on 2 threads, 3 + 2 on 3), 128 targets x 160 wide
    ak = attn_case(3, T=128, H=5, G=1, d_h=16, d=160, bias="Td", E=1, row_scale=True,
                   col_scale=True, center=True)
    total = {n: R.attn_contrib(**ak, norm=n)["total"] for n in (1, 2)}
    view = {k: ak[k] for k in ("whole", "attn", "values", "w_o", "row_scale", "col_scale", "center")}
    fk = ffn_case(4, N=16, F=512, d=160, bias="Nd")
    fk_t = dict(fk, w_down=np.ascontiguousarray(fk["w_down"].T).T)  # the [d, F] layout
    rng = np.random.default_rng(7)
    parts = rng.standard_normal((4, 300, 1024)).astype(np.float32)
    heads, single = _shares(rng, 6, 300, 2)
    sp_heads, sp_single = _shares(rng, 8, 400, 2)
    L, T = 6, 200
    pr = dict(attn=(rng.random((L, T, T)) ** 4).astype(np.float32),
              attn_resid=rng.random((L, T)).astype(np.float32), ffn=rng.random((L, T)).astype(np.float32),
              ffn_resid=rng.random((L, T)).astype(np.float32), parallel=np.arange(L) % 2 == 1,
              targets=np.array([T - 1, 17]), threshold=0.2)
    probe = probe_case(5, T=128, H=6, G=2, d_h=16, d=160, F=512)
    sparse_pr = dict({k: v for k, v in pr.items() if k != "attn"}, **R.sparsify(pr["attn"], 0.01))
    calls = {
        "contributions": [lambda: A.contributions(parts, parts.sum(axis=0))],
        "attn_contrib": [lambda n=n: A.attn_contrib(**ak, norm=n, keep_heads=True) for n in (1, 2)],
        "attn_head_map": [lambda n=n: A.attn_head_map(3, **view, total=total[n], norm=n) for n in (1, 2)],
        "attn_edge_heads": [lambda n=n: A.attn_edge_heads(120, 40, **view, total=total[n], norm=n)
                            for n in (1, 2)],
        "ffn_neuron_contrib": [lambda k=k, n=n: A.ffn_neuron_contrib(**k, norm=n)
                               for k in (fk, fk_t) for n in (1, 2)],
        "renormalize": [lambda: A.renormalize(heads, single, 0.01)],
        "prune": [lambda: A.prune(**pr)],
        "prune_sparse": [lambda: A.prune_sparse(**sparse_pr)],
        "renormalize_sparse": [lambda: A.renormalize_sparse(**R.sparsify(sp_heads, 0.0, heads=True),
                                                            single=sp_single, threshold=0.001)],
        "probe_check": [lambda: A.probe_check(**probe)],  # one thread whatever the count: the same
    }
    assert set(calls) == set(R.KERNELS)
    return calls


def _bytes(result) -> dict:
    if isinstance(result, dict):
        return {k: np.asarray(v) for k, v in result.items()}
    return {"": np.asarray(result)}


@pytest.mark.parametrize("name", R.KERNELS)
def test_results_are_bitwise_the_same_on_1_2_3_threads(name, restore_threads):
    for i, call in enumerate(_calls()[name]):
        got = {}
        for n in (1, 2, 3):
            ltt.set_num_threads(n)
            assert ltt.get_num_threads() == n or not A.build_info()["openmp"]["enabled"]
            got[n] = _bytes(call())
        for n in (2, 3):
            for key, want in got[1].items():
                assert np.array_equal(got[n][key], want), f"{name} call {i}: {key!r} on {n} threads"


def test_set_num_threads_refuses_what_is_not_a_positive_int(restore_threads):
    for bad in (0, -2, 2**40):
        with pytest.raises(ValueError, match=rf"n must be a positive int.*{bad}"):
            ltt.set_num_threads(bad)
    for bad in (1.5, "2", None, True):
        with pytest.raises(TypeError, match=r"n must be a positive int, got"):
            ltt.set_num_threads(bad)
    ltt.set_num_threads(np.int64(2))
    assert ltt.get_num_threads() == 2 or not A.build_info()["openmp"]["enabled"]


def test_default_is_openmps(tmp_path):
    """Without set_num_threads the core takes OMP_NUM_THREADS (OpenMP's default)."""
    import os
    import subprocess
    import sys

    if not A.build_info()["openmp"]["enabled"]:
        pytest.skip("a build without OpenMP runs on one thread")  # pragma: no cover
    code = "import ltt; print(ltt.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="3", LTT_QUIET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
