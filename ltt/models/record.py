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
from ltt.models.instrument import Run

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
        fam, sub, config = model.spec, model.submodule, model.hf_model.config

        def keep(l, key, read):  # a hook storing read(module, args, out_or_kwargs) items
            def hook(module, args, out):
                point(f"hook:{l}:{key}")
                recs[l].update(read(module, args, out))
            return hook

        def arg(key):
            return lambda m, args, kw: {key: _rows(_to_numpy(args[0] if args else kw.get("hidden_states")), T)}

        def out(key):
            return lambda m, args, o: {key: _rows(_to_numpy(_first(o)), T)}

        def values(m, args, o):
            full = _rows(_to_numpy(_first(o)), T)
            return {"values": np.ascontiguousarray(
                split_values(fam, config, full, model.n_heads, model.n_kv_heads, model.d_head))}

        def probs(m, args, o):
            p = o[1] if isinstance(o, (tuple, list)) and len(o) > 1 else None
            return {"probs": None if p is None else np.ascontiguousarray(_to_numpy(p)[0])}

        def weight(l, key, output=True):
            return lambda m, args, o: {key: model._module_weight(l, key, m),
                                       **(out(key.replace("w_", "out_"))(m, args, o) if output else {})}

        def layer_out(l):
            def hook(module, args, output):
                point(f"hook:{l}:y")
                recs[l]["y"] = _rows(_to_numpy(_first(output)), T)
                self.on_layer(l, recs[l])
                recs[l].clear()  # what the trace keeps is in the layer's buffers now
            return hook

        def capture(l):
            def handle(call):  # the module's own eager attention (by kv group for long layers)
                out_, w = None, None
                if self.stream_heads:
                    out_ = attn_capture._by_group(call.eager_fn, call.module, call.query, call.key,
                                                  call.value, call.mask, call.args, call.kwargs)
                if out_ is None:
                    out_, w = call.eager()
                point(f"hook:{l}:attention")
                recs[l]["probs"] = None if w is None else _probs_numpy(w)
                recs[l]["attention"] = attn_capture.AttentionState(call.module, call.eager_fn, call.query, call.key,
                                                                   call.mask, call.args, call.kwargs, self.masks)
                return out_, w
            return handle

        interface = attn_capture.eager_function(sub(model.decoder_layers[0], fam.attn)) is not None
        for l, layer in enumerate(model.decoder_layers):
            attn = sub(layer, fam.attn)
            run.hook(layer, keep(l, "x", arg("x")), pre=True, with_kwargs=True)
            run.hook(layer, layer_out(l))
            if interface:
                run.attention(attn, capture(l))
            else:  # probabilities from the module's output; recomputed by re-running the module
                run.hook(attn, keep(l, "replay", lambda m, a, kw: {"attention": attn_capture.ModuleReplay(
                    m, a, dict(kw))}), pre=True, with_kwargs=True)
                run.hook(attn, keep(l, "probs", probs))
            run.hook(sub(layer, fam.qkv), keep(l, "values", values))
            run.hook(sub(layer, fam.o_proj), keep(l, "w_o", weight(l, "w_o")))
            experts = moe.experts_module(fam, layer)
            if experts is not None:  # a MoE layer: ltt.models.moe; every expert's down rows read in place
                for handle in moe.register(fam, layer, recs[l], T, _to_numpy, run.tag):
                    run.added(handle)
                run.hook(experts, keep(l, "w_down", weight(l, "w_down", output=False)))
            else:
                run.hook(sub(layer, fam.down), keep(l, "act", arg("act")), pre=True, with_kwargs=True)
                run.hook(sub(layer, fam.down), keep(l, "w_down", weight(l, "w_down")))
            if fam.ffn_post_norm:
                run.hook(sub(layer, fam.ffn_post_norm), keep(l, "ffn", out("ffn")))
            if not model.parallel[l]:
                run.hook(sub(layer, fam.ffn_norm), keep(l, "mid", arg("mid")), pre=True, with_kwargs=True)
        return interface
