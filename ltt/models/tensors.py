"""A forward pass's tensors read into the float32 NumPy arrays a trace keeps.

Every reader copies (some models add in place to their outputs after a hook has run), drops the
batch dimension (a trace runs one prompt) and reshapes to ``[T, ...]`` rows. The ``*_of``
functions build readers for :class:`ltt.models.record.Recording`'s hooks: each takes torch's
hook arguments ``(module, args, output_or_kwargs)`` and returns the items to keep.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ltt.models.families import split_values

Reader = Callable[..., dict[str, Any]]


def to_numpy(t: Any) -> np.ndarray:
    """A float32 CPU copy of a tensor."""
    import torch

    t = t.detach()
    if type(t) is torch.Tensor and t.dtype == torch.float32 and t.device.type == "cpu" and not t.is_neg():
        return t.numpy().copy()  # the same copy without the conversion's dispatch (short prompts)
    return t.to(device="cpu", dtype=torch.float32, copy=True).numpy()


def probs_numpy(weights: Any) -> np.ndarray:
    """``[H, T, T]`` float32 probabilities: a view of the model's own tensor when it already is
    float32 on the CPU (nothing writes to it after the attention call), else a float32 copy."""
    import torch

    w = weights.detach()[0]
    if w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous():
        return w.numpy()
    return np.ascontiguousarray(to_numpy(w))


def first(x: Any) -> Any:
    """A module's main output (the first item of a tuple output)."""
    return x[0] if isinstance(x, (tuple, list)) else x


def rows(x: np.ndarray, T: int) -> np.ndarray:
    """Drop the batch dimension (or un-flatten OPT's [B*T, d]) to ``[T, ...]``."""
    if x.ndim >= 3:
        x = x[0]
    return np.ascontiguousarray(x.reshape(T, -1))


def input_of(key: str, T: int) -> Reader:
    """A pre-hook reader (with kwargs): the module's input rows."""
    return lambda m, args, kw: {key: rows(to_numpy(args[0] if args else kw.get("hidden_states")), T)}


def output_of(key: str, T: int) -> Reader:
    """A hook reader: the module's output rows."""
    return lambda m, args, o: {key: rows(to_numpy(first(o)), T)}


def values_of(model: Any, T: int) -> Reader:
    """A hook reader on the qkv projection(s): the values ``[T, G, d_h]``."""
    def read(m, args, o):
        full = rows(to_numpy(first(o)), T)
        return {"values": np.ascontiguousarray(split_values(model.spec, model.hf_model.config, full,
                                                            model.n_heads, model.n_kv_heads, model.d_head))}
    return read


def probs_of(m: Any, args: Any, o: Any) -> dict[str, Any]:
    """A hook reader on an attention module that returns its probabilities: ``[H, T, T]``."""
    p = o[1] if isinstance(o, (tuple, list)) and len(o) > 1 else None
    return {"probs": None if p is None else np.ascontiguousarray(to_numpy(p)[0])}


def weight_of(model: Any, layer: int, key: str, T: int, output: bool = True) -> Reader:
    """A hook reader: the module's weight as ``key`` (``w_o``, ``w_down``: read while the
    module's forward has it in place) and, with ``output``, its output rows (``out_o``, ...)."""
    out = output_of(key.replace("w_", "out_"), T)
    return lambda m, args, o: {key: model.module_weight(layer, key, m), **(out(m, args, o) if output else {})}


def down_of(model: Any, layer: int, T: int) -> Reader:
    """A forward-hook reader (with kwargs) on a dense down projection: its input rows ``act``,
    its weight ``w_down`` and its output rows ``out_down``, in one hook (the module does not
    change its input)."""
    weight = weight_of(model, layer, "w_down", T)

    def read(m, args, kw, o):
        act = args[0] if args else kw.get("hidden_states", kw.get("input"))
        return {"act": rows(to_numpy(act), T), **weight(m, args, o)}
    return read
