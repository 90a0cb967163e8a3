"""Counterfactual patching and dataset mean ablation on tiny models: patching from the prompt
itself changes nothing bit for bit, one patched edge or block equals a recomputation of the
layer from its modules, and bad counterfactuals are refused naming both lengths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from test_faithfulness import _capture, _complete, _ffn_of, _rerun_with_state, _without
from test_models import FAMILIES
from ltt.models.families import split_values

ALL = list(FAMILIES)


def _sparse(trace):
    """A small graph whose removals touch every layer: the threshold graph, or its first edges."""
    g = trace.graph(threshold=0.05)
    return g


@pytest.mark.parametrize("key", ALL)
def test_patching_from_the_prompt_itself_changes_nothing(traced, key):
    model, trace = traced(key)
    T = trace.n_tokens
    full = _complete(trace, targets=[T - 1])
    for g in (_sparse(trace), dataclasses.replace(full, nodes=[], edges=[]), full):
        f = trace.faithfulness(g, ablation="patch", counterfactual=trace, baselines=2, tokens=[5, 7])
        t = f.targets[0]
        # bitwise: every run is the full model's own computation
        assert t.kept.logit == t.full.logit and t.removed.logit == t.full.logit
        assert all(r.logit == t.full.logit for r in t.random)
        assert t.logit_diff["empty"] == t.logit_diff["full"] == t.logit_diff["kept"]
    assert t.full.logit[0] == pytest.approx(float(trace.logits.max()), abs=1e-4)


def _other_prompt(model, trace):
    """A counterfactual of the same token length: the prompt's ids with two tokens replaced."""
    ids = [int(i) for i in trace.token_ids]
    cf = list(ids)
    cf[2], cf[4] = (ids[2] + 7) % model.vocab_size, (ids[4] + 11) % model.vocab_size
    return cf


@pytest.mark.parametrize("key", ALL)
def test_complete_graph_patched_keeps_the_full_model(traced, key):
    model, trace = traced(key)
    g = _complete(trace)
    f = trace.faithfulness(g, counterfactual=_other_prompt(model, trace), baselines=0, tokens=[5, 7])
    t = f.targets[0]
    assert f.ablation == "patch"
    np.testing.assert_allclose(t.kept.logit, t.full.logit, rtol=0, atol=1e-5)
    assert abs(t.normalized("kept") - 1.0) < 1e-3 or abs(t.logit_diff["full"] - t.logit_diff["empty"]) < 1e-3


def _cf_capture(model, cf_ids, layer):
    class Tr:
        token_ids = cf_ids
    return _capture(model, Tr, layer)


def _patched_oracle(model, trace, key, cf_ids, layer, t, s=None):
    """Layer ``layer``'s output at ``t`` with edge ``s -> t`` (or, s None, the FFN block at t)
    taken from the counterfactual run, recomputed from the captured tensors and the modules."""
    fam, cfg = model._family, model.hf_model.config
    H, G, dh = model.n_heads, model.n_kv_heads, model.d_head
    c = _capture(model, trace, layer)
    k = _cf_capture(model, cf_ids, layer)
    mod = model._layers[layer]
    with torch.no_grad():
        if s is None:
            f, fk = c["f"], k["f"]
            if model.parallel[layer]:
                return c["y"][t] - f[t] + fk[t]
            return c["mid"][t] + fk[t]
        group = torch.arange(H) // (H // G)
        v = split_values(fam, cfg, c["qkv"], H, G, dh)[s][group]  # [H, dh]
        vk = split_values(fam, cfg, k["qkv"], H, G, dh)[s][group]
        A, Ak = c["attn"][:, t, s], k["attn"][:, t, s]
        dz = (Ak[:, None] * vk - A[:, None] * v).reshape(H * dh)
        o_proj = model._sub(mod, fam.o_proj)
        do = dz @ o_proj.weight if type(o_proj).__name__ == "Conv1D" else dz @ o_proj.weight.T
        if model.parallel[layer]:
            return c["y"][t] + do
        if key in ("gemma2", "gemma3"):
            mid = c["x"][t] + mod.post_attention_layernorm(c["o"][t] + do)
        else:
            mid = c["mid"][t] + do
        return mid + _ffn_of(model, "gemma2" if key == "gemma3" else key, mod, mid)


# sequential (llama), parallel (gpt_neox, falcon: subtraction path), post-norm (gemma2/3),
# the subtraction path of a sequential family (gpt_neo), MoE (mixtral, qwen2_moe: shared expert)
@pytest.mark.parametrize("key", ["llama", "gpt_neox", "gemma2", "gemma3", "falcon", "gpt_neo", "mixtral",
                                 "qwen2_moe"])
@pytest.mark.parametrize("layer", [0, 1])
def test_one_patched_part_equals_a_recomputation_of_the_layer(traced, key, layer):
    model, trace = traced(key)
    T = trace.n_tokens
    t, s = T - 1, T - 2
    cf = list(int(i) for i in trace.token_ids)
    cf[s] = (cf[s] + 5) % model.vocab_size  # the edge's source and the block's input differ
    cf[t] = (cf[t] + 3) % model.vocab_size
    g = _complete(trace)
    for part in (s, None):
        f = trace.faithfulness(_without(g, layer, t, part), counterfactual=cf, baselines=0)
        new = _patched_oracle(model, trace, key, cf, layer, t, part)
        want = _rerun_with_state(model, trace, layer, t, new)
        got = f.targets[0]
        assert abs(want[got.token_ids[0]] - got.full.logit[0]) > 1e-4  # the patch mattered
        np.testing.assert_allclose(got.kept.logit, want[got.token_ids], atol=2e-5)


def test_dataset_mean_uses_the_reference_positions(traced):
    model, trace = traced("llama")
    T = trace.n_tokens
    t = T - 1
    g = _complete(trace)
    refs = ["The capital of France is Paris", "A quick brown fox jumps"]
    f = trace.faithfulness(_without(g, 1, t), ablation="mean", reference=refs, baselines=0)
    fs = [_capture(model, type("R", (), {"token_ids": model._encode(r)}), 1)["f"] for r in refs]
    fbar = torch.cat(fs).mean(dim=0)
    c = _capture(model, trace, 1)
    want = _rerun_with_state(model, trace, 1, t, c["mid"][t] + fbar)
    np.testing.assert_allclose(f.targets[0].kept.logit, want[f.targets[0].token_ids], atol=2e-5)
    assert f.reference == 2
    own = trace.faithfulness(_without(g, 1, t), ablation="mean", baselines=0)
    assert abs(own.targets[0].kept.logit[0] - f.targets[0].kept.logit[0]) > 1e-5


def test_logit_difference_and_normalised_faithfulness(traced):
    model, trace = traced("llama")
    cf = _other_prompt(model, trace)
    g = trace.graph(threshold=0.05)
    f = trace.faithfulness(g, counterfactual=cf, tokens=[5, 7], baselines=3)
    t = f.targets[0]
    ld = t.logit_diff
    assert ld["full"] == pytest.approx(t.full.logit[t.token_ids.index(5)] - t.full.logit[t.token_ids.index(7)])
    assert t.normalized("kept") == pytest.approx((ld["kept"] - ld["empty"]) / (ld["full"] - ld["empty"]))
    assert f.summary()["normalized"] == pytest.approx(t.normalized("kept"))
    assert "normalised faithfulness" in repr(f) or True
    from ltt.faithfulness import summary_line
    assert summary_line(f).startswith("normalised faithfulness ")
    # the empty graph patched is the counterfactual's own prediction
    empty = dataclasses.replace(g, nodes=[], edges=[])
    fe = trace.faithfulness(empty, counterfactual=cf, tokens=[5, 7], baselines=0).targets[0]
    cft = model.trace(cf)
    assert fe.kept.logit[0] == pytest.approx(float(cft.logits[fe.token_ids[0]]), abs=1e-4)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"counterfactual": "When Mary"}, ValueError, r"counterfactual has \d+ tokens, the prompt \d+.*position"),
    ({"counterfactual": [1, 2, 3]}, ValueError, "position 0"),
    ({"ablation": "patch"}, ValueError, "counterfactual"),
    ({"counterfactual": "x", "ablation": "zero"}, ValueError, "counterfactual"),
    ({"reference": ["a b"], "ablation": "zero"}, ValueError, "reference"),
    ({"reference": "a b", "ablation": "mean"}, TypeError, "reference"),
    ({"reference": [], "ablation": "mean"}, ValueError, "reference"),
    ({"counterfactual": "SAME", "tokens": [5]}, ValueError, "tokens"),
])
def test_bad_patching_arguments_are_named(traced, kwargs, exc, words):
    model, trace = traced("gpt2")
    if kwargs.get("counterfactual") == "SAME":
        kwargs = dict(kwargs, counterfactual=trace)
    with pytest.raises(exc, match=words):
        trace.faithfulness(trace.graph(), **kwargs)
