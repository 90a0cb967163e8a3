"""Recording one forward pass: hooks registered and removed under one context, one trace at a
time per model, every layer handed on as soon as its buffers exist.

:class:`Recording` is a context manager. Entering it takes the model's trace lock (a second
thread waits), switches the model to eval mode and to ltt's recording attention implementation
(:mod:`ltt.models.attention`), and registers the hooks; leaving it, whatever happened (an
exception, Ctrl-C), removes every hook it registered, even one whose handle never reached it,
and restores the attention implementation and each module's train/eval mode as found.

While the model runs, the hooks copy each layer's tensors into float32 NumPy arrays; when the
layer's output hook fires, ``on_layer(layer, record)`` is called with everything the layer
produced, and the record's large transient tensors (the probabilities) are dropped after it.

Deterministic fault injection: tests set :data:`FAULT` to a callable that receives the name of
each point a trace passes (``"register"``, ``"hook:<layer>:<what>"``, ``"forward"``, ...)
and may raise there.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from contextlib import ExitStack
from typing import Any, Callable

import numpy as np

from ltt.models import attention as attn_capture
from ltt.models import moe
from ltt.models.families import split_values

#: Test hook: called with the name of every fault-injection point (None in normal use).
FAULT: Callable[[str], None] | None = None

_tokens = itertools.count(1)
_locks: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()
_owners: dict[int, int] = {}  # id(hf_model) -> thread id tracing it


def point(name: str) -> None:
    """A fault-injection point (see :data:`FAULT`)."""
    if FAULT is not None:
        FAULT(name)


def model_lock(hf_model: Any) -> threading.RLock:
    """The lock that makes traces of one transformers model run one at a time."""
    with _locks_guard:
        lock = _locks.get(hf_model)
        if lock is None:
            lock = _locks[hf_model] = threading.RLock()
        return lock


def _to_numpy(t: Any) -> np.ndarray:
    """A float32 CPU copy of a tensor (a copy: some models add in place to their outputs)."""
    import torch

    return t.detach().to(device="cpu", dtype=torch.float32, copy=True).numpy()


def _probs_numpy(weights: Any) -> np.ndarray:
    """``[H, T, T]`` float32 probabilities: a view of the model's own tensor when it already is
    float32 on the CPU (nothing writes to it after the attention call), else a float32 copy."""
    import torch

    w = weights.detach()[0]
    if w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous():
        return w.numpy()
    return np.ascontiguousarray(_to_numpy(w))


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (tuple, list)) else x


def _rows(x: np.ndarray, T: int) -> np.ndarray:
    """Drop the batch dimension (or un-flatten OPT's [B*T, d]) to ``[T, ...]``."""
    if x.ndim >= 3:
        x = x[0]
    return np.ascontiguousarray(x.reshape(T, -1))


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def _remove_tagged(root: Any, token: int) -> None:
    """Remove every hook tagged with ``token`` from ``root`` and its submodules (the safety net
    for a hook registered just before an interrupt, whose handle was never stored)."""
    for m in root.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks"):
            hooks = getattr(m, name, None)
            if not hooks:
                continue
            for hid, fn in list(hooks.items()):
                if getattr(fn, "_ltt_token", None) == token:
                    for other in _HOOK_DICTS:
                        d = getattr(m, other, None)
                        if d is not None:
                            d.pop(hid, None)


class Recording:
    """Hooks on every layer of ``model`` (an :class:`ltt.models.Model`) for one forward pass of
    ``T`` tokens; ``on_layer(layer, record)`` receives each finished layer's tensors."""

    def __init__(self, model: Any, T: int, on_layer: Callable[[int, dict[str, Any]], None],
                 stream_heads: bool = False):
        self.model = model
        self.T = T
        self.stream_heads = stream_heads  # attention run and recorded one kv group at a time
        self.on_layer = on_layer
        self.records: list[dict[str, Any]] = [dict() for _ in range(model.n_layers)]
        self.masks: dict[tuple, Any] = {}
        self.token = next(_tokens)
        self._stack: ExitStack | None = None

    # -- context -----------------------------------------------------------------------------

    def __enter__(self) -> "Recording":
        hf = self.model.hf_model
        lock = model_lock(hf)
        owner = _owners.get(id(hf))
        if owner == threading.get_ident():
            raise RuntimeError(
                f"{self.model.name!r} is already being traced in this thread (a trace started from "
                "inside a hook or callback of another trace of the same model)"
            )
        stack = ExitStack()
        try:
            stack.enter_context(lock)
            _owners[id(hf)] = threading.get_ident()
            stack.callback(_owners.pop, id(hf), None)
            saved_modes = [(m, m.training) for m in hf.modules()]
            stack.callback(self._restore_modes, saved_modes)
            config = hf.config
            saved_impl = getattr(config, "_attn_implementation_internal", None)
            stack.callback(setattr, config, "_attn_implementation_internal", saved_impl)
            stack.callback(_remove_tagged, hf, self.token)
            active: list[int] = []
            stack.callback(self._deactivate, active)
            point("register")
            self._register(stack, active)
            point("registered")
            attn_capture.ensure_registered()
            config._attn_implementation_internal = attn_capture.IMPLEMENTATION
            hf.eval()
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @staticmethod
    def _restore_modes(saved: list[tuple[Any, bool]]) -> None:
        for m, mode in saved:
            m.training = mode

    @staticmethod
    def _deactivate(active: list[int]) -> None:
        for key in active:
            attn_capture._ACTIVE.pop(key, None)

    # -- hooks -------------------------------------------------------------------------------

    def _tag(self, fn: Callable) -> Callable:
        fn._ltt_token = self.token
        return fn

    def _register(self, stack: ExitStack, active: list[int]) -> None:
        model, T = self.model, self.T
        fam = model._family
        config = model.hf_model.config
        H, G, dh = model.n_heads, model.n_kv_heads, model.d_head

        def add(handle: Any) -> None:
            point("hook-registered")  # an interrupt here: registered, handle not yet stored
            stack.callback(handle.remove)

        def pre(l, key):
            def hook(module, args, kwargs):
                point(f"hook:{l}:{key}")
                x = args[0] if args else kwargs.get("hidden_states")
                self.records[l][key] = _rows(_to_numpy(x), T)
            return self._tag(hook)

        def post(l, key, fn=None):
            def hook(module, args, output):
                point(f"hook:{l}:{key}")
                self.records[l][key] = fn(module, output) if fn else _rows(_to_numpy(_first(output)), T)
            return self._tag(hook)

        def values(module, output):
            full = _rows(_to_numpy(_first(output)), T)
            return np.ascontiguousarray(split_values(fam, config, full, H, G, dh))

        def probs_out(module, output):
            p = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            return None if p is None else np.ascontiguousarray(_to_numpy(p)[0])

        def replay_in(l):
            def hook(module, args, kwargs):
                point(f"hook:{l}:replay")
                self.records[l]["attention"] = attn_capture.ModuleReplay(module, args, dict(kwargs))
            return self._tag(hook)

        def capture(l, module, fn):
            def callback(query, key, mask, args, kwargs, weights):
                point(f"hook:{l}:attention")
                rec = self.records[l]
                rec["probs"] = None if weights is None else _probs_numpy(weights)
                rec["attention"] = attn_capture.AttentionState(module, fn, query, key, mask, args, kwargs, self.masks)
            callback.stream_heads = self.stream_heads
            return callback

        def weight(l, key):
            def hook(module, args, output):
                point(f"hook:{l}:{key}")
                self.records[l][key] = model._module_weight(l, key, module)
                self.records[l][key.replace("w_", "out_")] = _rows(_to_numpy(_first(output)), T)
            return self._tag(hook)

        def experts_weight(l):
            def hook(module, args, output):  # every expert's down rows, read while they are in place
                point(f"hook:{l}:w_down")
                self.records[l]["w_down"] = model._module_weight(l, "w_down", module)
            return self._tag(hook)

        def layer_out(l):
            def hook(module, args, output):
                point(f"hook:{l}:y")
                rec = self.records[l]
                rec["y"] = _rows(_to_numpy(_first(output)), T)
                self.on_layer(l, rec)
                rec.clear()  # what the trace keeps is in the layer's buffers now
            return self._tag(hook)

        for l, layer in enumerate(model._layers):
            attn = model._sub(layer, fam.attn)
            add(layer.register_forward_pre_hook(pre(l, "x"), with_kwargs=True))
            add(layer.register_forward_hook(layer_out(l)))
            fn = attn_capture.eager_function(attn)
            if fn is not None:
                active.append(id(attn))
                attn_capture._ACTIVE[id(attn)] = capture(l, attn, fn)
            else:
                add(attn.register_forward_pre_hook(replay_in(l), with_kwargs=True))
                add(attn.register_forward_hook(post(l, "probs", probs_out)))
            add(model._sub(layer, fam.qkv).register_forward_hook(post(l, "values", values)))
            add(model._sub(layer, fam.o_proj).register_forward_hook(weight(l, "w_o")))
            if moe.experts_module(fam, layer) is not None:  # a MoE layer: ltt.models.moe
                for handle in moe.register(fam, layer, self.records[l], T, _to_numpy, self._tag):
                    add(handle)
                add(moe.experts_module(fam, layer).register_forward_hook(experts_weight(l)))
            else:
                down = model._sub(layer, fam.down)
                add(down.register_forward_pre_hook(pre(l, "act"), with_kwargs=True))
                add(down.register_forward_hook(weight(l, "w_down")))
            if fam.ffn_post_norm:
                add(model._sub(layer, fam.ffn_post_norm).register_forward_hook(post(l, "ffn")))
            if not model.parallel[l]:
                add(model._sub(layer, fam.ffn_norm).register_forward_pre_hook(pre(l, "mid"), with_kwargs=True))
