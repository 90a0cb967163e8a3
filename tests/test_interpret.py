"""Interpretation on the tiny per-family models: logit lens, direct effects, head and neuron views.

Everything is checked against the model itself (torch recomputation, the model's own logits) or
the NumPy twins in :mod:`ltt._reference`, never against ltt's own numbers.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from ltt import _reference as ref
from ltt import interpret
from ltt.scores import attribute
from ltt.models.families import family_for, get_module
from ltt.models import unembedding

PROMPT = "When Mary and John went to the store, John gave a drink to"

# A spread of block shapes: RMSNorm + GQA, LayerNorm + biases + Conv1D, parallel blocks,
# post-branch norms + softcapping, OPT's project_out, Phi's lm_head bias, Falcon variants.
SEQUENTIAL = ["llama", "gpt2", "gemma2", "opt", "falcon_seq"]
PARALLEL = ["gpt_neox", "phi", "falcon"]
FAMILIES = SEQUENTIAL + PARALLEL


@pytest.fixture(scope="module")
def traced(tiny_model):
    """``traced(key)`` -> a trace of PROMPT on that family's tiny model (cached per module)."""
    made: dict = {}

    def get(key: str):
        if key not in made:
            made[key] = tiny_model(key).trace(PROMPT)
        return made[key]

    return get


def _pre_softcap(trace) -> np.ndarray:
    """The model's last logits before any final softcapping (the direct effects' target)."""
    cap = getattr(trace.model.hf_model.config, "final_logit_softcapping", None)
    z = trace.logits.astype(np.float64)
    return np.arctanh(z / cap) * cap if cap else z


# --------------------------------------------------------------------------------------------
# head outputs against torch


def _o_proj_inputs(model, prompt):
    """The input of every layer's output projection, recomputed in torch: ``[L] x [T, H*d_h]``,
    plus the o_proj modules and (post-norm families) the o_proj outputs."""
    import torch

    hf = model.hf_model
    fam = family_for(hf.config)
    layers = get_module(hf, fam.layers)
    ins, outs, mods, handles = [], [], [], []

    def hook(module, args, output):  # returns None: the output is left as it is
        ins.append(args[0][0].detach().double())
        outs.append(output[0].detach().double())

    for layer in layers:
        mod = get_module(layer, fam.o_proj)
        mods.append(mod)
        handles.append(mod.register_forward_hook(hook))
    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
    try:
        with torch.no_grad():
            hf(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ins, outs, mods, fam, layers


@pytest.mark.parametrize("key", ["llama", "gpt2", "gemma2", "gpt_neox", "falcon", "qwen2"])
def test_head_output_matches_torch(tiny_model, traced, key):
    model = tiny_model(key)
    trace = traced(key)
    ins, outs, mods, fam, layers = _o_proj_inputs(model, PROMPT)
    H, dh = model.n_heads, model.d_head
    T = trace.n_tokens
    for l in range(model.n_layers):
        W = mods[l].weight.detach().double()
        # Conv1D keeps [in, out]; nn.Linear keeps [out, in].
        w_in_out = W if type(mods[l]).__name__ == "Conv1D" else W.T
        post = get_module(layers[l], fam.attn_post_norm)
        for h in range(H):
            for t in (0, T // 2, T - 1):
                want = ins[l][t, h * dh:(h + 1) * dh] @ w_in_out[h * dh:(h + 1) * dh]
                if post is not None:  # Gemma 2/3: the post-attention RMSNorm, frozen at the branch
                    o = outs[l][t]
                    r = 1.0 / np.sqrt(float((o * o).mean()) + post.eps)
                    want = want * r * (1.0 + post.weight.detach().double())
                got = interpret.head_output(trace, l, h, t)
                np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5,
                                           err_msg=f"{key} layer {l} head {h} token {t}")


# --------------------------------------------------------------------------------------------
# logit lens


@pytest.mark.parametrize("key", FAMILIES + ["gemma3"])
def test_top_tokens_of_last_state_are_the_models_predictions(traced, key):
    trace = traced(key)
    L, T = trace.n_layers, trace.n_tokens
    tt = interpret.top_tokens(trace, f"I{L - 1}_{T - 1}", k=5)
    want = np.argsort(-trace.logits, kind="stable")[:5]
    assert tt.ids == want.tolist()
    np.testing.assert_allclose([t.logit for t in tt.tokens], trace.logits[want], rtol=1e-4, atol=1e-5)
    p = np.exp(trace.logits.astype(np.float64) - trace.logits.max())
    p /= p.sum()
    np.testing.assert_allclose([t.prob for t in tt.tokens], p[want], rtol=1e-4, atol=1e-7)
    assert [t.rank for t in tt.tokens] == list(range(5))


@pytest.mark.parametrize("key", ["llama", "gpt_neox"])
def test_rank_change_against_the_predecessor(traced, key):
    trace = traced(key)
    head = interpret.output_head(trace)
    t = 4
    nodes = ["X0_4", "I0_4", "I1_4"] + ([] if trace.layers[1].parallel else ["A1_4"])
    for node in nodes:
        for normalize in (True, False):
            tt = interpret.top_tokens(trace, node, k=4, normalize=normalize)
            if node == "X0_4":
                assert tt.predecessor is None and all(x.rank_change is None for x in tt.tokens)
                continue
            kind, layer = node[0], int(node[1])
            if kind == "A" or trace.layers[layer].parallel:
                want_pred = "X0_4" if layer == 0 else f"I{layer - 1}_4"
            else:
                want_pred = f"A{layer}_4"
            assert tt.predecessor == want_pred
            z_prev = head.logits(interpret.state(trace, want_pred), normalize)
            for x in tt.tokens:
                assert x.prev_rank == int((z_prev > z_prev[x.token_id]).sum())
                assert x.rank_change == x.prev_rank - x.rank
    # without the norm, the lens is lm_head on the raw state
    raw = interpret.top_tokens(trace, f"I0_{t}", k=3, normalize=False)
    z = trace.model.unembed(trace.layers[0].resid_post[t], softcap=False)
    assert raw.ids == np.argsort(-z, kind="stable")[:3].tolist()


# --------------------------------------------------------------------------------------------
# direct effects add up to the logits


def _all_neurons(trace, l, t):
    F = trace.layers[l].act.shape[1]
    return np.stack([interpret.update_vector(trace, l, t, "ffn", neuron=i) for i in range(F)])


@pytest.mark.parametrize("key", FAMILIES + ["gemma3"])
def test_direct_effects_sum_to_the_logits(traced, key):
    trace = traced(key)
    t = trace.n_tokens - 1
    head = interpret.output_head(trace)
    H = trace.layers[0].attn.shape[0]
    total = head.constant().astype(np.float64)
    total += interpret.direct_effect(trace, interpret.state(trace, f"X0_{t}"), t)
    for l, lb in enumerate(trace.layers):
        heads = np.stack([interpret.update_vector(trace, l, t, "attn", head=h) for h in range(H)])
        neurons = _all_neurons(trace, l, t)
        attn_bias = lb.attn_bias[t] if lb.attn_bias is not None else 0.0
        ffn_bias = lb.ffn_bias[t] if lb.ffn_bias is not None else 0.0
        # heads + bias rebuild the attention update, neurons + bias the FFN update
        scale = np.abs(lb.resid_post[t]).max()
        np.testing.assert_allclose(heads.sum(0) + attn_bias, interpret.update_vector(trace, l, t, "attn"),
                                   atol=2e-5 * scale)
        np.testing.assert_allclose(neurons.sum(0) + ffn_bias, interpret.update_vector(trace, l, t, "ffn"),
                                   atol=2e-5 * scale)
        parts = [interpret.direct_effect(trace, heads, t).sum(0),
                 interpret.direct_effect(trace, neurons, t).sum(0)]
        for b in (lb.attn_bias, lb.ffn_bias):
            if b is not None:
                parts.append(interpret.direct_effect(trace, b[t], t))
        total += sum(p.astype(np.float64) for p in parts)
    want = _pre_softcap(trace)
    np.testing.assert_allclose(total, want, atol=2e-4 * max(1.0, np.abs(want).max()))


def test_block_effects_and_raw_projection(traced):
    trace = traced("gpt2")
    t = 3
    head = interpret.output_head(trace)
    v = interpret.update_vector(trace, 1, t, "ffn")
    p = interpret.promoted(trace, 1, t, block="ffn", k=4)
    z = interpret.direct_effect(trace, v, t)
    assert [x.token_id for x in p.promoted] == np.argsort(-z, kind="stable")[:4].tolist()
    assert [x.token_id for x in p.suppressed] == np.argsort(z, kind="stable")[:4].tolist()
    assert p.promoted[0].effect >= p.promoted[-1].effect > p.suppressed[-1].effect >= p.suppressed[0].effect
    # LayerNorm: the frozen linearisation centres the update; raw is lm_head alone
    lb = trace.layers[-1]
    fz = trace.model.final_norm_scale(lb.resid_post[t])
    centred = (v - v.mean()) * fz.scale * fz.gamma
    np.testing.assert_allclose(z, head.project(centred), rtol=1e-5, atol=1e-5)
    r = interpret.promoted(trace, 1, t, block="ffn", k=4, raw=True)
    zr = trace.model.unembed(v, softcap=False) - trace.model.unembed(np.zeros_like(v), softcap=False)
    assert [x.token_id for x in r.promoted] == np.argsort(-zr, kind="stable")[:4].tolist()
    assert r.raw and not p.raw


def test_neuron_sign_counts(traced):
    trace = traced("llama")
    lb, t = trace.layers[0], 5
    i = int(np.argmin(lb.act[t]))  # a negative activation
    assert lb.act[t, i] < 0
    p = interpret.promoted(trace, 0, t, block="ffn", neuron=i, k=3)
    w_effect = interpret.direct_effect(trace, lb.w_down[i], t)
    # the neuron's output is a * w: with a < 0 it promotes what w alone suppresses
    assert [x.token_id for x in p.promoted] == np.argsort(w_effect, kind="stable")[:3].tolist()


# --------------------------------------------------------------------------------------------
# heads


@pytest.mark.parametrize("key", ["llama", "gpt_neox"])
def test_edge_heads_and_head_view(traced, key):
    trace = traced(key)
    full = attribute(trace)
    l, t, s = 1, 7, 3
    shares = interpret.head_shares(trace, l, t, s)
    np.testing.assert_array_equal(shares, full.heads[l, :, t, s])
    np.testing.assert_allclose(shares.sum(), full.attn[l, t, s], rtol=1e-5, atol=1e-7)
    eh = interpret.edge_heads(trace, l, t, s)
    assert [h.share for h in eh.heads] == sorted(shares.tolist(), reverse=True)
    np.testing.assert_array_equal(eh.shares, shares)
    assert eh.weight == pytest.approx(float(full.attn[l, t, s]))

    hv = interpret.head_view(trace, l, 2, target=t, k=3)
    lb = trace.layers[l]
    whole = lb.resid_post if lb.parallel else lb.resid_mid
    want = ref.attn_head_map(2, whole, lb.attn, lb.values, lb.w_o, full.attn_total[l],
                             lb.attn_norm.row_scale, lb.attn_norm.col_scale, lb.attn_norm.center)
    np.testing.assert_allclose(hv.contribution, want, atol=2e-5)
    np.testing.assert_allclose(interpret.head_map(trace, l, 2), want, atol=2e-5)
    np.testing.assert_array_equal(hv.pattern, np.tril(lb.attn[2]))
    np.testing.assert_allclose(hv.output, interpret.head_output(trace, l, 2, t))
    assert hv.promoted.head == 2 and len(hv.promoted.promoted) == 3
    assert hv.target == t and len(hv.rows()) == t + 1
    assert interpret.head_view(trace, l, 0).target == trace.n_tokens - 1


# --------------------------------------------------------------------------------------------
# neurons


@pytest.mark.parametrize("key", ["llama", "gpt2", "gemma2", "gpt_neox"])
def test_neuron_shares_sum_to_one_and_match_the_twin(traced, key):
    trace = traced(key)
    l, t = 1, 6
    lb = trace.layers[l]
    shares = interpret.neuron_shares(trace, l, t)
    tn = interpret.top_neurons(trace, l, t, k=5)
    assert shares.shape == (lb.act.shape[1],)
    assert shares.sum() + tn.resid_share + tn.bias_share == pytest.approx(1.0, abs=1e-5)
    resid = lb.resid_post[t] - lb.ffn_out[t] if lb.parallel else lb.resid_mid[t]
    bias = None if lb.ffn_bias is None else lb.ffn_bias[t:t + 1]
    want = ref.ffn_neuron_contrib(
        lb.act[t:t + 1], lb.w_down, resid[None], lb.resid_post[t:t + 1], bias=bias,
        row_scale=None if lb.ffn_norm.row_scale is None else lb.ffn_norm.row_scale[t:t + 1],
        col_scale=lb.ffn_norm.col_scale, center=lb.ffn_norm.center)
    np.testing.assert_allclose(shares, want["neurons"][0], atol=2e-5)
    assert tn.resid_share == pytest.approx(float(want["resid"][0]), abs=2e-5)
    top = np.argsort(-want["neurons"][0], kind="stable")[:5]
    got = [n.neuron for n in tn.neurons]
    np.testing.assert_allclose(shares[got], want["neurons"][0][top], atol=2e-5)  # same up to ties
    for n in tn.neurons:
        assert n.activation == pytest.approx(float(lb.act[t, n.neuron]))
        assert n.share == pytest.approx(float(shares[n.neuron]))
        p = interpret.promoted(trace, l, t, block="ffn", neuron=n.neuron, k=5)
        assert [x.token_id for x in n.promoted] == [x.token_id for x in p.promoted]
        assert [x.token_id for x in n.suppressed] == [x.token_id for x in p.suppressed]


# --------------------------------------------------------------------------------------------
# result objects


def test_results_are_plain_escaped_and_printable(tiny_model, monkeypatch):
    trace = tiny_model("llama").trace("<img src=x onerror=alert(1)> and <b>bold</b>")
    T = trace.n_tokens
    results = [
        interpret.top_tokens(trace, f"I1_{T - 1}", k=3),
        interpret.promoted(trace, 1, -1, block="attn", head=0, k=3),
        interpret.edge_heads(trace, 1, T - 1, 1),
        interpret.head_view(trace, 1, 0, k=3),
        interpret.top_neurons(trace, 1, -1, k=3, k_tokens=2),
    ]
    for r in results:
        d = r.to_dict()
        json.dumps(d)  # plain data only
        text = repr(r)
        assert text.splitlines()[0] == r.title()
        page = r._repr_html_()
        assert "<img" not in page and "<b>bold" not in page
        assert r.rows() and all(isinstance(row, dict) for row in r.rows())
    assert "&lt;" in results[3]._repr_html_()  # the prompt's '<' tokens, shown as text
    assert results[3].to_dict()["contribution"][0][0] == pytest.approx(float(results[3].contribution[0, 0]))
    # pandas is optional: a missing install says how to get it
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        results[0].to_pandas()


def test_to_pandas(traced):
    import pandas as pd
    trace = traced("llama")
    frame = interpret.top_neurons(trace, 0, -1, k=4, k_tokens=2).to_pandas()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    assert list(interpret.top_tokens(trace, "I1_3", k=2).to_pandas()["rank"]) == [0, 1]


# --------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_name_the_argument(traced):
    trace = traced("llama")
    L, T, H = trace.n_layers, trace.n_tokens, trace.layers[0].attn.shape[0]
    F = trace.layers[0].act.shape[1]
    cases = [
        (lambda: interpret.top_tokens(trace, f"I{L}_0"), ValueError, f"layer {L} is out of range"),
        (lambda: interpret.top_tokens(trace, f"I0_{T}"), ValueError, f"token {T} is out of range"),
        (lambda: interpret.top_tokens(trace, "I0-3"), ValueError, "'I0-3' is not a node name"),
        (lambda: interpret.top_tokens(trace, "Q0_1"), ValueError, "unknown node kind 'Q'"),
        (lambda: interpret.top_tokens(trace, "X1_0"), ValueError, "X0_t"),
        (lambda: interpret.top_tokens(trace, "M0_1"), ValueError, "FFN block, not a residual state"),
        (lambda: interpret.top_tokens(trace, 3), TypeError, "node must be a node name"),
        (lambda: interpret.top_tokens(trace, "I0_1", k=0), ValueError, "k must be a positive integer, got 0"),
        (lambda: interpret.top_tokens(trace, "I0_1", k=-2), ValueError, "got -2"),
        (lambda: interpret.top_tokens(trace, "I0_1", k=2.5), TypeError, "k must be a positive integer"),
        (lambda: interpret.top_tokens(trace, "I0_1", normalize="yes"), TypeError, "normalize"),
        (lambda: interpret.promoted(trace, L, 0), ValueError, f"layer={L} is out of range"),
        (lambda: interpret.promoted(trace, 0, T), ValueError, f"token={T} is out of range"),
        (lambda: interpret.promoted(trace, 0, -T - 1), ValueError, f"token={-T - 1} is out of range"),
        (lambda: interpret.promoted(trace, 0, 0, head=H), ValueError, f"head={H} is out of range"),
        (lambda: interpret.promoted(trace, 0, 0, block="ffn", neuron=F), ValueError,
         f"neuron={F} is out of range"),
        (lambda: interpret.promoted(trace, 0, 0, block="mlp"), ValueError, "block must be 'attn' or 'ffn'"),
        (lambda: interpret.promoted(trace, 0, 0, block="ffn", head=1), ValueError, "head=1 is given with block='ffn'"),
        (lambda: interpret.promoted(trace, 0, 0, neuron=1), ValueError, "neuron=1 is given with block='attn'"),
        (lambda: interpret.promoted(trace, 0, 0, k=0), ValueError, "k must be a positive integer"),
        (lambda: interpret.promoted(trace, "0", 0), TypeError, "layer must be an integer, got '0'"),
        (lambda: interpret.promoted(trace, 0, True), TypeError, "token must be an integer, got True"),
        (lambda: interpret.head_shares(trace, 0, 2, 5), ValueError, "source=5 comes after target=2"),
        (lambda: interpret.edge_heads(trace, 0, 2, 5), ValueError, "source=5 comes after target=2"),
        (lambda: interpret.edge_heads(trace, 0, T, 0), ValueError, f"target={T} is out of range"),
        (lambda: interpret.head_shares(trace, -L - 1, 1, 0), ValueError, "layer="),
        (lambda: interpret.head_view(trace, 0, H), ValueError, f"head={H} is out of range"),
        (lambda: interpret.head_view(trace, 0, 0, target=T), ValueError, f"target={T} is out of range"),
        (lambda: interpret.head_view(trace, 0, 0, k=0), ValueError, "k must be a positive integer"),
        (lambda: interpret.neuron_shares(trace, L, 0), ValueError, f"layer={L} is out of range"),
        (lambda: interpret.top_neurons(trace, 0, T), ValueError, f"token={T} is out of range"),
        (lambda: interpret.top_neurons(trace, 0, 0, k=0), ValueError, "k must be a positive integer"),
        (lambda: interpret.top_neurons(trace, 0, 0, k_tokens=0), ValueError, "k_tokens must be"),
    ]
    for call, exc, message in cases:
        with pytest.raises(exc, match=_escape(message)):
            call()


def test_parallel_layer_has_no_after_attention_state(traced):
    trace = traced("gpt_neox")
    assert trace.layers[1].parallel
    with pytest.raises(ValueError, match="layer 1 is a parallel block: it has no after-attention state"):
        interpret.top_tokens(trace, "A1_2")
    # its I node follows the previous layer's output directly
    assert interpret.top_tokens(trace, "I1_2").predecessor == "I0_2"
    assert interpret.top_tokens(trace, "I0_2").predecessor == "X0_2"


def test_negative_positions_count_from_the_end(traced):
    trace = traced("llama")
    T = trace.n_tokens
    a = interpret.promoted(trace, -1, -1, block="attn", head=-1, k=2)
    b = interpret.promoted(trace, trace.n_layers - 1, T - 1, block="attn", head=trace.layers[0].attn.shape[0] - 1, k=2)
    assert a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(interpret.head_shares(trace, 0, -1, -2), interpret.head_shares(trace, 0, T - 1, T - 2))


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_trace_methods_delegate(traced):
    trace = traced("llama")
    same = [
        (trace.top_tokens("I1_3", k=2, normalize=False), interpret.top_tokens(trace, "I1_3", 2, False)),
        (trace.promoted(1, 4, block="ffn", neuron=2, k=3, raw=True),
         interpret.promoted(trace, 1, 4, "ffn", neuron=2, k=3, raw=True)),
        (trace.edge_heads(1, 4, 2), interpret.edge_heads(trace, 1, 4, 2)),
        (trace.head_view(1, 3, target=4, k=2), interpret.head_view(trace, 1, 3, 4, 2)),
        (trace.top_neurons(0, 4, k=3), interpret.top_neurons(trace, 0, 4, k=3)),
    ]
    for a, b in same:
        assert type(a) is type(b) and a.to_dict() == b.to_dict()
    np.testing.assert_array_equal(trace.head_shares(1, 4, 2), interpret.head_shares(trace, 1, 4, 2))
    np.testing.assert_array_equal(trace.neuron_shares(1, 4), interpret.neuron_shares(trace, 1, 4))


# --------------------------------------------------------------------------------------------
# batched answers: the report's *_many functions give the single clicks' answers, bit for bit


def _states(trace) -> list[str]:
    out = []
    for t in range(trace.n_tokens):
        out.append(f"X0_{t}")
        for l, lb in enumerate(trace.layers):
            out += ([] if lb.parallel else [f"A{l}_{t}"]) + [f"I{l}_{t}"]
    return out


def _same_head_view(a, b):
    for name in ("layer", "head", "target", "target_token", "tokens", "promoted"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("contribution", "pattern", "output"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("rows", [None, 3])  # the default chunk, and chunks of 3 rows
@pytest.mark.parametrize("key", ["llama", "gemma2", "opt", "phi", "gpt_neox", "falcon_seq"])
def test_batched_answers_equal_the_single_ones(traced, monkeypatch, key, rows):
    if rows is not None:
        monkeypatch.setattr(unembedding, "ROWS", rows)
    trace = traced(key)
    L, T, H = trace.n_layers, trace.n_tokens, trace.layers[0].attn.shape[0]
    rng = np.random.default_rng(0)
    nodes = _states(trace)
    nodes = [nodes[i] for i in rng.permutation(len(nodes))] + [nodes[0], f"I{L - 1}_{T - 1}"]  # repeats too
    assert len(nodes) > 2 * unembedding.ROWS or rows is None
    for normalize in (True, False):
        many = interpret.top_tokens_many(trace, nodes, k=4, normalize=normalize)
        assert many == [interpret.top_tokens(trace, n, k=4, normalize=normalize) for n in nodes]

    updates = [(l, t) for l in range(L) for t in range(T)]
    updates += [(l, t, "attn", h) for l in range(L) for t in (0, T // 2, -1) for h in range(H)]
    updates += [(l, t, "ffn") for l in range(L) for t in range(T)]
    updates += [(l, -1, "ffn", None, i) for l in range(L) for i in (0, 5, 17)]
    updates.append({"layer": 1, "token": 3, "block": "ffn", "neuron": 2})
    for raw in (False, True):
        many = interpret.promoted_many(trace, updates, k=3, raw=raw)
        single = [interpret.promoted(trace, **u, k=3, raw=raw) if isinstance(u, dict)
                  else interpret.promoted(trace, *u, k=3, raw=raw) for u in updates]
        assert many == single

    heads = [(l, h, t) for l in range(L) for h in range(H) for t in (1, T - 1)] + [(0, 1)]
    for got, item in zip(interpret.head_view_many(trace, heads, k=3), heads):
        _same_head_view(got, interpret.head_view(trace, *item, k=3))

    ffn = [(l, t) for l in range(L) for t in range(0, T, 2)] + [(0, -1)]
    many = interpret.top_neurons_many(trace, ffn, k=4, k_tokens=3)
    assert many == [interpret.top_neurons(trace, l, t, k=4, k_tokens=3) for l, t in ffn]


def test_logits_do_not_depend_on_the_batch(traced):
    trace = traced("llama")
    head = interpret.output_head(trace)
    x = np.random.default_rng(1).standard_normal((2 * unembedding.ROWS + 5, trace.layers[0].resid_pre.shape[1]))
    z = head.project(x)
    for i in (0, 1, unembedding.ROWS, len(x) - 1):
        np.testing.assert_array_equal(head.project(x[i]), z[i])
        np.testing.assert_array_equal(head.project(x[i : i + 2])[0], z[i])
    assert head.project(x[:0]).shape == (0, head.vocab_size)


def test_batched_functions_take_empty_lists_and_refuse_bad_items(traced):
    trace = traced("llama")
    assert interpret.top_tokens_many(trace, []) == []
    assert interpret.promoted_many(trace, []) == []
    assert interpret.head_view_many(trace, []) == []
    assert interpret.top_neurons_many(trace, []) == []
    with pytest.raises(TypeError, match="nodes must be a list"):
        interpret.top_tokens_many(trace, "I1_3")
    with pytest.raises(ValueError, match="node='Q1_3'"):
        interpret.top_tokens_many(trace, ["I1_3", "Q1_3"])
    with pytest.raises(TypeError, match=r"an update must be \(layer, token"):
        interpret.promoted_many(trace, [7])
    with pytest.raises(ValueError, match="keys layer, token"):
        interpret.promoted_many(trace, [{"layer": 1, "tok": 3}])
    with pytest.raises(ValueError, match="head=2 is given with block='ffn'"):
        interpret.promoted_many(trace, [(1, 3, "ffn", 2)])
    with pytest.raises(ValueError, match="neuron=99999"):
        interpret.promoted_many(trace, [(1, 3, "ffn", None, 99999)])
    with pytest.raises(TypeError, match=r"a head must be \(layer, head\)"):
        interpret.head_view_many(trace, [1])
    with pytest.raises(ValueError, match="head=99"):
        interpret.head_view_many(trace, [(1, 99)])
    with pytest.raises(TypeError, match=r"an FFN node must be \(layer, token\)"):
        interpret.top_neurons_many(trace, [(1, 2, 3)])
    with pytest.raises(ValueError, match="k_tokens must be a positive integer"):
        interpret.top_neurons_many(trace, [(1, 2)], k_tokens=0)


def test_large_batches_give_the_bits_of_single_rows(traced):
    # a batch of at least BIG_ROWS vectors may use larger products, only where they were checked
    # to give each row the same logits as ROWS-row products: every row equals its own projection
    from ltt.interpret.output import BIG_ROWS

    trace = traced("llama")
    head = interpret.output_head(trace)
    x = np.random.default_rng(2).standard_normal((BIG_ROWS + 7, trace.layers[0].resid_pre.shape[1]))
    x = x.astype(np.float32)
    z = np.concatenate([c for _, c in head.project_chunks(x)])
    assert z.shape == (len(x), head.vocab_size)
    for i in (0, 1, BIG_ROWS - 1, BIG_ROWS, len(x) - 1):
        np.testing.assert_array_equal(head.project(x[i]), z[i])
    lens = [np.concatenate([c for _, c in head.logits_chunks(x, normalize=n)]) for n in (True, False)]
    assert unembedding.ROWS in head._big_rows_same  # checked once for this ROWS, whatever it found
    for n, got in zip((True, False), lens):
        np.testing.assert_array_equal(head.logits(x[-1], normalize=n), got[-1])


def test_predictions_equal_the_last_states_lens(traced):
    trace = traced("llama")
    L, T = trace.n_layers, trace.n_tokens
    got = interpret.predictions(trace)
    assert len(got) == T and interpret.predictions(trace, []) == []
    for t in (0, T // 2, T - 1):
        top = interpret.top_tokens(trace, f"I{L - 1}_{t}", k=1).tokens[0]
        assert (got[t].token, got[t].token_id, got[t].logit, got[t].prob, got[t].rank) == (
            top.token, top.token_id, top.logit, top.prob, top.rank)
    assert interpret.predictions(trace, [-1])[0] == got[-1]
    assert int(np.argmax(trace.logits)) == got[-1].token_id


def test_promoted_many_takes_a_k_per_update_and_projects_repeats_once(traced, monkeypatch):
    trace = traced("llama")
    updates = [(1, 2), (1, 2, "attn", 0), (1, 2), (0, -1, "ffn"), (1, 2, "attn", 0)]
    ks = [2, 3, 5, 4, 3]
    rows = []
    head = interpret.output_head(trace)
    project = type(head).project_chunks
    monkeypatch.setattr(type(head), "project_chunks", lambda self, z: rows.append(len(z)) or project(self, z))
    many = interpret.promoted_many(trace, updates, k=ks)
    assert rows == [3]  # three distinct updates, one projection
    monkeypatch.undo()
    assert many == [interpret.promoted(trace, *u, k=k) for u, k in zip(updates, ks)]
    assert [len(p.promoted) for p in many] == ks
    with pytest.raises(ValueError, match="one per update"):
        interpret.promoted_many(trace, updates, k=[1, 2])
    with pytest.raises(ValueError, match="positive integer"):
        interpret.promoted_many(trace, updates[:1], k=[0])


def test_lens_ranks_count_every_token_above(traced):
    trace = traced("llama")
    head = interpret.output_head(trace)
    L, T = trace.n_layers, trace.n_tokens
    for node in ("X0_1", f"A0_{T - 1}", f"I{L - 1}_{T - 1}"):
        for normalize in (True, False):
            z = head.logits(interpret.state(trace, node), normalize=normalize)
            for tok in interpret.top_tokens(trace, node, k=6, normalize=normalize).tokens:
                assert tok.rank == int(np.count_nonzero(z > z[tok.token_id]))
