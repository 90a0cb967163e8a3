"""Exact removals inside a transformers forward pass: per batch row, which attention edges and FFN blocks act.

:func:`run_batched` runs a prompt as one batch (chunked when memory asks for it): row 0 is the
full model, every other row a :class:`PartSet` saying which attention edges and FFN blocks act.
What a removal is, exactly (``ablation="zero"``):

* **attention edge** ``s -> t`` of layer ``l``: ``A^h[t, s] = 0`` for every head ``h``, after
  the softmax (after any logit softcapping, Gemma 2), before multiplying by the values. The
  output projection, its bias, and everything after it run as the model does, so the edge
  contributes nothing to the update of ``t``. *Post-branch norms* (Gemma 2/3): the graph's
  ``A`` node lies after the post-attention norm; the norm then normalises the changed branch as
  the model does (its scale is recomputed from the changed branch, not frozen). When every edge
  into ``t`` is removed the branch is the output projection's bias alone (0 without a bias).
* **FFN block** ``(l, t)``: the FFN branch's output at ``t`` is set to zero where it joins the
  residual stream: the down projection's output (its bias included), or for post-branch-norm
  families the post-FFN norm's output, so the residual gets nothing from the block.
* **parallel blocks** (GPT-NeoX with parallel residual, GPT-J, Phi-1/2, parallel Falcon): the
  attention and FFN branches of one layer both read the layer input and write to the layer
  output; an edge removal changes only the attention branch and an FFN block removal only the
  FFN branch. They are removed separately, as in the graph.
* residual connections and biases are never removed.

``ablation="mean"`` replaces instead of zeroing, with means over the prompt's ``T`` positions
taken in the full run (row 0 of the same batch, same layer): a removed edge ``s -> t`` keeps its
probability but reads the mean value vector, ``A^h[t, s] v_s -> A^h[t, s] mean_s' v_s'`` (per
kv head); a removed FFN block's branch output at ``t`` becomes the mean branch output of the
layer over positions.

``ablation="patch"`` (with an :class:`ltt.ablations.RunSpec` naming the counterfactual's ids):
batch row 1 runs the counterfactual in full and a removed edge or block takes its term from
that row: each row's attention output gets ``(A_cf (1 - keep)) V_cf - (A (1 - keep)) V`` added
(:func:`_patch_difference`, exactly 0 when the counterfactual is the prompt), a removed FFN
block's branch output becomes row 1's. A spec can also hold dataset means (``ablation="mean"``
over a reference set) or record values and gradients (:mod:`ltt.ablations`).


How: every run is a :class:`ltt.models.instrument.Run` (lock, modes, configs, hooks, clean-up;
only its own forward is changed, another thread's forward of the model is the model's own).
Families whose attention calls transformers' attention-function interface (all but GPT-Neo and
Falcon, and GPT-2 with ``reorder_and_upcast_attn``) have a handler on the run's registered
attention function that calls the module's own eager function, then recomputes
``(A * keep) @ V`` for the rows with removals (exact zeros). GPT-Neo and Falcon do not call the
interface; there a forward hook on the attention module subtracts ``W_O ((A * (1 - keep)) @ V)``
from its output (no bias), which equals the removal to float rounding. FFN blocks are removed
by a forward hook on the branch's last module.

>>> from ltt.interventions import PartSet, run_batched             # doctest: +SKIP
>>> logits = run_batched(model, ids, [PartSet({}, {}, only=True)], [len(ids) - 1], "zero")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ltt.models.families import get_module, split_values
from ltt.models.instrument import Run
from ltt.models.record import point

__all__ = ["PartSet", "run_batched", "uses_interface"]



@dataclass
class PartSet:
    """The parts acting in one batch row. ``edges``: layer -> ``(targets, sources)`` token
    arrays; ``ffn``: layer -> token array. ``only=True``: exactly these parts act (every other
    edge and FFN block is removed); ``only=False``: these parts are removed, all others act."""

    edges: dict[int, tuple[np.ndarray, np.ndarray]]
    ffn: dict[int, np.ndarray]
    only: bool


def uses_interface(model: Any) -> bool:
    """Whether ``model``'s attention goes through transformers' attention-function interface in
    its eager mode (then edges are removed there; otherwise by subtraction after the module).

    >>> uses_interface(ltt.load("smollm2-135m"))                 # doctest: +SKIP
    True
    """
    fam = model.family
    if fam in ("gpt_neo", "falcon"):
        return False
    if fam == "gpt2" and getattr(model.hf_model.config, "reorder_and_upcast_attn", False):
        return False  # GPT-2 then runs its own upcast attention instead of the interface
    from ltt.models.attention import eager_function

    # Bloom, MPT: modeling files without the attention interface (their module's own attention)
    return eager_function(model.submodule(model.decoder_layers[0], model.spec.attn)) is not None


# --------------------------------------------------------------------------------------------
# keep masks


def _attn_keep(rows: Sequence[PartSet], layer: int, T: int) -> np.ndarray:
    """``[1 + len(rows), T, T]`` float32: 1 where edge ``s -> t`` acts in that row (row 0: all)."""
    keep = np.ones((1 + len(rows), T, T), np.float32)
    for i, r in enumerate(rows, 1):
        e = r.edges.get(layer)
        if r.only:
            keep[i] = 0.0
            if e is not None:
                keep[i, e[0], e[1]] = 1.0
        elif e is not None:
            keep[i, e[0], e[1]] = 0.0
    return keep


def _ffn_keep(rows: Sequence[PartSet], layer: int, T: int) -> np.ndarray:
    """``[1 + len(rows), T]`` bool: True where the FFN block at ``t`` acts in that row."""
    keep = np.ones((1 + len(rows), T), bool)
    for i, r in enumerate(rows, 1):
        f = r.ffn.get(layer)
        if r.only:
            keep[i] = False
            if f is not None:
                keep[i, f] = True
        elif f is not None:
            keep[i, f] = False
    return keep


def _heads_of(v: Any, H: int) -> Any:
    """Values ``[B, G, S, d_h]`` repeated to ``[B, H, S, d_h]`` (head h reads group h // (H/G))."""
    G = v.shape[1]
    return v if G == H else v.repeat_interleave(H // G, dim=1)


# --------------------------------------------------------------------------------------------
# hooks


def _interface_handler(rows, layer, T, mean, spec=None):
    import torch

    def handle(out, weights, value):
        v = _heads_of(value, weights.shape[1])
        if spec is not None and spec.stats is not None:
            spec.observe(("v", layer), v[0].sum(dim=1), v.shape[2])
        if spec is not None and spec.capture is not None:
            return _capture_attention(spec, layer, out, weights, v), weights
        keep = torch.from_numpy(_attn_keep(rows, layer, T)).to(device=weights.device, dtype=weights.dtype)
        if spec is not None and spec.mode == "patch":
            z = _patch_difference(weights, v, keep)  # [B, H, T, d_h], exactly 0 in rows 0 and 1
            return out + z.transpose(1, 2).to(out.dtype), weights
        kept_w = weights * keep[:, None]
        new = torch.matmul(kept_w, v)
        if mean:
            vbar = v[0].mean(dim=1) if spec is None else spec.value_mean(layer, v)  # [H, d_h]
            new = new + (weights - kept_w).sum(-1, keepdim=True) * vbar[None, :, None, :]
        new = new.transpose(1, 2).contiguous().to(out.dtype)
        new[0] = out[0]  # the full row exactly as the model computed it
        return new, kept_w

    return handle


def _patch_difference(probs: Any, v: Any, keep: Any) -> Any:
    """``(A_cf (1 - keep)) V_cf - (A (1 - keep)) V`` per row and head, ``[B, H, T, d_h]``: what
    patching the removed edges from the counterfactual (batch row 1) adds to each row's own
    attention output. Both products have one shape and contiguous inputs, so when the
    counterfactual equals the prompt they are equal bit for bit and the difference is 0."""
    import torch

    drop = (1.0 - keep)[:, None]
    own = torch.matmul((probs * drop).contiguous(), v.contiguous())
    cf = torch.matmul((probs[1:2] * drop).contiguous(), v[1:2].expand_as(v).contiguous())
    return cf - own


def _capture_attention(spec: Any, layer: int, out: Any, probs: Any, v: Any) -> Any:
    """Record a layer's probabilities ``[B, H, T, T]`` and values ``[B, H, S, d_h]`` and add a zero
    tensor to the attention output before its projection, whose gradient is the metric's
    gradient there (:mod:`ltt.circuits.gradients`)."""
    import torch

    delta = torch.zeros_like(out, requires_grad=True)  # [B, T, H, d_h]
    spec.capture[("attn", layer)] = {"probs": probs.detach(), "v": v.detach(), "delta": delta, "at": "z"}
    return out + delta


def _project(module: Any, z: Any) -> Any:
    """``z`` through a linear map's weight, without its bias (Conv1D keeps ``[in, out]``)."""
    import torch.nn.functional as F

    if type(module).__name__ == "Conv1D":
        return z @ module.weight
    return F.linear(z, module.weight)


def _subtract_hooks(model, layer_mod, rows, layer, T, mean, B, spec=None):
    """(values hook, attention hook) of the subtraction path (GPT-Neo, Falcon)."""
    import torch

    fam, config = model._family, model.hf_model.config
    H, G, dh = model.n_heads, model.n_kv_heads, model.d_head
    o_proj = model._sub(layer_mod, fam.o_proj)
    store: dict[str, Any] = {}

    def values_hook(module, args, output):
        o = output[0] if isinstance(output, (tuple, list)) else output
        store["v"] = torch.stack([split_values(fam, config, o[b], H, G, dh) for b in range(o.shape[0])])

    def attn_hook(module, args, output):
        out, probs = output[0], output[1] if len(output) > 1 else None
        if probs is None or "v" not in store:
            raise RuntimeError(f"layer {layer}: the attention did not return its probabilities or values; "
                               "ltt cannot remove edges in it")
        v = _heads_of(store.pop("v").permute(0, 2, 1, 3).to(probs.dtype), H)  # [B, H, S, d_h]
        if spec is not None and spec.stats is not None:
            spec.observe(("v", layer), v[0].sum(dim=1), v.shape[2])
        if spec is not None and spec.capture is not None:
            delta = torch.zeros_like(out, requires_grad=True)  # [B, T, d] after the projection
            spec.capture[("attn", layer)] = {"probs": probs.detach(), "v": v.detach(), "delta": delta,
                                             "at": "o", "o_proj": o_proj}
            return (out + delta,) + tuple(output[1:])
        keep = torch.from_numpy(_attn_keep(rows, layer, T)).to(device=probs.device, dtype=probs.dtype)
        if spec is not None and spec.mode == "patch":
            z = _patch_difference(probs, v, keep).transpose(1, 2).reshape(B, T, H * dh).to(out.dtype)
            return (out + _project(o_proj, z),) + tuple(output[1:])
        removed = probs * (1.0 - keep)[:, None]
        z = torch.matmul(removed, v)
        if mean:
            vbar = v[0].mean(dim=1) if spec is None else spec.value_mean(layer, v)
            z = z - removed.sum(-1, keepdim=True) * vbar[None, :, None, :]
        z = z.transpose(1, 2).reshape(B, T, H * dh).to(out.dtype)
        return (out - _project(o_proj, z),) + tuple(output[1:])

    return values_hook, attn_hook


def _ffn_hook(rows, layer, T, mean, B, spec=None, branch=0):
    import torch

    def replace(output):
        flat = output.ndim == 2  # OPT runs its MLP on [B*T, d]
        x = output.view(B, T, -1) if flat else output
        if spec is not None and spec.stats is not None:
            spec.observe(("f", layer, branch), x[0].sum(dim=0), T)
        if spec is not None and spec.capture is not None:
            delta = torch.zeros_like(x, requires_grad=True)
            spec.capture[("ffn", layer, branch)] = {"x": x.detach(), "delta": delta}
            y = x + delta
            return y.view_as(output) if flat else y
        keep = torch.from_numpy(_ffn_keep(rows, layer, T)).to(x.device)[..., None]
        if spec is not None and spec.mode == "patch":
            repl = x[1:2]  # the counterfactual's own block output (batch row 1)
        elif mean:
            repl = x[0].mean(dim=0) if spec is None else spec.branch_mean(layer, branch, x)
        else:
            repl = torch.zeros((), dtype=x.dtype, device=x.device)
        y = torch.where(keep, x, repl.to(x.dtype))
        return y.view_as(output) if flat else y

    def hook(module, args, output):
        if isinstance(output, tuple):  # a MoE block that also returns its router's scores
            return (replace(output[0]),) + tuple(output[1:])
        return replace(output)

    return hook


def _ffn_branches(model: Any, layer: Any) -> list[Any]:
    """The modules whose outputs make up a layer's FFN branch: its post-branch norm, a MoE
    block (and a shared MLP the layer adds outside it), or the down projection."""
    from ltt.models import moe

    fam, sub = model.spec, model.submodule
    if fam.ffn_post_norm:
        return [sub(layer, fam.ffn_post_norm)]
    if moe.experts_module(fam, layer) is None:
        return [sub(layer, fam.down)]
    out = [sub(layer, fam.moe_block)]
    shared = get_module(layer, fam.shared_expert) if fam.shared_outside else None
    return out + ([shared] if shared is not None else [])


# --------------------------------------------------------------------------------------------
# running


def _run(model: Any, ids: list[int], rows: Sequence[PartSet], targets: list[int], ablation: str,
         spec: Any = None) -> np.ndarray:
    """One batched forward: ``[1 + len(rows), len(targets), V]`` float64 logits, row 0 full.
    ``spec``: an :class:`ltt.ablations.RunSpec` (patching: ``rows[0]`` is the counterfactual's
    full row, batch row 1; dataset means; recording and gradients)."""
    import torch

    fam, sub = model.spec, model.submodule
    B, T = 1 + len(rows), len(ids)
    mean = ablation == "mean"
    interface = uses_interface(model)
    emb = model.hf_model.get_input_embeddings()
    device = emb.weight.device if emb is not None and emb.weight.device.type != "meta" else None
    with Run(model, point=point) as run:
        for l, layer in enumerate(model.decoder_layers):
            attn = sub(layer, fam.attn)
            if interface:
                handle = _interface_handler(rows, l, T, mean, spec)
                run.attention(attn, lambda call, handle=handle: handle(*call.eager(), call.value))
            else:
                values_hook, attn_hook = _subtract_hooks(model, layer, rows, l, T, mean, B, spec)
                run.hook(sub(layer, fam.qkv), values_hook)
                run.hook(attn, attn_hook)
            for i, branch in enumerate(_ffn_branches(model, layer)):
                run.hook(branch, _ffn_hook(rows, l, T, mean, B, spec, i))
        run.switch_attention(interface)
        inputs = ({"input_ids": torch.tensor([ids], device=device).expand(B, T)} if spec is None
                  else spec.inputs(ids, B, device))
        # on the CPU: it indexes the last layer's states, wherever device_map put them
        out = run.forward(grad=spec is not None and spec.metric is not None, **inputs, use_cache=False,
                          logits_to_keep=torch.tensor(targets))
        if spec is not None:
            spec.after(out.logits)
        logits = out.logits.detach().to(device="cpu", dtype=torch.float64).numpy()
    if logits.shape[:2] != (B, len(targets)):
        raise RuntimeError(f"the model returned logits of shape {tuple(logits.shape)}, expected "
                           f"({B}, {len(targets)}, vocab)")
    return logits


def row_bytes(model: Any, T: int, n_targets: int) -> int:
    """A rough working-memory estimate of one batch row of :func:`run_batched`, in bytes.

    >>> row_bytes(model, T=256, n_targets=1) / 2**20                # doctest: +SKIP
    """
    attn = 6 * model.n_heads * T * T * 4
    acts = 10 * T * max(model.d_model, model.d_ffn) * 4
    return int(attn + acts + 12 * n_targets * model.vocab_size)


def run_batched(model: Any, ids: list[int], rows: Sequence[PartSet], targets: list[int], ablation: str,
                max_batch_bytes: int = 1 << 30, spec: Any = None) -> np.ndarray:
    """Logits ``[1 + len(rows), len(targets), V]`` (float64) of the full model (row 0) and of each
    row's parts, in as few forward passes as ``max_batch_bytes`` allows (each repeats row 0).
    ``spec`` (:class:`ltt.ablations.RunSpec`): what removed parts become; when patching, every
    pass also runs the counterfactual in full (its logits are left in ``spec.cf_logits``).

    >>> run_batched(model, ids, [PartSet({}, {}, only=True)], [len(ids) - 1], "zero").shape  # doctest: +SKIP
    """
    extra = 0 if spec is None else spec.extra_rows
    per_batch = max(1, int(max_batch_bytes) // max(1, row_bytes(model, len(ids), len(targets))) - 1 - extra)
    rows = list(rows)
    head = [PartSet({}, {}, only=False)] * extra  # the counterfactual's full run: nothing removed

    def run(chunk):
        logits = _run(model, ids, head + chunk, targets, ablation, spec)
        if extra:
            spec.cf_logits = logits[1]
            logits = np.concatenate([logits[:1], logits[1 + extra:]])
        return logits

    if not rows:
        return run([])
    pieces = []
    for i in range(0, len(rows), per_batch):
        logits = run(rows[i: i + per_batch])
        pieces.append(logits if i == 0 else logits[1:])
    return np.concatenate(pieces)
