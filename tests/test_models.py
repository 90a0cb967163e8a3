"""Model adapters on tiny random models of every family: exact decompositions, loading, errors."""

from __future__ import annotations


import numpy as np
import pytest

import torch  # noqa: E402

import ltt  # noqa: E402
from ltt import _reference  # noqa: E402

# Family key (tests/conftest.py) -> (ltt family name, parallel blocks)
FAMILIES = {
    "gpt2": ("gpt2", False),
    "gpt_neo": ("gpt_neo", False),
    "gpt_neox": ("gpt_neox", True),
    "gpt_neox_seq": ("gpt_neox", False),
    "gptj": ("gptj", True),
    "opt": ("opt", False),
    "llama": ("llama", False),
    "mistral": ("mistral", False),
    "qwen2": ("qwen2", False),
    "qwen3": ("qwen3", False),
    "gemma": ("gemma", False),
    "gemma2": ("gemma2", False),
    "gemma3": ("gemma3", False),
    "phi": ("phi", True),
    "phi3": ("phi3", False),
    "falcon": ("falcon", True),
    "falcon_seq": ("falcon", False),
    "falcon_mq": ("falcon", True),
    "starcoder2": ("starcoder2", False),
    "cohere": ("cohere", True),
    "cohere2": ("cohere", True),
    "stablelm": ("stablelm", False),
    "stablelm_par": ("stablelm", True),
    "olmo": ("olmo", False),
    "olmo2": ("olmo2", False),
    "olmo3": ("olmo2", False),
    "exaone4": ("olmo2", False),
    "glm4": ("glm4", False),
    "glm": ("llama", False),
    "smollm3": ("llama", False),
    "ernie4_5": ("llama", False),
    "ministral": ("llama", False),
    "helium": ("llama", False),
    "seed_oss": ("llama", False),
    "arcee": ("llama", False),
    "hunyuan_v1_dense": ("llama", False),
    "apertus": ("apertus", False),
    "nemotron": ("nemotron", False),
    "gpt_bigcode": ("gpt_bigcode", False),
    "gpt_bigcode_mha": ("gpt_bigcode", False),
    "bloom": ("bloom", False),
    "mpt": ("mpt", False),
    "granite": ("granite", False),
    "granitemoe": ("granitemoe", False),
    "granitemoeshared": ("granitemoeshared", False),
    "llama4": ("llama4", False),
    "ministral3": ("llama", False),
    "exaone": ("llama", False),
    "internlm3": ("llama", False),
    "cwm": ("llama", False),
    "jais2": ("llama", False),
    "youtu": ("youtu", False),
    "vaultgemma": ("vaultgemma", False),
    "nanochat": ("nanochat", False),
    "persimmon": ("persimmon", False),
    "deepseek_v2": ("deepseek_v3", False),
    "mellum": ("qwen3_moe", False),
    "phimoe": ("qwen3_moe", False),
    "glm4_moe": ("moe_shared", False),
    "ernie4_5_moe": ("moe_shared", False),
    "solar_open": ("moe_shared", False),
    "hunyuan_v1_moe": ("hunyuan_moe", False),
    "flex_olmo": ("flex_olmo", False),
    "mixtral": ("mixtral", False),
    "qwen2_moe": ("qwen2_moe", False),
    "qwen3_moe": ("qwen3_moe", False),
    "olmoe": ("olmoe", False),
    "deepseek_v3": ("deepseek_v3", False),
    "gpt_oss": ("gpt_oss", False),
}
BRANCH_SCALED = {"granite", "granitemoe", "granitemoeshared"}  # residual_multiplier: a constant row scale per branch
SINKS = {"gpt_oss"}  # attention sinks: probability mass that goes to no token
POST_NORM = {"gemma2", "gemma3", "olmo2", "olmo3", "exaone4", "glm4", "flex_olmo"}
from conftest import PROMPT  # noqa: E402 (the prompt of the shared `traced` fixture)
TOL = 1e-4


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float((np.abs(a - b).max(axis=-1) / (np.abs(b).max(axis=-1) + 1e-12)).max())


# --------------------------------------------------------------------------------------------
# exactness, per family


@pytest.mark.parametrize("key", list(FAMILIES))
def test_buffers_shapes_and_layout(key, traced):
    model, trace = traced(key)
    family, parallel = FAMILIES[key]
    assert model.family == family
    assert model.parallel == [parallel] * model.n_layers
    T, H, G, dh, d, F = (trace.n_tokens, model.n_heads, model.n_kv_heads, model.d_head,
                         model.d_model, model.d_ffn)
    assert trace.token_ids.dtype == np.int64 and trace.token_ids.shape == (T,)
    assert trace.logits.dtype == np.float32 and trace.logits.shape == (model.vocab_size,)
    assert len(trace.layers) == model.n_layers and trace.model is model
    for lb in trace.layers:
        assert lb.parallel is parallel
        expect = {
            "resid_pre": (T, d), "resid_post": (T, d), "attn": (H, T, T), "values": (T, G, dh),
            "w_o": (H, dh, d), "ffn_out": (T, d), "act": (T, F), "w_down": (F, d),
        }
        if not parallel:
            expect["resid_mid"] = (T, d)
        else:
            assert lb.resid_mid is None
        for name, shape in expect.items():
            arr = getattr(lb, name)
            assert arr.dtype == np.float32 and arr.shape == shape, (name, arr.shape)
            if name == "w_o":  # C order, or the weight [d, H d_h] read in place (its .T per head)
                assert arr.flags.c_contiguous or arr.strides == (4 * dh, 4, 4 * H * dh), arr.strides
            elif name != "w_down":
                assert arr.flags.c_contiguous, name
        # causal probabilities: rows sum to 1 (less the sink's mass), nothing above the diagonal
        if key in SINKS:
            assert lb.attn.sum(-1).max() <= 1.0 + 1e-6 and lb.attn.sum(-1).min() < 0.99
        else:
            np.testing.assert_allclose(lb.attn.sum(-1), 1.0, atol=1e-5)
        assert np.abs(np.triu(lb.attn, k=1)).max() == 0.0
        uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
        assert np.abs(lb.attn - uniform).max() > 0.02  # the random model attends selectively
        if key in POST_NORM:
            assert lb.attn_norm.row_scale.shape == (T,) and lb.attn_norm.col_scale.shape == (d,)
            assert lb.ffn_norm.row_scale.shape == (T,) and lb.ffn_norm.col_scale.shape == (d,)
        elif key in BRANCH_SCALED:
            mult = model.hf_model.config.residual_multiplier
            np.testing.assert_allclose(lb.attn_norm.row_scale, mult)
            np.testing.assert_allclose(lb.ffn_norm.row_scale, mult)
            assert lb.attn_norm.col_scale is None and lb.ffn_norm.col_scale is None and not lb.attn_norm.center
        else:
            assert lb.attn_norm.row_scale is None and lb.ffn_norm.row_scale is None
        for bias in (lb.attn_bias, lb.ffn_bias):
            assert bias is None or (bias.shape == (T, d) and bias.dtype == np.float32)
    # the cached weights are shared by every trace, not copied
    again = model.trace("John gave")
    assert again.layers[0].w_o is trace.layers[0].w_o
    assert again.layers[0].w_down is trace.layers[0].w_down


@pytest.mark.parametrize("key", list(FAMILIES))
def test_exact_decomposition(key, traced):
    """resid_pre + heads + bias (+ ffn for parallel) == the state; ffn = neurons + bias."""
    model, trace = traced(key)
    for l, lb in enumerate(trace.layers):
        a = lb.attn.astype(np.float64)
        if lb.attn_norm.row_scale is not None:
            a = a * lb.attn_norm.row_scale[None, :, None]
        u = _reference.head_vectors(lb.values, lb.w_o, lb.attn_norm.col_scale, lb.attn_norm.center)
        attn = np.einsum("hts,hsd->td", a, u) + (0 if lb.attn_bias is None else lb.attn_bias)
        wd = lb.w_down.astype(np.float64)
        if lb.ffn_norm.center:
            wd = wd - wd.mean(-1, keepdims=True)
        if lb.ffn_norm.col_scale is not None:
            wd = wd * lb.ffn_norm.col_scale
        ffn = lb.act @ wd
        if lb.ffn_norm.row_scale is not None:
            ffn = ffn * lb.ffn_norm.row_scale[:, None]
        ffn = ffn + (0 if lb.ffn_bias is None else lb.ffn_bias)
        assert _rel(ffn, lb.ffn_out) < TOL, (l, "neurons")
        if lb.parallel:
            assert _rel(lb.resid_pre + attn + lb.ffn_out, lb.resid_post) < TOL, (l, "parallel")
        else:
            assert _rel(lb.resid_pre + attn, lb.resid_mid) < TOL, (l, "attn")
            assert _rel(lb.resid_mid + lb.ffn_out, lb.resid_post) < TOL, (l, "ffn")
    checks = trace.check()
    assert max(checks.values()) < TOL, checks


@pytest.mark.parametrize("key", list(FAMILIES))
def test_states_and_logits_match_the_model(key, traced):
    """The hooked layer inputs are transformers' hidden states; the last state, through the final
    norm and unembedding, gives the model's logits."""
    model, trace = traced(key)
    ids = torch.tensor(trace.token_ids[None])
    with torch.no_grad():
        out = model.hf_model(input_ids=ids, output_hidden_states=True, use_cache=False)
    hidden = [h[0].float().numpy() for h in out.hidden_states]
    for l, lb in enumerate(trace.layers):
        assert _rel(lb.resid_pre, hidden[l]) < TOL, l
        if l + 1 < len(trace.layers):
            np.testing.assert_array_equal(lb.resid_post, trace.layers[l + 1].resid_pre)
    np.testing.assert_allclose(trace.logits, out.logits[0, -1].numpy(), rtol=0, atol=1e-5)
    last = trace.layers[-1].resid_post[-1]
    rebuilt = model.unembed(model.final_norm(last))
    assert _rel(rebuilt, trace.logits) < TOL
    # frozen-scale linearisation of the final norm is exact at the state it was frozen at
    fz = model.final_norm_scale(last)
    lin = fz.linear(last) + (0 if fz.beta is None else fz.beta)  # linear() centres for LayerNorm
    assert _rel(lin, model.final_norm(last)) < TOL


@pytest.mark.parametrize("key", list(FAMILIES))
def test_attribution_on_traced_buffers(key, traced):
    """Per layer, the C core's shares sum to 1 and agree with the NumPy reference."""
    from ltt import kernels

    model, trace = traced(key)
    for lb in trace.layers[:2]:
        whole = lb.resid_post if lb.parallel else lb.resid_mid
        kw = dict(
            bias=lb.attn_bias, extra=lb.ffn_out[None] if lb.parallel else None,
            row_scale=lb.attn_norm.row_scale, col_scale=lb.attn_norm.col_scale, center=lb.attn_norm.center,
        )
        got = kernels.attn_contrib(lb.resid_pre, whole, lb.attn, lb.values, lb.w_o, **kw)
        ref = _reference.attn_contrib(lb.resid_pre, whole, lb.attn, lb.values, lb.w_o, **kw)
        total = got["edges"].sum(-1) + got["resid"] + got["bias"] + got["extra"].sum(0)
        np.testing.assert_allclose(total, 1.0, atol=1e-4)
        for name in ("edges", "resid", "bias", "extra"):
            np.testing.assert_allclose(got[name], ref[name], atol=2e-5, err_msg=name)
        resid = lb.resid_post - lb.ffn_out if lb.parallel else lb.resid_mid
        fkw = dict(bias=lb.ffn_bias, row_scale=lb.ffn_norm.row_scale, col_scale=lb.ffn_norm.col_scale,
                   center=lb.ffn_norm.center)
        got = kernels.ffn_neuron_contrib(lb.act, lb.w_down, resid, lb.resid_post, **fkw)
        ref = _reference.ffn_neuron_contrib(lb.act, lb.w_down, resid, lb.resid_post, **fkw)
        np.testing.assert_allclose(got["neurons"].sum(-1) + got["resid"] + got["bias"], 1.0, atol=1e-4)
        np.testing.assert_allclose(got["neurons"], ref["neurons"], atol=2e-5)
        if not lb.parallel:
            block = ltt.contributions(np.stack([lb.resid_mid, lb.ffn_out]), lb.resid_post)
            np.testing.assert_allclose(block.sum(0), 1.0, atol=1e-5)


def test_graph_builds(traced):
    model, trace = traced("llama")
    g = trace.graph(threshold=0.0, renormalize=False)
    assert g.edges and g.tokens == trace.tokens


# --------------------------------------------------------------------------------------------
# tokens, prompts


def test_tokens_readable_and_bos(traced):
    model, trace = traced("llama")  # this tokenizer adds <bos>
    assert trace.tokens[0] == "<bos>" and trace.token_ids[0] == model.tokenizer.bos_token_id
    assert "".join(trace.tokens[1:]) == PROMPT
    assert trace.pieces == model.tokenizer.convert_ids_to_tokens(trace.token_ids.tolist())
    _, trace = traced("gpt2")  # no BOS
    assert "".join(trace.tokens) == PROMPT
    assert any(t.startswith(" ") for t in trace.tokens)


def test_trace_list_and_all_logits(tiny_model):
    model = tiny_model("gpt2")
    traces = model.trace(["Mary went", "the store, café"])
    assert [t.prompt for t in traces] == ["Mary went", "the store, café"]
    tr = model.trace("Mary went home", all_logits=True)
    assert tr.all_logits.shape == (tr.n_tokens, model.vocab_size)
    np.testing.assert_array_equal(tr.all_logits[-1], tr.logits)
    # a multi-byte character split over several byte tokens shows the character on each
    tokens = model.trace("東京 café").tokens
    assert "東" in tokens and " ca" in tokens and "\ufffd" not in "".join(tokens)


@pytest.mark.parametrize(
    "prompt, exc, words",
    [
        ("", ValueError, ["prompt", "empty"]),
        (123, TypeError, ["prompt", "int", "123"]),
        (None, TypeError, ["prompt", "None"]),
        (b"bytes", TypeError, ["prompt", "bytes"]),
        ([], ValueError, ["prompt", "empty list"]),
        (["ok", 5], TypeError, ["prompt[1]", "5"]),
        (["ok", ""], ValueError, ["prompt[1]", "empty"]),
        ("word " * 200, ValueError, ["prompt", "tokens long", "64"]),
    ],
)
def test_bad_prompts(tiny_model, prompt, exc, words):
    model = tiny_model("gpt2")
    with pytest.raises(exc) as info:
        model.trace(prompt)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_max_tokens(tiny_dir):
    model = ltt.load(tiny_dir("llama"), max_tokens=5)
    assert model.max_tokens == 5
    model.trace("Mary")
    with pytest.raises(ValueError, match=r"prompt is \d+ tokens long, more than the limit of 5"):
        model.trace(PROMPT)
    with pytest.raises(ValueError, match="max_tokens"):
        ltt.load(tiny_dir("llama"), max_tokens=0)


# --------------------------------------------------------------------------------------------
# wrapping a model in memory; hooks


def _hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_wrap_in_memory_leaves_model_as_found():
    from conftest import build_tiny

    hf, tok = build_tiny("qwen2")
    hf.set_attn_implementation("sdpa")
    hf.train()
    hf.model.layers[0].eval()  # a mixed train/eval state must come back as it was
    modes = [m.training for m in hf.modules()]
    ptrs = [p.data_ptr() for p in hf.parameters()]
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    hf.eval()
    with torch.no_grad():
        expected = hf(input_ids=ids).logits[0, -1].numpy()
    hf.train()
    hf.model.layers[0].eval()

    model = ltt.load(hf, tokenizer=tok)
    assert model.hf_model is hf and model.tokenizer is tok
    trace = model.trace(PROMPT)
    assert hf.config._attn_implementation == "sdpa"
    assert [m.training for m in hf.modules()] == modes
    assert [p.data_ptr() for p in hf.parameters()] == ptrs
    assert _hook_count(hf) == 0
    assert np.shares_memory(trace.layers[0].w_down, hf.model.layers[0].mlp.down_proj.weight.detach().numpy())
    np.testing.assert_allclose(trace.logits, expected, atol=1e-5)
    assert max(trace.check().values()) < TOL


def test_bfloat16_and_tokenizer_path(tiny_dir):
    """Weights in bfloat16: buffers still come back float32; the decomposition holds to bf16
    precision. A tokenizer given as a path is loaded from it."""
    path = tiny_dir("llama")
    model = ltt.load(path, dtype="bfloat16", tokenizer=path)
    assert model.hf_model.dtype == torch.bfloat16
    trace = model.trace(PROMPT)
    lb = trace.layers[0]
    assert lb.resid_pre.dtype == np.float32 and lb.w_o.dtype == np.float32
    assert max(trace.check().values()) < 0.05


def test_wrap_errors():
    from conftest import build_tiny

    hf, tok = build_tiny("gpt2")
    with pytest.raises(ValueError, match="tokenizer"):
        ltt.load(hf)
    with pytest.raises(TypeError, match="name_or_path"):
        ltt.load(42)
    with pytest.raises(ValueError, match="dtype"):
        ltt.load("some/model", dtype="int8")


def test_hooks_removed_after_failing_forward(tiny_dir):
    model = ltt.load(tiny_dir("llama"))
    hf = model.hf_model
    before = hf.config._attn_implementation

    def boom(module, args):
        raise RuntimeError("boom in the MLP")

    handle = hf.model.layers[1].mlp.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model.trace(PROMPT)
    finally:
        handle.remove()
    assert _hook_count(hf) == 0
    assert hf.config._attn_implementation == before
    assert max(model.trace(PROMPT).check().values()) < TOL  # still traceable


# --------------------------------------------------------------------------------------------
# refusals


def test_post_ln_opt_refused(tmp_path):
    import transformers as tf

    cfg = tf.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                       num_attention_heads=2, max_position_embeddings=32, do_layer_norm_before=False)
    hf = tf.AutoModelForCausalLM.from_config(cfg)
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="post-LN") as info:
        ltt.load(str(tmp_path))
    assert "do_layer_norm_before=False" in str(info.value)
    with pytest.raises(ValueError, match="post-LN"):
        ltt.load(hf, tokenizer=object())


def test_unsupported_architecture_lists_families(tmp_path):
    import transformers as tf

    cfg = tf.XGLMConfig(vocab_size=64, d_model=16, num_layers=1, attention_heads=2, ffn_dim=32)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture") as info:
        ltt.load(str(tmp_path))
    msg = str(info.value)
    assert "'xglm'" in msg
    for fam in ("gpt2", "llama", "gemma2", "falcon", "phi3", "gpt_neox"):
        assert fam in msg


def test_safetensors_only(tmp_path):
    """A directory with only a pickled checkpoint is not loaded (no unpickling of weights)."""
    from conftest import build_tiny

    hf, tok = build_tiny("gpt2")
    hf.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        ltt.load(str(tmp_path))
