"""ltt.circuits on tiny models: EAP against finite differences, EAP-IG against exact patching
effects, curves and their areas, circuit() at a level, and bad input named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ltt.circuits as C
from ltt.circuits import gradients, rankings
from ltt.circuits.curves import areas
from test_faithfulness import _capture
from ltt.models.families import split_values


def _pair(model, trace):
    ids = [int(i) for i in trace.token_ids]
    cf = list(ids)
    cf[3] = (ids[3] + 9) % model.vocab_size
    cf[-2] = (ids[-2] + 4) % model.vocab_size
    order = np.argsort(-trace.logits)
    return ids, cf, int(order[0]), int(order[1])


def _ld_with(model, ids, hook_mod, hook, a, b, pre=True):
    h = hook_mod.register_forward_pre_hook(hook) if pre else hook_mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            lg = model.hf_model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].double()
    finally:
        h.remove()
    return float(lg[a] - lg[b])


@pytest.mark.parametrize("key", ["llama", "gpt_neox"])
def test_eap_equals_a_finite_difference(traced, key):
    model, trace = traced(key)
    ids, cf, a, b = _pair(model, trace)
    sc = gradients.eap(model, ids, cf, len(ids) - 1, a, b)
    fam = model._family
    H, G, dh = model.n_heads, model.n_kv_heads, model.d_head
    T = len(ids)
    t, s, l = T - 1, 3, 1
    c, k = _capture(model, trace, l), _capture(model, type("R", (), {"token_ids": cf}), l)
    group = torch.arange(H) // (H // G)
    v = split_values(fam, model.hf_model.config, c["qkv"], H, G, dh)[s][group]
    vk = split_values(fam, model.hf_model.config, k["qkv"], H, G, dh)[s][group]
    dz = (k["attn"][:, t, s, None] * vk - c["attn"][:, t, s, None] * v).reshape(-1)
    layer = model._layers[l]
    o_proj = model._sub(layer, fam.o_proj)

    def shift(eps):
        def hook(module, args):
            x = args[0].clone()
            x[0, t] += eps * dz
            return (x,)
        return hook

    eps = 1e-3
    fd = (_ld_with(model, ids, o_proj, shift(eps), a, b) - _ld_with(model, ids, o_proj, shift(-eps), a, b)) / (2 * eps)
    assert abs(fd) > 1e-4
    assert sc.attn[l, t, s] == pytest.approx(fd, rel=2e-2, abs=1e-5)
    # an FFN block: its branch output moved toward the counterfactual's
    branch = model._sub(layer, fam.down)
    df = (k["f"][t] - c["f"][t])

    def fshift(eps):
        def hook(module, args, out):
            out = out.clone()
            out[0, t] += eps * df
            return out
        return hook

    fd = (_ld_with(model, ids, branch, fshift(eps), a, b, pre=False)
          - _ld_with(model, ids, branch, fshift(-eps), a, b, pre=False)) / (2 * eps)
    assert sc.ffn[l, t] == pytest.approx(fd, rel=2e-2, abs=1e-5)
    assert np.all(np.triu(sc.attn[0], 1) == 0)
    assert all(p.grad is None for p in model.hf_model.parameters())  # the model is left as found


def test_eap_ig_with_many_steps_approaches_the_patching_effect(traced):
    from ltt.ablations import RunSpec
    from ltt.interventions import PartSet, run_batched

    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    T = len(ids)
    keys = np.array([[1, T - 1, s] for s in range(T)] + [[1, T - 1, -1], [0, T - 2, -1]])
    rows = [PartSet(*rankings.parts_of(k[None]), only=False) for k in keys]
    lg = run_batched(model, ids, rows, [T - 1], "patch", spec=RunSpec("patch", cf_ids=cf))
    ld = lg[:, 0, a] - lg[:, 0, b]
    exact = ld[1:] - ld[0]

    def est(sc):
        return np.array([sc.attn[l, t, s] if s >= 0 else sc.ffn[l, t] for l, t, s in keys])

    ig = est(gradients.eap_ig(model, ids, cf, T - 1, a, b, steps=64))
    half = est(gradients.eap_ig(model, ids, cf, T - 1, a, b, steps=32))
    # the Riemann sum converges, and its estimates track the single parts' exact effects (the
    # integral runs along the inputs' path, not each part's own, so it is close, not equal)
    assert np.abs(ig - half).sum() < 0.05 * np.abs(ig).sum()
    assert np.abs(ig - exact).sum() < 0.2 * np.abs(exact).sum(), (ig, exact)
    assert np.corrcoef(ig, exact)[0, 1] > 0.95, (ig, exact)
    assert np.argmax(np.abs(ig)) == np.argmax(np.abs(exact))


def test_routes_scores_and_rankings(traced):
    model, trace = traced("gemma2")
    ids, cf, a, b = _pair(model, trace)
    L, T = model.n_layers, len(ids)
    paths = rankings.score_parts(trace, "routes-paths")
    # the target's own output state sees every path: its incoming edges' scores sum with the
    # residual's to 1 in the last layer
    assert paths.attn[L - 1, T - 1].sum() <= 1 + 1e-5
    assert np.all(paths.attn[:, :, :] >= -1e-7)
    contrast = rankings.score_parts(trace, "routes-contrast", cf)
    # parts that no changed token reaches (every token before the first change) score 0
    assert np.all(contrast.attn[:, :3, :] == 0) and np.all(contrast.ffn[:, :3] == 0)
    order = rankings.part_order(contrast)
    assert len(order) == rankings.n_parts(L, T) == L * (T * (T + 1) // 2 + T)
    assert len({tuple(k) for k in order.tolist()}) == len(order)
    comp = rankings.component_scores([contrast, paths])
    assert comp["attn"].shape == (L,) and comp["mlp"].shape == (L,) and comp["heads"] is None
    ig = rankings.score_parts(trace, "eap-ig", cf, a, b)
    both = rankings.component_scores([ig, paths])
    assert both["heads"].shape == (L, model.n_heads)
    b2 = rankings.score_parts(trace, "best", cf, a, b)
    assert b2.method in ("best (eap-ig (5 steps))", "best (routes-contrast)")
    pick = ig if "eap-ig" in b2.method else contrast
    np.testing.assert_array_equal(b2.attn, pick.attn)
    # a head's EAP-IG score sums to the layer's edge scores over heads
    np.testing.assert_allclose(ig.heads.sum(1), ig.attn.sum((1, 2)), rtol=1e-9, atol=1e-12)


def test_refined_orders_its_pool_by_measured_effects(traced):
    from ltt.circuits.curves import example, measure

    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    ig = rankings.score_parts(trace, "eap-ig", cf, a, b)
    rt = rankings.score_parts(trace, "routes-contrast", cf)
    ref = rankings.score_parts(trace, "refined", cf, a, b)
    order, ig_order = rankings.part_order(ref), rankings.part_order(ig)
    pool = {tuple(k) for k in ig_order[:rankings.REFINE_IG].tolist()}
    pool |= {tuple(k) for k in rankings.part_order(rt)[:rankings.REFINE_ROUTES].tolist()}
    head = [tuple(k) for k in order[:len(pool)].tolist()]
    assert set(head) == pool and len(order) == rankings.n_parts(model.n_layers, len(ids))
    # after the pool, every other part in EAP-IG's order
    assert [tuple(k) for k in order[len(pool):].tolist()] == [k for k in map(tuple, ig_order.tolist()) if k not in pool]
    # the last elimination round: of the two last survivors, the top one is the one whose removal
    # from their two-part circuit moves the logit difference further from the full model's
    ex = example(trace, cf, [a, b])
    ld, full, empty = measure(ex, [order[1:2], order[0:1], order[:2]])
    sign = 1.0 if full >= empty else -1.0
    assert sign * (ld[2] - ld[0]) >= sign * (ld[2] - ld[1]) - 1e-9, (ld, full, empty)
    # ... and the pool's ranking is not EAP-IG's own (the measurement changed it)
    assert head != [tuple(k) for k in ig_order[:len(pool)].tolist()]


def test_curve_and_areas(traced):
    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    c = C.curve(trace, "eap", [1, 0.1, 0.5, 1.0], counterfactual=cf, tokens=[a, b])
    assert c.faithfulness[-1] == pytest.approx(1.0, abs=1e-9)  # every part kept: the full model
    assert c.counts[0].tolist()[0] == 1 and c.fractions[-1] == 1.0
    cpr, cmd = areas(c.fractions, c.faithfulness)
    assert (c.cpr, c.cmd) == (cpr, cmd)
    assert areas([0, 1], [1, 1]) == (1.0, 0.0) and areas([0, 0.5, 1], [0, 1, 1]) == (0.75, 0.25)
    two = C.curve([trace, trace], "random", [0.2, 1.0], counterfactual=[cf, cf], tokens=[[a, b], [a, b]])
    assert two.per_example.shape == (2, 2)
    assert "CPR" in repr(two) and two.to_dict()["ranking"] == "random"


@pytest.mark.parametrize("ranking", ["eap-ig", "routes", "routes-contrast", "refined", None])
def test_circuit_reaches_the_level_when_remeasured(traced, ranking):
    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    g = trace.circuit(0.8, counterfactual=cf, tokens=[a, b], ranking=ranking, baselines=2)
    f = trace.faithfulness(g, counterfactual=cf, tokens=[a, b], baselines=0)
    assert f.normalized >= 0.8 - 1e-9 and g.faithfulness.normalized >= 0.8 - 1e-9
    assert 0 < g.circuit["parts"] < g.circuit["of"]


def test_circuit_without_counterfactual_says_mean(traced):
    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    g = trace.circuit(0.5, tokens=[a, b], ranking="routes-paths", baselines=0)
    assert g.circuit["ablation"] == "mean" and g.faithfulness.reference == len(C.search.REFERENCE)
    assert "mean-ablated over" in C.search.__name__ or "mean-ablated" in __import__("ltt").faithfulness.summary_line(g.faithfulness)


def test_impossible_level_raises_with_the_best(traced):
    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    with pytest.raises(ValueError, match=r"min_faithfulness=1 is not reached.*best measured is -?\d\.\d\d\d"):
        trace.circuit(1.0, counterfactual=cf, tokens=[a, b], ranking="random", max_parts=2)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"min_faithfulness": 0}, ValueError, r"min_faithfulness must be in \(0, 1\], got 0"),
    ({"min_faithfulness": 1.5}, ValueError, "min_faithfulness.*1.5"),
    ({"min_faithfulness": "high"}, TypeError, "min_faithfulness"),
    ({"ranking": "acdc"}, ValueError, "ranking must be one of.*'acdc'"),
    ({"counterfactual": [1, 2]}, ValueError, r"counterfactual has 2 tokens, the prompt \d+"),
    ({"tokens": [5]}, ValueError, r"tokens: a logit difference needs two tokens.*\[5\]"),
    ({"tokens": [5, 5]}, ValueError, "tokens: the answer and the counterfactual answer"),
    ({"max_parts": 0}, ValueError, "max_parts"),
])
def test_bad_circuit_arguments_are_named(traced, kwargs, exc, words):
    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    kw = dict({"counterfactual": cf, "tokens": [a, b]}, **kwargs)
    with pytest.raises(exc, match=words):
        trace.circuit(**kw)


def test_bad_curve_arguments_are_named(traced):
    model, trace = traced("llama")
    ids, cf, a, b = _pair(model, trace)
    with pytest.raises(ValueError, match="ranking"):
        C.curve(trace, "acdc", counterfactual=cf, tokens=[a, b])
    with pytest.raises(ValueError, match="budgets: fraction 1.5"):
        C.curve(trace, "eap", [1.5], counterfactual=cf, tokens=[a, b])
    with pytest.raises(ValueError, match="counterfactual: with 2 traces"):
        C.curve([trace, trace], "eap", counterfactual=cf, tokens=[a, b])


def test_cli_trace_prints_the_circuit(tiny_dir):
    import os
    import re
    import subprocess
    import sys

    from conftest import PROMPT

    env = dict(os.environ, HF_HUB_OFFLINE="1", LTT_QUIET="1")
    cf = PROMPT.replace("John gave", "Mary gave")
    run = lambda *a: subprocess.run([sys.executable, "-m", "ltt.cli", "trace", "--model", tiny_dir("llama"),  # noqa: E731
                                     "--prompt", PROMPT, *a], capture_output=True, text=True, env=env, timeout=300)
    proc = run("--counterfactual", cf, "--min-faithfulness", "0.8", "--ranking", "eap-ig", "--baselines", "2")
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("circuit at"))
    assert re.fullmatch(r"circuit at normalised faithfulness >= 0.8 \(eap-ig ranking, patched from the "
                        r"counterfactual\): \d+ attention edges and \d+ FFN blocks of \d+ parts, normalised "
                        r"faithfulness \d\.\d\d \(random graphs of the same size: -?\d\.\d\d\)", line), line
    assert float(line.split("normalised faithfulness ")[-1].split()[0]) >= 0.8
    assert "faithfulness: normalised faithfulness" in proc.stdout
    bad = run("--min-faithfulness", "1.5")
    assert bad.returncode == 1 and "--min-faithfulness" in bad.stderr and "1.5" in bad.stderr
    bad = run("--counterfactual", "When Mary")
    assert bad.returncode == 1 and "counterfactual has" in bad.stderr
