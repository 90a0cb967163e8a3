"""Where each supported architecture family keeps the modules ltt hooks: one table, few functions.

A :class:`Family` names, by dotted path, the modules a trace needs: the layer list, the final
norm, and inside one layer the attention module (its output tuple carries the probabilities),
the module whose output holds the values (a v projection or a fused qkv projection, with the
layout that splits the values out of it), the output projection, the down projection, the norm
whose input is the after-attention state (sequential blocks), and the post-branch norms where
the family has them; for a mixture of experts the experts module, the shared expert and its
gate (:mod:`ltt.models.moe`). Small functions of the config say what varies within a family
(parallel or not, kv heads, clipped values, logit and branch scales, refusals). Everything
else in :mod:`ltt.models` is written once for all families. :data:`REFUSED` names known
architectures ltt cannot decompose exactly, with the reason; :func:`describe` and
:func:`markdown` print the table (``ltt models``, the README).

>>> from ltt.models.families import FAMILIES, supported
>>> FAMILIES["llama"].o_proj
'self_attn.o_proj'
>>> "gpt2" in supported()
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# How to cut the values [T, G, d_h] out of the ``qkv`` module's output [T, n].
# ``split``: a plain v projection; ``gpt2``: Conv1D c_attn, q|k|v blocks of d each;
# ``neox``: per head [q_h, k_h, v_h]; ``phi3``: q block (H*d_h) | k block (G*d_h) | v block;
# ``falcon``: one of Falcon's three fused layouts, chosen from the config; ``bigcode``: GPT-BigCode,
# q | k | v with one kv head (multi-query) or per head [q_h, k_h, v_h]; ``mla``: DeepSeek's
# kv_b_proj (the latent expanded), per head [k_nope_h, v_h].
VALUE_LAYOUTS = ("split", "gpt2", "neox", "phi3", "falcon", "bigcode", "mla")


def _never(config: Any) -> bool:
    return False


def _always(config: Any) -> bool:
    return True


def _neox_parallel(config: Any) -> bool:
    return bool(getattr(config, "use_parallel_residual", True))


def _falcon_parallel(config: Any) -> bool:
    # FalconDecoderLayer: the new architecture always adds attention and MLP to the same input.
    return bool(config.new_decoder_architecture or config.parallel_attn)


def _heads(config: Any) -> int:
    for key in ("num_attention_heads", "n_head", "num_heads"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    raise ValueError(f"cannot find the number of attention heads in {type(config).__name__}")


def _kv_heads(config: Any) -> int:
    return int(getattr(config, "num_key_value_heads", None) or _heads(config))


def _falcon_kv_heads(config: Any) -> int:
    if config.new_decoder_architecture:
        return int(config.num_kv_heads)
    return 1 if config.multi_query else _heads(config)


def _stablelm_parallel(config: Any) -> bool:
    return bool(getattr(config, "use_parallel_residual", False))


def _bigcode_kv_heads(config: Any) -> int:
    return 1 if config.multi_query else _heads(config)


def _no_clip(config: Any) -> float | None:
    return None


def _olmo_clip(config: Any) -> float | None:
    return getattr(config, "clip_qkv", None) or None


def _mpt_clip(config: Any) -> float | None:
    attn = getattr(config, "attn_config", None)
    return getattr(attn, "clip_qkv", None) or None


def _unit(config: Any) -> float:
    return 1.0


def _cohere_logit_scale(config: Any) -> float:
    return float(config.logit_scale)


def _granite_logit_scale(config: Any) -> float:
    return 1.0 / float(config.logits_scaling)


def _granite_residual(config: Any) -> float:
    return float(config.residual_multiplier)


def _bloom_refusal(config: Any) -> str | None:
    if getattr(config, "apply_residual_connection_post_layernorm", False):
        return ("this Bloom model adds each branch to the normalised input "
                "(apply_residual_connection_post_layernorm=True): a layer's output is not its input "
                "plus its branches, so it has no exact additive decomposition")
    if getattr(config, "pretraining_tp", 1) > 1 and getattr(config, "slow_but_exact", False):
        return ("slow_but_exact=True with pretraining_tp > 1 computes the projections slice by slice "
                "outside the modules ltt hooks; load it with slow_but_exact=False (same result)")
    return None


def _opt_refusal(config: Any) -> str | None:
    if not getattr(config, "do_layer_norm_before", True):
        return (
            "this OPT model applies LayerNorm after each residual add (post-LN, "
            "do_layer_norm_before=False, e.g. facebook/opt-350m): the residual stream is "
            "renormalised inside every layer, so a layer's output is not the sum of its input and "
            "its branches and has no exact additive decomposition. Pre-LN OPT sizes are supported."
        )
    return None


def _no_refusal(config: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Family:
    """Module paths of one architecture family (dotted, relative to the model or to one layer)."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # the ModuleList of decoder layers, from the CausalLM
    final_norm: str | None  # from the CausalLM
    attn: str  # from a layer: returns (output, probabilities [B, H, T, T])
    qkv: str  # from a layer: its output holds the values
    o_proj: str  # from a layer: input = concatenated head outputs
    down: str  # from a layer: input = neuron activations [T, F]
    ffn_norm: str | None  # from a layer: input = after-attention state (sequential blocks)
    values: str = "split"
    attn_post_norm: str | None = None  # applied to the attention branch before the add
    ffn_post_norm: str | None = None  # applied to the FFN branch before the add
    parallel: Callable[[Any], bool] = _never
    n_kv_heads: Callable[[Any], int] = _kv_heads
    norm_offset: float = 0.0  # Gemma RMSNorms scale by (1 + weight)
    unembed_pre: str | None = None  # from the CausalLM: a linear map before lm_head (OPT)
    refuse: Callable[[Any], str | None] = _no_refusal
    norm_kind: str | None = None  # "layer" for LayerNorm classes of the family's own (default: by type)
    norm_eps: float | None = None  # for norm modules that keep no epsilon attribute (OLMo)
    value_clip: Callable[[Any], float | None] = _no_clip  # values clamped to [-c, c] after the projection
    logit_scale: Callable[[Any], float] = _unit  # logits = lm_head(final_norm(x)) * scale
    branch_scale: Callable[[Any], float] = _unit  # each branch times this before the residual add
    experts: str | None = None  # from a layer: the experts module of a MoE layer (3-D weights)
    moe_block: str = "mlp"  # from a layer: the MoE block (its output is the FFN branch)
    shared_expert: str | None = None  # from a layer: the shared expert MLP of a MoE layer
    shared_down: str = "down_proj"  # from the shared expert: its down projection
    shared_outside: bool = False  # the shared expert is added to the MoE block's output by the layer
    shared_gate: str | None = None  # from a layer: a Linear whose sigmoid scales the shared expert
    moe_router: str | None = None  # from a layer: a router whose scores scale the experts' inputs (Llama 4)
    label: str = ""  # the family's name for people (the README and ``ltt models``)
    notes: str = ""  # what its decomposition handles beyond a plain sequential pre-norm block


_LLAMA = dict(
    layers="model.layers",
    final_norm="model.norm",
    attn="self_attn",
    qkv="self_attn.v_proj",
    o_proj="self_attn.o_proj",
    down="mlp.down_proj",
    ffn_norm="post_attention_layernorm",
)
_GEMMA2 = dict(
    _LLAMA,
    ffn_norm="pre_feedforward_layernorm",
    attn_post_norm="post_attention_layernorm",
    ffn_post_norm="post_feedforward_layernorm",
    norm_offset=1.0,
)

# Norms only after the branches (OLMo 2): the FFN reads the after-attention state itself.
_POST_ONLY = dict(
    _LLAMA,
    ffn_norm="mlp",
    attn_post_norm="post_attention_layernorm",
    ffn_post_norm="post_feedforward_layernorm",
)

# Sparse MoE FFNs (ltt.models.moe): every expert's neurons side by side, scaled by their gates.
_MOE = dict(_LLAMA, experts="mlp.experts")

_TABLE = [
    Family("gpt2", ("gpt2",), "transformer.h", "transformer.ln_f", "attn", "attn.c_attn",
           "attn.c_proj", "mlp.c_proj", "ln_2", values="gpt2",
           label="GPT-2", notes="fused `c_attn`, Conv1D weights, biases"),
    Family("gpt_neo", ("gpt_neo",), "transformer.h", "transformer.ln_f", "attn.attention",
           "attn.attention.v_proj", "attn.attention.out_proj", "mlp.c_proj", "ln_2",
           label="GPT-Neo", notes="local-attention layers"),
    Family("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "gpt_neox.final_layer_norm", "attention",
           "attention.query_key_value", "attention.dense", "mlp.dense_4h_to_h",
           "post_attention_layernorm", values="neox", parallel=_neox_parallel,
           label="GPT-NeoX / Pythia", notes="qkv fused per head"),
    Family("gptj", ("gptj",), "transformer.h", "transformer.ln_f", "attn", "attn.v_proj",
           "attn.out_proj", "mlp.fc_out", None, parallel=_always,
           label="GPT-J", notes="one shared LN; partial rotary"),
    Family("opt", ("opt",), "model.decoder.layers", "model.decoder.final_layer_norm", "self_attn",
           "self_attn.v_proj", "self_attn.out_proj", "fc2", "final_layer_norm",
           unembed_pre="model.decoder.project_out", refuse=_opt_refusal,
           label="OPT (pre-LN sizes)", notes="`project_out` before the unembedding; post-LN sizes "
           "(opt-350m) refused with the reason"),
    Family("llama", ("llama", "smollm3", "glm", "ernie4_5", "ministral", "ministral3", "helium", "seed_oss",
                     "arcee", "hunyuan_v1_dense", "cwm", "jais2", "exaone", "internlm3"), **_LLAMA,
           label="Llama, SmolLM2/3, GLM, Ernie 4.5, Ministral (3), Helium, Seed-OSS, Arcee, Hunyuan "
           "dense, CWM, Jais 2, EXAONE 3, InternLM3",
           notes="GQA, RMSNorm; biases where the config has them; layers without positions "
           "(SmolLM3) and partial rotary (GLM) touch only the probabilities"),
    Family("mistral", ("mistral",), **_LLAMA, label="Mistral", notes="GQA; sliding window"),
    Family("qwen2", ("qwen2",), **_LLAMA, label="Qwen2", notes="GQA; qkv biases (the v bias is in the values)"),
    Family("qwen3", ("qwen3",), **_LLAMA, label="Qwen3", notes="GQA; q/k norms"),
    Family("gemma", ("gemma",), **dict(_LLAMA, norm_offset=1.0),
           label="Gemma", notes="embedding scale; RMSNorm of (1 + weight)"),
    Family("gemma2", ("gemma2",), **_GEMMA2, label="Gemma 2",
           notes="post-branch norms linearised exactly with the frozen scale; softcapping"),
    Family("gemma3", ("gemma3_text",), **_GEMMA2, label="Gemma 3 (text)",
           notes="post-branch norms linearised exactly with the frozen scale; local/global layers"),
    Family("phi", ("phi",), "model.layers", "model.final_layernorm", "self_attn",
           "self_attn.v_proj", "self_attn.dense", "mlp.fc2", None, parallel=_always,
           label="Phi-1/2", notes="one shared LN; partial rotary"),
    Family("phi3", ("phi3",), **dict(_LLAMA, qkv="self_attn.qkv_proj", values="phi3"),
           label="Phi-3", notes="fused qkv and gate_up"),
    Family("falcon", ("falcon",), "transformer.h", "transformer.ln_f", "self_attention",
           "self_attention.query_key_value", "self_attention.dense", "mlp.dense_4h_to_h",
           "post_attention_layernorm", values="falcon", parallel=_falcon_parallel,
           n_kv_heads=_falcon_kv_heads,
           label="Falcon", notes="multi-query and grouped fused qkv; alibi or rotary"),
    Family("starcoder2", ("starcoder2",), **dict(_LLAMA, down="mlp.c_proj"),
           label="StarCoder2", notes="LayerNorm and biases everywhere; sliding window"),
    Family("cohere", ("cohere", "cohere2"), **dict(_LLAMA, ffn_norm=None), parallel=_always,
           norm_kind="layer", logit_scale=_cohere_logit_scale, label="Command R / R7B (Cohere 1/2)",
           notes="LayerNorm without bias (its own class); logit scale folded into the unembedding"),
    Family("stablelm", ("stablelm",), **_LLAMA, parallel=_stablelm_parallel, label="StableLM",
           notes="partial rotary; qkv biases; per-head q/k LayerNorms"),
    Family("olmo", ("olmo",), **_LLAMA, norm_kind="layer", norm_eps=1e-5, value_clip=_olmo_clip,
           label="OLMo", notes="LayerNorm without parameters; values clamped by `clip_qkv` as the "
           "model does"),
    Family("olmo2", ("olmo2", "olmo3", "exaone4"), **_POST_ONLY, label="OLMo 2, OLMo 3, EXAONE 4",
           notes="norms only after the branches (no pre-norm): each branch's post-norm linearised "
           "exactly with the frozen scale; the FFN reads the after-attention state itself"),
    Family("glm4", ("glm4",), **dict(_LLAMA, attn_post_norm="post_self_attn_layernorm",
                                     ffn_post_norm="post_mlp_layernorm"),
           label="GLM-4", notes="pre- and post-branch norms (post-norms linearised exactly); "
           "fused gate_up; partial rotary"),
    Family("apertus", ("apertus",), **dict(_LLAMA, ffn_norm="feedforward_layernorm"),
           label="Apertus", notes="xIELU MLP without gate; q/k norms"),
    Family("nemotron", ("nemotron",), **_LLAMA, norm_offset=1.0, label="Nemotron",
           notes="LayerNorm of (1 + weight); partial rotary; squared-ReLU MLP"),
    Family("gpt_bigcode", ("gpt_bigcode",), "transformer.h", "transformer.ln_f", "attn", "attn.c_attn",
           "attn.c_proj", "mlp.c_proj", "ln_2", values="bigcode", n_kv_heads=_bigcode_kv_heads,
           label="GPT-BigCode (SantaCoder, StarCoder 1)",
           notes="multi-query fused `c_attn` (one kv head for all query heads)"),
    Family("bloom", ("bloom",), "transformer.h", "transformer.ln_f", "self_attention",
           "self_attention.query_key_value", "self_attention.dense", "mlp.dense_4h_to_h",
           "post_attention_layernorm", values="neox", refuse=_bloom_refusal, label="BLOOM",
           notes="alibi; embedding LayerNorm before layer 0; qkv fused per head"),
    Family("mpt", ("mpt",), "transformer.blocks", "transformer.norm_f", "attn", "attn.Wqkv",
           "attn.out_proj", "ffn.down_proj", "norm_2", values="gpt2", value_clip=_mpt_clip,
           label="MPT", notes="alibi; LayerNorm without bias; values clamped by `clip_qkv`"),
    Family("granite", ("granite",), **_LLAMA, branch_scale=_granite_residual,
           logit_scale=_granite_logit_scale, label="Granite",
           notes="embedding multiplier (in the layer-0 input); each branch scaled by the residual "
           "multiplier before the add (a row scale on its parts, exact); logits divided by "
           "`logits_scaling` (folded into the unembedding)"),
    Family("granitemoe", ("granitemoe",), **dict(_LLAMA, moe_block="block_sparse_moe",
                                                 experts="block_sparse_moe.experts"),
           branch_scale=_granite_residual, logit_scale=_granite_logit_scale, label="GraniteMoE",
           notes="MoE as Mixtral, with Granite's multipliers"),
    Family("granitemoeshared", ("granitemoeshared",), **dict(_LLAMA, moe_block="block_sparse_moe",
                                                             experts="block_sparse_moe.experts"),
           shared_expert="shared_mlp", shared_down="output_linear", shared_outside=True,
           branch_scale=_granite_residual, logit_scale=_granite_logit_scale, label="GraniteMoE shared",
           notes="GraniteMoE plus a shared MLP the layer adds to the experts' output (its neurons "
           "are parts of the same FFN node)"),
    Family("llama4", ("llama4_text",), **dict(_LLAMA, down="feed_forward.down_proj",
                                              moe_block="feed_forward", experts="feed_forward.experts"),
           shared_expert="feed_forward.shared_expert", moe_router="feed_forward.router",
           label="Llama 4 (text)", notes="MoE whose router scales each expert's input (every "
           "expert runs, on zero input when not chosen), plus a shared expert; dense layers "
           "between; chunked attention and layers without positions touch only the probabilities"),
    Family("mixtral", ("mixtral",), **_MOE, label="Mixtral",
           notes="MoE: the FFN's parts are the routed experts, each one's neurons scaled by its gate"),
    Family("qwen2_moe", ("qwen2_moe",), **_MOE, shared_expert="mlp.shared_expert",
           shared_gate="mlp.shared_expert_gate", label="Qwen1.5/2-MoE",
           notes="MoE with a shared expert scaled by its sigmoid gate; dense layers where the config "
           "says; qkv biases"),
    Family("qwen3_moe", ("qwen3_moe", "mellum", "phimoe"), **_MOE, label="Qwen3-MoE, Mellum, PhiMoE",
           notes="MoE; q/k norms where the config has them; the router's own top-k weights "
           "(PhiMoE's sparse mixer included) are read from the experts' inputs"),
    Family("moe_shared", ("glm4_moe", "ernie4_5_moe", "solar_open"), **_MOE,
           shared_expert="mlp.shared_experts", label="GLM-4.5 MoE, Ernie 4.5 MoE, Solar Open",
           notes="MoE with always-on shared experts; dense layers where the config says"),
    Family("hunyuan_moe", ("hunyuan_v1_moe",), **_MOE, shared_expert="mlp.shared_mlp",
           label="Hunyuan MoE", notes="MoE with a shared MLP; q/k norms"),
    Family("flex_olmo", ("flex_olmo",), **dict(_POST_ONLY, experts="mlp.experts"), label="FlexOlmo",
           notes="MoE with norms only after the branches (linearised exactly)"),
    Family("youtu", ("youtu",), **dict(_LLAMA, qkv="self_attn.kv_b_proj", values="mla"),
           n_kv_heads=_heads, label="Youtu-LLM", notes="dense MLP with DeepSeek's latent attention"),
    Family("vaultgemma", ("vaultgemma",), **dict(_LLAMA, ffn_norm="pre_feedforward_layernorm"),
           norm_offset=1.0, label="VaultGemma", notes="Gemma's norms and embedding scale; softcapping"),
    Family("nanochat", ("nanochat",), **dict(_LLAMA, down="mlp.fc2"), label="nanochat",
           notes="RMSNorms without weights; q/k norms; logit softcapping"),
    Family("persimmon", ("persimmon",), "model.layers", "model.final_layernorm", "self_attn",
           "self_attn.query_key_value", "self_attn.dense", "mlp.dense_4h_to_h",
           "post_attention_layernorm", values="neox", label="Persimmon",
           notes="qkv fused per head; per-head q/k LayerNorms; partial rotary"),
    Family("olmoe", ("olmoe",), **_MOE, label="OLMoE", notes="MoE; q/k norms"),
    Family("deepseek_v3", ("deepseek_v3", "deepseek_v2"), **dict(_MOE, qkv="self_attn.kv_b_proj", values="mla"),
           n_kv_heads=_heads, shared_expert="mlp.shared_experts", label="DeepSeek-V2/V3",
           notes="multi-head latent attention: per-head values recovered from the expanded latent "
           "(`kv_b_proj`); MoE with shared experts after the first dense layers"),
    Family("gpt_oss", ("gpt_oss",), **_MOE, label="gpt-oss",
           notes="attention sinks (probability mass that goes to no token, so rows sum to < 1 and "
           "the parts over real tokens stay exact); MoE with per-expert biases (a per-token bias "
           "part); biases"),
]

#: Family by config.model_type.
FAMILIES: dict[str, Family] = {mt: fam for fam in _TABLE for mt in fam.model_types}

_RECURRENT = ("the architecture has state-space, recurrent or linear-attention layers: they mix tokens through a "
              "state, not through attention probabilities over the source tokens, so there are no "
              "exact per-source parts for ltt to report")

#: Known causal LMs ltt refuses, with the reason (the error names it instead of "unsupported").
REFUSED: dict[str, str] = {
    **{mt: _RECURRENT for mt in ("mamba", "mamba2", "falcon_mamba", "jamba", "zamba", "zamba2", "bamba",
                                 "falcon_h1", "nemotron_h", "granitemoehybrid", "lfm2", "lfm2_moe",
                                 "qwen3_next", "kimi_linear", "minimax", "rwkv", "recurrent_gemma",
                                 "xlstm")},
    "diffllama": ("differential attention subtracts a second softmax map from the first, so a "
                  "head's weights are not the probabilities its eager attention returns"),
    **{mt: ("its eager attention returns the probabilities before the per-head sink scaling it "
            "then applies to each head's output, so the returned weights are not the ones the heads "
            "use (checked: the parts miss the state by up to 80%)") for mt in ("granite_swa",
                                                                             "granitemoe_swa")},
}


def supported() -> list[str]:
    """The ``config.model_type`` values ltt can trace, sorted."""
    return sorted(FAMILIES)


def family_for(config: Any) -> Family:
    """The :class:`Family` of a transformers config, or a ValueError listing the supported ones
    (or saying why a supported family's variant is refused)."""
    model_type = getattr(config, "model_type", None)
    fam = FAMILIES.get(model_type)
    if fam is None and model_type in REFUSED:
        raise ValueError(f"cannot trace model_type={model_type!r}: {REFUSED[model_type]}")
    if fam is None:
        raise ValueError(
            f"unsupported architecture: config.model_type={model_type!r} "
            f"({', '.join(getattr(config, 'architectures', None) or []) or 'no architectures listed'}); "
            f"ltt supports the model types: {', '.join(supported())}"
        )
    reason = fam.refuse(config)
    if reason:
        raise ValueError(f"cannot trace model_type={model_type!r}: {reason}")
    return fam


def _block(fam: Family) -> str:
    if fam.parallel is _always:
        return "parallel block (x + attention + FFN, one step)"
    if fam.parallel is _never:
        return "sequential"
    return "parallel or sequential, from the config"


def decomposition(fam: Family) -> str:
    """How a layer of ``fam`` is decomposed, in words (the block shape, then its quirks).

    >>> decomposition(FAMILIES["cohere"]).split(";")[0]
    'parallel block (x + attention + FFN, one step)'
    """
    return f"{_block(fam)}; {fam.notes}" if fam.notes else _block(fam)


def describe() -> str:
    """Every supported ``model_type``, one line each, with its family and decomposition (what
    ``ltt models`` prints).

    >>> print(describe().splitlines()[0])
    model_type        family       decomposition
    """
    lines = [f"{'model_type':<17} {'family':<12} decomposition"]
    for mt in supported():
        fam = FAMILIES[mt]
        lines.append(f"{mt:<17} {fam.name:<12} {decomposition(fam)}")
    lines.append(f"{len(FAMILIES)} model types in {len(_TABLE)} families. Refused, with the reason: "
                 f"{', '.join(sorted(REFUSED))} (ltt.models.families.REFUSED).")
    return "\n".join(lines)


def markdown() -> str:
    """The README's table of supported families (``ltt models --markdown``).

    >>> markdown().splitlines()[0]
    '| family | `model_type` | decomposition |'
    """
    rows = ["| family | `model_type` | decomposition |", "|---|---|---|"]
    for fam in _TABLE:
        types = ", ".join(fam.model_types)
        rows.append(f"| {fam.label or fam.name} | {types} | {decomposition(fam)} |")
    by_reason: dict[str, list[str]] = {}
    for mt in sorted(REFUSED):
        by_reason.setdefault(REFUSED[mt], []).append(mt)
    rows += ["", "Refused, with the reason in the error:", "", "| `model_type` | why |", "|---|---|"]
    rows += [f"| {', '.join(types)} | {why} |" for why, types in by_reason.items()]
    return "\n".join(rows)


def get_module(root: Any, path: str | None) -> Any:
    """``root`` followed along a dotted ``path`` (None when the path is None or a step is None)."""
    if path is None:
        return None
    mod = root
    for step in path.split("."):
        mod = getattr(mod, step, None)
        if mod is None:
            return None
    return mod


def split_values(family: Family, config: Any, out: np.ndarray, n_heads: int, n_kv: int,
                 d_head: int) -> np.ndarray:
    """The values ``[T, G, d_h]`` inside the ``qkv`` module's output ``out [T, n]`` (a view)."""
    T = out.shape[0]
    layout = family.values
    clip = family.value_clip(config)
    if clip is not None:
        # the model clamps q, k, v after the projection ltt hooks (OLMo, MPT clip_qkv)
        out = np.clip(out, -clip, clip)
    if layout == "bigcode":
        layout = "phi3" if config.multi_query else "neox"
    if layout == "mla":
        return out.reshape(T, n_heads, -1)[:, :, int(config.qk_nope_head_dim):]
    if layout == "split":
        return out.reshape(T, n_kv, d_head)
    if layout == "gpt2":
        d = n_heads * d_head
        return out[:, 2 * d: 3 * d].reshape(T, n_heads, d_head)
    if layout == "neox":
        return out.reshape(T, n_heads, 3 * d_head)[:, :, 2 * d_head:]
    if layout == "phi3":
        return out[:, (n_heads + n_kv) * d_head:].reshape(T, n_kv, d_head)
    if layout == "falcon":
        if config.new_decoder_architecture:
            return out.reshape(T, n_kv, n_heads // n_kv + 2, d_head)[:, :, -1, :]
        if config.multi_query:
            return out.reshape(T, n_heads + 2, d_head)[:, -1:, :]
        return out.reshape(T, n_heads, 3, d_head)[:, :, 2, :]
    raise ValueError(f"unknown value layout {layout!r}; expected one of {VALUE_LAYOUTS}")

