"""One layer's recorded buffers: the exact parts of its residual update (states, values, activations, post-branch norms).

A :class:`LayerBuffers` is the contract between the model adapters (:mod:`ltt.models`) and the
attribution code (:mod:`ltt.scores`): everything needed to split each layer's update of the
residual stream into exact parts, and nothing per (token, token, head, width). A post-branch
norm (Gemma 2/3, OLMo 2; Granite's branch multiplier) is one :class:`PostNorm` per branch.

>>> lb = trace.layers[0]                                   # doctest: +SKIP
>>> lb.resid_pre.shape, lb.attn_norm.identity              # doctest: +SKIP
((5, 576), True)
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ltt import kernels


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in torch's thread pool when torch is loaded (as while a model is traced):
    NumPy's BLAS threads would spin between the model's own operations and slow them down. A
    matrix ``b`` is read in its own layout (usually the transposed view of a torch weight, which
    ``linear`` reads without a copy)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return a @ b
    ta = torch.from_numpy(np.ascontiguousarray(a))
    if a.ndim == 2 and b.ndim == 2:
        return torch.nn.functional.linear(ta, torch.from_numpy(b).T).numpy()
    return (ta @ torch.from_numpy(np.ascontiguousarray(b))).numpy()


#: How many fixed random directions the running exactness check projects each layer on.
PROBES = 4


@functools.lru_cache(maxsize=8)
def probe_directions(d: int, k: int = PROBES) -> np.ndarray:
    """``[d, k]`` float64 fixed pseudo-random directions of the residual stream (standard normal,
    seeded by ``d``; read-only), along which :meth:`LayerBuffers.check_probes` compares states."""
    z = np.random.default_rng(d).standard_normal((d, k))
    z.setflags(write=False)
    return z


@dataclass(frozen=True)
class PostNorm:
    """A branch's post-norm, linearised at this trace's tokens: a part ``p`` of token ``t``
    enters the residual stream as ``row_scale[t] * col_scale * center(p)`` (each factor only
    where the model has it). With none of them it is the identity (most models).

    >>> PostNorm(col_scale=np.float32([2, 2]), center=True).linear(np.float32([1, 3]))
    array([-2.,  2.], dtype=float32)
    """

    row_scale: np.ndarray | None = None  # [T] the norm's 1/rms (or 1/std) per token, or a multiplier
    col_scale: np.ndarray | None = None  # [d] the norm's gamma
    center: bool = False  # a LayerNorm: centre each part

    @property
    def identity(self) -> bool:
        return self.row_scale is None and self.col_scale is None and not self.center

    def linear(self, v: np.ndarray) -> np.ndarray:
        """Centring then ``col_scale`` on vectors ``[..., d]``, no row scale, computed in ``v``'s
        own float dtype (float64 for anything else)."""
        v = np.asarray(v)
        if v.dtype not in (np.float32, np.float64):
            v = v.astype(np.float64)
        if self.center:
            v = v - v.mean(axis=-1, keepdims=True)
        if self.col_scale is not None:
            v = v * self.col_scale.astype(v.dtype)
        return v

    def along(self, z: np.ndarray) -> np.ndarray:
        """Directions ``z [d, k]`` pulled back through the norm's linear part: ``linear(v) . z ==
        v . along(z)`` (centring is symmetric, so ``along(z) = center(col_scale * z)``)."""
        if self.col_scale is not None:
            z = z * self.col_scale.astype(np.float64)[:, None]
        if self.center:
            z = z - z.mean(axis=0, keepdims=True)
        return z

    def row(self, t: int) -> float:
        """The row scale of token ``t`` (1.0 without one)."""
        return 1.0 if self.row_scale is None else float(self.row_scale[t])

    def core_args(self, rows: Any = None) -> dict[str, Any]:
        """``row_scale`` (at ``rows`` when given), ``col_scale`` and ``center``, as the C core's
        entry points take them (:mod:`ltt.kernels`)."""
        rs = self.row_scale
        if rs is not None and rows is not None:
            rs = rs[rows]
        return {"row_scale": rs, "col_scale": self.col_scale, "center": bool(self.center)}


class Half:
    """A float32 array whose every value is exactly a bfloat16 (or float16) number, kept in two
    bytes per value: a half-precision model's own states, activations and values, read back as
    the identical float32 numbers (no rounding anywhere)."""

    __slots__ = ("bits", "kind")

    def __init__(self, bits: np.ndarray, kind: str):
        self.bits, self.kind = bits, kind

    @classmethod
    def pack(cls, arr: Any, kind: str) -> Any:
        """``arr`` in two bytes per value when that is exact for ``kind`` ("bfloat16" or
        "float16"), else ``arr`` itself (for example a branch scaled in float32)."""
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or isinstance(arr, np.memmap):
            return arr
        if kind == "bfloat16":
            bits = (np.ascontiguousarray(arr).view(np.uint32) >> 16).astype(np.uint16)
        elif kind == "float16":
            bits = arr.astype(np.float16)
        else:
            return arr
        packed = cls(bits, kind)
        return packed if np.array_equal(packed.unpack(), arr) else arr

    def unpack(self) -> np.ndarray:
        """The float32 array (a new array on each call)."""
        if self.kind == "bfloat16":
            return (self.bits.astype(np.uint32) << 16).view(np.float32)
        return self.bits.astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape


def _stored(name: str, doc: str) -> property:
    """A LayerBuffers array kept as given or packed (:class:`Half`), read as float32."""

    def get(self: "LayerBuffers") -> Any:
        value = self._store[name]
        return value.unpack() if isinstance(value, Half) else value

    def put(self: "LayerBuffers", value: Any) -> None:
        self._store[name] = value

    return property(get, put, doc=doc)


class LayerBuffers:
    """The compact buffers of one layer (T tokens, H heads, G kv groups, d_h head width, d model
    width, F FFN width), float32 and C-contiguous.

    Sequential block: ``resid_mid = resid_pre + sum_{h,s} row_scale[t] A[h,t,s] T(u[h,s]) +
    attn_bias`` with ``u[h,s] = values[s, g(h)] @ w_o[h]`` and ``row_scale``, ``T`` the
    attention branch's :class:`PostNorm` (``attn_norm``); ``resid_post = resid_mid + ffn_out``;
    ``ffn_out = row_scale[t] * act @ T(w_down) + ffn_bias`` with ``ffn_norm``. Parallel block: ``resid_post = resid_pre + attention parts +
    attn_bias + ffn_out`` and ``resid_mid`` is None. Absent scales/biases are None.

    The attention probabilities ``attn [H, T, T]`` are not kept: :attr:`attn`,
    :meth:`attn_rows` and :meth:`attn_head` recompute them exactly from the layer's recorded
    queries and keys (:mod:`ltt.models.attention`). ``w_o`` and ``w_down`` come from the model
    (:meth:`ltt.models.Model.layer_weights`), checked against the weights the trace saw.
    """

    def __init__(self, *, layer: int, parallel: bool, resid_pre: np.ndarray, resid_mid: np.ndarray | None,
                 resid_post: np.ndarray, values: np.ndarray, attn_bias: np.ndarray | None,
                 attn_norm: PostNorm, ffn_out: np.ndarray, act: np.ndarray, ffn_bias: np.ndarray | None,
                 ffn_norm: PostNorm, attention: Any = None, weights: Any = None, moe: Any = None):
        self.layer = layer
        self.parallel = parallel
        self._store: dict[str, Any] = {}  # the arrays below, float32 or packed (Half)
        self.resid_pre = resid_pre
        self.resid_mid = resid_mid
        self.resid_post = resid_post
        self.values = values
        self.attn_bias = attn_bias  # [T, d] non-head attention terms in the residual space
        self.attn_norm = attn_norm  # the attention branch's post-norm (PostNorm(): none)
        self.ffn_out = ffn_out
        self.act = act
        self.ffn_bias = ffn_bias  # [T, d]
        self.ffn_norm = ffn_norm
        self._attention = attention  # recomputes probabilities (ltt.models.attention)
        self._weights = weights  # () -> {"w_o": [H, d_h, d], "w_down": [F, d]} float32
        self.moe = moe  # a MoE layer: the router's choices and the experts' neuron ranges (ltt.models.moe)
        self.pinned: dict[str, np.ndarray] | None = None  # the weights, while the trace attributes the layer

    resid_pre = _stored("resid_pre", "[T, d] layer input x (layer 0: embeddings after any scale)")
    resid_mid = _stored("resid_mid", "[T, d] after attention (None for parallel blocks)")
    resid_post = _stored("resid_post", "[T, d] layer output")
    values = _stored("values", "[T, G, d_h] values, v-projection bias included")
    ffn_out = _stored("ffn_out", "[T, d] the FFN branch's contribution (post-norm applied)")
    act = _stored("act", "[T, F] activations entering the down projection")
    #: The arrays a half-precision model's trace keeps in two bytes per value.
    PACKED = ("resid_pre", "resid_mid", "resid_post", "values", "ffn_out", "act")

    def pack(self, kind: str) -> None:
        """Keep this layer's states, values and activations in two bytes per value where that is
        exact (``kind``: the model's dtype, "bfloat16" or "float16"; anything else keeps float32)."""
        for name in self.PACKED:
            self._store[name] = Half.pack(self._store[name], kind)

    def stored(self, name: str) -> Any:
        """The object kept for array ``name`` (a float32 array, a :class:`Half` or None), not copied."""
        return self._store[name]

    @property
    def n_tokens(self) -> int:
        return int(self._store["resid_pre"].shape[0])

    @property
    def w_o(self) -> np.ndarray:
        """``[H, d_h, d]`` float32: the output projection per head."""
        return (self.pinned or self._weights())["w_o"]

    @property
    def w_down(self) -> np.ndarray:
        """``[F, d]`` float32: row i = neuron i's output vector (may be a transposed view)."""
        return (self.pinned or self._weights())["w_down"]

    @property
    def attn(self) -> np.ndarray:
        """``[H, T, T]`` float32 attention probabilities ``A[h, t, s]``, recomputed (not kept)."""
        return self._attention.probs()

    def attn_rows(self, rows: Sequence[int]) -> np.ndarray:
        """``[H, len(rows), T]`` float32: every head's probabilities at the target rows."""
        return self._attention.probs(rows=rows)

    def attn_heads(self, heads: Sequence[int]) -> np.ndarray:
        """``[len(heads), T, T]`` float32: some heads' probabilities."""
        return self._attention.probs(heads=list(heads))

    def attn_head(self, head: int) -> np.ndarray:
        """``[T, T]`` float32: one head's probabilities."""
        return self._attention.probs(heads=[head])[0]

    def attn_update(self, probs: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """``[T, d]`` float64 (or ``[len(rows), d]``): the attention branch rebuilt from its
        parts (heads and bias), from ``probs [H, len(rows), T]`` when given."""
        if probs is None:
            probs = self.attn if rows is None else self.attn_rows(rows)
        idx = np.arange(self.n_tokens) if rows is None else np.asarray(rows)
        # the running check of a few rows sums in float32 (its tolerance is >= 1e-3); the full
        # rebuild in float64
        dt = np.float64 if rows is None else np.float32
        v = self.values.astype(dt, copy=False)
        wo = self.w_o.astype(dt, copy=False)
        H, per_group = wo.shape[0], wo.shape[0] // v.shape[1]
        v_heads = np.ascontiguousarray(v[:, np.arange(H) // per_group, :].transpose(1, 0, 2))  # [H, T, d_h]
        wo_flat = wo.reshape(H * wo.shape[1], wo.shape[2])
        out = np.zeros((len(idx), wo.shape[2]))
        for lo in range(0, len(idx), 512):  # row blocks: [H, rows, T] float64 stays small
            mixed = _mm(probs[:, lo : lo + 512].astype(dt, copy=False), v_heads)  # [H, rows, d_h]
            if self.attn_norm.row_scale is not None:
                mixed *= self.attn_norm.row_scale.astype(dt)[idx[lo : lo + 512]][None, :, None]
            out[lo : lo + 512] = _mm(mixed.transpose(1, 0, 2).reshape(mixed.shape[1], -1), wo_flat)
        out = self.attn_norm.linear(out)
        if self.attn_bias is not None:
            out += self.attn_bias[idx]
        return out

    def ffn_update(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``[T, d]`` float64 (or ``[len(rows), d]``): the FFN branch rebuilt from its neurons
        and bias (for ``rows`` the neuron sum runs in float32, a cheap check)."""
        idx = slice(None) if rows is None else np.asarray(rows)
        if rows is None:
            out = _mm(self.act.astype(np.float64), self.w_down.astype(np.float64))
        else:
            out = _mm(self.act[idx], self.w_down).astype(np.float64)
        out = self.ffn_norm.linear(out)  # centring each neuron's vector = centring their sum
        if self.ffn_norm.row_scale is not None:
            out *= self.ffn_norm.row_scale.astype(np.float64)[idx][:, None]
        if self.ffn_bias is not None:
            out += self.ffn_bias[idx]
        return out

    def check(self, rows: np.ndarray | None = None, probs: np.ndarray | None = None) -> dict[str, float]:
        """Relative errors of the exact decomposition (max over tokens of ``|lhs - rhs|_inf /
        |state|_inf``); all should be ~1e-6 in float32. ``rows`` restricts the check to some
        target tokens (``probs [H, len(rows), T]`` may be given for them).

        Keys: ``attn`` (heads + bias + residual vs the state after attention, or for a parallel
        block the whole layer), ``ffn`` (resid_mid + ffn_out vs resid_post, sequential only),
        ``neurons`` (neurons + bias vs ffn_out).
        """
        def rel(lhs: np.ndarray, rhs: np.ndarray) -> float:
            scale = np.abs(rhs).max(axis=-1) + 1e-12
            return float((np.abs(lhs - rhs).max(axis=-1) / scale).max())

        idx = slice(None) if rows is None else np.asarray(rows)
        x = self.resid_pre[idx].astype(np.float64)
        out: dict[str, float] = {}
        attn = self.attn_update(probs, rows)
        if self.parallel:
            rebuilt = x + attn + self.ffn_out[idx]
            out["attn"] = rel(rebuilt, self.resid_post[idx].astype(np.float64))
        else:
            mid = self.resid_mid[idx].astype(np.float64)
            out["attn"] = rel(x + attn, mid)
            out["ffn"] = rel(mid + self.ffn_out[idx], self.resid_post[idx].astype(np.float64))
        out["neurons"] = rel(self.ffn_update(rows), self.ffn_out[idx].astype(np.float64))
        return out



    def probe_weights(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """The layer's weights along directions ``z [d, k]`` of the residual stream, through each
        branch's post-norm (:meth:`PostNorm.along`): ``o [H, d_h, k]`` (``w_o[h] @ z'``) and
        ``down [F, k]`` (``w_down @ z'``, float64 for the neurons' sum); ``H d_h k + F k``
        numbers, one pass over each weight."""
        w_o = self.w_o
        H, dh, d = w_o.shape
        zo = np.ascontiguousarray(self.attn_norm.along(z).T, dtype=np.float32)  # [k, d]
        zf = np.ascontiguousarray(self.ffn_norm.along(z).T, dtype=np.float32)
        o = _mm(zo, w_o.reshape(H * dh, d).T).T.reshape(H, dh, -1)  # the weights read in place
        down = _mm(zf, self.w_down.T).T
        return {"o": np.ascontiguousarray(o), "down": np.ascontiguousarray(down, dtype=np.float64)}

    def check_probes(self, rows: np.ndarray, probs: np.ndarray, proj: dict[str, np.ndarray],
                     z: np.ndarray) -> dict[str, float]:
        """The running check of a trace: :meth:`check` at target ``rows`` (``probs [H, len(rows),
        T]``), with the branches compared along directions ``z [d, k]`` of the residual stream
        (``proj``: :meth:`probe_weights` of ``z``) instead of in full, in the C core
        (:func:`ltt.kernels.probe_check`; its twin :func:`ltt._reference.probe_check` defines
        it). Per row and direction ``|(lhs - rhs) . z| / |rhs|_2``, the max over rows and
        directions: for standard normal ``z`` an error ``e`` of a row shows as ``|e|_2 /
        |rhs|_2`` times a standard normal factor (Freivalds' check; with k directions and
        several rows a real error is missed with negligible odds). Costs ``O(rows (H T + F + d)
        k + H T d_h k)``: no pass over a weight (those are in ``proj``). Keys as in
        :meth:`check`; ``ffn`` (a sum of two recorded states) is compared in full."""
        return kernels.probe_check(
            np.asarray(rows, dtype=np.int64), probs, self.values, proj["o"], proj["down"], z,
            self.resid_pre, None if self.parallel else self.resid_mid, self.resid_post,
            self.ffn_out, self.act, attn_row_scale=self.attn_norm.row_scale,
            attn_bias=self.attn_bias, ffn_row_scale=self.ffn_norm.row_scale, ffn_bias=self.ffn_bias,
        )  # fmt: skip
