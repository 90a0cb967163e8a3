"""Faithfulness by intervention on tiny models: exact removals checked against independent
recomputations from each model's own modules, reproducible baselines, the model left as found."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import ltt
from ltt import interventions
from ltt.models import instrument
from ltt.faithfulness import faithfulness, graph_parts, random_parts, summary_line
from ltt.graph import Graph
from ltt.models.families import split_values
from test_models import FAMILIES

from conftest import PROMPT  # noqa: E402 (the prompt of the shared `traced` fixture)
ALL = list(FAMILIES)  # every family's tiny model (tests/test_models.py)
LINE = re.compile(r"the graph keeps \d+\.\d\d of the probability of '.*' "
                  r"\(random graphs of the same size: \d+\.\d\d ± \d+\.\d\d\)")


def _complete(trace, targets=None):
    return trace.graph(threshold=0.0, renormalize=False, targets=targets)


def _logits(result, run: str):
    return np.array([getattr(t, run).logit[0] for t in result.targets])


def _hooks(hf):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in hf.modules()]


# --------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("key", ALL)
def test_complete_graph_keeps_the_full_model(traced, key):
    model, trace = traced(key)
    T = trace.n_tokens
    g = _complete(trace, targets=[3, T - 1])
    f = trace.faithfulness(g, baselines=2, tokens=[5])
    # row 0 is the model's own computation: the trace's logits at the last position
    last = f.targets[-1]
    assert last.full.logit[0] == pytest.approx(float(trace.logits[last.token_ids[0]]), abs=1e-4)
    assert last.token_ids[0] == int(np.argmax(trace.logits))
    for t in f.targets:
        np.testing.assert_allclose(t.kept.logit, t.full.logit, rtol=0, atol=1e-5)
        np.testing.assert_allclose(t.kept.prob, t.full.prob, rtol=1e-5, atol=1e-7)
        assert t.kept.kl < 1e-9
        assert t.removed.kl > 1e-4  # everything removed: a different model
    assert f.attention_edges == [sum(1 for e in g.edges if e.kind == "attention" and e.layer == l)
                                 for l in range(model.n_layers)]


def _llama_without_attention(model, trace, with_ffn: bool) -> torch.Tensor:
    """Next-token logits at the last position of the tiny llama with every attention edge
    removed, recomputed layer by layer from its own modules: each layer adds its o_proj bias
    (the attention branch with no edge) and, when ``with_ffn``, its MLP."""
    hf = model.hf_model
    ids = torch.tensor([[int(i) for i in trace.token_ids]])
    with torch.no_grad():
        x = hf.model.embed_tokens(ids)[0]
        for layer in hf.model.layers:
            x = x + layer.self_attn.o_proj.bias
            if with_ffn:
                x = x + layer.mlp(layer.post_attention_layernorm(x))
        return hf.lm_head(hf.model.norm(x))[-1]


def test_empty_graph_and_attention_free_runs_by_hand(traced):
    model, trace = traced("llama")
    g = _complete(trace)
    empty = dataclasses.replace(g, nodes=[], edges=[])
    f = trace.faithfulness(empty, baselines=0)
    want = _llama_without_attention(model, trace, with_ffn=False).numpy()
    np.testing.assert_allclose(_logits(f, "kept")[0], want[f.targets[0].token_ids[0]], atol=1e-5)
    # the complete graph removed is the same run
    f_all = trace.faithfulness(g, baselines=0)
    np.testing.assert_allclose(f_all.targets[0].removed.logit, f.targets[0].kept.logit, atol=1e-5)
    # only the FFN blocks kept: embeddings + biases + FFNs
    ffn_only = dataclasses.replace(g, edges=[e for e in g.edges if e.kind != "attention"])
    fo = trace.faithfulness(ffn_only, baselines=0, tokens=[7, 11])
    want = _llama_without_attention(model, trace, with_ffn=True).numpy()
    np.testing.assert_allclose(fo.targets[0].kept.logit, want[fo.targets[0].token_ids], atol=1e-4)
    assert abs(fo.targets[0].kept.logit[0] - fo.targets[0].full.logit[0]) > 1e-3  # it changed


# --------------------------------------------------------------------------------------------
# one part removed == an independent recomputation of that layer


def _capture(model, trace, layer):
    """One plain forward pass recording layer ``layer``'s input, output, values, attention
    probabilities, raw attention branch, after-attention state and FFN branch."""
    hf, fam = model.hf_model, model._family
    mod = model._layers[layer]
    rec: dict = {}

    def keep(name, arg=False):
        def hook(module, args, kwargs_or_out, *rest):
            if arg:
                x = args[0] if args else kwargs_or_out.get("hidden_states")
            else:
                x = kwargs_or_out
            # a copy now: Falcon adds the attention output into the MLP output in place
            rec[name] = tuple(v.clone() if torch.is_tensor(v) else v for v in x) if isinstance(x, tuple) else x.clone()
        return hook

    handles = [mod.register_forward_pre_hook(keep("x", True), with_kwargs=True),
               mod.register_forward_hook(keep("y")),
               model._sub(mod, fam.qkv).register_forward_hook(keep("qkv")),
               model._sub(mod, fam.attn).register_forward_hook(keep("attn")),
               model._sub(mod, fam.o_proj).register_forward_hook(keep("o")),
               model._sub(mod, fam.ffn_post_norm or (fam.moe_block if fam.experts else fam.down)
                          ).register_forward_hook(keep("f"))]
    if not model.parallel[layer]:
        handles.append(model._sub(mod, fam.ffn_norm).register_forward_pre_hook(keep("mid", True), with_kwargs=True))
    try:
        with torch.no_grad():
            hf(input_ids=torch.tensor([[int(i) for i in trace.token_ids]]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    first = lambda v: v[0] if isinstance(v, (tuple, list)) else v  # noqa: E731
    row0 = lambda x: x if x.ndim == 2 else x[0]  # noqa: E731  (OPT's MLP runs on [B*T, d], B = 1)
    return {k: row0(first(v)) if k != "attn" else v[1][0] for k, v in rec.items()}


def _rerun_with_state(model, trace, layer, t, new_state):
    """Next-token logits at ``t`` when layer ``layer``'s output at ``t`` is replaced."""
    mod = model._layers[layer]

    def hook(module, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        out = out.clone()
        out[0, t] = new_state
        return (out,) + tuple(output[1:]) if isinstance(output, (tuple, list)) else out

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.hf_model(input_ids=torch.tensor([[int(i) for i in trace.token_ids]]),
                                  use_cache=False).logits[0, t].numpy()
    finally:
        h.remove()


def _ffn_of(model, key, layer_mod, state):
    """The FFN branch of a sequential layer on the after-attention ``state``, by its modules."""
    if key == "gemma2":
        return layer_mod.post_feedforward_layernorm(layer_mod.mlp(layer_mod.pre_feedforward_layernorm(state)))
    if key in ("gpt_neo", "gpt2"):
        return layer_mod.mlp(layer_mod.ln_2(state))
    if key == "opt":
        return layer_mod.fc2(layer_mod.activation_fn(layer_mod.fc1(layer_mod.final_layer_norm(state))))
    if key == "bloom":  # its MLP adds the residual it is given
        return layer_mod.mlp(layer_mod.post_attention_layernorm(state), torch.zeros_like(state))
    if key == "mpt":
        return layer_mod.ffn(layer_mod.norm_2(state), torch.zeros_like(state))
    if model._family.experts:  # a MoE block reads [B, T, d]; gpt-oss's also returns its router
        out = layer_mod.mlp(layer_mod.post_attention_layernorm(state)[None, None])
        return (out[0] if isinstance(out, tuple) else out)[0, 0]
    return layer_mod.mlp(layer_mod.post_attention_layernorm(state))


def _oracle(model, trace, key, layer, t, s=None, mean=False):
    """Layer ``layer``'s new output at ``t`` without edge ``s -> t`` (or, s None, without the FFN
    block at ``t``), recomputed from captured tensors and the layer's own modules."""
    fam, cfg = model._family, model.hf_model.config
    H, G, dh = model.n_heads, model.n_kv_heads, model.d_head
    c = _capture(model, trace, layer)
    mod = model._layers[layer]
    with torch.no_grad():
        if s is None:
            f = c["f"]
            repl = f.mean(dim=0) if mean else torch.zeros_like(f[t])
            if model.parallel[layer]:
                return c["y"][t] - f[t] + repl
            return c["mid"][t] + repl
        v = split_values(fam, cfg, c["qkv"], H, G, dh)  # [T, G, dh]
        A = c["attn"][:, t, s]  # [H]
        group = torch.arange(H) // (H // G)
        read = v.mean(dim=0)[group] - v[s][group] if mean else -v[s][group]
        dz = (A[:, None] * read).reshape(H * dh)
        o_proj = model._sub(mod, fam.o_proj)
        do = dz @ o_proj.weight if type(o_proj).__name__ == "Conv1D" else dz @ o_proj.weight.T
        if model.parallel[layer]:
            return c["y"][t] + do
        if key == "gemma2":
            mid = c["x"][t] + mod.post_attention_layernorm(c["o"][t] + do)
        else:
            mid = c["mid"][t] + do
        return mid + _ffn_of(model, key, mod, mid)


def _without(graph, layer, t, s=None):
    tok = {n.name: n.token for n in graph.nodes}
    if s is None:
        nodes = [n for n in graph.nodes if not (n.kind == "M" and n.layer == layer and n.token == t)]
        names = {n.name for n in nodes}
        edges = [e for e in graph.edges if e.source in names and e.target in names]
    else:
        nodes = graph.nodes
        edges = [e for e in graph.edges if not (e.kind == "attention" and e.layer == layer
                                                and tok[e.target] == t and tok[e.source] == s)]
        assert len(edges) == len(graph.edges) - 1
    return dataclasses.replace(graph, nodes=nodes, edges=edges)


# sequential GQA (llama), parallel (gpt_neox), post-norm with softcapping (gemma2), and the
# subtraction path of the families that bypass the attention interface (falcon: parallel GQA,
# gpt_neo: sequential); OPT runs its MLP on flattened rows; Bloom and MPT (alibi, no attention
# interface: the subtraction path), mixtures of experts (the FFN block is the MoE block) and
# gpt-oss's sinks
@pytest.mark.parametrize("key", ["llama", "gpt_neox", "gemma2", "falcon", "gpt_neo", "opt", "bloom", "mpt",
                                 "mixtral", "qwen2_moe", "gpt_oss"])
@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_one_part_removed_equals_a_recomputation_of_the_layer(traced, key, layer, ablation):
    model, trace = traced(key)
    T = trace.n_tokens
    t, s = T - 1, T - 2  # inside any sliding window
    g = _complete(trace)
    for part in (s, None):  # the edge s -> t, then the FFN block at t
        f = trace.faithfulness(_without(g, layer, t, part), baselines=0, ablation=ablation)
        new = _oracle(model, trace, key, layer, t, part, mean=ablation == "mean")
        want = _rerun_with_state(model, trace, layer, t, new)
        got = f.targets[0]
        ids = got.token_ids
        assert abs(want[ids[0]] - got.full.logit[0]) > 1e-4  # the part mattered
        np.testing.assert_allclose(got.kept.logit, want[ids], atol=2e-5)
        lp_full = torch.log_softmax(torch.tensor(trace.logits, dtype=torch.float64), -1)
        lp_want = torch.log_softmax(torch.tensor(want, dtype=torch.float64), -1)
        kl = float((lp_full.exp() * (lp_full - lp_want)).sum())
        assert got.kept.kl == pytest.approx(kl, rel=1e-3, abs=1e-6)
        assert got.kept.prob[0] == pytest.approx(float(lp_want[ids[0]].exp()), rel=1e-4)
        # its complement: only that part removed is the "removed" run of a graph holding only it
        if part is not None:
            tok = {n.name: n.token for n in g.nodes}
            only = dataclasses.replace(g, edges=[e for e in g.edges if e.kind == "attention" and e.layer == layer
                                                 and tok[e.target] == t and tok[e.source] == s],
                                       nodes=[n for n in g.nodes if n.kind != "M"])
            f2 = trace.faithfulness(only, baselines=0, ablation=ablation)
            np.testing.assert_allclose(f2.targets[0].removed.logit, want[ids], atol=2e-5)


# --------------------------------------------------------------------------------------------
# baselines


def test_same_seed_same_baselines(traced):
    model, trace = traced("llama")
    g = trace.graph(threshold=0.05)
    a = trace.faithfulness(g, baselines=5, seed=7).to_dict()
    b = trace.faithfulness(g, baselines=5, seed=7).to_dict()
    c = trace.faithfulness(g, baselines=5, seed=8).to_dict()
    assert a == b
    assert a["targets"][0]["random"] != c["targets"][0]["random"]
    json.dumps(a)  # plain data


@pytest.mark.parametrize("mode", ["uniform", "rewire"])
def test_random_graphs_have_the_graph_s_size(traced, mode):
    model, trace = traced("llama")
    T = trace.n_tokens
    edges, ffn = graph_parts(trace.graph(threshold=0.02))
    rng = np.random.default_rng(0)
    for _ in range(20):
        re_, rf = random_parts(edges, ffn, T, rng, mode)
        for l, (tgt, src) in edges.items():
            rt, rs = re_[l]
            assert len(rt) == len(tgt) and np.all(rs <= rt) and np.all(rs >= 0) and np.all(rt < T)
            assert len(set(zip(rt.tolist(), rs.tolist()))) == len(rt)  # no edge twice
            if mode == "rewire":
                assert sorted(rt.tolist()) == sorted(tgt.tolist())  # same in-degree per state
        for l, pos in ffn.items():
            assert len(rf[l]) == len(pos) == len(set(rf[l].tolist()))
    # all pairs drawn over many tries: the pair index inversion covers every (t, s)
    one = {0: (np.zeros(1, np.int64), np.zeros(1, np.int64))}
    seen = {tuple(int(x[0]) for x in random_parts(one, {}, 6, rng, "uniform")[0][0]) for _ in range(600)}
    assert seen == {(t, s) for t in range(6) for s in range(t + 1)}


def test_batches_split_by_memory_give_the_same_answer(traced):
    model, trace = traced("gemma2")
    g = trace.graph(threshold=0.05)
    one = trace.faithfulness(g, baselines=4, seed=1).to_dict()
    split = trace.faithfulness(g, baselines=4, seed=1, max_batch_bytes=1).to_dict()  # one row per pass
    assert json.dumps(one["summary"]) and one["summary"].keys() == split["summary"].keys()
    for k, v in one["summary"].items():
        assert split["summary"][k] == pytest.approx(v, rel=1e-5, abs=1e-7)


# --------------------------------------------------------------------------------------------
# the model is left as found


@pytest.mark.parametrize("key", ["llama", "falcon"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_model_left_as_found_after_a_failure_inside_the_run(tiny_dir, key, exc):
    m = ltt.load(tiny_dir(key))  # its own copy: this test switches modes
    hf = m.hf_model
    trace = m.trace(PROMPT)
    g = trace.graph(threshold=0.05)
    hf.train()
    hf.get_output_embeddings().eval()  # a mix of modes to restore
    modes = [mod.training for mod in hf.modules()]
    impl = hf.config._attn_implementation
    hooks = _hooks(hf)

    def boom(module, args):
        raise exc("injected fault in layer 1")

    h = m._layers[1].register_forward_pre_hook(boom)
    with pytest.raises(exc, match="injected fault"):
        trace.faithfulness(g, baselines=3)
    h.remove()
    assert _hooks(hf) == hooks
    assert [mod.training for mod in hf.modules()] == modes
    assert hf.config._attn_implementation == impl
    assert not instrument._ACTIVE and not instrument._OWNERS
    hf.eval()
    again = m.trace(PROMPT)
    np.testing.assert_array_equal(again.logits, trace.logits)
    f = trace.faithfulness(g, baselines=1)  # the lock was released
    assert f.targets[0].full.logit[0] == pytest.approx(float(trace.logits.max()), abs=1e-4)


def test_model_in_sdpa_mode_is_restored(tiny_dir):
    m = ltt.load(tiny_dir("llama"))
    trace = m.trace(PROMPT)
    m.hf_model.config._attn_implementation_internal = "sdpa"
    try:
        f = trace.faithfulness(_complete(trace), baselines=0)
        assert m.hf_model.config._attn_implementation == "sdpa"
        np.testing.assert_allclose(f.targets[0].kept.logit, f.targets[0].full.logit, atol=1e-5)
    finally:
        m.hf_model.config._attn_implementation_internal = "eager"


# --------------------------------------------------------------------------------------------
# the result and bad input


def test_result_views(traced):
    model, trace = traced("gpt2")
    f = trace.faithfulness(trace.graph(threshold=0.05), baselines=3, tokens=["<", 9])
    t = f.targets[0]
    assert len(t.tokens) == 3 and t.tokens[1] == "<" and len(t.random) == 3
    assert "&lt;" in f._repr_html_() and "'<'" not in f._repr_html_()
    assert LINE.fullmatch(summary_line(f)), summary_line(f)
    assert "kept" in repr(f) and "removed" in repr(f) and summary_line(f) in repr(f)
    s = f.summary()
    assert s["kept"] == pytest.approx(t.kept.prob[0] / t.full.prob[0])
    assert s["random"] == pytest.approx(t.random_fractions.mean())
    assert "(random graphs" not in summary_line(trace.faithfulness(trace.graph(), baselines=0))
    two = trace.faithfulness(trace.graph(targets=[2, -1]), baselines=1)
    assert summary_line(two).startswith("at [2] the graph keeps") and "; at [" in summary_line(two)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"ablation": "resample"}, ValueError, "ablation"),
    ({"baselines": -1}, ValueError, "baselines"),
    ({"baselines": True}, TypeError, "baselines"),
    ({"baselines": 2.5}, TypeError, "baselines"),
    ({"seed": "x"}, TypeError, "seed"),
    ({"random": "other"}, ValueError, "random"),
    ({"tokens": ["When Mary"]}, ValueError, "tokens"),
    ({"tokens": [10 ** 9]}, ValueError, "tokens"),
    ({"tokens": [None]}, TypeError, "tokens"),
])
def test_bad_arguments_are_named(traced, kwargs, exc, words):
    model, trace = traced("gpt2")
    with pytest.raises(exc, match=words):
        trace.faithfulness(trace.graph(), **kwargs)


def test_graph_of_another_prompt_is_refused(traced):
    model, trace = traced("gpt2")
    other = model.trace("The capital of France is")
    with pytest.raises(ValueError, match="another prompt"):
        trace.faithfulness(other.graph())
    with pytest.raises(TypeError, match="graph"):
        trace.faithfulness(other.graph().to_dict())
    assert isinstance(other.graph(), Graph)


# --------------------------------------------------------------------------------------------
# where it shows: the CLI, trace_many / RouteSet, the widget and the report


def test_cli_trace_prints_the_line(tiny_dir):
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", LTT_QUIET="1")
    run = lambda *a: subprocess.run([sys.executable, "-m", "ltt.cli", "trace", "--model", tiny_dir("llama"),  # noqa: E731
                                     "--prompt", PROMPT, *a], capture_output=True, text=True, env=env, timeout=300)
    proc = run("--baselines", "4")
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("faithfulness: "))
    assert LINE.fullmatch(line[len("faithfulness: "):]), line
    assert "faithfulness:" not in run("--baselines", "0").stdout
    bad = run("--baselines", "-2")
    assert bad.returncode == 1 and "--baselines" in bad.stderr and "-2" in bad.stderr


def test_trace_many_records_and_routeset_summarises(tiny_model, tmp_path):
    from ltt import routes as R

    model = tiny_model("llama")
    prompts = [PROMPT, "The capital of France is Paris"]
    out = tmp_path / "routes.jsonl"
    rs = R.trace_many(model, prompts, faithfulness=3, out=out)
    assert rs.settings["faithfulness"] == 3
    for r, p in zip(rs.records, prompts):
        tr = model.trace(p)
        want = tr.faithfulness(tr.graph(), baselines=3).summary()
        assert r.faithfulness == pytest.approx(want)
    agg = rs.faithfulness
    assert agg["prompts"] == 2
    assert agg["kept"] == pytest.approx(np.mean([r.faithfulness["kept"] for r in rs.records]))
    assert agg["random"] == pytest.approx(np.mean([r.faithfulness["random"] for r in rs.records]))
    back = R.load_routes(out)
    assert back.faithfulness == pytest.approx(agg)
    plain = R.trace_many(model, prompts[:1])
    assert plain.faithfulness is None and "faithfulness" not in plain.settings
    assert "faithfulness" not in plain.records[0].to_record()
    with pytest.raises(ValueError, match="faithfulness"):
        R.trace_many(model, prompts, faithfulness=-1)


def _settled(w, timeout: float = 120.0) -> None:
    """Wait (bounded) until the widget's faithfulness thread has set its line."""
    import time

    deadline = time.monotonic() + timeout
    while w.faithfulness_state == "computing" and time.monotonic() < deadline:
        time.sleep(0.01)


def test_widget_and_report_carry_the_line(traced):
    from ltt.report import report_data
    from ltt.widget import GraphWidget

    model, trace = traced("llama")
    w = GraphWidget(trace, threshold=0.05)
    want = summary_line(trace.faithfulness(trace.graph(threshold=0.05), baselines=w.faithfulness_baselines))
    _settled(w)  # the widget's own check runs in its thread: whichever took the model first
    assert w.faithfulness == want and LINE.fullmatch(want)
    w.threshold = 0.2
    _settled(w)
    assert w.faithfulness == summary_line(trace.faithfulness(trace.graph(threshold=0.2), baselines=8))
    w.faithfulness_baselines = 0
    w.threshold = 0.1
    assert w.faithfulness == ""
    store = report_data(trace, threshold=0.05, with_panels=False)
    assert store["state"]["faithfulness"] == f"at threshold 0.05: {want}"


def test_report_page_shows_the_line_as_text(traced, tmp_path):
    from playwright import sync_api

    from conftest import chromium_path
    from ltt.report import to_html

    model, trace = traced("llama")
    path = to_html(trace, tmp_path / "report.html", threshold=0.05)
    want = f"at threshold 0.05: {summary_line(trace.faithfulness(trace.graph(threshold=0.05), baselines=8))}"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = b.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(tmp_path.joinpath("report.html").as_uri())
            page.wait_for_selector("svg.ltt-svg[data-edges]")
            shown = page.eval_on_selector(".ltt-faithfulness", "e => [e.textContent, getComputedStyle(e).display]")
        finally:
            b.close()
    assert str(path).endswith("report.html") and not errors
    assert shown == [want, "block"]


@pytest.mark.parametrize("key", ["llama", "falcon"])
def test_half_precision_complete_graph_keeps_the_full_model(tiny_dir, key):
    m = ltt.load(tiny_dir(key), dtype="bfloat16")
    trace = m.trace(PROMPT)
    f = trace.faithfulness(_complete(trace), baselines=1)
    t = f.targets[0]
    assert t.kept.logit == t.full.logit and t.kept.kl == 0.0
    assert t.full.logit[0] == float(trace.logits.max())
    assert t.removed.kl > 1e-3


def test_two_threads_on_one_model_take_turns(traced):
    import threading

    model, trace = traced("gemma2")
    graphs = [trace.graph(threshold=0.05), trace.graph(threshold=0.0, renormalize=False)]
    want = [trace.faithfulness(g, baselines=6, seed=i).to_dict() for i, g in enumerate(graphs)]
    got: list = [None, None]
    errors: list = []

    def run(i):
        try:
            for _ in range(3):
                got[i] = trace.faithfulness(graphs[i], baselines=6, seed=i).to_dict()
                assert got[i] == want[i]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors and got == want
    assert not instrument._ACTIVE and not instrument._OWNERS


def test_gpt2_upcast_attention_takes_the_subtraction_path():
    from conftest import build_tiny

    hf, tok = build_tiny("gpt2")
    hf.config.reorder_and_upcast_attn = True  # GPT-2 then bypasses the attention interface
    for block in hf.transformer.h:
        block.attn.reorder_and_upcast_attn = True
    m = ltt.load(hf, tokenizer=tok)
    assert not interventions.uses_interface(m)
    trace = m.trace(PROMPT)
    g = _complete(trace)
    f = trace.faithfulness(g, baselines=0)
    t = f.targets[0]
    np.testing.assert_allclose(t.kept.logit, t.full.logit, atol=1e-6)
    assert t.full.logit[0] == pytest.approx(float(trace.logits.max()), abs=1e-5)
    T = trace.n_tokens
    one = trace.faithfulness(_without(g, 1, T - 1, T - 2), baselines=0).targets[0]
    want = _rerun_with_state(m, trace, 1, T - 1, _oracle(m, trace, "gpt2", 1, T - 1, T - 2))
    assert abs(want[one.token_ids[0]] - one.full.logit[0]) > 1e-4  # the edge mattered
    np.testing.assert_allclose(one.kept.logit, want[one.token_ids], atol=2e-5)
