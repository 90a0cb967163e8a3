"""Attribution: validated public wrappers over the C core (``ltt._core``).

Every function here has the same name, arguments and semantics as its slow twin in
:mod:`ltt._reference` (read that file for the exact definitions) and runs in C with the GIL
released.

Dtype policy: arrays of any floating dtype (float16, float32, float64) and nested lists of
numbers are accepted and cast to float32 on purpose, because the core computes in float32
with float64 accumulation. Integer, bool, complex, object and string arrays raise
``TypeError`` rather than being cast silently. NaN or inf (also after the cast) raise
``ValueError``; so do wrong shapes, empty arrays, ``norm`` other than 1 or 2, and a
``threshold`` outside ``[0, 1)``. Inputs are never modified. torch tensors on the CPU work
through ``np.asarray``; torch itself is never imported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ltt import _core
from ltt.checks import check_threshold, is_int

ArrayLike = Any

__all__ = [
    "contributions",
    "attn_contrib",
    "attn_head_map",
    "attn_edge_heads",
    "ffn_neuron_contrib",
    "renormalize",
    "prune",
    "prune_sparse",
    "renormalize_sparse",
    "probe_check",
    "build_info",
    "set_num_threads",
    "get_num_threads",
]


def _arr(x: ArrayLike) -> ArrayLike:
    """Pass arrays through; turn tensors and other array-likes into NumPy without a copy."""
    if x is None or isinstance(x, (np.ndarray, list, tuple)):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _int(x: Any, name: str) -> int:
    if not is_int(x):
        raise TypeError(f"{name} must be an int, got {type(x).__name__} {x!r}")
    return int(x)


def _norm(norm: Any) -> int:
    n = _int(norm, "norm")
    if n not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm!r}")
    return n


def contributions(parts: ArrayLike, whole: ArrayLike, norm: int = 1) -> np.ndarray:
    """Proximity shares of ``parts [K, ..., d]`` in ``whole [..., d]``: float32 ``[K, ...]``.

    ``raw_k = max(||whole|| - ||whole - parts[k]||, 1e-5)``, shares ``raw_k / sum_j raw_j``.

    >>> import ltt
    >>> ltt.contributions([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0]).tolist()
    [0.5, 0.5]
    """
    return _core.contributions(_arr(parts), _arr(whole), norm=_norm(norm))


def attn_contrib(
    resid: ArrayLike,
    whole: ArrayLike,
    attn: ArrayLike,
    values: ArrayLike,
    w_o: ArrayLike,
    bias: ArrayLike | None = None,
    extra: ArrayLike | None = None,
    row_scale: ArrayLike | None = None,
    col_scale: ArrayLike | None = None,
    center: bool = False,
    norm: int = 1,
    keep_heads: bool = False,
) -> dict[str, np.ndarray]:
    """Contributions of one attention layer (or parallel block) to its output states.

    Shapes: ``resid, whole [T, d]``, ``attn [H, T, T]``, ``values [T, G, d_h]``,
    ``w_o [H, d_h, d]``; see :func:`ltt._reference.attn_contrib` for the optional parts.
    Returns ``edges [T, T]``, ``resid [T]``, ``bias [T]``, ``extra [E, T]`` (float32 shares),
    ``total [T]`` (float64) and, with ``keep_heads``, ``heads [H, T, T]``.

    >>> import numpy as np
    >>> from ltt.kernels import attn_contrib
    >>> rng = np.random.default_rng(0)
    >>> T, H, G, dh, d = 3, 2, 1, 2, 4
    >>> x = rng.normal(size=(T, d)); v = rng.normal(size=(T, G, dh)); wo = rng.normal(size=(H, dh, d))
    >>> a = np.tril(np.ones((H, T, T))) / np.arange(1, T + 1)[None, :, None]
    >>> m = x + np.einsum("hts,shd->td", a, np.einsum("sgk,hkd->shd", v[:, [0, 0]], wo))
    >>> out = attn_contrib(x, m, a, v, wo)
    >>> bool(np.allclose(out["edges"].sum(1) + out["resid"], 1, atol=1e-5))
    True
    """
    return _core.attn_contrib(
        _arr(resid), _arr(whole), _arr(attn), _arr(values), _arr(w_o),
        bias=_arr(bias), extra=_arr(extra), row_scale=_arr(row_scale),
        col_scale=_arr(col_scale), center=bool(center), norm=_norm(norm),
        keep_heads=bool(keep_heads),
    )  # fmt: skip


# The wrappers' argument lists repeat each other and the twins' (ltt._reference) on purpose: one
# name and one signature per kernel, in C, in its twin and here.
def attn_head_map(
    head: int,
    whole: ArrayLike,
    attn: ArrayLike,
    values: ArrayLike,
    w_o: ArrayLike,
    total: ArrayLike,
    row_scale: ArrayLike | None = None,
    col_scale: ArrayLike | None = None,
    center: bool = False,
    norm: int = 1,
) -> np.ndarray:
    """One head's share map ``[T, T]``, from the normalisers ``total`` of :func:`attn_contrib`.

    >>> import numpy as np
    >>> from ltt.kernels import attn_contrib, attn_head_map
    >>> rng = np.random.default_rng(0)
    >>> x, m = rng.normal(size=(2, 3, 4)); a = np.tril(np.full((2, 3, 3), 0.5))
    >>> v, wo = rng.normal(size=(3, 1, 2)), rng.normal(size=(2, 2, 4))
    >>> out = attn_contrib(x, m, a, v, wo, keep_heads=True)
    >>> bool(np.allclose(attn_head_map(1, m, a, v, wo, out["total"]), out["heads"][1], atol=1e-6))
    True
    """
    return _core.attn_head_map(
        _int(head, "head"), _arr(whole), _arr(attn), _arr(values), _arr(w_o), _arr(total),
        row_scale=_arr(row_scale), col_scale=_arr(col_scale), center=bool(center),
        norm=_norm(norm),
    )  # fmt: skip


def attn_edge_heads(
    target: int,
    source: int,
    whole: ArrayLike,
    attn: ArrayLike,
    values: ArrayLike,
    w_o: ArrayLike,
    total: ArrayLike,
    row_scale: ArrayLike | None = None,
    col_scale: ArrayLike | None = None,
    center: bool = False,
    norm: int = 1,
) -> np.ndarray:
    """Every head's share ``[H]`` of the edge ``source -> target`` (``source <= target``).

    >>> import numpy as np
    >>> from ltt.kernels import attn_contrib, attn_edge_heads
    >>> rng = np.random.default_rng(0)
    >>> x, m = rng.normal(size=(2, 3, 4)); a = np.tril(np.full((2, 3, 3), 0.5))
    >>> v, wo = rng.normal(size=(3, 1, 2)), rng.normal(size=(2, 2, 4))
    >>> out = attn_contrib(x, m, a, v, wo)
    >>> s = attn_edge_heads(2, 1, m, a, v, wo, out["total"])
    >>> bool(np.isclose(s.sum(), out["edges"][2, 1], atol=1e-6))
    True
    """
    return _core.attn_edge_heads(
        _int(target, "target"), _int(source, "source"), _arr(whole), _arr(attn),
        _arr(values), _arr(w_o), _arr(total), row_scale=_arr(row_scale),
        col_scale=_arr(col_scale), center=bool(center), norm=_norm(norm),
    )  # fmt: skip


def ffn_neuron_contrib(
    act: ArrayLike,
    w_down: ArrayLike,
    resid: ArrayLike,
    whole: ArrayLike,
    bias: ArrayLike | None = None,
    row_scale: ArrayLike | None = None,
    col_scale: ArrayLike | None = None,
    center: bool = False,
    norm: int = 1,
) -> dict[str, np.ndarray]:
    """Per-neuron contributions of FFN blocks for N tokens.

    ``act [N, F]``, ``w_down [F, d]`` (a float32 ``[d, F]`` torch Linear weight's ``.T`` view
    is used in place, without a copy), ``resid, whole [N, d]``. Returns ``neurons [N, F]``,
    ``resid [N]``, ``bias [N]`` float32 shares and ``total [N]`` float64.

    >>> import numpy as np
    >>> from ltt.kernels import ffn_neuron_contrib
    >>> rng = np.random.default_rng(0)
    >>> act, wd, x = rng.normal(size=(2, 5)), rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
    >>> out = ffn_neuron_contrib(act, wd, x, x + act @ wd)
    >>> bool(np.allclose(out["neurons"].sum(1) + out["resid"], 1, atol=1e-5))
    True
    """
    return _core.ffn_neuron_contrib(
        _arr(act), _arr(w_down), _arr(resid), _arr(whole), bias=_arr(bias),
        row_scale=_arr(row_scale), col_scale=_arr(col_scale), center=bool(center),
        norm=_norm(norm),
    )  # fmt: skip


def probe_check(
    rows: ArrayLike,
    probs: ArrayLike,
    values: ArrayLike,
    o: ArrayLike,
    down: ArrayLike,
    z: ArrayLike,
    resid_pre: ArrayLike,
    resid_mid: ArrayLike | None,
    resid_post: ArrayLike,
    ffn_out: ArrayLike,
    act: ArrayLike,
    attn_row_scale: ArrayLike | None = None,
    attn_bias: ArrayLike | None = None,
    ffn_row_scale: ArrayLike | None = None,
    ffn_bias: ArrayLike | None = None,
) -> dict[str, float]:
    """One layer's running exactness check at ``rows [R]`` (int64) along directions ``z [d, k]``:
    the relative errors ``attn``, ``ffn`` (sequential blocks only) and ``neurons``. ``down``
    and ``z`` are float64, the rest float32; the states are read (and checked finite) at
    ``rows`` only. See :func:`ltt._reference.probe_check` for the definition.

    >>> import numpy as np
    >>> from ltt.kernels import probe_check
    >>> rng = np.random.default_rng(0)
    >>> T, H, dh, d, F, k = 3, 2, 2, 4, 5, 2
    >>> x, v, wo = rng.normal(size=(T, d)), rng.normal(size=(T, 1, dh)), rng.normal(size=(H, dh, d))
    >>> a = np.tril(np.ones((H, T, T))) / np.arange(1, T + 1)[None, :, None]
    >>> act, wd, z = rng.normal(size=(T, F)), rng.normal(size=(F, d)), rng.normal(size=(d, k))
    >>> mid = x + np.einsum("hts,hsd->td", a, np.einsum("sk,hkd->hsd", v[:, 0], wo))
    >>> rows = np.array([0, 2])
    >>> e = probe_check(rows, a[:, rows], v, wo @ z, wd @ z, z, x, mid, mid + act @ wd, act @ wd, act)
    >>> max(e.values()) < 1e-5
    True
    """
    return _core.probe_check(
        _arr(rows), _arr(probs), _arr(values), _arr(o), _arr(down), _arr(z), _arr(resid_pre),
        _arr(resid_mid), _arr(resid_post), _arr(ffn_out), _arr(act),
        attn_row_scale=_arr(attn_row_scale), attn_bias=_arr(attn_bias),
        ffn_row_scale=_arr(ffn_row_scale), ffn_bias=_arr(ffn_bias),
    )  # fmt: skip


def renormalize(heads: ArrayLike, single: ArrayLike, threshold: float) -> dict[str, np.ndarray]:
    """The ``renormalize=True`` threshold mode: drop parts below ``threshold``, rescale to 1.
    Parts are shares: a negative one is a ``ValueError`` naming ``heads`` or ``single``.

    >>> from ltt.kernels import renormalize
    >>> r = renormalize([[[0.05, 0.15], [0.05, 0.05]]], [[0.8, 0.9]], 0.1)
    >>> [round(float(x), 6) for x in r["edges"][0]], [round(float(x), 6) for x in r["single"][0]]
    ([0.0, 0.157895], [0.842105, 1.0])
    """
    return _core.renormalize(_arr(heads), _arr(single), check_threshold(threshold))


def prune(
    attn: ArrayLike,
    attn_resid: ArrayLike,
    ffn: ArrayLike,
    ffn_resid: ArrayLike,
    parallel: ArrayLike,
    targets: ArrayLike,
    threshold: float,
) -> dict[str, np.ndarray]:
    """Keep the edges reachable backwards from ``targets`` through weights ``>= threshold``.

    Returns ``attn_edges [n, 3]`` int64 rows ``(l, t, s)`` sorted, and bool masks
    ``attn_resid``, ``ffn``, ``ffn_resid`` of shape ``[L, T]``. ``targets`` are integer positions
    in ``[-T, T)``; one that does not fit in int64 (``2**64 - 1``) is a ``ValueError``, not ``-1``.

    >>> import numpy as np
    >>> from ltt.kernels import prune
    >>> L, T = 1, 2
    >>> a = np.array([[[0.0, 0.0], [0.7, 0.1]]]); ar = np.array([[1.0, 0.2]])
    >>> f = np.full((L, T), 0.3); fr = np.full((L, T), 0.7)
    >>> prune(a, ar, f, fr, [False], [1], 0.5)["attn_edges"].tolist()
    [[0, 1, 0]]
    """
    return _core.prune(
        _arr(attn), _arr(attn_resid), _arr(ffn), _arr(ffn_resid),
        np.asarray(_arr(parallel)), np.atleast_1d(np.asarray(_arr(targets))), check_threshold(threshold),
    )  # fmt: skip


def prune_sparse(
    indptr: ArrayLike,
    sources: ArrayLike,
    weights: ArrayLike,
    attn_resid: ArrayLike,
    ffn: ArrayLike,
    ffn_resid: ArrayLike,
    parallel: ArrayLike,
    targets: ArrayLike,
    threshold: float,
) -> dict[str, np.ndarray]:
    """:func:`prune` with the attention weights as sparse rows (an unlisted source weighs 0).

    The edges into target (l, t) are ``sources[j]`` (int32, strictly increasing, ``<= t``) with
    ``weights[j]`` (floats, cast to float32) for ``j`` in ``indptr[l*T + t] : indptr[l*T + t + 1]``
    (``indptr [L*T + 1]`` int64). The other arguments and the result are :func:`prune`'s, and
    the result equals ``prune`` on the dense equivalent, tie rules included. Rows made by
    :func:`ltt._reference.sparsify` with a floor give ``prune``'s result on the original dense
    weights for every threshold ``>= floor``.

    >>> import numpy as np
    >>> from ltt.kernels import prune_sparse
    >>> ip, src = np.array([0, 0, 2]), np.array([0, 1], np.int32)
    >>> out = prune_sparse(ip, src, [0.7, 0.1], [[1.0, 0.2]], [[0.3, 0.3]], [[0.7, 0.7]], [False], [1], 0.5)
    >>> out["attn_edges"].tolist()
    [[0, 1, 0]]
    """
    return _core.prune_sparse(
        _arr(indptr), _arr(sources), _arr(weights), _arr(attn_resid), _arr(ffn), _arr(ffn_resid),
        np.asarray(_arr(parallel)), np.atleast_1d(np.asarray(_arr(targets))), check_threshold(threshold),
    )  # fmt: skip


def renormalize_sparse(
    indptr: ArrayLike,
    sources: ArrayLike,
    heads: ArrayLike,
    parts: ArrayLike,
    single: ArrayLike,
    threshold: float,
) -> dict[str, np.ndarray]:
    """:func:`renormalize` on one layer's head shares as sparse rows, part by part.

    Target t's parts are ``parts[j] >= 0`` (floats, cast to float32) of head ``heads[j]``
    (int16) and source ``sources[j] <= t`` (int32), ``j`` in ``indptr[t] : indptr[t + 1]``
    (``indptr [T + 1]`` int64), in (head, source) order; ``single [E, T]``. Returns ``parts [P]``
    (each listed part after the rule: kept ones rescaled, the others 0) and ``single [E, T]``,
    float32. ``single`` equals ``renormalize``'s on the dense equivalent exactly; summing the
    parts by (t, source) in float64 (``np.bincount(t * T + sources, parts)``) gives its
    ``edges`` to within ``rtol=1e-6`` (each head's term is rounded to float32 before the sum).

    >>> import numpy as np
    >>> from ltt.kernels import renormalize_sparse
    >>> ip, src, hd = np.array([0, 2, 4]), np.array([0, 0, 0, 1], np.int32), np.array([0, 1, 0, 0], np.int16)
    >>> r = renormalize_sparse(ip, src, hd, [0.05, 0.15, 0.05, 0.05], [[0.8, 0.9]], 0.1)
    >>> [round(float(x), 6) for x in r["parts"]], [round(float(x), 6) for x in r["single"][0]]
    ([0.0, 0.157895, 0.0, 0.0], [0.842105, 1.0])
    """
    return _core.renormalize_sparse(
        _arr(indptr), _arr(sources), _arr(heads), _arr(parts), _arr(single),
        check_threshold(threshold),
    )  # fmt: skip


def build_info() -> dict[str, Any]:
    """How the C core was built (BLAS, OpenMP, NumPy, flags) and the SIMD variant in use.

    >>> from ltt.kernels import build_info
    >>> sorted(build_info())[:3]
    ['blas', 'cflags', 'numpy']
    """
    return _core.build_info()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (a positive int) in the C core's large calls, from now on.

    Until it is called the core uses OpenMP's default, which honours ``OMP_NUM_THREADS``.
    Calls too small to gain from threads run on one thread whatever ``n`` is. Results are
    bitwise identical for any thread count: every reduction runs in a fixed order.

    >>> import ltt
    >>> before = ltt.get_num_threads()
    >>> ltt.set_num_threads(1)
    >>> ltt.get_num_threads()
    1
    >>> ltt.set_num_threads(before)
    """
    if not is_int(n):
        raise TypeError(f"n must be a positive int, got {type(n).__name__} {n!r}")
    if not 1 <= n <= 2**31 - 1:
        raise ValueError(f"n must be a positive int (at most 2**31 - 1), got {n!r}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """The number of threads the C core's large calls run on now (1 in a build without OpenMP).

    >>> import ltt
    >>> ltt.get_num_threads() >= 1
    True
    """
    return _core.get_num_threads()
