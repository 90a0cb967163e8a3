"""What an intervened run does at each layer's attention and FFN output: the handlers of
:class:`ltt.models.instrument.Run` for removal (zero, mean), patching and gradients.

:func:`install` puts them on a run for a batch whose row 0 is the full model and whose every
other row is a part set (:class:`ltt.interventions.PartSet`: which attention edges and FFN
blocks act). What a removal is, exactly (``ablation="zero"``):

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

How: families whose attention calls transformers' attention-function interface (all but
GPT-Neo and Falcon, and GPT-2 with ``reorder_and_upcast_attn``; :func:`uses_interface`) have a
handler on the run's registered attention function that calls the module's own eager function,
then recomputes ``(A * keep) @ V`` for the rows with removals (exact zeros). GPT-Neo and Falcon
do not call the interface; there a forward hook on the attention module subtracts
``W_O ((A * (1 - keep)) @ V)`` from its output (no bias), which equals the removal to float
rounding. FFN blocks are removed by a forward hook on the branch's last module.

Only what a row can use is computed in the FFN: where a dense FFN is one module applied
position by position (the parent of the down projection, called with the layer's state alone;
not OPT's flattened MLP, Bloom's or MPT's, which add the residual inside, nor a MoE block), its
input is cut to the (row, position) pairs whose block acts (every position of row 0; not when
patching, which runs whole) and its down projection's output put back in place,
zeros elsewhere, which the removal replaces anyway (:func:`_gather_hooks`). A graph's row keeps
a few blocks, so the batch's FFN work shrinks to about the full and the removed rows'. The
kept blocks compute what they would in the whole batch (the same modules on the same states).
Likewise with ``ablation="zero"`` a graph's row runs the module's own eager attention only at
the queries its edges reach in that layer (:func:`_by_queries`; every other query's output is
exactly 0 there), row 0 and the removed row at every query. The numbers are the plain batched
run's to float rounding (smaller matrix products; tests/test_faithfulness_fast.py).
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np

from ltt.models import moe
from ltt.models.attention import eager_function
from ltt.models.families import get_module, split_values

__all__ = ["install", "uses_interface"]


def uses_interface(model: Any) -> bool:
    """Whether ``model``'s attention goes through transformers' attention-function interface in
    its eager mode (then edges are removed there; otherwise by subtraction after the module).

    >>> uses_interface(ltt.load("smollm2-135m"))                 # doctest: +SKIP
    True
    """
    if model.family in ("gpt_neo", "falcon"):
        return False
    if model.family == "gpt2" and getattr(model.hf_model.config, "reorder_and_upcast_attn", False):
        return False  # GPT-2 then runs its own upcast attention instead of the interface
    # Bloom, MPT: modeling files without the attention interface (their module's own attention)
    return eager_function(model.submodule(model.decoder_layers[0], model.spec.attn)) is not None


def install(run: Any, model: Any, rows: Sequence[Any], T: int, mean: bool, spec: Any) -> bool:
    """Put every layer's handlers on ``run`` for a batch of ``1 + len(rows)`` rows of ``T``
    tokens; ``spec`` is an :class:`ltt.ablations.RunSpec`. Returns :func:`uses_interface`."""
    interface = uses_interface(model)
    B = 1 + len(rows)
    for l, layer in enumerate(model.decoder_layers):
        attn = model.submodule(layer, model.spec.attn)
        if interface:
            handle = _interface_handler(rows, l, T, mean, spec)
            plan = _query_plan(rows, l) if COMPACT and not mean and spec.mode == "zero" and \
                spec.stats is None and spec.capture is None else None
            if plan is not None:
                run.attention(attn, lambda call, handle=handle, plan=plan, l=l: _by_queries(call, plan, handle, rows, l, T))
            else:
                run.attention(attn, lambda call, handle=handle: handle(*call.eager(), call.value))
        else:
            values_hook, attn_hook = _subtract_hooks(model, layer, rows, l, T, mean, B, spec)
            run.hook(model.submodule(layer, model.spec.qkv), values_hook)
            run.hook(attn, attn_hook)
        # patching runs whole: patched from the prompt itself it must give the full row's numbers
        # bit for bit (the same products in one shape)
        gather = _ffn_module(model, layer) if COMPACT and spec.capture is None and spec.mode != "patch" else None
        if gather is not None:
            keep = _keep(rows, lambda r: r.ffn.get(l), (T,)) > 0
            if not keep.all():
                pre, post = _gather_hooks(keep, l)
                run.hook(gather, pre, pre=True)
                run.hook(model.submodule(layer, model.spec.down), post)  # before the removal's hook
        for i, branch in enumerate(_ffn_branches(model, layer)):
            run.hook(branch, _ffn_hook(rows, l, T, mean, B, spec, i))
    return interface


#: compute each FFN only at the (row, position) pairs whose block acts, and a graph's rows'
#: attention only at the queries its edges reach (False: everything, the plain batched run; the
#: tests compare the two)
COMPACT = True


# --------------------------------------------------------------------------------------------
# keep masks


def _keep(rows: Sequence[Any], parts: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``[1 + len(rows), *shape]`` float32: 1 where a part acts in that row (row 0: all).
    ``parts(row)`` is the row's index (an array, or a tuple of arrays) into ``shape``, or None."""
    keep = np.ones((1 + len(rows),) + shape, np.float32)
    for i, r in enumerate(rows, 1):
        idx = parts(r)
        if r.only:
            keep[i] = 0.0
        if idx is not None:
            keep[i][idx] = 1.0 if r.only else 0.0
    return keep


def _attn_keep(rows: Sequence[Any], layer: int, T: int, like: Any) -> Any:
    """``[B, T, T]`` on ``like``'s device and dtype: 1 where edge ``s -> t`` acts in that row."""
    import torch

    keep = _keep(rows, lambda r: r.edges.get(layer), (T, T))
    return torch.from_numpy(keep).to(device=like.device, dtype=like.dtype)


def _heads_of(v: Any, H: int) -> Any:
    """Values ``[B, G, S, d_h]`` repeated to ``[B, H, S, d_h]`` (head h reads group h // (H/G))."""
    G = v.shape[1]
    return v if G == H else v.repeat_interleave(H // G, dim=1)


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


def _capture(spec: Any, key: tuple, out: Any, **kept: Any) -> Any:
    """Record ``kept`` under ``key`` with a zero tensor added to ``out``, whose gradient is the
    metric's gradient there (:mod:`ltt.circuits.gradients`)."""
    import torch

    delta = torch.zeros_like(out, requires_grad=True)
    spec.capture[key] = {**kept, "delta": delta}
    return out + delta


# --------------------------------------------------------------------------------------------
# attention


def _interface_handler(rows, layer, T, mean, spec):
    import torch

    def handle(out, weights, value, sub=None):  # sub: the rows of the batch when not all (row 0 first)
        v = _heads_of(value, weights.shape[1])
        if spec.stats is not None:
            spec.observe(("v", layer), v[0].sum(dim=1), v.shape[2])
        if spec.capture is not None:  # delta on the attention output before its projection
            return _capture(spec, ("attn", layer), out, probs=weights.detach(), v=v.detach(), at="z"), weights
        keep = _attn_keep(rows if sub is None else sub, layer, T, weights)
        if spec.mode == "patch":
            z = _patch_difference(weights, v, keep)  # [B, H, T, d_h], exactly 0 in rows 0 and 1
            return out + z.transpose(1, 2).to(out.dtype), weights
        kept_w = weights * keep[:, None]
        new = torch.matmul(kept_w, v)
        if mean:
            new = new + (weights - kept_w).sum(-1, keepdim=True) * spec.value_mean(layer, v)[None, :, None, :]
        new = new.transpose(1, 2).contiguous().to(out.dtype)
        new[0] = out[0]  # the full row exactly as the model computed it
        return new, kept_w

    return handle


def _query_plan(rows: Sequence[Any], layer: int) -> tuple[list[int], list[int], np.ndarray, np.ndarray] | None:
    """Zero ablation: which rows run their whole attention (row 0 and every ``only=False`` row)
    and, for the ``only=True`` rows (a graph's own parts), the queries their edges of ``layer``
    reach: ``(dense rows, graph rows, queries [n, m] padded with their last, valid [n, m])``.
    Every other query of a graph's row has no edge and its attention output is exactly 0. None
    when no row is a graph's."""
    dense = [0] + [i for i, r in enumerate(rows, 1) if not r.only]
    only = [i for i, r in enumerate(rows, 1) if r.only]
    if not only:
        return None
    queries = [np.unique(rows[i - 1].edges[layer][0]) if layer in rows[i - 1].edges else np.zeros(0, np.int64)
               for i in only]
    m = max(len(q) for q in queries)
    idx = np.zeros((len(only), max(m, 1)), np.int64)
    valid = np.zeros(idx.shape, bool)
    for j, q in enumerate(queries):
        if len(q):
            idx[j, : len(q)], idx[j, len(q):], valid[j, : len(q)] = q, q[-1], True
    return dense, only, idx, valid


def _by_queries(call: Any, plan: tuple, handle: Any, rows: Sequence[Any], layer: int, T: int) -> Any:
    """The zero-ablation attention of a batch with the graph's rows run at their edges' queries
    alone (:func:`_query_plan`): the module's own eager attention on the dense rows (row 0 and
    the removed row, exactly as :func:`_interface_handler` does them) and on each graph row's
    queries, whose kept probabilities times the values give its output there; 0 elsewhere. A
    call not shaped like the layer's own (``[B, H, T, d_h]`` queries, a ``[B or 1, *, T, T]``
    mask) runs whole."""
    import torch

    q, k, v, mask = call.query, call.key, call.value, call.mask
    B = 1 + len(rows)
    if (q.dim() != 4 or tuple(q.shape[::2]) != (B, T) or mask is None or mask.dim() != 4
            or mask.shape[0] not in (1, B) or tuple(mask.shape[2:]) != (T, T)):
        return handle(*call.eager(), call.value)
    dense, only, idx, valid = plan
    H, dh = q.shape[1], q.shape[3]

    def rows_of(x, which):
        return x[torch.tensor(which, device=x.device)]

    d_mask = mask if mask.shape[0] == 1 else rows_of(mask, dense)
    out_d, w_d = call.eager_fn(call.module, rows_of(q, dense), rows_of(k, dense), rows_of(v, dense), d_mask,
                               *call.args, **call.kwargs)
    if out_d.dim() != 4 or tuple(out_d.shape) != (len(dense), T, H, dh):
        return handle(*call.eager(), call.value)
    new_d, _ = handle(out_d, w_d, rows_of(v, dense), [rows[i - 1] for i in dense[1:]])
    new = torch.zeros((B, T, H, dh), dtype=new_d.dtype, device=new_d.device)
    new[torch.tensor(dense, device=new.device)] = new_d
    if valid.any():
        n, m = idx.shape
        at = torch.from_numpy(idx).to(q.device)
        q_o = torch.gather(rows_of(q, only), 2, at[:, None, :, None].expand(n, H, m, dh))
        m_o = mask.expand(n, *mask.shape[1:]) if mask.shape[0] == 1 else rows_of(mask, only)
        m_o = torch.gather(m_o, 2, at[:, None, :, None].expand(n, m_o.shape[1], m, T))
        _, w_o = call.eager_fn(call.module, q_o, rows_of(k, only), rows_of(v, only), m_o, *call.args, **call.kwargs)
        keep = _attn_keep([rows[i - 1] for i in only], layer, T, w_o)[1:]  # [n, T, T] of the graph rows
        keep = torch.gather(keep, 1, at[:, :, None].expand(n, m, T))
        z = torch.matmul(w_o * keep[:, None], _heads_of(rows_of(v, only), H)).transpose(1, 2)  # [n, m, H, d_h]
        ok = torch.from_numpy(valid).to(q.device)
        row_ids = torch.tensor(only, device=q.device)[:, None].expand(n, m)
        new[row_ids[ok], at[ok]] = z[ok].to(new.dtype)
    return new, None


def _project(module: Any, z: Any) -> Any:
    """``z`` through a linear map's weight, without its bias (Conv1D keeps ``[in, out]``)."""
    import torch.nn.functional as F

    if type(module).__name__ == "Conv1D":
        return z @ module.weight
    return F.linear(z, module.weight)


def _subtract_hooks(model, layer_mod, rows, layer, T, mean, B, spec):
    """(values hook, attention hook) of the subtraction path (GPT-Neo, Falcon)."""
    import torch

    fam, config = model.spec, model.hf_model.config
    H, G, dh = model.n_heads, model.n_kv_heads, model.d_head
    o_proj = model.submodule(layer_mod, fam.o_proj)
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
        if spec.stats is not None:
            spec.observe(("v", layer), v[0].sum(dim=1), v.shape[2])
        if spec.capture is not None:  # delta on the output after the projection
            return (_capture(spec, ("attn", layer), out, probs=probs.detach(), v=v.detach(), at="o",
                             o_proj=o_proj),) + tuple(output[1:])
        keep = _attn_keep(rows, layer, T, probs)
        if spec.mode == "patch":
            change = _patch_difference(probs, v, keep)
        else:  # the removed edges' terms taken away (their mean replacement put in)
            removed = probs * (1.0 - keep)[:, None]
            change = -torch.matmul(removed, v)
            if mean:
                change = removed.sum(-1, keepdim=True) * spec.value_mean(layer, v)[None, :, None, :] + change
        change = change.transpose(1, 2).reshape(B, T, H * dh).to(out.dtype)
        return (out + _project(o_proj, change),) + tuple(output[1:])

    return values_hook, attn_hook


# --------------------------------------------------------------------------------------------
# FFN blocks


def _ffn_hook(rows, layer, T, mean, B, spec, branch=0):
    import torch

    def replace(output):
        flat = output.ndim == 2  # OPT runs its MLP on [B*T, d]
        x = output.view(B, T, -1) if flat else output
        if spec.stats is not None:
            spec.observe(("f", layer, branch), x[0].sum(dim=0), T)
        if spec.capture is not None:
            y = _capture(spec, ("ffn", layer, branch), x, x=x.detach())
        else:
            keep = torch.from_numpy(_keep(rows, lambda r: r.ffn.get(layer), (T,)) > 0).to(x.device)[..., None]
            if spec.mode == "patch":
                repl = x[1:2]  # the counterfactual's own block output (batch row 1)
            elif mean:
                repl = spec.branch_mean(layer, branch, x)
            else:
                repl = torch.zeros((), dtype=x.dtype, device=x.device)
            y = torch.where(keep, x, repl.to(x.dtype))
        return y.view_as(output) if flat else y

    def hook(module, args, output):
        if isinstance(output, tuple):  # a MoE block that also returns its router's scores
            return (replace(output[0]),) + tuple(output[1:])
        return replace(output)

    return hook


def _ffn_module(model: Any, layer: Any) -> Any:
    """The module that computes ``layer``'s dense FFN branch position by position (the parent of
    its down projection, whose forward takes the state alone), or None: a MoE block, OPT's
    MLP inside the layer itself, Bloom's and MPT's (which take the residual too)."""
    fam = model.spec
    if moe.experts_module(fam, layer) is not None or "." not in fam.down:
        return None
    module = get_module(layer, fam.down.rsplit(".", 1)[0])
    if module is None or module is layer:
        return None
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in positional and p.default is inspect.Parameter.empty]
    return module if len(required) == 1 else None


def _gather_hooks(keep: np.ndarray, layer: int) -> tuple[Any, Any]:
    """(pre-hook of the FFN module, hook of its down projection): the module runs on the
    ``keep [B, T]`` pairs alone (``[1, n, d]``) and the down projection's output comes back as
    ``[B, T, d]`` with zeros at the others. A call that does not look like the layer's own
    (another shape, keywords) runs in full."""
    import torch

    B, T = keep.shape
    n = int(keep.sum())
    mask = torch.from_numpy(keep)
    state = {"on": False}

    def pre(module, args):
        x = args[0] if args else None
        state["on"] = torch.is_tensor(x) and x.dim() == 3 and tuple(x.shape[:2]) == (B, T)
        if not state["on"]:
            return None
        return (x[mask.to(x.device)][None],) + tuple(args[1:])

    def post(module, args, output):
        if not state["on"]:
            return None
        state["on"] = False
        if not torch.is_tensor(output) or output.dim() != 3 or tuple(output.shape[:2]) != (1, n):
            raise RuntimeError(f"layer {layer}: the FFN's down projection returned shape "
                               f"{tuple(getattr(output, 'shape', ()))} for {n} gathered positions")
        full = output.new_zeros((B, T, output.shape[-1]))
        full[mask.to(output.device)] = output[0]
        return full

    return pre, post


def _ffn_branches(model: Any, layer: Any) -> list[Any]:
    """The modules whose outputs make up a layer's FFN branch: its post-branch norm, a MoE
    block (and a shared MLP the layer adds outside it), or the down projection."""
    fam, sub = model.spec, model.submodule
    if fam.ffn_post_norm:
        return [sub(layer, fam.ffn_post_norm)]
    if moe.experts_module(fam, layer) is None:
        return [sub(layer, fam.down)]
    shared = get_module(layer, fam.shared_expert) if fam.shared_outside else None
    return [sub(layer, fam.moe_block)] + ([shared] if shared is not None else [])
