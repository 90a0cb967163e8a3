"""Recording one forward pass: hooks on every layer for the trace's own forward, each layer
handed on as soon as its buffers exist.

:class:`Recording` is a :class:`ltt.models.instrument.Run` (lock, owner entry, modes, attention
implementation, hook clean-up, the registered attention function; only the trace's own forward
is recorded) with hooks that copy each layer's tensors into float32 NumPy arrays
(:mod:`ltt.models.tensors`); when the layer's output hook fires, ``on_layer(layer, record)`` is
called with everything the layer produced, and the record is cleared after it.

Deterministic fault injection: tests set :data:`FAULT` to a callable that receives the name of
each point a trace passes (``"register"``, ``"hook-registered"``, ``"hook:<layer>:<what>"``,
``"forward"``, ...) and may raise there.
"""

from __future__ import annotations

from typing import Any, Callable

from ltt.models import attention as attn_capture
from ltt.models import moe, tensors
from ltt.models.instrument import Run
from ltt.models.tensors import to_numpy as _to_numpy  # noqa: F401  (ltt.models.tracing reads logits with it)

#: Test hook: called with the name of every fault-injection point (None in normal use).
FAULT: Callable[[str], None] | None = None


def point(name: str) -> None:
    """A fault-injection point (see :data:`FAULT`)."""
    if FAULT is not None:
        FAULT(name)


class Recording(Run):
    """Hooks on every layer of ``model`` (an :class:`ltt.models.Model`) for one forward pass of
    ``T`` tokens; ``on_layer(layer, record)`` receives each finished layer's tensors. With
    ``stream_heads`` the attention runs (and is recorded) one kv group at a time."""

    def __init__(self, model: Any, T: int, on_layer: Callable[[int, dict[str, Any]], None],
                 stream_heads: bool = False):
        super().__init__(model, point=point)
        self.T = T
        self.stream_heads = stream_heads
        self.on_layer = on_layer
        self.records: list[dict[str, Any]] = [dict() for _ in range(model.n_layers)]
        self.masks: dict[tuple, Any] = {}
        #: (layer, output tensor, its version counter, its rows as read) of the last layer that
        #: finished: the next layer's input is usually that very tensor, unchanged
        self._last_out: tuple | None = None

    def __enter__(self) -> "Recording":
        super().__enter__()
        try:
            point("register")
            interface = self._register()
            point("registered")
            self.switch_attention(interface)
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _keep(self, l: int, key: str, read: tensors.Reader) -> Callable:
        """A hook storing the items ``read(module, *hook_args)`` in layer ``l``'s record (torch's
        hook arguments after the module: ``args`` and the output or kwargs, or for a forward
        hook with kwargs ``args, kwargs, output``)."""
        def hook(module, *rest):
            point(f"hook:{l}:{key}")
            self.records[l].update(read(module, *rest))
        return hook

    def _layer_in(self, l: int) -> Callable:
        """The pre-hook (with kwargs) reading layer ``l``'s input ``x``: the previous layer's
        output array when the input is that layer's output tensor with the same version counter
        (not written since it was read), else a copy of the input."""
        read = tensors.input_of("x", self.T)

        def hook(module, args, kwargs):
            point(f"hook:{l}:x")
            last, self._last_out = self._last_out, None
            x = args[0] if args else kwargs.get("hidden_states")
            if last is not None and last[0] == l - 1 and last[1] is x and x._version == last[2]:
                self.records[l]["x"] = last[3]
            else:
                self.records[l].update(read(module, args, kwargs))
        return hook

    def _layer_out(self, l: int) -> Callable:
        def hook(module, args, output):
            point(f"hook:{l}:y")
            rec = self.records[l]
            y = tensors.first(output)
            rec["y"] = tensors.rows(tensors.to_numpy(y), self.T)
            self._last_out = (l, y, y._version, rec["y"])
            self.on_layer(l, rec)
            rec.clear()  # what the trace keeps is in the layer's buffers now
        return hook

    def _capture(self, l: int) -> Callable:
        def handle(call):  # the module's own eager attention (by kv group for long layers)
            out, w = None, None
            if self.stream_heads:
                out = attn_capture._by_group(call.eager_fn, call.module, call.query, call.key, call.value,
                                             call.mask, call.args, call.kwargs)
            if out is None:
                out, w = call.eager()
            point(f"hook:{l}:attention")
            self.records[l]["probs"] = None if w is None else tensors.probs_numpy(w)
            self.records[l]["attention"] = attn_capture.AttentionState(
                call.module, call.eager_fn, call.query, call.key, call.mask, call.args, call.kwargs, self.masks)
            return out, w
        return handle

    def _register(self) -> bool:
        """Hooks on every layer; True when the attention goes through the registered function."""
        model, T, keep, hook = self.model, self.T, self._keep, self.hook
        fam, sub = model.spec, model.submodule
        interface = attn_capture.eager_function(sub(model.decoder_layers[0], fam.attn)) is not None
        for l, layer in enumerate(model.decoder_layers):
            attn = sub(layer, fam.attn)
            hook(layer, self._layer_in(l), pre=True, with_kwargs=True)
            hook(layer, self._layer_out(l))
            if interface:
                self.attention(attn, self._capture(l))
            else:  # probabilities from the module's output; recomputed by re-running the module
                hook(attn, keep(l, "replay", lambda m, a, kw: {"attention": attn_capture.ModuleReplay(
                    m, a, dict(kw))}), pre=True, with_kwargs=True)
                hook(attn, keep(l, "probs", tensors.probs_of))
            hook(sub(layer, fam.qkv), keep(l, "values", tensors.values_of(model, T)))
            hook(sub(layer, fam.o_proj), keep(l, "w_o", tensors.weight_of(model, l, "w_o", T)))
            experts = moe.experts_module(fam, layer)
            if experts is not None:  # a MoE layer: ltt.models.moe; every expert's down rows read in place
                for handle in moe.register(fam, layer, self.records[l], T, tensors.to_numpy, self.tag):
                    self.added(handle)
                hook(experts, keep(l, "w_down", tensors.weight_of(model, l, "w_down", T, output=False)))
            else:
                hook(sub(layer, fam.down), keep(l, "w_down", tensors.down_of(model, l, T)), with_kwargs=True)
            if fam.ffn_post_norm:
                hook(sub(layer, fam.ffn_post_norm), keep(l, "ffn", tensors.output_of("ffn", T)))
            if not model.parallel[l]:
                hook(sub(layer, fam.ffn_norm), keep(l, "mid", tensors.input_of("mid", T)), pre=True, with_kwargs=True)
        return interface
