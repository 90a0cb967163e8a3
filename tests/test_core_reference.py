"""The C core (``ltt.kernels``) against its float64 NumPy twin (``ltt._reference``).

Every kernel runs over a seeded zoo of inputs: size 1, odd sizes, GQA groupings, zeros, huge
and tiny magnitudes, non-contiguous views, float64 inputs (cast to float32 on purpose by the
wrapper), optional arguments on and off, L1 and L2. The twin is always given the very same
float32 arrays, so the only differences allowed are the C core's float32 arithmetic; the
tolerance of each kernel is stated in ``TOL`` below and is not loosened to hide a bug.

Also here: both sides succeed or both raise, inputs are never mutated, repeat calls do not grow
the resident set, the shares sum to 1, the partial views (one head, one edge) agree with the
full computation, synthetic decompositions recompose their wholes, and the method's published
worked examples come out.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ltt import _reference as R
from ltt import kernels as A

# Tolerance per kernel (as ggml's test-backend-ops states one per operation). The C core reads
# float32 inputs and accumulates in float64; the twin works in float64 from the same float32
# values. Shares are in [0, 1]: atol dominates. Normalisers Z are compared relatively, with an
# absolute floor proportional to the size of the whole (float32 rounding of ``whole - part``).
TOL = {
    "contributions": dict(atol=1e-5, rtol=1e-4),
    "attn_contrib": dict(atol=1e-5, rtol=1e-4),
    "attn_head_map": dict(atol=1e-5, rtol=1e-4),
    "attn_edge_heads": dict(atol=1e-5, rtol=1e-4),
    "ffn_neuron_contrib": dict(atol=1e-5, rtol=1e-4),
    "renormalize": dict(atol=1e-6, rtol=1e-5),
    "total": dict(rtol=1e-4),  # + atol = 1e-5 * max ||whole_t||_1 (see _check_total)
    "sum_to_one": 1e-5,  # |sum of a target's float32 shares - 1|
    "same_core": dict(atol=1e-6, rtol=1e-5),  # two C paths computing the same share
}


# --------------------------------------------------------------------------------------------
# session: say which build is under test, once


# --------------------------------------------------------------------------------------------
# helpers


def noncontig(x: np.ndarray) -> np.ndarray:
    """The same values in a view that is neither C- nor F-contiguous: axes reversed over a
    buffer twice as large in every dimension, read with step 2, then transposed back."""
    x = np.asarray(x)
    if x.ndim == 0:
        return x
    buf = np.full(tuple(2 * n for n in x.shape[::-1]), 7.0, dtype=x.dtype)
    view = buf[tuple(slice(None, None, 2) for _ in x.shape)].transpose(tuple(range(x.ndim))[::-1])
    view[...] = x
    assert view.shape == x.shape and (x.size <= 1 or not view.flags.c_contiguous)
    return view


def relayout(kw: dict, layout: str, skip: tuple = ()) -> dict:
    """Apply a memory layout to every float array argument."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and k not in skip:
            if layout == "strided":
                v = noncontig(v)
            elif layout == "f64":
                v = v.astype(np.float64)
        out[k] = v
    return out


def _snapshot(kw: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in kw.items() if isinstance(v, np.ndarray)}


def _assert_unmutated(kw: dict, snap: dict, who: str) -> None:
    for k, before in snap.items():
        assert kw[k].dtype == before.dtype, f"{who} changed the dtype of {k}"
        assert np.array_equal(kw[k], before, equal_nan=True), f"{who} mutated input {k}"


def both(name: str, **kw):
    """Run the twin and the C wrapper on the same arguments: both succeed or both raise, and
    neither mutates its inputs. Returns (twin result, C result), or None when both raised."""
    snap = _snapshot(kw)
    ref = out = ref_exc = c_exc = None
    try:
        ref = getattr(R, name)(**kw)
    except Exception as exc:  # noqa: BLE001 - any failure counts as "raised"
        ref_exc = exc
    _assert_unmutated(kw, snap, "the twin")
    try:
        out = getattr(A, name)(**kw)
    except Exception as exc:  # noqa: BLE001
        c_exc = exc
    _assert_unmutated(kw, snap, "the C core")
    assert (ref_exc is None) == (c_exc is None), f"{name}: twin raised {ref_exc!r}, C raised {c_exc!r}"
    if ref_exc is not None:
        return None
    return ref, out


def _close(got, want, tol: dict, what: str) -> None:
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), err_msg=what, **tol)


def _check_total(got, want, whole, what="total") -> None:
    scale = float(np.abs(np.asarray(whole, dtype=np.float64)).sum(axis=-1).max(initial=0.0))
    _close(got, want, dict(TOL["total"], atol=1e-5 * scale), what)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def causal_softmax(rng, H: int, T: int, garbage_upper: bool = True) -> np.ndarray:
    scores = rng.standard_normal((H, T, T)) * 2.0
    upper = np.triu(np.ones((T, T), bool), 1)
    scores[:, upper] = -np.inf
    a = np.exp(scores - scores.max(axis=-1, keepdims=True))
    a /= a.sum(axis=-1, keepdims=True)
    if garbage_upper:
        a[:, upper] = 0.25  # never read: the core must ignore s > t
    return a


# --------------------------------------------------------------------------------------------
# attention zoo


def attn_case(
    seed: int,
    T: int,
    H: int,
    G: int,
    d_h: int,
    d: int,
    *,
    scale: float = 1.0,
    zero: str = "",
    bias: str | None = None,
    E: int = 0,
    row_scale: bool = False,
    col_scale: bool = False,
    center: bool = False,
) -> dict:
    """Float32 arguments of ``attn_contrib`` whose ``whole`` is the float64 sum of its parts."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    x = f32(rng.standard_normal((T, d)) * scale)
    attn = f32(causal_softmax(rng, H, T))
    values = f32(rng.standard_normal((T, G, d_h)) * scale)
    w_o = f32(rng.standard_normal((H, d_h, d)) / np.sqrt(d_h))
    b = None
    if bias == "d":
        b = f32(rng.standard_normal(d) * scale)
    elif bias == "Td":
        b = f32(rng.standard_normal((T, d)) * scale)
    extra = f32(rng.standard_normal((E, T, d)) * scale) if E else None
    rs = f32(rng.uniform(0.5, 2.0, T)) if row_scale else None
    cs = f32(rng.uniform(0.5, 1.5, d)) if col_scale else None
    if zero in ("resid", "all"):
        x[...] = 0
    if zero in ("values", "all"):
        values[...] = 0
    if zero == "all":
        for arr in (b, extra):
            if arr is not None:
                arr[...] = 0
    # whole = x + sum_h sum_{s<=t} r_t A[h,t,s] u[h,s] + bias + sum_e extra_e, in float64
    u = R.head_vectors(values, w_o, cs, center)
    a = np.tril(attn.astype(np.float64))
    if rs is not None:
        a = a * rs.astype(np.float64)[None, :, None]
    whole = x.astype(np.float64) + np.einsum("hts,hsd->td", a, u)
    if b is not None:
        whole = whole + b.astype(np.float64)
    if extra is not None:
        whole = whole + extra.astype(np.float64).sum(axis=0)
    kw = dict(resid=x, whole=f32(whole), attn=attn, values=values, w_o=w_o)
    if b is not None:
        kw["bias"] = b
    if extra is not None:
        kw["extra"] = extra
    if rs is not None:
        kw["row_scale"] = rs
    if cs is not None:
        kw["col_scale"] = cs
    if center:
        kw["center"] = True
    return kw


ATTN_CASES = {
    "all-size-1": dict(T=1, H=1, G=1, d_h=1, d=1),
    "T1-gqa": dict(T=1, H=4, G=2, d_h=3, d=5),
    "H1-odd": dict(T=7, H=1, G=1, d_h=5, d=9),
    "d1": dict(T=4, H=2, G=1, d_h=2, d=1),
    "mqa-G1": dict(T=5, H=6, G=1, d_h=4, d=7),
    "gqa-G2": dict(T=5, H=6, G=2, d_h=4, d=7),
    "gqa-G3": dict(T=5, H=6, G=3, d_h=4, d=7),
    "mha-G=H": dict(T=5, H=6, G=6, d_h=4, d=7),
    "odd-bias-d": dict(T=13, H=4, G=2, d_h=8, d=33, bias="d"),
    "bias-Td": dict(T=6, H=3, G=3, d_h=5, d=11, bias="Td"),
    "extra-1": dict(T=6, H=2, G=1, d_h=4, d=10, E=1),
    "extra-3-bias": dict(T=5, H=4, G=4, d_h=3, d=6, E=3, bias="d"),
    "row-scale": dict(T=6, H=3, G=1, d_h=4, d=9, row_scale=True),
    "col-scale": dict(T=6, H=3, G=3, d_h=4, d=9, col_scale=True),
    "center": dict(T=6, H=4, G=2, d_h=4, d=9, center=True),
    "post-norm-all": dict(T=7, H=4, G=2, d_h=3, d=8, row_scale=True, col_scale=True, center=True,
                          bias="Td"),
    "zero-resid": dict(T=5, H=2, G=1, d_h=3, d=6, zero="resid"),
    "zero-values": dict(T=5, H=2, G=2, d_h=3, d=6, zero="values", bias="d"),
    "zero-all": dict(T=4, H=2, G=1, d_h=3, d=5, zero="all", bias="d", E=1),
    "huge-1e15": dict(T=6, H=4, G=2, d_h=4, d=9, scale=1e15, bias="d"),
    "tiny-1e-20": dict(T=6, H=4, G=2, d_h=4, d=9, scale=1e-20, bias="d"),
    "eps-scale-1e-5": dict(T=6, H=4, G=2, d_h=4, d=9, scale=1e-5),
    "wide-T16": dict(T=16, H=8, G=2, d_h=8, d=40, bias="d"),
}


def _check_attn_out(ref: dict, out: dict, whole, keep_heads: bool, E: int) -> None:
    T = np.asarray(whole).shape[0]
    tol = TOL["attn_contrib"]
    want_keys = {"edges", "resid", "bias", "extra", "total"} | ({"heads"} if keep_heads else set())
    assert want_keys <= set(out), f"missing outputs {want_keys - set(out)}"
    for key in ("edges", "resid", "bias", "extra"):
        assert out[key].dtype == np.float32, f"{key} dtype {out[key].dtype}"
        _close(out[key], ref[key], tol, key)
    assert np.asarray(out["extra"]).shape == (E, T)
    assert np.asarray(out["total"]).dtype == np.float64
    _check_total(out["total"], ref["total"], whole)
    upper = np.triu(np.ones((T, T), bool), 1)
    assert np.all(out["edges"][upper] == 0), "edges above the diagonal must be exactly 0"
    if keep_heads:
        assert out["heads"].dtype == np.float32
        _close(out["heads"], ref["heads"], tol, "heads")
        assert np.all(out["heads"][:, upper] == 0)
    s = (out["edges"].astype(np.float64).sum(axis=1) + out["resid"] + out["bias"]
         + out["extra"].astype(np.float64).sum(axis=0))
    np.testing.assert_allclose(s, 1.0, atol=TOL["sum_to_one"], err_msg="shares of a target sum to 1")


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("layout", ["contig", "strided", "f64"])
@pytest.mark.parametrize("case", list(ATTN_CASES), ids=list(ATTN_CASES))
def test_attn_contrib_matches_twin(case, layout, norm):
    spec = ATTN_CASES[case]
    kw = relayout(attn_case(sum(map(ord, case)), **spec), layout)
    keep = layout != "f64"
    res = both("attn_contrib", **kw, norm=norm, keep_heads=keep)
    assert res is not None, "valid input raised on both sides"
    ref, out = res
    _check_attn_out(ref, out, kw["whole"], keep, spec.get("E", 0))


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("case", ["T1-gqa", "gqa-G3", "odd-bias-d", "post-norm-all", "zero-all",
                                  "huge-1e15", "tiny-1e-20"])
def test_head_map_and_edge_heads_match_twin_and_full(case, norm):
    spec = ATTN_CASES[case]
    kw = attn_case(sum(map(ord, case)) + 1, **spec)
    full = A.attn_contrib(**kw, norm=norm, keep_heads=True)
    total = full["total"]
    H, T = kw["attn"].shape[:2]
    opt = {k: kw[k] for k in ("row_scale", "col_scale", "center") if k in kw}
    common = dict(whole=kw["whole"], attn=kw["attn"], values=kw["values"], w_o=kw["w_o"],
                  total=total, norm=norm, **opt)
    for h in range(H):
        ref, out = both("attn_head_map", head=h, **common)
        assert out.dtype == np.float32
        _close(out, ref, TOL["attn_head_map"], f"head_map[{h}] vs twin")
        _close(out, full["heads"][h], TOL["same_core"], f"head_map[{h}] vs keep_heads")
    pairs = [(t, s) for t in range(T) for s in range(t + 1)]
    rng = np.random.default_rng(3)
    for i in rng.permutation(len(pairs))[:12]:
        t, s = pairs[i]
        ref, out = both("attn_edge_heads", target=t, source=s, **common)
        assert out.shape == (H,) and out.dtype == np.float32
        _close(out, ref, TOL["attn_edge_heads"], f"edge_heads[{t},{s}] vs twin")
        _close(out, full["heads"][:, t, s], TOL["same_core"], f"edge_heads[{t},{s}] vs heads")
        np.testing.assert_allclose(float(out.astype(np.float64).sum()), float(full["edges"][t, s]),
                                   atol=TOL["attn_edge_heads"]["atol"], err_msg="sum over heads")


def test_head_map_strided_and_f64_inputs():
    kw = attn_case(11, T=7, H=4, G=2, d_h=4, d=9, row_scale=True, col_scale=True, center=True)
    full = A.attn_contrib(**kw, norm=1, keep_heads=True)
    base = dict(whole=kw["whole"], attn=kw["attn"], values=kw["values"], w_o=kw["w_o"],
                total=full["total"], row_scale=kw["row_scale"], col_scale=kw["col_scale"],
                center=True)
    for layout in ("strided", "f64"):
        common = relayout(base, layout, skip=("total",))
        if layout == "strided":
            common["total"] = noncontig(full["total"])
        ref, out = both("attn_head_map", head=3, **common)
        _close(out, ref, TOL["attn_head_map"], f"head_map {layout}")
        ref, out = both("attn_edge_heads", target=6, source=2, **common)
        _close(out, ref, TOL["attn_edge_heads"], f"edge_heads {layout}")


# --------------------------------------------------------------------------------------------
# FFN zoo


def ffn_case(
    seed: int,
    N: int,
    F: int,
    d: int,
    *,
    scale: float = 1.0,
    zero: str = "",
    bias: str | None = None,
    row_scale: bool = False,
    col_scale: bool = False,
    center: bool = False,
) -> dict:
    rng = np.random.default_rng(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    act = f32(rng.standard_normal((N, F)) * np.where(rng.random((N, F)) < 0.3, 0.0, 1.0))
    w_down = f32(rng.standard_normal((F, d)) * scale / np.sqrt(F))
    m = f32(rng.standard_normal((N, d)) * scale)
    b = None
    if bias == "d":
        b = f32(rng.standard_normal(d) * scale)
    elif bias == "Nd":
        b = f32(rng.standard_normal((N, d)) * scale)
    rs = f32(rng.uniform(0.5, 2.0, N)) if row_scale else None
    cs = f32(rng.uniform(0.5, 1.5, d)) if col_scale else None
    if zero in ("act", "all"):
        act[...] = 0
    if zero in ("resid", "all"):
        m[...] = 0
    if zero == "all" and b is not None:
        b[...] = 0
    wd = w_down.astype(np.float64)
    if center:
        wd = wd - wd.mean(axis=-1, keepdims=True)
    if cs is not None:
        wd = wd * cs.astype(np.float64)
    a = act.astype(np.float64)
    if rs is not None:
        a = a * rs.astype(np.float64)[:, None]
    whole = m.astype(np.float64) + a @ wd + (0.0 if b is None else b.astype(np.float64))
    kw = dict(act=act, w_down=w_down, resid=m, whole=f32(whole))
    if b is not None:
        kw["bias"] = b
    if rs is not None:
        kw["row_scale"] = rs
    if cs is not None:
        kw["col_scale"] = cs
    if center:
        kw["center"] = True
    return kw


FFN_CASES = {
    "all-size-1": dict(N=1, F=1, d=1),
    "N1": dict(N=1, F=9, d=5),
    "F1": dict(N=4, F=1, d=6),
    "d1": dict(N=3, F=7, d=1),
    "odd": dict(N=5, F=37, d=11),
    "bias-d": dict(N=4, F=24, d=9, bias="d"),
    "bias-Nd": dict(N=4, F=24, d=9, bias="Nd"),
    "post-norm": dict(N=5, F=20, d=8, row_scale=True, col_scale=True, center=True, bias="Nd"),
    "row-scale": dict(N=3, F=16, d=7, row_scale=True),
    "col-center": dict(N=3, F=16, d=7, col_scale=True, center=True),
    "zero-act": dict(N=3, F=10, d=5, zero="act", bias="d"),
    "zero-all": dict(N=3, F=10, d=5, zero="all", bias="d"),
    "huge-1e15": dict(N=4, F=12, d=9, scale=1e15, bias="d"),
    "tiny-1e-20": dict(N=4, F=12, d=9, scale=1e-20, bias="d"),
    "wide": dict(N=8, F=96, d=48, bias="d"),
}


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("layout", ["contig", "strided", "f64", "w_down.T"])
@pytest.mark.parametrize("case", list(FFN_CASES), ids=list(FFN_CASES))
def test_ffn_neuron_contrib_matches_twin(case, layout, norm):
    spec = FFN_CASES[case]
    kw = ffn_case(sum(map(ord, case)), **spec)
    if layout == "w_down.T":
        # a torch Linear weight [d, F], C-contiguous, handed over as its transposed view
        kw["w_down"] = np.ascontiguousarray(kw["w_down"].T).T
        assert kw["w_down"].flags.f_contiguous
    else:
        kw = relayout(kw, layout)
    res = both("ffn_neuron_contrib", **kw, norm=norm)
    assert res is not None, "valid input raised on both sides"
    ref, out = res
    tol = TOL["ffn_neuron_contrib"]
    for key in ("neurons", "resid", "bias"):
        assert out[key].dtype == np.float32, f"{key} dtype {out[key].dtype}"
        _close(out[key], ref[key], tol, key)
    assert np.asarray(out["total"]).dtype == np.float64
    _check_total(out["total"], ref["total"], kw["whole"])
    s = out["neurons"].astype(np.float64).sum(axis=1) + out["resid"] + out["bias"]
    np.testing.assert_allclose(s, 1.0, atol=TOL["sum_to_one"], err_msg="shares of a token sum to 1")


# --------------------------------------------------------------------------------------------
# contributions (the batched primitive)


CONTRIB_CASES = {
    "K1-d1": dict(K=1, batch=(), d=1),
    "K3": dict(K=3, batch=(), d=4),
    "K5-batch4-odd": dict(K=5, batch=(4,), d=7),
    "K2-batch2x3": dict(K=2, batch=(2, 3), d=3),
    "K7-batch5-d33": dict(K=7, batch=(5,), d=33),
    "zeros": dict(K=3, batch=(2,), d=4, scale=0.0),
    "huge": dict(K=4, batch=(3,), d=6, scale=1e15),
    "tiny": dict(K=4, batch=(3,), d=6, scale=1e-20),
    "independent-whole": dict(K=4, batch=(6,), d=5, independent=True),
}


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("layout", ["contig", "strided", "f64", "list"])
@pytest.mark.parametrize("case", list(CONTRIB_CASES), ids=list(CONTRIB_CASES))
def test_contributions_matches_twin(case, layout, norm):
    spec = dict(CONTRIB_CASES[case])
    rng = np.random.default_rng(sum(map(ord, case)))
    K, batch, d = spec["K"], spec["batch"], spec["d"]
    scale = spec.get("scale", 1.0)
    parts = (rng.standard_normal((K, *batch, d)) * scale).astype(np.float32)
    if spec.get("independent"):
        whole = (rng.standard_normal((*batch, d)) * scale).astype(np.float32)
    else:
        whole = parts.astype(np.float64).sum(axis=0).astype(np.float32)
    kw = relayout(dict(parts=parts, whole=whole), layout if layout != "list" else "contig")
    if layout == "list":
        kw = {k: v.tolist() for k, v in kw.items()}
    res = both("contributions", **kw, norm=norm)
    assert res is not None
    ref, out = res
    assert out.dtype == np.float32
    _close(out, ref, TOL["contributions"], "contributions")
    np.testing.assert_allclose(out.astype(np.float64).sum(axis=0), 1.0, atol=TOL["sum_to_one"])


# --------------------------------------------------------------------------------------------
# renormalize


def _shares(rng, K, T, S, E, quantum=None):
    """Random shares per target summing to 1 over (K, S) and E; optionally quantised so that ties
    and values exactly at the threshold occur."""
    raw = rng.random((K * S + E, T)) ** 3
    raw /= raw.sum(axis=0, keepdims=True)
    if quantum:
        raw = np.round(raw / quantum) * quantum
    heads = raw[: K * S].reshape(K, S, T).transpose(0, 2, 1)
    return np.ascontiguousarray(heads).astype(np.float32), raw[K * S:].astype(np.float32)


RENORM_CASES = {
    "K1-T1-S1-E1": dict(K=1, T=1, S=1, E=1),
    "K1-doc-shape": dict(K=1, T=2, S=2, E=1),
    "K4-T5-S5-E2": dict(K=4, T=5, S=5, E=2),
    "K3-T4-S7-E3": dict(K=3, T=4, S=7, E=3),
    "K9-T11-S11-E1": dict(K=9, T=11, S=11, E=1),
    "ties-quantised": dict(K=3, T=6, S=6, E=2, quantum=0.05),
    "all-zero": dict(K=2, T=3, S=3, E=2, zero=True),
}


@pytest.mark.parametrize("layout", ["contig", "strided", "f64"])
@pytest.mark.parametrize("threshold", [0.0, 0.04, 0.1, 0.3, 0.5, 0.99])
@pytest.mark.parametrize("case", list(RENORM_CASES), ids=list(RENORM_CASES))
def test_renormalize_matches_twin(case, threshold, layout):
    spec = dict(RENORM_CASES[case])
    rng = np.random.default_rng(sum(map(ord, case)))
    heads, single = _shares(rng, spec["K"], spec["T"], spec["S"], spec["E"], spec.get("quantum"))
    if spec.get("zero"):
        heads[...] = 0
        single[...] = 0
    kw = relayout(dict(heads=heads, single=single), layout)
    ref, out = both("renormalize", **kw, threshold=threshold)
    for key in ("edges", "single"):
        assert out[key].dtype == np.float32
        _close(out[key], ref[key], TOL["renormalize"], key)
    if not spec.get("zero"):
        s = out["edges"].astype(np.float64).sum(axis=1) + out["single"].astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(s, 1.0, atol=TOL["sum_to_one"])


def test_renormalize_keeps_largest_when_all_below_with_ties():
    # every part below 0.5; the largest (0.3) appears first at heads[1, 0, 2] and again in single
    heads = np.zeros((2, 1, 3), np.float32)
    heads[0, 0] = [0.1, 0.2, 0.1]
    heads[1, 0] = [0.0, 0.0, 0.3]
    single = np.array([[0.3]], np.float32)
    ref, out = both("renormalize", heads=heads, single=single, threshold=0.5)
    np.testing.assert_array_equal(out["edges"], [[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(out["single"], [[0.0]])
    np.testing.assert_array_equal(out["edges"], ref["edges"])
    # the tie between two head parts goes to the lower (k, s)
    heads = np.array([[[0.2, 0.3]], [[0.3, 0.1]]], np.float32)
    ref, out = both("renormalize", heads=heads, single=np.array([[0.1]], np.float32), threshold=0.5)
    np.testing.assert_array_equal(out["edges"], [[0.0, 1.0]])
    np.testing.assert_array_equal(out["edges"], ref["edges"])


def test_renormalize_part_at_threshold_is_kept():
    heads = np.array([[[0.25, 0.25]]], np.float32)
    single = np.array([[0.5]], np.float32)
    ref, out = both("renormalize", heads=heads, single=single, threshold=0.25)
    _close(out["edges"], [[0.25, 0.25]], TOL["renormalize"], "edges")
    _close(out["single"], [[0.5]], TOL["renormalize"], "single")


def test_threshold_compared_in_double():
    # float32(0.04) < 0.04 in double: the twin drops that part; the core must do the same (a core
    # that casts the threshold to float32 would keep it).
    w = np.float32(0.04)
    assert float(w) < 0.04
    heads = np.array([[[w, 0.5]]], np.float32)
    single = np.array([[1.0 - 0.5 - float(w)]], np.float32)
    ref, out = both("renormalize", heads=heads, single=single, threshold=0.04)
    _close(out["edges"], ref["edges"], TOL["renormalize"], "edges")
    assert out["edges"][0, 0] == 0.0


# --------------------------------------------------------------------------------------------
# synthetic decompositions recompose their wholes


@pytest.mark.parametrize("H,G", [(1, 1), (4, 1), (4, 2), (4, 4), (6, 3)])
def test_synthetic_attention_decomposition_recomposes(H, G):
    rng = np.random.default_rng(100 + 10 * H + G)
    T, d_h, d = 6, 4, 10
    x = rng.standard_normal((T, d))
    attn = causal_softmax(rng, H, T, garbage_upper=False)
    v = rng.standard_normal((T, G, d_h))
    w_o = rng.standard_normal((H, d_h, d)) / 2
    b = rng.standard_normal(d)
    # the layer's output, written as the model computes it: per-head context, then W_O
    v_per_head = np.repeat(v, H // G, axis=1)  # [T, H, d_h]: head h reads group h // (H/G)
    ctx = np.einsum("hts,shk->htk", attn, v_per_head)  # [H, T, d_h]
    whole = x + np.einsum("htk,hkd->td", ctx, w_o) + b
    # the parts, enumerated one by one from the twin's head vectors
    u = R.head_vectors(v, w_o)
    recomposed = x + b
    for h in range(H):
        for t in range(T):
            for s in range(t + 1):
                recomposed[t] += attn[h, t, s] * u[h, s]
    np.testing.assert_allclose(recomposed, whole, rtol=1e-12, atol=1e-12)
    # and the core scores that exact decomposition like the twin
    kw = dict(resid=x.astype(np.float32), whole=whole.astype(np.float32),
              attn=attn.astype(np.float32), values=v.astype(np.float32),
              w_o=w_o.astype(np.float32), bias=b.astype(np.float32))
    for norm in (1, 2):
        ref, out = both("attn_contrib", **kw, norm=norm, keep_heads=True)
        _check_attn_out(ref, out, kw["whole"], True, 0)


def test_synthetic_ffn_decomposition_recomposes():
    rng = np.random.default_rng(7)
    N, F, d = 4, 30, 12
    act = rng.standard_normal((N, F))
    w_lin = rng.standard_normal((d, F)) / 5  # a torch Linear weight: [out, in]
    m = rng.standard_normal((N, d))
    b = rng.standard_normal(d)
    whole = m + act @ w_lin.T + b
    recomposed = m + b + sum(act[:, i:i + 1] * w_lin[:, i][None] for i in range(F))
    np.testing.assert_allclose(recomposed, whole, rtol=1e-12, atol=1e-12)
    w32 = np.ascontiguousarray(w_lin, dtype=np.float32)
    kw = dict(act=act.astype(np.float32), w_down=w32.T, resid=m.astype(np.float32),
              whole=whole.astype(np.float32), bias=b.astype(np.float32))
    for norm in (1, 2):
        ref, out = both("ffn_neuron_contrib", **kw, norm=norm)
        _close(out["neurons"], ref["neurons"], TOL["ffn_neuron_contrib"], "neurons")
        _close(out["resid"], ref["resid"], TOL["ffn_neuron_contrib"], "resid")


# --------------------------------------------------------------------------------------------
# the method's published worked examples

# (a) L2: resid_pre [2,1]; resid_mid [2,2]; attention parts [1,1] and [-1,0].
FIG_A_RESID = 0.56387
FIG_A_PART = 0.43613


def test_figure_a_contributions_primitive():
    parts = np.array([[2.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], np.float32)
    c = A.contributions(parts, np.array([2.0, 2.0], np.float32), norm=2)
    np.testing.assert_allclose(c[:2], [FIG_A_RESID, FIG_A_PART], atol=1e-5)
    assert 0 < c[2] < 1e-5


def test_figure_a_as_two_real_heads():
    # T=1, H=2, G=2, d_h=d=2, A=1, W_O=I: u[0]=[1,1], u[1]=[-1,0]
    kw = dict(resid=np.array([[2.0, 1.0]], np.float32), whole=np.array([[2.0, 2.0]], np.float32),
              attn=np.ones((2, 1, 1), np.float32),
              values=np.array([[[1.0, 1.0], [-1.0, 0.0]]], np.float32),
              w_o=np.stack([np.eye(2), np.eye(2)]).astype(np.float32))
    ref, out = both("attn_contrib", **kw, norm=2, keep_heads=True)
    np.testing.assert_allclose(out["heads"][:, 0, 0], [FIG_A_PART, 0.0], atol=1e-5)
    assert 0 < out["heads"][1, 0, 0] < 1e-5  # eps-sized, not zero
    np.testing.assert_allclose(out["resid"], [FIG_A_RESID], atol=1e-5)
    np.testing.assert_allclose(out["edges"][0, 0], FIG_A_PART, atol=1e-5)
    _check_attn_out(ref, out, kw["whole"], True, 0)


def test_figure_a_as_extra_parts():
    # one head whose values are zero (an eps-sized part), the two real parts given as `extra`
    kw = dict(resid=np.array([[2.0, 1.0]], np.float32), whole=np.array([[2.0, 2.0]], np.float32),
              attn=np.ones((1, 1, 1), np.float32), values=np.zeros((1, 1, 2), np.float32),
              w_o=np.eye(2, dtype=np.float32)[None],
              extra=np.array([[[1.0, 1.0]], [[-1.0, 0.0]]], np.float32))
    ref, out = both("attn_contrib", **kw, norm=2)
    np.testing.assert_allclose(out["extra"][:, 0], [FIG_A_PART, 0.0], atol=1e-5)
    assert 0 < out["extra"][1, 0] < 1e-5
    np.testing.assert_allclose(out["resid"], [FIG_A_RESID], atol=1e-5)
    assert 0 < out["edges"][0, 0] < 1e-5
    _check_attn_out(ref, out, kw["whole"], False, 2)


def test_figure_b_renormalize():
    out = A.renormalize(np.array([[[0.05, 0.15], [0.05, 0.05]]], np.float32),
                        np.array([[0.8, 0.9]], np.float32), 0.1)
    np.testing.assert_allclose(out["edges"], [[0.0, 0.157894], [0.0, 0.0]], atol=2e-6)
    np.testing.assert_allclose(out["single"], [[0.842105, 1.0]], atol=2e-6)


# --------------------------------------------------------------------------------------------
# repeat calls do not grow memory


def _grows(fn, n: int) -> int:
    for _ in range(max(50, n // 10)):  # warm-up: allocator pools, lazy imports
        fn()
    before = rss_bytes()
    for _ in range(n):
        fn()
    return rss_bytes() - before


def _leak_calls():
    kw = attn_case(5, T=16, H=4, G=2, d_h=8, d=32, bias="d", E=1, row_scale=True)
    kw64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    total = R.attn_contrib(**kw)["total"]
    common = dict(whole=kw["whole"], attn=kw["attn"], values=kw["values"], w_o=kw["w_o"],
                  total=total)
    fk = ffn_case(5, N=8, F=64, d=32, bias="Nd")
    fk["w_down"] = np.ascontiguousarray(fk["w_down"].T).T
    heads, single = _shares(np.random.default_rng(0), 4, 16, 16, 2)
    rng = np.random.default_rng(1)
    L, T = 4, 16
    pr = dict(attn=rng.random((L, T, T)).astype(np.float32) * 0.2,
              attn_resid=rng.random((L, T)).astype(np.float32),
              ffn=rng.random((L, T)).astype(np.float32), ffn_resid=rng.random((L, T)).astype(np.float32),
              parallel=np.array([False, True, False, True]), targets=np.array([T - 1, 3]),
              threshold=0.1)
    parts = np.random.default_rng(2).standard_normal((5, 8, 32))
    from test_probe_check import probe_case  # that file imports this one

    probe = probe_case(3, T=16, H=4, G=2, d=32, F=64)
    return {
        "attn_contrib": lambda: A.attn_contrib(**kw, keep_heads=True),
        "attn_contrib_f64_cast": lambda: A.attn_contrib(**kw64),
        "attn_head_map": lambda: A.attn_head_map(1, **common),
        "attn_edge_heads": lambda: A.attn_edge_heads(9, 4, **common),
        "ffn_neuron_contrib": lambda: A.ffn_neuron_contrib(**fk),
        "contributions": lambda: A.contributions(parts, parts.sum(axis=0)),
        "renormalize": lambda: A.renormalize(heads, single, 0.04),
        "prune": lambda: A.prune(**pr),
        "probe_check": lambda: A.probe_check(**probe),
    }


LEAK_NAMES = [*R.DENSE_KERNELS, "attn_contrib_f64_cast"]  # the sparse ones: test_sparse_kernels.py


@pytest.mark.parametrize("name", LEAK_NAMES)
def test_repeat_calls_do_not_grow_rss(name):
    fn = _leak_calls()[name]
    grown = _grows(fn, 2000)
    # one leaked output per call would be >= 2000 * 1 KiB here; allow allocator noise
    assert grown < 2 * 2**20, f"{name}: RSS grew by {grown / 2**20:.2f} MiB over 2000 calls"


def test_failing_calls_do_not_grow_rss():
    kw = attn_case(6, T=16, H=4, G=2, d_h=8, d=32)
    bad = dict(kw, whole=kw["whole"].copy())
    bad["whole"][3, 5] = np.nan
    bad64 = {k: v.astype(np.float64) for k, v in bad.items()}

    def fn():
        for args in (bad, bad64):
            try:
                A.attn_contrib(**args)
            except (ValueError, TypeError):
                pass
            else:  # pragma: no cover
                raise AssertionError("NaN accepted")

    grown = _grows(fn, 1000)
    assert grown < 2 * 2**20, f"RSS grew by {grown / 2**20:.2f} MiB over 2000 failing calls"


# --------------------------------------------------------------------------------------------
# invalid inputs on which the twin also fails: both raise


def test_both_raise_when_groups_do_not_divide_heads():
    for H, G in [(4, 3), (5, 2), (3, 2), (6, 4)]:
        rng = np.random.default_rng(H * 10 + G)
        kw = dict(resid=rng.standard_normal((3, 4)).astype(np.float32),
                  whole=rng.standard_normal((3, 4)).astype(np.float32),
                  attn=causal_softmax(rng, H, 3).astype(np.float32),
                  values=rng.standard_normal((3, G, 2)).astype(np.float32),
                  w_o=rng.standard_normal((H, 2, 4)).astype(np.float32))
        assert both("attn_contrib", **kw) is None


def test_both_raise_on_mismatched_width():
    kw = attn_case(2, T=3, H=2, G=1, d_h=2, d=4)
    kw["resid"] = np.ones((3, 5), np.float32)
    assert both("attn_contrib", **kw) is None
    assert both("contributions", parts=np.ones((2, 3, 4)), whole=np.ones((3, 5))) is None


def test_w_o_read_in_place_as_the_linear_weight():
    # w_o as the .T of the output projection's own weight [d, H d_h] (read in place, no copy),
    # a run of its heads, and a NaN in it reported by name with the [H, d_h, d] flat index
    rng = np.random.default_rng(7)
    T, H, G, dh, d = 6, 4, 2, 3, 10
    x = rng.normal(size=(T, d)).astype(np.float32)
    v = rng.normal(size=(T, G, dh)).astype(np.float32)
    lin = rng.normal(size=(d, H * dh)).astype(np.float32)  # torch's Linear weight [out, in]
    w_o = lin.T.reshape(H, dh, d)
    assert not w_o.flags.c_contiguous and np.shares_memory(w_o, lin)
    a = np.tril(rng.random((H, T, T))).astype(np.float32)
    a /= a.sum(-1, keepdims=True)
    whole = x + np.einsum("hts,shd->td", a, np.einsum("sgk,hkd->shd", v[:, np.arange(H) // (H // G)], w_o))
    for center in (False, True):
        got = A.attn_contrib(x, whole, a, v, w_o, center=center, keep_heads=True)
        want = A.attn_contrib(x, whole, a, v, np.ascontiguousarray(w_o), center=center, keep_heads=True)
        for key in ("edges", "heads", "resid", "total"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
        part = A.attn_head_map(0, whole, a[2:4], v[:, 1:2], w_o[2:4], got["total"], center=center)
        np.testing.assert_allclose(part, want["heads"][2], rtol=1e-5, atol=1e-6)
        eh = A.attn_edge_heads(T - 1, 2, whole, a, v, w_o, got["total"], center=center)
        np.testing.assert_allclose(eh, want["heads"][:, T - 1, 2], rtol=1e-5, atol=1e-6)
    bad = lin.copy()
    bad[5, 7] = np.nan  # coordinate j=5 of head 2, row 1: flat index (2 * dh + 1) * d + 5
    with pytest.raises(ValueError, match=r"w_o contains NaN or inf .*flat index 75"):
        A.attn_contrib(x, whole, a, v, bad.T.reshape(H, dh, d))
    with pytest.raises(ValueError, match=r"w_o contains NaN or inf .*flat index 75"):
        A.attn_edge_heads(T - 1, 2, whole, a, v, bad.T.reshape(H, dh, d), got["total"])
