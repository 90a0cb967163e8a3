"""Recording one forward pass: hooks on every layer for the trace's own forward, each layer
handed on as soon as its buffers exist.

:class:`Recording` is a client of :class:`ltt.models.instrument.Run` (lock, owner entry, modes,
attention implementation, hook clean-up, the registered attention function; only the trace's
own forward is recorded). While the model runs, the hooks copy each layer's tensors into
float32 NumPy arrays; when the layer's output hook fires, ``on_layer(layer, record)`` is called
with everything the layer produced, and the record is cleared after it.

Deterministic fault injection: tests set :data:`FAULT` to a callable that receives the name of
each point a trace passes (``"register"``, ``"hook-registered"``, ``"hook:<layer>:<what>"``,
``"forward"``, ...) and may raise there.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ltt.models import attention as attn_capture
from ltt.models import moe
from ltt.models.families import split_values
from ltt.models.instrument import Run, model_lock  # noqa: F401 - model_lock: the model's lock

#: Test hook: called with the name of every fault-injection point (None in normal use).
FAULT: Callable[[str], None] | None = None



def point(name: str) -> None:
    """A fault-injection point (see :data:`FAULT`)."""
    if FAULT is not None:
        FAULT(name)


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
        self.run: Run | None = None

    def __enter__(self) -> "Recording":
        run = self.run = Run(self.model, point=point)
        run.__enter__()
        try:
            point("register")
            interface = self._register(run)
            point("registered")
            run.switch_attention(interface)
        except BaseException as exc:
            run.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.run.__exit__(*exc)

    def forward(self, **inputs: Any) -> Any:
        """The model's forward on ``inputs``: the one pass that is recorded."""
        return self.run.forward(**inputs)

    # -- hooks -------------------------------------------------------------------------------

    def _register(self, run: Run) -> bool:
        """Hooks on every layer; True when the attention goes through the registered function."""
        model, T, recs = self.model, self.T, self.records
        fam, sub = model.spec, model.submodule
        config = model.hf_model.config
        H, G, dh = model.n_heads, model.n_kv_heads, model.d_head

        def pre(l, key):
            def hook(module, args, kwargs):
                point(f"hook:{l}:{key}")
                recs[l][key] = _rows(_to_numpy(args[0] if args else kwargs.get("hidden_states")), T)
            return hook

        def post(l, key, fn=None):
            def hook(module, args, output):
                point(f"hook:{l}:{key}")
                recs[l][key] = fn(module, output) if fn else _rows(_to_numpy(_first(output)), T)
            return hook

        def values(module, output):
            full = _rows(_to_numpy(_first(output)), T)
            return np.ascontiguousarray(split_values(fam, config, full, H, G, dh))

        def probs_out(module, output):
            p = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
            return None if p is None else np.ascontiguousarray(_to_numpy(p)[0])

        def replay_in(l):
            def hook(module, args, kwargs):
                point(f"hook:{l}:replay")
                recs[l]["attention"] = attn_capture.ModuleReplay(module, args, dict(kwargs))
            return hook

        def capture(l):
            def handle(call):  # the module's own eager attention (by kv group for long layers)
                out, weights = None, None
                if self.stream_heads:
                    out = attn_capture._by_group(call.eager_fn, call.module, call.query, call.key,
                                                 call.value, call.mask, call.args, call.kwargs)
                if out is None:
                    out, weights = call.eager()
                point(f"hook:{l}:attention")
                recs[l]["probs"] = None if weights is None else _probs_numpy(weights)
                recs[l]["attention"] = attn_capture.AttentionState(call.module, call.eager_fn, call.query, call.key,
                                                                   call.mask, call.args, call.kwargs, self.masks)
                return out, weights
            return handle

        def weight(l, key):
            def hook(module, args, output):
                point(f"hook:{l}:{key}")
                recs[l][key] = model._module_weight(l, key, module)
                recs[l][key.replace("w_", "out_")] = _rows(_to_numpy(_first(output)), T)
            return hook

        def layer_out(l):
            def hook(module, args, output):
                point(f"hook:{l}:y")
                recs[l]["y"] = _rows(_to_numpy(_first(output)), T)
                self.on_layer(l, recs[l])
                recs[l].clear()  # what the trace keeps is in the layer's buffers now
            return hook

        interface = attn_capture.eager_function(sub(model.decoder_layers[0], fam.attn)) is not None
        for l, layer in enumerate(model.decoder_layers):
            attn = sub(layer, fam.attn)
            run.hook(layer, pre(l, "x"), pre=True, with_kwargs=True)
            run.hook(layer, layer_out(l))
            if interface:
                run.attention(attn, capture(l))
            else:
                run.hook(attn, replay_in(l), pre=True, with_kwargs=True)
                run.hook(attn, post(l, "probs", probs_out))
            run.hook(sub(layer, fam.qkv), post(l, "values", values))
            run.hook(sub(layer, fam.o_proj), weight(l, "w_o"))
            experts = moe.experts_module(fam, layer)
            if experts is not None:  # a MoE layer: ltt.models.moe; every expert's down rows read in place
                for handle in moe.register(fam, layer, recs[l], T, _to_numpy, run.tag):
                    run.added(handle)
                run.hook(experts, lambda m, a, o, l=l: point(f"hook:{l}:w_down") or recs[l].__setitem__(
                    "w_down", model._module_weight(l, "w_down", m)))
            else:
                run.hook(sub(layer, fam.down), pre(l, "act"), pre=True, with_kwargs=True)
                run.hook(sub(layer, fam.down), weight(l, "w_down"))
            if fam.ffn_post_norm:
                run.hook(sub(layer, fam.ffn_post_norm), post(l, "ffn"))
            if not model.parallel[l]:
                run.hook(sub(layer, fam.ffn_norm), pre(l, "mid"), pre=True, with_kwargs=True)
        return interface
