"""Bad input to the C core gets a clear Python exception naming the argument, never a crash or hang.

Each entry point of ``ltt.kernels`` starts from one valid call (every optional argument
given, so every argument can be corrupted) and is handed, one at a time: a wrong dtype (int,
complex, object, bool: ``TypeError``), a wrong number of dimensions, a wrong size or sizes that
do not match each other, GQA heads that are not a multiple of the kv groups, a NaN or an
infinity, an empty array, a threshold outside [0, 1), a norm other than 1 or 2, an index out of
range. The message must name the argument (``match=``). A watchdog ends the process if a call
hangs, so a hang fails the run instead of stalling it.
"""

from __future__ import annotations

import faulthandler
import inspect

import numpy as np
import pytest

from ltt import _reference as R
from ltt import kernels as A

T, H, G, DH, D, E, F = 5, 4, 2, 3, 6, 2, 7
L = 3


@pytest.fixture(autouse=True)
def _watchdog():
    # a call stuck in C (GIL released or not) cannot be interrupted by a signal handler; the
    # faulthandler thread dumps the stacks and exits the process instead
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def base(name: str) -> dict:
    """A valid call of each entry point with every optional array argument present."""
    rng = np.random.default_rng(0)
    attn = np.tril(rng.random((H, T, T))).astype(np.float32)
    if name == "contributions":
        parts = _f32(rng, 3, 4, D)
        return dict(parts=parts, whole=parts.sum(axis=0), norm=1)
    if name == "attn_contrib":
        return dict(resid=_f32(rng, T, D), whole=_f32(rng, T, D), attn=attn,
                    values=_f32(rng, T, G, DH), w_o=_f32(rng, H, DH, D), bias=_f32(rng, D),
                    extra=_f32(rng, E, T, D), row_scale=np.ones(T, np.float32),
                    col_scale=np.ones(D, np.float32), center=True, norm=1, keep_heads=True)
    view = dict(whole=_f32(rng, T, D), attn=attn, values=_f32(rng, T, G, DH),
                w_o=_f32(rng, H, DH, D), total=np.full(T, 3.0), row_scale=np.ones(T, np.float32),
                col_scale=np.ones(D, np.float32), center=False, norm=2)
    if name == "attn_head_map":
        return dict(head=1, **view)
    if name == "attn_edge_heads":
        return dict(target=3, source=1, **view)
    if name == "ffn_neuron_contrib":
        return dict(act=_f32(rng, T, F), w_down=_f32(rng, F, D), resid=_f32(rng, T, D),
                    whole=_f32(rng, T, D), bias=_f32(rng, T, D), row_scale=np.ones(T, np.float32),
                    col_scale=np.ones(D, np.float32), center=True, norm=1)
    if name == "renormalize":
        return dict(heads=rng.random((H, T, T)).astype(np.float32) / 20,
                    single=rng.random((E, T)).astype(np.float32) / 2, threshold=0.04)
    if name == "prune":
        return dict(attn=rng.random((L, T, T)).astype(np.float32) / 5,
                    attn_resid=rng.random((L, T)).astype(np.float32),
                    ffn=rng.random((L, T)).astype(np.float32),
                    ffn_resid=rng.random((L, T)).astype(np.float32),
                    parallel=np.array([False, True, False]), targets=np.array([T - 1, 0]),
                    threshold=0.1)
    if name == "probe_check":
        rows = np.array([0, 2, T - 1], np.int64)  # the last row is read (the non-finite tests)
        return dict(rows=rows, probs=attn[:, rows], values=_f32(rng, T, G, DH), o=_f32(rng, H, DH, 4),
                    down=rng.standard_normal((F, 4)), z=rng.standard_normal((D, 4)),
                    resid_pre=_f32(rng, T, D), resid_mid=_f32(rng, T, D), resid_post=_f32(rng, T, D),
                    ffn_out=_f32(rng, T, D), act=_f32(rng, T, F), attn_row_scale=np.ones(T, np.float32),
                    attn_bias=_f32(rng, T, D), ffn_row_scale=np.ones(T, np.float32),
                    ffn_bias=_f32(rng, T, D))
    raise KeyError(name)


NAMES = list(R.DENSE_KERNELS)  # the sparse kernels' errors: test_sparse_kernels.py

FLOAT_ARGS = {
    name: [k for k, v in base(name).items()
           if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    for name in NAMES
}


def call(name: str, **kw):
    return getattr(A, name)(**kw)


def named(*args: str) -> str:
    """A regex matching a message that names any of the arguments (as a whole word)."""
    return "|".join(rf"\b{a}\b" for a in args)


def test_base_calls_are_valid():
    for name in NAMES:
        call(name, **base(name))


# --------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex64, object, np.bool_],
                         ids=["int32", "int64", "complex64", "object", "bool"])
@pytest.mark.parametrize("name,arg", [(n, a) for n in NAMES for a in FLOAT_ARGS[n]])
def test_wrong_dtype_is_type_error(name, arg, dtype):
    kw = base(name)
    good = kw[arg]
    kw[arg] = (np.ones(good.shape) if dtype is not np.bool_ else np.ones(good.shape, bool)).astype(dtype)
    with pytest.raises(TypeError, match=named(arg)):
        call(name, **kw)


@pytest.mark.parametrize("name,arg", [(n, a) for n in NAMES for a in FLOAT_ARGS[n]][::3])
def test_string_for_an_array_is_rejected(name, arg):
    kw = base(name)
    kw[arg] = "not an array"
    with pytest.raises((TypeError, ValueError), match=named(arg)):
        call(name, **kw)


# --------------------------------------------------------------------------------------------
# shapes


def _wrong_ndim(x: np.ndarray) -> list[np.ndarray]:
    return [x[..., None], x.reshape(-1)[:1].reshape(()) if x.ndim == 1 else x[0]]


# contributions takes any batch shape; renormalize may read a 2-D ``heads`` as K=1
SHAPE_ARGS = [(n, a) for n in NAMES for a in FLOAT_ARGS[n] if n not in ("contributions", "renormalize")]


@pytest.mark.parametrize("name,arg", SHAPE_ARGS + [("renormalize", "heads"), ("renormalize", "single")])
def test_wrong_ndim(name, arg):
    for bad in _wrong_ndim(base(name)[arg]):
        if arg == "bias" and bad.ndim in (1, 2):
            continue  # bias [d] and [T, d] are both valid
        if name == "renormalize" and bad.ndim < base(name)[arg].ndim:
            continue  # only an extra dimension is surely wrong there
        kw = base(name)
        kw[arg] = np.ascontiguousarray(bad)
        with pytest.raises((ValueError, TypeError), match=named(arg)):
            call(name, **kw)


# (function, argument, bad shape, arguments the message may name)
BAD_SHAPES = [
    ("contributions", "whole", (4, D + 1), ("parts", "whole")),
    ("contributions", "whole", (5, D), ("parts", "whole")),
    ("contributions", "whole", (4, 1, D), ("parts", "whole")),
    ("attn_contrib", "resid", (T, D + 1), ("resid", "whole")),
    ("attn_contrib", "resid", (T + 1, D), ("resid", "whole")),
    ("attn_contrib", "whole", (T - 1, D), ("resid", "whole", "attn")),
    ("attn_contrib", "attn", (H, T, T + 1), ("attn",)),
    ("attn_contrib", "attn", (H, T + 1, T + 1), ("attn", "resid", "whole")),
    ("attn_contrib", "attn", (H + 1, T, T), ("attn", "w_o")),
    ("attn_contrib", "values", (T + 1, G, DH), ("values", "attn", "resid", "whole")),
    ("attn_contrib", "values", (T, G, DH + 1), ("values", "w_o")),
    ("attn_contrib", "values", (T, 3, DH), ("values", "w_o", "attn")),  # H=4 not a multiple of 3
    ("attn_contrib", "values", (T, 8, DH), ("values", "w_o", "attn")),  # more groups than heads
    ("attn_contrib", "w_o", (H, DH, D + 1), ("w_o", "whole", "resid")),
    ("attn_contrib", "w_o", (H + 1, DH, D), ("w_o", "attn")),
    ("attn_contrib", "bias", (D + 1,), ("bias",)),
    ("attn_contrib", "bias", (T + 1, D), ("bias",)),
    ("attn_contrib", "extra", (E, T, D + 1), ("extra",)),
    ("attn_contrib", "extra", (E, T + 1, D), ("extra",)),
    ("attn_contrib", "row_scale", (T + 1,), ("row_scale",)),
    ("attn_contrib", "col_scale", (D - 1,), ("col_scale",)),
    ("attn_head_map", "total", (T + 1,), ("total",)),
    ("attn_head_map", "values", (T, 3, DH), ("values", "w_o", "attn")),
    ("attn_head_map", "attn", (H, T, T - 1), ("attn",)),
    ("attn_head_map", "row_scale", (T - 1,), ("row_scale",)),
    ("attn_edge_heads", "total", (T - 1,), ("total",)),
    ("attn_edge_heads", "w_o", (H, DH + 1, D), ("w_o", "values")),
    ("attn_edge_heads", "col_scale", (D + 2,), ("col_scale",)),
    ("ffn_neuron_contrib", "w_down", (F + 1, D), ("w_down", "act")),
    ("ffn_neuron_contrib", "w_down", (F, D + 1), ("w_down", "whole", "resid")),
    ("ffn_neuron_contrib", "act", (T + 1, F), ("act", "resid", "whole")),
    ("ffn_neuron_contrib", "resid", (T, D + 1), ("resid", "whole")),
    ("ffn_neuron_contrib", "whole", (T + 1, D), ("resid", "whole", "act")),
    ("ffn_neuron_contrib", "bias", (T + 1, D), ("bias",)),
    ("ffn_neuron_contrib", "row_scale", (T + 1,), ("row_scale",)),
    ("ffn_neuron_contrib", "col_scale", (D + 1,), ("col_scale",)),
    ("renormalize", "single", (E, T + 1), ("single", "heads")),
    ("prune", "attn", (L, T, T + 1), ("attn",)),
    ("prune", "attn", (L + 1, T, T), ("attn", "attn_resid", "ffn", "ffn_resid", "parallel")),
    ("prune", "attn_resid", (L, T + 1), ("attn_resid", "attn")),
    ("prune", "ffn", (L - 1, T), ("ffn", "attn")),
    ("prune", "ffn_resid", (L, T - 1), ("ffn_resid", "attn")),
    ("probe_check", "resid_mid", (T + 1, D), ("resid_mid",)),
    ("probe_check", "resid_post", (T, D + 1), ("resid_post",)),
    ("probe_check", "ffn_out", (T - 1, D), ("ffn_out",)),
    ("probe_check", "probs", (H, 3, T + 1), ("probs",)),
    ("probe_check", "probs", (H, 2, T), ("probs",)),  # not one row per checked row
    ("probe_check", "values", (T, 3, DH), ("values", "probs")),  # 3 groups do not divide H=4
    ("probe_check", "o", (H, DH + 1, 4), ("o",)),
    ("probe_check", "o", (H, DH, 3), ("o",)),
    ("probe_check", "down", (F + 1, 4), ("down",)),
    ("probe_check", "z", (D + 1, 4), ("z",)),
    ("probe_check", "act", (T + 1, F), ("act",)),
    ("probe_check", "attn_row_scale", (T + 1,), ("attn_row_scale",)),
    ("probe_check", "ffn_bias", (T, D - 1), ("ffn_bias",)),
]


@pytest.mark.parametrize("name,arg,shape,names", BAD_SHAPES,
                         ids=[f"{n}-{a}-{'x'.join(map(str, s))}" for n, a, s, _ in BAD_SHAPES])
def test_mismatched_shapes(name, arg, shape, names):
    kw = base(name)
    kw[arg] = np.ones(shape, np.float32)
    with pytest.raises((ValueError, TypeError), match=named(*names)):
        call(name, **kw)


def test_prune_parallel_length():
    kw = base("prune")
    kw["parallel"] = np.array([False] * (L + 1))
    with pytest.raises((ValueError, TypeError), match=named("parallel")):
        call("prune", **kw)


# --------------------------------------------------------------------------------------------
# non-finite values


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name,arg", [(n, a) for n in NAMES for a in FLOAT_ARGS[n]])
def test_non_finite_is_value_error(name, arg, value):
    kw = base(name)
    bad = kw[arg].copy()
    flat = bad.reshape(-1)
    # a position that is read: the last element (row t = T-1 of attn reads every s)
    flat[-1] = value
    kw[arg] = bad
    with pytest.raises(ValueError, match=named(arg)):
        call(name, **kw)


@pytest.mark.parametrize("name,arg", [("attn_contrib", "whole"), ("ffn_neuron_contrib", "act"),
                                      ("contributions", "parts")])
def test_non_finite_in_float64_and_strided_input(name, arg):
    kw = base(name)
    bad = kw[arg].astype(np.float64)
    bad.reshape(-1)[0] = np.nan
    kw[arg] = bad
    with pytest.raises(ValueError, match=named(arg)):
        call(name, **kw)
    kw = base(name)
    big = np.repeat(kw[arg], 2, axis=-1)
    big[..., 0] = np.inf
    kw[arg] = big[..., ::2]
    with pytest.raises(ValueError, match=named(arg)):
        call(name, **kw)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float64_overflowing_float32_is_value_error():
    # 1e300 is finite in float64 but inf once cast to float32: it must not pass silently
    kw = base("attn_contrib")
    w = kw["whole"].astype(np.float64)
    w[0, 0] = 1e300
    kw["whole"] = w
    with pytest.raises(ValueError, match=named("whole")):
        call("attn_contrib", **kw)


# --------------------------------------------------------------------------------------------
# empty arrays


EMPTY = [
    ("contributions", dict(parts=np.zeros((0, 4, D), np.float32), whole=np.zeros((4, D), np.float32)),
     ("parts",)),
    ("contributions", dict(parts=np.zeros((3, 4, 0), np.float32), whole=np.zeros((4, 0), np.float32)),
     ("parts", "whole")),
    ("attn_contrib", dict(resid=np.zeros((0, D), np.float32), whole=np.zeros((0, D), np.float32),
                          attn=np.zeros((H, 0, 0), np.float32), values=np.zeros((0, G, DH), np.float32),
                          w_o=np.ones((H, DH, D), np.float32)),
     ("resid", "whole", "attn", "values")),
    ("attn_contrib", dict(resid=np.zeros((T, 0), np.float32), whole=np.zeros((T, 0), np.float32),
                          attn=np.ones((H, T, T), np.float32), values=np.ones((T, G, DH), np.float32),
                          w_o=np.ones((H, DH, 0), np.float32)),
     ("resid", "whole", "w_o")),
    ("attn_contrib", dict(resid=np.ones((T, D), np.float32), whole=np.ones((T, D), np.float32),
                          attn=np.ones((0, T, T), np.float32), values=np.ones((T, 0, DH), np.float32),
                          w_o=np.ones((0, DH, D), np.float32)),
     ("attn", "values", "w_o")),
    ("attn_contrib", dict(resid=np.ones((T, D), np.float32), whole=np.ones((T, D), np.float32),
                          attn=np.ones((H, T, T), np.float32), values=np.ones((T, G, 0), np.float32),
                          w_o=np.ones((H, 0, D), np.float32)),
     ("values", "w_o")),
    ("ffn_neuron_contrib", dict(act=np.zeros((T, 0), np.float32), w_down=np.zeros((0, D), np.float32),
                                resid=np.ones((T, D), np.float32), whole=np.ones((T, D), np.float32)),
     ("act", "w_down")),
    ("ffn_neuron_contrib", dict(act=np.zeros((0, F), np.float32), w_down=np.ones((F, D), np.float32),
                                resid=np.ones((0, D), np.float32), whole=np.ones((0, D), np.float32)),
     ("act", "resid", "whole")),
    ("renormalize", dict(heads=np.zeros((1, 0, 0), np.float32), single=np.zeros((1, 0), np.float32),
                         threshold=0.1), ("heads", "single")),
    ("prune", dict(attn=np.zeros((0, T, T), np.float32), attn_resid=np.zeros((0, T), np.float32),
                   ffn=np.zeros((0, T), np.float32), ffn_resid=np.zeros((0, T), np.float32),
                   parallel=np.zeros(0, bool), targets=np.array([0]), threshold=0.1),
     ("attn", "attn_resid", "ffn", "ffn_resid", "parallel")),
    ("probe_check", dict(base("probe_check"), rows=np.zeros(0, np.int64), probs=np.zeros((H, 0, T), np.float32)),
     ("rows",)),
    ("probe_check", dict(base("probe_check"), act=np.zeros((T, 0), np.float32), down=np.zeros((0, 4))),
     ("act",)),
    ("probe_check", dict(base("probe_check"), z=np.zeros((D, 0)), o=np.zeros((H, DH, 0), np.float32),
                         down=np.zeros((F, 0))), ("z",)),
    ("prune", dict(attn=np.zeros((L, 0, 0), np.float32), attn_resid=np.zeros((L, 0), np.float32),
                   ffn=np.zeros((L, 0), np.float32), ffn_resid=np.zeros((L, 0), np.float32),
                   parallel=np.zeros(L, bool), targets=np.array([0]), threshold=0.1),
     ("attn", "attn_resid", "ffn", "ffn_resid", "targets")),
]


@pytest.mark.parametrize("name,kw,names", EMPTY, ids=[f"{e[0]}-{i}" for i, e in enumerate(EMPTY)])
def test_empty_arrays(name, kw, names):
    with pytest.raises((ValueError, TypeError), match=named(*names)):
        call(name, **kw)


# --------------------------------------------------------------------------------------------
# scalars: norm, threshold, indices


@pytest.mark.parametrize("norm", [0, 3, -1, 1.5, "1", None])
@pytest.mark.parametrize("name", [n for n in NAMES if "norm" in inspect.signature(getattr(R, n)).parameters])
def test_norm_not_1_or_2(name, norm):
    kw = base(name)
    kw["norm"] = norm
    with pytest.raises((ValueError, TypeError), match=named("norm")):
        call(name, **kw)


@pytest.mark.parametrize("threshold", [-0.01, 1.0, 1.5, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["renormalize", "prune"])
def test_threshold_outside_0_1(name, threshold):
    kw = base(name)
    kw["threshold"] = threshold
    with pytest.raises(ValueError, match=named("threshold")):
        call(name, **kw)


@pytest.mark.parametrize("threshold", ["0.1", None, [0.1]], ids=["str", "None", "list"])
@pytest.mark.parametrize("name", ["renormalize", "prune"])
def test_threshold_not_a_number(name, threshold):
    # the same policy as ``norm``: no silent conversion of a string, an error naming the argument
    kw = base(name)
    kw["threshold"] = threshold
    with pytest.raises(TypeError, match=named("threshold")):
        call(name, **kw)


@pytest.mark.parametrize("targets", [[T], [0, T + 3], [-T - 1], [2**40]], ids=str)
def test_prune_target_out_of_range(targets):
    kw = base("prune")
    kw["targets"] = np.array(targets)
    with pytest.raises((ValueError, IndexError), match=named("targets")):
        call("prune", **kw)


@pytest.mark.parametrize("targets", [np.array([1.5]), np.array([[0, 1]]), np.array(["a"])],
                         ids=["float", "2d", "str"])
def test_prune_targets_wrong_type_or_shape(targets):
    kw = base("prune")
    kw["targets"] = targets
    with pytest.raises((ValueError, TypeError), match=named("targets")):
        call("prune", **kw)


@pytest.mark.parametrize("head", [H, H + 10, -H - 1, 2**40])
def test_head_out_of_range(head):
    kw = base("attn_head_map")
    kw["head"] = head
    with pytest.raises((ValueError, IndexError), match=named("head")):
        call("attn_head_map", **kw)


@pytest.mark.parametrize("target,source,names",
                         [(T, 0, ("target",)), (-T - 1, 0, ("target",)), (2, 3, ("source", "target")),
                          (2, T, ("source",)), (2, -T - 1, ("source",)), (2**40, 0, ("target",))])
def test_edge_out_of_range(target, source, names):
    kw = base("attn_edge_heads")
    kw["target"], kw["source"] = target, source
    with pytest.raises((ValueError, IndexError), match=named(*names)):
        call("attn_edge_heads", **kw)
