"""Mixture-of-experts FFNs on tiny random models: the routed experts, shared experts and biases
recompose the block output exactly, the router's choices are the model's own, and attention
sinks (gpt-oss) leave the decomposition over real tokens exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltt.models import moe

from conftest import PROMPT  # noqa: E402 (the prompt of the shared `traced` fixture)
MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss", "granitemoe", "granitemoeshared", "llama4",
       "deepseek_v2", "mellum", "phimoe", "glm4_moe", "ernie4_5_moe", "solar_open", "hunyuan_v1_moe",
       "flex_olmo"]


def _moe_layers(trace):
    return [(l, lb) for l, lb in enumerate(trace.layers) if lb.moe is not None]


@pytest.mark.parametrize("key", MOE)
def test_experts_recompose_the_block(key, traced):
    model, trace = traced(key)
    layers = _moe_layers(trace)
    assert layers, "no MoE layer in the tiny model"
    cfg = model.hf_model.config
    k = cfg.num_experts_per_tok
    for l, lb in layers:
        m = lb.moe
        T = lb.n_tokens
        assert m.experts.shape == (T, k) and m.weights.shape == (T, k)
        assert lb.act.shape == (T, m.n_experts * m.d_expert + m.d_shared)
        for t in range(T):
            chosen = set(m.experts[t].tolist())
            assert len(chosen) == k
            for e in range(m.n_experts):  # experts the router did not choose have no activation
                block = lb.act[t, m.expert_slice(e)]
                assert (np.abs(block).max() > 0) == (e in chosen), (l, t, e)
            es = moe.expert_shares(trace, l, t)
            rebuilt = es.vectors.astype(np.float64).sum(0)
            if m.d_shared:
                row = lb.ffn_norm.row(t)  # Granite
                rebuilt += row * (lb.act[t, m.shared_slice].astype(np.float64) @ lb.w_down[m.shared_slice])
            if lb.ffn_bias is not None:
                rebuilt += lb.ffn_bias[t]
            scale = np.abs(lb.ffn_out[t]).max()
            assert np.abs(rebuilt - lb.ffn_out[t]).max() / scale < 1e-4, (l, t)
            total = es.shares.sum() + es.residual + (es.shared or 0.0) + (es.bias or 0.0)
            assert abs(total - 1.0) < 1e-4
            assert sorted(es.experts) == sorted(chosen)
    assert max(trace.check().values()) < 1e-4


@pytest.mark.parametrize("key", MOE)
def test_router_choices_are_the_models(key, traced):
    """The recorded experts and gate weights equal what the model's own router gives for the
    recorded FFN input (the after-attention state through the FFN's norm)."""
    model, trace = traced(key)
    hf = model.hf_model
    for l, lb in _moe_layers(trace):
        layer = hf.model.layers[l]
        block = getattr(layer, model._family.moe_block)
        router = getattr(block, "gate", None) or getattr(block, "router")
        with torch.no_grad():
            norm = getattr(layer, model._family.ffn_norm)
            x = torch.from_numpy(lb.resid_mid)
            x = x if norm is block else norm(x)  # FlexOlmo: no norm before the FFN
            if model._family.moe_router:  # Llama 4: sigmoid scores [T, E], zero where not chosen
                scores = router(x)[0]
                weights, idx = torch.topk(scores, router.top_k, dim=-1)
            else:
                _, weights, idx = router(x)
        np.testing.assert_array_equal(np.sort(idx.numpy(), -1), np.sort(lb.moe.experts, -1))
        order = np.argsort(idx.numpy(), -1)
        mine = np.argsort(lb.moe.experts, -1)
        np.testing.assert_allclose(np.take_along_axis(weights.float().numpy(), order, -1),
                                   np.take_along_axis(lb.moe.weights, mine, -1), atol=1e-6)


def test_qwen2_moe_shared_expert_gate(traced):
    model, trace = traced("qwen2_moe")
    for l, lb in _moe_layers(trace):
        block = model.hf_model.model.layers[l].mlp
        with torch.no_grad():
            x = model.hf_model.model.layers[l].post_attention_layernorm(torch.from_numpy(lb.resid_mid))
            gate = torch.sigmoid(block.shared_expert_gate(x))[:, 0].numpy()
        np.testing.assert_allclose(lb.moe.shared_gate, gate, atol=1e-6)
        assert 0 < lb.moe.shared_gate.min() and lb.moe.shared_gate.max() < 1
        assert lb.moe.d_shared == model.hf_model.config.shared_expert_intermediate_size
        es = moe.expert_shares(trace, l, -1)
        assert es.shared is not None and es.shared > 0


def test_deepseek_dense_and_moe_layers(traced):
    """DeepSeek-V3: the first layer is dense, the rest MoE with a shared expert; its latent
    attention's per-head values come from the expanded latent and the heads stay exact."""
    model, trace = traced("deepseek_v3")
    assert trace.layers[0].moe is None and trace.layers[1].moe is not None
    assert trace.layers[1].moe.d_shared > 0
    cfg = model.hf_model.config
    assert trace.layers[0].values.shape[1:] == (cfg.num_attention_heads, cfg.v_head_dim)
    # the values, recomputed from the layer input along the latent path: compress, normalise,
    # expand, keep each head's value part
    for l, lb in enumerate(trace.layers):
        layer = model.hf_model.model.layers[l]
        att = layer.self_attn
        with torch.no_grad():
            latent = att.kv_a_proj_with_mqa(layer.input_layernorm(torch.from_numpy(lb.resid_pre)))
            kv = att.kv_b_proj(att.kv_a_layernorm(latent[:, : cfg.kv_lora_rank]))
        v = kv.view(lb.n_tokens, cfg.num_attention_heads, -1)[:, :, cfg.qk_nope_head_dim:].numpy()
        np.testing.assert_allclose(lb.values, v, atol=1e-5)
    with pytest.raises(ValueError, match="dense FFN"):
        moe.expert_shares(trace, 0, -1)


def test_gpt_oss_sinks_and_expert_biases(traced):
    """gpt-oss: a sink takes probability mass without a source token, so rows sum to < 1; the
    heads' parts over the real tokens still rebuild the attention output exactly. Its experts'
    output biases are a per-token bias part of the FFN."""
    model, trace = traced("gpt_oss")
    for l, lb in enumerate(trace.layers):
        mass = lb.attn.sum(-1)
        sinks = model.hf_model.model.layers[l].self_attn.sinks.detach().numpy()
        assert (mass < 1.0).all() and mass.min() < 0.99
        assert lb.attn.shape[0] == sinks.shape[0]  # one sink per head
        # the first token sees only itself and the sink: p = 1 / (1 + exp(sink - q.k * scale)),
        # from the recorded query and key, independently of the attention code
        module = model.hf_model.model.layers[l].self_attn
        q, k = lb._attention.query.float().numpy(), lb._attention.key.float().numpy()
        per_group = q.shape[0] // k.shape[0]
        for h in range(q.shape[0]):
            score = float(q[h, 0] @ k[h // per_group, 0]) * module.scaling
            expected = 1.0 / (1.0 + np.exp(sinks[h] - score))
            assert abs(lb.attn[h, 0, 0] - expected) < 1e-5, (l, h)
        chk = lb.check()
        assert chk["attn"] < 1e-4 and chk["neurons"] < 1e-4
        assert lb.ffn_bias is not None and lb.ffn_bias.shape == (lb.n_tokens, model.d_model)
        es = moe.expert_shares(trace, l, 0)
        assert es.bias is not None


def test_expert_shares_errors(traced):
    model, trace = traced("mixtral")
    with pytest.raises(ValueError, match="layer must be"):
        moe.expert_shares(trace, 99, 0)
    with pytest.raises(ValueError, match="token must be"):
        moe.expert_shares(trace, 0, 10_000)


def test_widget_ffn_panel_shows_the_router(traced):
    """The FFN panel of a MoE node carries the router (chosen experts, gates, shares) and labels
    each top neuron with its expert."""
    from ltt.widget.panels import ffn_panel

    model, trace = traced("qwen2_moe")
    layer = _moe_layers(trace)[0][0]
    t = trace.n_tokens - 1
    panel = ffn_panel(trace, f"M{layer}_{t}")
    r = panel["router"]
    es = moe.expert_shares(trace, layer, t)
    assert sorted(e["expert"] for e in r["experts"]) == sorted(es.experts)
    assert r["n_experts"] == 4 and r["shared"] == es.shared
    assert [e["share"] for e in r["experts"]] == sorted((e["share"] for e in r["experts"]), reverse=True)
    m = trace.layers[layer].moe
    for n in panel["neurons"]:
        if n["expert"] == "shared":
            assert n["neuron"] >= m.n_experts * m.d_expert
        else:
            assert n["expert"] in es.experts and n["neuron"] == n["expert"] * m.d_expert + n["local"]
    _, ds = traced("deepseek_v3")  # its first layer is dense: no router in that panel
    assert "router" not in ffn_panel(ds, "M0_0") and "router" in ffn_panel(ds, "M1_0")


def test_report_shows_the_router_in_chromium(traced, tmp_path):
    """In the offline report (real Chromium), clicking a MoE FFN block shows the router's experts
    and labels the neurons by expert; the prompt box has the BOS checkbox (dash: tokenizer's
    choice), disabled offline."""
    from playwright.sync_api import sync_playwright

    from conftest import chromium_path

    model, _ = traced("qwen2_moe")
    trace = model.trace("Mary went home")  # a small graph: every block is on screen
    path = tmp_path / "moe.html"
    trace.to_html(str(path))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path())
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_selector("[data-node]")
            node = page.eval_on_selector_all("[data-node^='M']", "els => els.map(e => e.dataset.node)")[0]
            page.click(f'[data-node="{node}"]')
            page.wait_for_selector(".ltt-router [data-expert]")
            shown = page.eval_on_selector_all(".ltt-router [data-expert]", "els => els.map(e => Number(e.dataset.expert))")
            labels = page.eval_on_selector_all(".ltt-neuron b", "els => els.map(e => e.textContent)")
            bos = page.eval_on_selector("input.ltt-bos", "e => [e.indeterminate, e.disabled]")
        finally:
            browser.close()
    layer, t = (int(v) for v in node[1:].split("_"))
    assert sorted(shown) == sorted(moe.expert_shares(trace, layer, t).experts)
    assert labels and all(lab.startswith(("e", "shared")) for lab in labels)
    assert bos == [True, True] and errors == []


@pytest.mark.parametrize("key", ["mixtral", "gpt_oss"])
def test_moe_in_bfloat16(key, tiny_dir):
    """Experts computed in the model's dtype: a bfloat16 MoE model is exact to its precision."""
    import ltt

    model = ltt.load(tiny_dir(key), dtype="bfloat16")
    trace = model.trace(PROMPT)
    assert trace.layers[0].act.dtype == np.float32
    assert max(trace.check().values()) < 0.05


def test_dense_and_moe_layers_of_different_widths():
    """A MoE model whose dense layers are narrower than its MoE layers (Qwen2-MoE's
    mlp_only_layers, DeepSeek's first dense layers at full size): each layer keeps its own
    width, and the graph and neuron views work on both."""
    import transformers as tf

    import ltt
    from conftest import VOCAB, _make_tokenizer

    torch.manual_seed(0)
    cfg = tf.Qwen2MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                            shared_expert_intermediate_size=24, mlp_only_layers=[0], initializer_range=0.1)
    hf = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    model = ltt.load(hf, tokenizer=_make_tokenizer(False))
    trace = model.trace(PROMPT)
    assert trace.layers[0].moe is None and trace.layers[0].act.shape[1] == 40
    assert trace.layers[1].moe is not None and trace.layers[1].act.shape[1] == 4 * 16 + 24
    assert max(trace.check().values()) < 1e-4
    assert trace.graph(threshold=0.0, renormalize=False).edges
    for layer in (0, 1):
        assert len(trace.top_neurons(layer, -1, k=3).neurons) == 3
