"""The running exactness check's kernel, :func:`ltt.kernels.probe_check`, against its twin
:func:`ltt._reference.probe_check`: an exact decomposition passes, an error planted in any branch
shows at about its size in both, they agree on every layout, and the states are read (and must be
finite) at the checked rows only."""

from __future__ import annotations

import numpy as np
import pytest

from ltt import _reference as R
from ltt import kernels as A

from test_core_reference import both, causal_softmax, relayout

#: The kernel and its twin compute in float64 from the same float32 values, in another order.
TOL = dict(atol=1e-10, rtol=1e-7)


def probe_case(seed: int, T: int = 9, H: int = 4, G: int = 2, d_h: int = 3, d: int = 8, F: int = 11,
               k: int = 4, parallel: bool = False, options: bool = True) -> dict:
    """The arguments of one layer's check whose decomposition is exact (float64 states stored
    as float32): heads through a row scale and a bias, neurons the same."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((T, G, d_h))
    w_o = rng.standard_normal((H, d_h, d))
    probs = causal_softmax(rng, H, T, garbage_upper=False)
    w_down = rng.standard_normal((F, d)) / np.sqrt(F)
    act = rng.standard_normal((T, F))
    pre = rng.standard_normal((T, d)) * 3
    per = H // G
    attn = sum(probs[h] @ (values[:, h // per] @ w_o[h]) for h in range(H))
    ffn = act @ w_down
    kw: dict = {}
    if options:
        kw = dict(attn_row_scale=rng.uniform(0.5, 2.0, T), attn_bias=rng.standard_normal((T, d)),
                  ffn_row_scale=rng.uniform(0.5, 2.0, T), ffn_bias=rng.standard_normal((T, d)))
        attn = attn * kw["attn_row_scale"][:, None] + kw["attn_bias"]
        ffn = ffn * kw["ffn_row_scale"][:, None] + kw["ffn_bias"]
    mid = None if parallel else pre + attn
    post = pre + attn + ffn
    z = rng.standard_normal((d, k))
    rows = np.unique(np.array([0, T // 2, T - 1], dtype=np.int64))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return dict(rows=rows, probs=f32(probs[:, rows]), values=f32(values),
                o=f32(np.einsum("hed,dc->hec", w_o, z)), down=w_down @ z, z=z, resid_pre=f32(pre),
                resid_mid=None if mid is None else f32(mid), resid_post=f32(post), ffn_out=f32(ffn),
                act=f32(act), **{key: f32(v) for key, v in kw.items()})


def _agree(kw: dict) -> dict:
    want, got = both("probe_check", **kw)
    assert set(got) == set(want) == ({"attn", "neurons"} if kw["resid_mid"] is None else
                                     {"attn", "ffn", "neurons"})
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=key, **TOL)
    return got


@pytest.mark.parametrize("layout", ["contiguous", "strided", "f64"])
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
@pytest.mark.parametrize("options", [False, True], ids=["plain", "scales-biases"])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_exact_layer_passes_in_both(layout, parallel, options, G):
    kw = probe_case(G, G=G, parallel=parallel, options=options)
    errors = _agree(relayout(kw, layout, skip=("down", "z")))
    assert max(errors.values()) < 1e-5


# (argument, how it is spoiled at the middle checked row, the errors that must show it)
PLANTED = [
    ("ffn_out", lambda a, t: a[t].__imul__(1.02), {"neurons", "ffn"}),
    ("act", lambda a, t: a[t].__iadd__(0.5), {"neurons"}),
    ("resid_mid", lambda a, t: a[t].__iadd__(0.05), {"attn", "ffn"}),
    ("resid_pre", lambda a, t: a[t].__iadd__(0.05), {"attn"}),
    ("probs", lambda a, t: a[:, 1].__imul__(0.9), {"attn"}),
    ("attn_bias", lambda a, t: a[t].__iadd__(0.05), {"attn"}),
    ("ffn_row_scale", lambda a, t: a.__setitem__(t, a[t] * 1.1), {"neurons"}),
]


@pytest.mark.parametrize("arg,spoil,shows", PLANTED, ids=[p[0] for p in PLANTED])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_planted_error_shows_at_its_size_in_both(arg, spoil, shows, seed):
    kw = probe_case(seed)
    t = int(kw["rows"][1])
    spoil(kw[arg], t)
    errors = _agree(kw)
    for key in shows:
        assert errors[key] > 1e-3, (key, errors)  # far above float32 rounding (~1e-7)
    for key in set(errors) - shows:
        assert errors[key] < 1e-5, (key, errors)


def test_a_parallel_blocks_ffn_error_shows_in_attn():
    kw = probe_case(3, parallel=True)
    kw["ffn_out"][kw["rows"][2]] *= 1.05
    errors = _agree(kw)
    assert errors["attn"] > 1e-3 and errors["neurons"] > 1e-3


def test_states_are_read_at_the_rows_only():
    kw = probe_case(4, T=12)
    unread = sorted(set(range(12)) - set(kw["rows"].tolist()))[0]
    for arg in ("resid_pre", "resid_mid", "resid_post", "ffn_out", "act", "attn_bias", "ffn_bias",
                "attn_row_scale", "ffn_row_scale"):
        bad = dict(kw, **{arg: kw[arg].copy()})
        bad[arg][unread] = np.nan
        assert max(_agree(bad).values()) < 1e-5
        bad[arg][kw["rows"][-1]] = np.inf
        with pytest.raises(ValueError, match=rf"{arg} contains NaN or inf.*row {kw['rows'][-1]}"):
            A.probe_check(**bad)
        with pytest.raises(ValueError, match=rf"{arg} contains NaN or inf"):
            R.probe_check(**bad)


@pytest.mark.parametrize("rows,message", [([0, 9], r"rows must be in \[0, 9\) \(T\), got 9 at index 1"),
                                          ([-1], r"rows must be in \[0, 9\).*got -1")])
def test_rows_out_of_range(rows, message):
    kw = probe_case(5)
    kw["rows"] = np.array(rows, dtype=np.int64)
    kw["probs"] = np.zeros((4, len(rows), 9), np.float32)
    with pytest.raises(ValueError, match=message):
        A.probe_check(**kw)


def test_rows_must_be_int64_and_directions_at_most_16():
    kw = probe_case(6)
    with pytest.raises(TypeError, match=r"rows must be an array of int64"):
        A.probe_check(**dict(kw, rows=kw["rows"].astype(np.int32)))
    with pytest.raises(ValueError, match=r"z must have at most 16 directions \(k\), got 17"):
        A.probe_check(**probe_case(6, k=17))
    assert max(_agree(probe_case(6, k=16)).values()) < 1e-5
