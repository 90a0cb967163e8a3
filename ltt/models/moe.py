"""Mixture-of-experts FFN blocks as exact parts: routed experts, shared experts, biases, neurons.

For a token t, a sparse MoE block computes ``f_t = sum_k w[t,k] * E_{e(t,k)}(x_t) + s_t`` with the
router's chosen experts ``e(t, k)`` and gate weights ``w[t, k]``, and where the family has one a
shared expert ``s_t`` (Qwen2-MoE scales it by ``sigmoid(g . x_t)``). Each expert is a gated MLP
``E_e(x) = a_e(x) @ D_e (+ b_e)``. ltt lays the block out as one wide FFN whose neurons are every
expert's neurons, ``[expert 0 | expert 1 | ... | shared]``, with

    act[t, e*F + i] = w[t, k] * a_e(x_t)_i      (0 for experts the router did not choose)
    act[t, E*F + j] = gate_t * a_shared(x_t)_j
    w_down           = [D_0; D_1; ...; D_shared]      ([E*F + F_s, d])
    bias[t]          = sum_k w[t, k] * b_{e(t,k)}    (gpt-oss's per-expert output biases)

so ``act @ w_down + bias`` is the block output exactly, neuron by neuron, each neuron scaled by
its gate; an expert's part is the sum of its neurons. The activations are computed inside the
forward pass, from the experts module's own inputs (the routed tokens and weights the router
handed it) and its own weights and activation, in the model's dtype; the block output is hooked
separately, so the test that the parts rebuild it is a real check.

>>> from ltt.models.moe import MoeLayout                      # doctest: +SKIP
>>> trace.layers[0].moe.experts[-1], trace.layers[0].moe.weights[-1]   # doctest: +SKIP
(array([3, 0]), array([0.61, 0.39], dtype=float32))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ltt.models.families import Family, get_module

# The public part; the rest is the trace's machinery (ltt.models.record, ltt.models.tracing).
__all__ = ["MoeLayout", "ExpertShares", "expert_shares", "router_panel"]


@dataclass
class MoeLayout:
    """The router's choices for one MoE layer and where each expert's neurons sit in ``act``.

    ``experts [T, k]`` chosen expert ids, ``weights [T, k]`` their gate weights (float32; for
    Llama 4 the sigmoid scores that scale each chosen expert's input instead of its output),
    ``n_experts``, ``d_expert`` (neurons per expert, F), ``d_shared`` (the shared experts'
    neurons, 0 when none), ``shared_gate [T]`` (Qwen2-MoE's sigmoid gate, else None). Expert e
    owns ``act[:, e*F:(e+1)*F]``; the shared experts own ``act[:, n_experts*F:]``.
    """

    experts: np.ndarray
    weights: np.ndarray
    n_experts: int
    d_expert: int
    d_shared: int
    shared_gate: np.ndarray | None

    def expert_slice(self, e: int) -> slice:
        return slice(e * self.d_expert, (e + 1) * self.d_expert)

    @property
    def shared_slice(self) -> slice:
        start = self.n_experts * self.d_expert
        return slice(start, start + self.d_shared)


def _shared(fam: Family, layer: Any) -> tuple[Any, Any]:
    """The layer's shared expert module and its down projection (None, None when it has none)."""
    shared = get_module(layer, fam.shared_expert) if fam.shared_expert else None
    return (None, None) if shared is None else (shared, get_module(shared, fam.shared_down))


def experts_module(fam: Family, layer: Any) -> Any:
    """The layer's experts module (3-D expert weights), or None for a dense layer."""
    return get_module(layer, fam.experts) if fam.experts else None


def _transposed(experts: Any) -> bool:
    # transformers' experts modules say how their 3-D weights are laid out: gpt-oss keeps
    # gate_up as [E, d, 2F] and down as [E, F, d], the others [E, 2F, d] and [E, d, F]
    if hasattr(experts, "is_transposed"):
        return bool(experts.is_transposed)
    return int(experts.gate_up_proj.shape[1]) == int(experts.down_proj.shape[2])  # Llama 4


def _expert_act(module: Any, xs: Any, e: int) -> Any:
    """The activations entering expert ``e``'s down projection for rows ``xs``, with the
    module's own weights, biases and gating (``_apply_gate``: SwiGLU, gpt-oss's clamped GLU)."""
    import torch

    gated = getattr(module, "has_gate", True)
    w = (module.gate_up_proj if gated else module.up_proj)[e]
    h = xs @ w if _transposed(module) else torch.nn.functional.linear(xs, w)
    if getattr(module, "has_bias", False):
        h = h + (module.gate_up_proj_bias if gated else module.up_proj_bias)[e]
    return module._apply_gate(h) if gated else module.act_fn(h)


def check_experts(experts: Any, fam: Family | None = None) -> None:
    """Refuse an experts module whose computation ltt does not reproduce exactly."""
    if fam is not None and fam.moe_router:
        return  # Llama 4: every expert runs on router-scaled inputs (see register)
    if not hasattr(experts, "_apply_gate") or not hasattr(experts, "down_proj"):
        raise ValueError(f"{type(experts).__name__}: ltt decomposes experts modules with 3-D "
                         "gate_up/down weights (transformers' experts interface) only")
    if getattr(experts, "has_post_expert_norm", False):
        raise ValueError(f"{type(experts).__name__} normalises each expert's output: not decomposed")


def expert_width(experts: Any) -> int:
    w = experts.down_proj
    return int(w.shape[1] if _transposed(experts) else w.shape[2])


def _register_routed_inputs(fam: Family, layer: Any, experts: Any, rec: dict[str, Any], T: int,
                            to_numpy: Any, tag: Any) -> list[Any]:
    """Llama 4: the router's sigmoid scores scale each expert's *input* (0 for the experts it did
    not choose) and every expert runs on every token; expert e's activations are
    ``up * act(gate)`` of its scaled input, exactly as its batched matmul computes them."""
    import torch

    router = get_module(layer, fam.moe_router)
    n_exp = int(experts.gate_up_proj.shape[0])

    def on_router(module, args, output):
        scores = output[0] if isinstance(output, (tuple, list)) else output
        rec["moe_scores"] = to_numpy(scores).reshape(T, n_exp)

    def on_experts(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            x = x.view(n_exp, -1, x.shape[-1])
            gate, up = torch.bmm(x, module.gate_up_proj).chunk(2, dim=-1)
            a = up * module.act_fn(gate)  # [E, T, F]
        rec["moe_act"] = np.ascontiguousarray(to_numpy(a).transpose(1, 0, 2).reshape(T, -1))
        rec["moe_bias"] = None

    return [router.register_forward_hook(tag(on_router)),
            experts.register_forward_pre_hook(tag(on_experts), with_kwargs=True)]


def ffn_width(fam: Family, layer: Any) -> int:
    """Neurons of a MoE layer's wide FFN: every routed expert's, then the shared experts'."""
    experts = experts_module(fam, layer)
    check_experts(experts, fam)
    _, shared_down = _shared(fam, layer)
    width = int(experts.down_proj.shape[0]) * expert_width(experts)
    if shared_down is not None:
        width += int(shared_down.weight.shape[1])
    return width


def down_weights(fam: Family, layer: Any, param_numpy: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(w_down [E*F + F_s, d], per-expert output biases [E, d] or None)``, float32 copies."""
    experts = experts_module(fam, layer)
    d = param_numpy(experts.down_proj)
    rows = [d.reshape(-1, d.shape[-1])] if _transposed(experts) else [
        np.ascontiguousarray(d[e].T) for e in range(d.shape[0])]
    shared, shared_down = _shared(fam, layer)
    if shared_down is not None:
        rows.append(np.ascontiguousarray(param_numpy(shared_down.weight).T))
        if getattr(shared_down, "bias", None) is not None:
            raise ValueError(f"{type(shared).__name__}: a shared expert with a down bias is not supported")
    bias = getattr(experts, "down_proj_bias", None)
    return (np.ascontiguousarray(np.concatenate(rows), dtype=np.float32),
            None if bias is None else np.asarray(param_numpy(bias), dtype=np.float32))


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (tuple, list)) else x


def register(fam: Family, layer: Any, rec: dict[str, Any], T: int, to_numpy: Any,
             tag: Any = lambda fn: fn) -> list[Any]:
    """Hooks that fill ``rec`` for a MoE layer: ``moe_act`` (the routed experts' activations),
    ``out_down`` (the block output), the shared expert's activations and gate, ``moe_bias``
    ([T, d] or None); :func:`finish` assembles them. ``tag`` marks each hook function (the
    recording's safety net removes tagged hooks)."""
    import torch

    experts = experts_module(fam, layer)
    block = get_module(layer, fam.moe_block)
    shared, shared_down = _shared(fam, layer)
    gate = get_module(layer, fam.shared_gate) if fam.shared_gate else None
    n_exp = int(experts.down_proj.shape[0])
    F = expert_width(experts)
    handles: list[Any] = []
    if fam.moe_router:
        handles.extend(_register_routed_inputs(fam, layer, experts, rec, T, to_numpy, tag))

    def on_experts(module, args, kwargs):
        def pick(i: int, *names: str) -> Any:
            if i < len(args):
                return args[i]
            return next((kwargs[n] for n in names if n in kwargs), None)

        x = pick(0, "hidden_states")
        idx = pick(1, "top_k_index", "router_indices", "topk_indices")
        w = pick(2, "top_k_weights", "routing_weights", "topk_weights")
        if idx is None or w is None:
            raise RuntimeError(f"{type(module).__name__} was called without routing inputs ltt can read")
        with torch.no_grad():
            x = x.reshape(-1, x.shape[-1])
            act = torch.zeros((x.shape[0], n_exp * F), dtype=torch.float32, device=x.device)
            bias = None
            b_down = getattr(module, "down_proj_bias", None)
            if b_down is not None:
                bias = torch.zeros((x.shape[0], x.shape[-1]), dtype=torch.float32, device=x.device)
            for e in torch.unique(idx).tolist():
                if not 0 <= e < n_exp:
                    continue  # a masked slot (no expert)
                tok, slot = torch.where(idx == e)
                a = _expert_act(module, x[tok], e)
                gw = w[tok, slot, None]
                act[tok, e * F:(e + 1) * F] = (a * gw).float()
                if bias is not None:
                    bias.index_add_(0, tok, (b_down[e][None, :] * gw).float())
        rec["moe_act"] = to_numpy(act)
        rec["moe_bias"] = None if bias is None else to_numpy(bias)
        rec["moe_idx"] = idx.detach().to("cpu").numpy().astype(np.int64).reshape(T, -1)
        rec["moe_w"] = to_numpy(w).reshape(T, -1)

    if not fam.moe_router:
        handles.append(experts.register_forward_pre_hook(tag(on_experts), with_kwargs=True))

    def on_block(module, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        rec["out_down"] = np.ascontiguousarray(to_numpy(out).reshape(T, -1))

    handles.append(block.register_forward_hook(tag(on_block)))
    if shared is not None:
        def on_shared(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
            rec["shared_act"] = to_numpy(x).reshape(T, -1)

        handles.append(shared_down.register_forward_pre_hook(tag(on_shared), with_kwargs=True))
        if fam.shared_outside:
            def on_shared_out(module, args, output):  # added to the block's output by the layer
                rec["shared_out"] = np.ascontiguousarray(to_numpy(_first(output)).reshape(T, -1))

            handles.append(shared.register_forward_hook(tag(on_shared_out)))
    if gate is not None:
        def on_gate(module, args, output):
            rec["shared_gate"] = to_numpy(torch.sigmoid(output)).reshape(T)

        handles.append(gate.register_forward_hook(tag(on_gate)))
    return handles


def finish(fam: Family, layer: Any, rec: dict[str, Any], T: int) -> None:
    """Assemble ``rec["act"]`` and ``rec["moe"]`` from what the hooks recorded."""
    experts = experts_module(fam, layer)
    n_exp = int(experts.down_proj.shape[0])
    F = expert_width(experts)
    if rec.get("moe_act") is None:
        raise RuntimeError("the experts module of a MoE layer was not called during the trace")
    act = rec.pop("moe_act")
    scores = rec.pop("moe_scores", None)
    if scores is not None:  # Llama 4: the chosen experts are those with a non-zero input scale
        k = int(get_module(layer, fam.moe_router).top_k)
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        rec["moe_idx"] = idx.astype(np.int64)
        rec["moe_w"] = np.take_along_axis(scores, idx, axis=1)
    d_shared = 0
    gate = rec.pop("shared_gate", None)
    shared = rec.pop("shared_act", None)
    if fam.shared_outside and _shared(fam, layer)[0] is not None:
        out = rec.pop("shared_out", None)
        if out is None:
            raise RuntimeError("the shared MLP of a MoE layer was not called during the trace")
        rec["out_down"] = rec["out_down"] + out  # the FFN branch: routed experts + shared MLP
    if _shared(fam, layer)[0] is not None:
        if shared is None:
            raise RuntimeError("the shared expert of a MoE layer was not called during the trace")
        d_shared = shared.shape[1]
        part = shared if gate is None else shared * gate[:, None]
        act = np.concatenate([act, part.astype(np.float32)], axis=1)
    rec["act"] = np.ascontiguousarray(act, dtype=np.float32)
    rec["moe"] = MoeLayout(rec.pop("moe_idx"), np.ascontiguousarray(rec.pop("moe_w"), dtype=np.float32),
                           n_exp, F, d_shared, gate)


@dataclass
class ExpertShares:
    """The parts of one MoE FFN node (layer, token) and their shares of its output state.

    ``experts``: the chosen expert ids (router order); ``weights``: their gate weights;
    ``shares``: each chosen expert's share; ``vectors [k, d]``: each chosen expert's part of the
    block output (gate weight included); ``shared`` / ``bias``: the shared experts' and the
    bias's shares (None when the layer has none); ``residual``: the after-attention state's
    share. All shares sum to 1 (the proximity measure, :func:`ltt.contributions`).
    """

    experts: list[int]
    weights: list[float]
    shares: np.ndarray
    vectors: np.ndarray
    shared: float | None
    bias: float | None
    residual: float


def expert_shares(trace: Any, layer: int, token: int, norm: int = 1) -> ExpertShares:
    """Each routed expert's (and the shared experts', and the bias's) share of the FFN node at
    ``(layer, token)`` of a MoE model.

    >>> es = expert_shares(trace, 3, -1)                 # doctest: +SKIP
    >>> es.experts, es.shares                            # doctest: +SKIP
    ([5, 1], array([0.41, 0.22], dtype=float32))
    """
    from ltt.kernels import contributions

    if not isinstance(layer, (int, np.integer)) or not -trace.n_layers <= layer < trace.n_layers:
        raise ValueError(f"layer must be an int in [-{trace.n_layers}, {trace.n_layers}), got {layer!r}")
    lb = trace.layers[layer]
    if lb.moe is None:
        raise ValueError(f"layer {layer} of this trace is a dense FFN, not a mixture of experts")
    T = lb.n_tokens
    if not isinstance(token, (int, np.integer)) or not -T <= token < T:
        raise ValueError(f"token must be an int in [-{T}, {T}), got {token!r}")
    t = int(token) % T
    m = lb.moe

    def part(cols: slice) -> np.ndarray:
        wd = lb.ffn_norm.linear(np.asarray(lb.w_down[cols], dtype=np.float64))
        return (lb.act[t, cols].astype(np.float64) @ wd) * lb.ffn_norm.row(t)

    pairs = [(int(e), float(w)) for e, w in zip(m.experts[t], m.weights[t]) if 0 <= int(e) < m.n_experts]
    chosen = [e for e, _ in pairs]
    vectors = [part(m.expert_slice(e)) for e in chosen]
    parts = list(vectors)
    if m.d_shared:
        parts.append(part(m.shared_slice))
    if lb.ffn_bias is not None:
        parts.append(np.asarray(lb.ffn_bias[t], dtype=np.float64))
    resid = lb.resid_post[t] - lb.ffn_out[t] if lb.resid_mid is None else lb.resid_mid[t]
    parts.insert(0, np.asarray(resid, dtype=np.float64))
    shares = contributions(np.stack(parts).astype(np.float32), lb.resid_post[t], norm=norm)
    k = len(chosen)
    return ExpertShares(
        experts=chosen,
        weights=[w for _, w in pairs],
        shares=np.asarray(shares[1: 1 + k], dtype=np.float32),
        vectors=np.stack(vectors).astype(np.float32),
        shared=float(shares[1 + k]) if m.d_shared else None,
        bias=float(shares[-1]) if lb.ffn_bias is not None else None,
        residual=float(shares[0]),
    )


def router_panel(trace: Any, layer: int, token: int, neurons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The router of a MoE FFN node for the widget's FFN panel: the chosen experts with their gate
    weights and shares (largest share first), the shared experts' and bias's shares; each entry
    of ``neurons`` (``{"neuron": wide index, ...}``) gets its ``expert`` and ``local`` index.

    >>> router_panel(trace, 3, -1)["experts"][0]          # doctest: +SKIP
    {'expert': 5, 'gate': 0.61, 'share': 0.41}
    """
    es = expert_shares(trace, layer, token)
    m = trace.layers[layer].moe
    rows = sorted(({"expert": e, "gate": w, "share": float(s)} for e, w, s in zip(es.experts, es.weights, es.shares)),
                  key=lambda r: -r["share"])
    for n in neurons or []:
        i = int(n["neuron"])
        if i < m.n_experts * m.d_expert:
            n["expert"], n["local"] = i // m.d_expert, i % m.d_expert
        else:
            n["expert"], n["local"] = "shared", i - m.n_experts * m.d_expert
    return {"experts": rows, "shared": es.shared, "bias": es.bias, "n_experts": m.n_experts}
