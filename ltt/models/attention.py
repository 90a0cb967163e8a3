"""Attention probabilities on demand: capture a layer's queries and keys in the forward pass,
recompute any head's rows exactly later with the model's own attention code.

A trace never keeps the ``[H, T, T]`` probabilities of all layers. While the model runs, every
attention call of the trace's own forward goes through the registered function of
:mod:`ltt.models.instrument` to the recording's handler, which calls the module's own eager
function (so masking, scaling, soft-capping, sliding windows and sinks are the family's own;
:func:`_by_group` runs it one kv group at a time for long layers) and keeps the
probabilities, the queries, keys and mask. Afterwards an
:class:`AttentionState` answers "the probabilities of heads ``heads`` at rows ``rows``" by
calling that same eager function on the sliced queries and keys.

Families whose attention modules do not use the interface (GPT-Neo, Falcon, ...) fall back to
:class:`ModuleReplay`: the module's own forward is re-run on its recorded input.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

def eager_function(module: Any) -> Callable[..., Any] | None:
    """The ``eager_attention_forward`` of the module's own modeling file, or None when the
    family's attention does not go through transformers' attention interface."""
    mod = sys.modules.get(type(module).__module__)
    if mod is None or not hasattr(mod, "ALL_ATTENTION_FUNCTIONS"):
        return None
    fn = getattr(mod, "eager_attention_forward", None)
    return fn if callable(fn) else None


def _by_group(fn, module, query, key, value, mask, args, kwargs):
    """The module's own eager attention run one kv group at a time (its query heads with their
    one key and value head), outputs joined along the head axis: the same numbers as one call,
    with one group's scores and probabilities alive at a time. None when the eager output is not
    laid out ``[B, T, heads, d_h]`` (the caller then runs it whole)."""
    import torch

    H, G = query.shape[1], key.shape[1]
    per = H // G
    outs = []
    for g in range(G):
        heads = slice(g * per, (g + 1) * per)
        m = mask[:, heads] if mask is not None and mask.shape[1] > 1 else mask
        out, _ = fn(_GroupModule(module, heads, per), query[:, heads], key[:, g : g + 1],
                    value[:, g : g + 1], m, *args, **kwargs)
        if out.ndim != 4 or out.shape[2] != per or out.shape[1] != query.shape[2]:
            return None
        outs.append(out)
    return torch.cat(outs, dim=2)


class _SlicedModule:
    """The attention module seen by its eager function when only some heads are recomputed:
    one query head per kv head, eval mode, per-head parameters (sinks) sliced to the head."""

    def __init__(self, module: Any, head: int):
        self._module = module
        self.num_key_value_groups = 1
        self.training = False
        sinks = getattr(module, "sinks", None)
        if sinks is not None:
            self.sinks = sinks.detach()[head : head + 1].to("cpu")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


class _GroupModule:
    """The attention module seen by its eager function for one kv group's query heads: the
    group's repeat count, per-head parameters (sinks) sliced to those heads."""

    def __init__(self, module: Any, heads: slice, per_group: int):
        self._module = module
        self.num_key_value_groups = per_group
        sinks = getattr(module, "sinks", None)
        if sinks is not None:
            self.sinks = sinks[heads]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _cpu(t: Any) -> Any:
    return None if t is None else t.detach().to("cpu")


class AttentionState:
    """One layer's recorded queries ``[H, T, d_h]``, keys ``[G, T, d_h]`` (model dtype, CPU),
    mask and call arguments, enough to recompute any probability exactly.

    Memory: ``T (H + G) d_h`` elements of the model's dtype per layer, plus the mask, which
    layers share (one ``[T, T]`` per distinct mask)."""

    def __init__(self, module: Any, fn: Callable[..., Any], query: Any, key: Any, mask: Any,
                 args: tuple, kwargs: dict[str, Any], masks: dict[tuple, Any]):
        self._module = module
        self._fn = fn
        self.query = _cpu(query[0])
        self.key = _cpu(key[0])
        self._args = args
        self._kwargs = {k: v for k, v in kwargs.items() if k != "dropout"}
        if mask is not None:
            ident = (mask.data_ptr(), tuple(mask.shape), str(mask.dtype))
            if ident not in masks:
                masks[ident] = _cpu(mask[:1])
            mask = masks[ident]
        self._mask = mask

    def nbytes(self) -> int:
        return int(self.query.numel() * self.query.element_size() + self.key.numel() * self.key.element_size())

    def probs(self, heads: Any = None, rows: Any = None) -> np.ndarray:
        """Probabilities ``[len(heads), len(rows), T]`` float32 (all heads / rows when None)."""
        import torch

        H, T = self.query.shape[0], self.key.shape[1]
        heads = range(H) if heads is None else [int(h) for h in heads]
        # a copy (rows may be a read-only array)
        rows_t = None if rows is None else torch.tensor(np.asarray(rows, dtype=np.int64))
        per_group = H // self.key.shape[0]
        out = []
        with torch.no_grad():
            for h in heads:
                g = h // per_group
                q = self.query[h : h + 1]
                mask = self._mask
                if rows_t is not None:
                    q = q[:, rows_t]
                    if mask is not None:
                        mask = mask[..., rows_t, :]
                if mask is not None and mask.shape[1] > 1:  # a per-head mask
                    mask = mask[:, h : h + 1]
                k = self.key[g : g + 1][None]
                _, w = self._fn(_SlicedModule(self._module, h), q[None], k, k, mask, *self._args,
                                dropout=0.0, **self._kwargs)
                out.append(w[0, 0].to(torch.float32))
        if not out:
            return np.zeros((0, 0 if rows is None else len(rows), T), np.float32)
        return torch.stack(out).numpy()


class ModuleReplay:
    """Probabilities of an attention module that does not use the attention interface: its
    recorded input is run through the module again (all heads, then sliced)."""

    def __init__(self, module: Any, args: tuple, kwargs: dict[str, Any]):
        self._module = module
        self._args = tuple(_cpu(a) if hasattr(a, "detach") else a for a in args)
        self._kwargs = kwargs

    def nbytes(self) -> int:
        return int(sum(a.numel() * a.element_size() for a in self._args if hasattr(a, "numel")))

    def probs(self, heads: Any = None, rows: Any = None) -> np.ndarray:
        import torch

        mod = self._module
        device = next((p.device for p in mod.parameters() if p.device.type != "meta"), torch.device("cpu"))
        args = tuple(a.to(device) if hasattr(a, "to") else a for a in self._args)
        with torch.no_grad():
            out = mod(*args, **self._kwargs)
        p = out[1][0].to(device="cpu", dtype=torch.float32).numpy()
        if heads is not None:
            p = p[np.asarray(list(heads), dtype=np.int64)]
        if rows is not None:
            p = p[:, np.asarray(rows, dtype=np.int64)]
        return np.ascontiguousarray(p)
