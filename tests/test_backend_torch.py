"""The torch attribution backend (on the CPU) against the C core and the NumPy twins: every
tiny family's parts, graphs, head and neuron shares, on-demand head detail and sparse rows;
half-precision models; a model offloaded to CPU and disk by accelerate; the memory modes of the
trace plan; bad arguments."""

import numpy as np
import pytest

import ltt
from ltt import _reference as ref
from ltt import kernels as core
from ltt.scores import attribute

from conftest import PROMPT, build_tiny, tiny_configs

FAMILIES = sorted(tiny_configs())


@pytest.fixture(scope="module")
def torch_model(tiny_dir):
    loaded: dict = {}

    def get(key: str):
        if key not in loaded:
            loaded[key] = ltt.load(tiny_dir(key), attribution="torch")
        return loaded[key]

    return get


def _assert_rows_equal(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.sources, b.sources)
    if a.heads is not None or b.heads is not None:
        np.testing.assert_array_equal(a.heads, b.heads)
    np.testing.assert_allclose(a.values, b.values, rtol=rtol, atol=atol)


def _graph_key(g):
    return sorted((e.source, e.target, e.kind) for e in g.edges)


@pytest.mark.parametrize("key", FAMILIES)
def test_torch_backend_equals_the_core_on_every_family(key, traced, torch_model):
    model, trace = traced(key)
    tmodel = torch_model(key)
    assert model.backend is None and tmodel.backend.name == "torch"
    tt = tmodel.trace(PROMPT)
    np.testing.assert_array_equal(tt.logits, trace.logits)
    fa, fb = attribute(trace), attribute(tt)
    for name in ("attn_resid", "attn_bias", "ffn", "ffn_resid"):
        np.testing.assert_allclose(getattr(fb, name), getattr(fa, name), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(fb.attn_total, fa.attn_total, rtol=1e-5)
    np.testing.assert_allclose(fb.heads, fa.heads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fb.attn, fa.attn, rtol=1e-5, atol=1e-6)
    for kw in (dict(), dict(threshold=0.01, renormalize=False, targets="all")):
        assert _graph_key(tt.graph(**kw)) == _graph_key(trace.graph(**kw))
    L, T = model.n_layers, trace.n_tokens
    for l in {0, L - 1}:
        np.testing.assert_allclose(tt.head_shares(l, T - 1, 0), trace.head_shares(l, T - 1, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tt.neuron_shares(l, T - 1), trace.neuron_shares(l, T - 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["llama", "gpt_neox", "gemma2", "gpt2", "qwen2_moe", "falcon_mq"])
@pytest.mark.parametrize("memory", ["layer", "heads", "stream"])
def test_sparse_rows_and_on_demand_detail_in_every_memory_mode(key, memory, traced, torch_model, monkeypatch):
    """Over the dense budget the sparse rows (selected on the device) equal the core's, in every
    memory mode of the plan, and so do the on-demand head maps and edge heads."""
    from ltt.interpret import heads as H

    model, _ = traced(key)
    monkeypatch.setattr(ltt.scores, "DENSE_BUDGET", 0)
    core_trace = model.trace(PROMPT, memory=memory)
    tt = torch_model(key).trace(PROMPT, memory=memory)
    assert tt.plan.modes == (memory,) * model.n_layers and tt.plan.backend == "torch"
    fa, fb = attribute(core_trace), attribute(tt)
    assert not fb.holds_dense
    for ra, rb in zip(fa.parts, fb.parts):
        _assert_rows_equal(rb, ra)
    for ra, rb in zip(fa.edges, fb.edges):
        _assert_rows_equal(rb, ra)
    T = tt.n_tokens
    for l in range(model.n_layers):
        for h in range(model.n_heads):
            np.testing.assert_allclose(H._head_map(tt, fb, l, h), H._head_map(core_trace, fa, l, h),
                                       rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tt.head_shares(l, T - 1, 1), core_trace.head_shares(l, T - 1, 1),
                                   rtol=1e-5, atol=1e-6)
    for kw in (dict(), dict(threshold=0.01, renormalize=False, targets="all")):
        assert _graph_key(tt.graph(**kw)) == _graph_key(core_trace.graph(**kw))


def test_kernels_equal_the_twins():
    """Each kernel of the torch backend against its NumPy twin (the definition), with every
    optional part: bias, extra, row and column scales, centring, both norms, GQA."""
    from ltt.backends.torch import TorchBackend

    tb = TorchBackend(["cpu"])
    rng = np.random.default_rng(3)
    T, H, G, dh, d, F = 6, 4, 2, 3, 8, 10
    x, m = rng.normal(size=(2, T, d)).astype(np.float32)
    a = rng.random((H, T, T)).astype(np.float32)
    a = np.tril(a) / np.tril(a).sum(-1, keepdims=True)
    v = rng.normal(size=(T, G, dh)).astype(np.float32)
    wo = rng.normal(size=(H, dh, d)).astype(np.float32)
    bias = rng.normal(size=d).astype(np.float32)
    extra = rng.normal(size=(1, T, d)).astype(np.float32)
    rs, cs = (rng.random(T) + 0.5).astype(np.float32), (rng.random(d) + 0.5).astype(np.float32)
    for norm in (1, 2):
        for opts in (dict(), dict(bias=bias, extra=extra, row_scale=rs, col_scale=cs, center=True)):
            want = ref.attn_contrib(x, m, a, v, wo, norm=norm, keep_heads=True, **opts)
            got = tb.attn_contrib(x, m, a, v, wo, norm=norm, keep_heads=True, **opts)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} {norm} {opts.keys()}")
            post = {k: opts[k] for k in ("row_scale", "col_scale", "center") if k in opts}
            for h in range(H):
                np.testing.assert_allclose(tb.attn_head_map(h, m, a, v, wo, want["total"], norm=norm, **post),
                                           ref.attn_head_map(h, m, a, v, wo, want["total"], norm=norm, **post),
                                           rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(tb.attn_edge_heads(4, 2, m, a, v, wo, want["total"], norm=norm, **post),
                                       ref.attn_edge_heads(4, 2, m, a, v, wo, want["total"], norm=norm, **post),
                                       rtol=1e-5, atol=1e-6)
        act = rng.normal(size=(3, F)).astype(np.float32)
        wd = rng.normal(size=(F, d)).astype(np.float32)
        for opts in (dict(), dict(bias=bias, row_scale=rs[:3], col_scale=cs, center=True)):
            want = ref.ffn_neuron_contrib(act, wd, x[:3], m[:3], norm=norm, **opts)
            got = tb.ffn_neuron_contrib(act, wd, x[:3], m[:3], norm=norm, **opts)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tb.contributions(np.stack([x, m - x]), m, norm=norm),
                                   core.contributions(np.stack([x, m - x]), m, norm=norm), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 1e-2), ("float16", 1e-3)])
def test_half_precision_models_within_their_tolerance(dtype, tol, tiny_dir):
    """A bf16/fp16 model: the torch backend's shares equal the core's on the same trace buffers
    (both read the model's own half numbers widened to float32) within the dtype's tolerance,
    and the graphs are the same."""
    path = tiny_dir("llama")
    m_core = ltt.load(path, dtype=dtype)
    m_torch = ltt.load(path, dtype=dtype, attribution="torch")
    a, b = m_core.trace(PROMPT), m_torch.trace(PROMPT)
    np.testing.assert_array_equal(a.logits, b.logits)
    fa, fb = attribute(a), attribute(b)
    np.testing.assert_allclose(fb.heads, fa.heads, rtol=tol, atol=tol * 1e-2)
    np.testing.assert_allclose(fb.ffn, fa.ffn, rtol=tol, atol=tol * 1e-2)
    assert _graph_key(a.graph()) == _graph_key(b.graph())


def test_offloaded_model_traces_exactly_with_either_backend(tmp_path, traced):
    """A model whose layers accelerate places on the CPU and on disk (device_map with "disk")
    traces exactly as the model in memory, with the core and with the torch backend."""
    pytest.importorskip("accelerate")
    model, trace = traced("llama")
    hf, tok = build_tiny("llama")
    src = tmp_path / "m"
    hf.save_pretrained(src)
    tok.save_pretrained(src)
    n = hf.config.num_hidden_layers
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": ("disk" if i % 2 else "cpu") for i in range(n)})
    for attribution in ("core", "torch"):
        m = ltt.load(str(src), device_map=device_map, offload_folder=tmp_path / "off", attribution=attribution)
        assert (m.backend is None) == (attribution == "core")
        t = m.trace(PROMPT)
        np.testing.assert_allclose(t.logits, trace.logits, rtol=1e-5, atol=1e-5)
        assert max(t.check().values()) < 1e-4
        np.testing.assert_allclose(attribute(t).heads, attribute(trace).heads, rtol=1e-4, atol=1e-6)
        assert _graph_key(t.graph()) == _graph_key(trace.graph())


def test_bad_attribution_arguments(tiny_dir):
    import torch

    path = tiny_dir("llama")
    for bad in ("cuda", "gpu", "numpy", 1, True):
        with pytest.raises(ValueError, match="attribution"):
            ltt.load(path, attribution=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="attribution='torch' on device 'cuda'"):
            ltt.load(path, attribution="torch", device="cuda")
        with pytest.raises(ValueError, match="attribution='torch'"):
            ltt.load(path, attribution="torch", device_map={"": 0})
    with pytest.raises(ValueError, match="memory must be"):
        ltt.load(path).trace(PROMPT, memory="huge")


def test_device_memory_formula_and_refusal(tiny_dir, monkeypatch):
    """The per-layer device bytes at Llama-2-7B and 4,096 tokens, and the refusal before the
    forward pass when a CUDA device's free memory is below it (mem_get_info stubbed: no GPU)."""
    import torch

    from ltt.backends import memory
    from ltt.backends.torch import TorchBackend

    b = memory.layer_bytes(H=32, G=32, T=4096, d=4096, esize=2, mode="stream")
    assert 1 * 2**30 < b["total"] < 8 * 2**30
    b_layer = memory.layer_bytes(H=32, G=32, T=4096, d=4096, esize=2, mode="layer")
    assert b_layer["total"] > b["total"]
    model = ltt.load(tiny_dir("llama"), attribution="torch")
    model.backend = TorchBackend([torch.device("cuda:0")] * model.n_layers)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (1000, 10**10))
    with pytest.raises(MemoryError, match="device memory per layer on cuda:0.*attribution='core'"):
        model.trace(PROMPT)


def test_no_host_synchronisation_per_head(monkeypatch):
    """The device-to-host copies and syncing calls (``.cpu()``, ``.item()``, ``.tolist()``,
    ``.numpy()``, ``nonzero``) of one layer's attribution do not grow with the number of heads:
    counted on a 4-head and a 16-head model (heads are scored in one batch per layer)."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import _make_tokenizer

    counts = {}
    for H in (4, 16):
        config, bos = tiny_configs()["llama"]
        config = config.__class__(**{**config.to_dict(), "num_attention_heads": H, "num_key_value_heads": H // 2,
                                     "head_dim": 8})
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        model = ltt.load(hf, tokenizer=_make_tokenizer(bos), attribution="torch")
        assert model.n_heads == H
        calls = []
        with monkeypatch.context() as m:
            for name in ("cpu", "item", "tolist", "numpy", "nonzero"):
                real = getattr(torch.Tensor, name)
                m.setattr(torch.Tensor, name, lambda self, *a, _r=real, _n=name, **k: calls.append(_n) or _r(self, *a, **k))
            real_layer = model.backend.attribute_layer
            per_layer = []

            def counted(*a, **k):
                before = len(calls)
                out = real_layer(*a, **k)
                per_layer.append(len(calls) - before)
                return out

            m.setattr(model.backend, "attribute_layer", counted)
            model.trace(PROMPT, memory="layer")
        counts[H] = per_layer
    assert counts[4] == counts[16] and max(counts[4]) <= 32, counts  # about 20 result copies per layer
