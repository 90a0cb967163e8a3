"""Reading a model's weights as float32 NumPy: parameter views, linear maps as ``[in, out]``, stamps.

A weight is read as a view when it already is float32 on the CPU, else converted on each use;
:func:`weights_stamp` identifies the current values of parameters (what a cached copy is checked
against), and :func:`_on_device` pages in the weights accelerate offloads to CPU or disk.

>>> _linear_in_out(hf_model.lm_head).shape      # [d, V], a view    # doctest: +SKIP
(576, 49152)
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Sequence

import numpy as np


def _param_numpy(p: Any) -> np.ndarray:
    """A parameter as float32 NumPy: a view when it already is float32 on the CPU."""
    import torch

    if p.device.type == "meta":
        raise ValueError(
            "a weight is offloaded (on the meta device); ltt needs every weight in memory: "
            "load without disk offload"
        )
    t = p.detach()
    if t.dtype == torch.float32 and t.device.type == "cpu":
        return t.numpy()
    return t.to(device="cpu", dtype=torch.float32).numpy()


def _is_conv1d(module: Any) -> bool:
    # transformers' Conv1D (GPT-2) keeps its weight as [in, out], the transpose of nn.Linear.
    return type(module).__name__ == "Conv1D"


def _linear_in_out(module: Any) -> np.ndarray:
    """The weight of a linear map as ``[in, out]`` (a view where possible)."""
    w = _param_numpy(module.weight)
    return w if _is_conv1d(module) else w.T


def _in_out_shape(module: Any) -> tuple[int, int]:
    """``(in, out)`` sizes of a linear map, read from its weight's shape (no copy, works offloaded)."""
    shape = tuple(module.weight.shape)
    return (shape[0], shape[1]) if _is_conv1d(module) else (shape[1], shape[0])


def _bias(module: Any) -> np.ndarray | None:
    b = getattr(module, "bias", None)
    return None if b is None else _param_numpy(b)


def _float32():
    import torch

    return torch.float32


#: How many evenly strided elements of each parameter :func:`weights_stamp` hashes. Each lies on
#: its own cache line of a large weight, read cold after the forward pass; a trace of the
#: 135M model stamps 60 weights (measured at ~2.8 ms per trace at T=16 with py-spy, sampling
#: overhead included: docs/benchmarks.md). Every row of a square weight up to 1024 x 1024 still
#: holds a sample; a smaller edit between the samples is refused by the trace's exactness check
#: (the error says to load the model again).
SAMPLE = 1024


def _sample_hash(p: Any) -> int | None:
    """A hash of :data:`SAMPLE` evenly strided elements of ``p``'s bytes (all of them for a
    parameter of up to that many elements): it changes when the values are edited behind the
    version counter, through ``p.data`` or a NumPy view of the weight."""
    import torch

    if p.device.type == "meta":
        return None
    if p.device.type == "cpu" and p.dtype in (torch.float32, torch.float16, torch.float64):
        arr = p.detach().numpy().reshape(-1)  # a view: the same sampled bytes, fewer torch calls
        return hash(arr[:: max(1, arr.size // SAMPLE)].tobytes())
    flat = p.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    sample = flat[::step].contiguous()
    if sample.dtype != torch.uint8:
        sample = sample.view(torch.uint8)
    return hash(sample.cpu().numpy().tobytes())


#: The stamps already taken in the current :func:`stamp_scope`, by parameter, version and storage.
_MEMO: "contextvars.ContextVar[dict | None]" = contextvars.ContextVar("ltt_weight_stamps", default=None)


#: False within a :func:`stamp_scope` whose model has no accelerate hooks: nothing to page in.
_HOOKED: "contextvars.ContextVar[bool | None]" = contextvars.ContextVar("ltt_hooked", default=None)


@contextlib.contextmanager
def stamp_scope(modules: Any = None) -> Iterator[None]:
    """Within the scope (one trace), each parameter's stamp is taken once and reused while its
    version counter and storage stay the same. Given the model's ``modules``, a model none of
    which carries an accelerate hook skips :func:`_on_device`'s search of each layer."""
    token = _MEMO.set({})
    hooked = None if modules is None else any("_hf_hook" in m.__dict__ for m in modules)
    token_hooked = _HOOKED.set(hooked)
    try:
        yield
    finally:
        _HOOKED.reset(token_hooked)
        _MEMO.reset(token)


def _stamp(p: Any) -> tuple:
    return (p._version, p.data_ptr(), str(p.dtype), str(p.device), tuple(p.shape), _sample_hash(p))


def weights_stamp(params: Sequence[Any]) -> tuple:
    """What identifies the current values of ``params``: version counter, storage, dtype,
    device, shape and a sampled hash of the values of each (changes with ``load_state_dict``,
    optimiser steps, in-place edits, and edits through ``.data`` or a NumPy view that the
    version counter does not see; an edit of elements between the sampled ones of a parameter
    larger than :data:`SAMPLE` elements is found by the trace's exactness check instead)."""
    memo = _MEMO.get()
    if memo is None:
        return tuple(_stamp(p) for p in params)
    out = []
    for p in params:
        key = (id(p), p._version, p.data_ptr())
        if key not in memo:
            memo[key] = (p, _stamp(p))  # p kept: its id is not reused within the scope
        out.append(memo[key][1])
    return tuple(out)


def _offloaded(module: Any) -> bool:
    """Whether accelerate offloads ``module``'s own weights (to CPU or disk, paged in per forward)."""
    hook = getattr(module, "_hf_hook", None)
    return bool(getattr(hook, "offload", False))


def _on_device(module: Any):
    """A context where the weights of ``module``'s offloaded submodules (accelerate's CPU/disk
    offload) are paged in, as the model's own forward pages them."""
    from contextlib import ExitStack, nullcontext

    if _HOOKED.get() is False:  # in a trace of a model without accelerate hooks
        return nullcontext()
    hooked = [m for m in module.modules() if "_hf_hook" in m.__dict__]  # accelerate's, set as a plain attribute
    if not hooked:
        return nullcontext()
    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:
        return nullcontext()
    stack = ExitStack()
    for m in hooked:
        if has_offloaded_params(m):
            stack.enter_context(align_module_device(m))
    return stack
