"""Graph building, threshold modes, pruning and export on synthetic exact decompositions."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from ltt.buffers import PostNorm
from ltt import _reference as ref
from ltt.graph import build_graph, edge_weights
from ltt.scores import attribute


def _layer(rng, T, H, G, d, d_h, F, parallel, bias):
    x = rng.standard_normal((T, d)).astype(np.float32)
    logits = rng.standard_normal((H, T, T))
    logits[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn = (attn / attn.sum(-1, keepdims=True)).astype(np.float32)
    values = rng.standard_normal((T, G, d_h)).astype(np.float32)
    w_o = (rng.standard_normal((H, d_h, d)) / np.sqrt(d_h)).astype(np.float32)
    u = ref.head_vectors(values, w_o)
    attn_out = np.einsum("hts,hsd->td", attn.astype(np.float64), u)
    b = rng.standard_normal((T, d)).astype(np.float32) * 0.1 if bias else None
    act = rng.standard_normal((T, F)).astype(np.float32)
    w_down = (rng.standard_normal((F, d)) / np.sqrt(F)).astype(np.float32)
    ffn_out = (act.astype(np.float64) @ w_down).astype(np.float32)
    mid = x + attn_out + (b if bias else 0)
    if parallel:
        post = (mid + ffn_out).astype(np.float32)
        mid = None
    else:
        mid = mid.astype(np.float32)
        post = (mid + ffn_out).astype(np.float32)
    return SimpleNamespace(
        parallel=parallel, resid_pre=x, resid_mid=mid, resid_post=post, attn=attn,
        values=values, w_o=w_o, attn_bias=b, attn_norm=PostNorm(),
         ffn_out=ffn_out, act=act, w_down=w_down, ffn_bias=None,
        ffn_norm=PostNorm(),
    )


def synthetic_trace(seed=0, T=5, L=3, H=4, G=2, d=16, d_h=4, F=12, parallel=(), bias=False):
    rng = np.random.default_rng(seed)
    layers = [_layer(rng, T, H, G, d, d_h, F, l in parallel, bias) for l in range(L)]
    return SimpleNamespace(
        layers=layers,
        tokens=[f"t{i}" for i in range(T)],
        token_ids=np.arange(T),
        logits=np.zeros(7, np.float32),
        prompt="synthetic",
        model=SimpleNamespace(name="synthetic"),
    )


@pytest.mark.parametrize("parallel", [(), (1,), (0, 1, 2)])
def test_every_state_sums_to_one_and_matches_reference(parallel):
    trace = synthetic_trace(parallel=parallel, bias=True)
    full = attribute(trace)
    np.testing.assert_allclose(full.attn.sum(-1) + full.attn_resid + full.attn_bias
                               + np.where(full.parallel[:, None], full.ffn, 0), 1, atol=1e-5)
    seq = ~full.parallel
    np.testing.assert_allclose((full.ffn + full.ffn_resid)[seq], 1, atol=1e-5)
    lb = trace.layers[0]
    whole = lb.resid_post if lb.parallel else lb.resid_mid
    want = ref.attn_contrib(lb.resid_pre, whole, lb.attn, lb.values, lb.w_o, bias=lb.attn_bias,
                            extra=lb.ffn_out[None] if lb.parallel else None, keep_heads=True)
    np.testing.assert_allclose(full.heads[0], want["heads"], atol=2e-5)


def test_full_graph_at_threshold_zero_keeps_every_edge():
    T, L = 5, 3
    trace = synthetic_trace(T=T, L=L, parallel=(1,))
    g = build_graph(trace, threshold=0.0, renormalize=False, targets="all")
    kinds = [e.kind for e in g.edges]
    tri = T * (T + 1) // 2
    assert kinds.count("attention") == L * tri
    # residual: one into every attention state, one A->I per sequential layer
    assert kinds.count("residual") == L * T + (L - 1) * T
    assert kinds.count("ffn") == 2 * L * T
    full = attribute(trace)
    by_key = {(e.source, e.target, e.kind): e.weight for e in g.edges}
    assert by_key[("I0_1", "I1_3", "attention")] == pytest.approx(float(full.attn[1, 3, 1]))
    assert by_key[("I1_2", "A2_2", "residual")] == pytest.approx(float(full.attn_resid[2, 2]))
    assert by_key[("A2_4", "M2_4", "ffn")] == pytest.approx(float(full.ffn[2, 4]))
    assert by_key[("I0_4", "M1_4", "ffn")] == pytest.approx(float(full.ffn[1, 4]))


@pytest.mark.parametrize("parallel", [(2,), (0, 1)])
def test_renormalized_states_sum_to_one_in_the_graph(parallel):
    # a parallel layer's output carries its bias share, also where it is first met as the
    # input of the next layer
    trace = synthetic_trace(T=7, L=3, parallel=parallel, bias=True, seed=3)
    g = build_graph(trace, threshold=0.04, renormalize=True, targets=[-1, 2])
    incoming: dict[str, float] = {}
    for e in g.edges:
        if e.kind == "ffn" and e.target.startswith("M"):
            continue
        incoming[e.target] = incoming.get(e.target, 0.0) + e.weight
    for n in g.nodes:
        if n.kind in ("A", "I"):
            assert incoming[n.name] + n.bias == pytest.approx(1.0, abs=1e-5), n
    assert all(e.weight >= 0.04 for e in g.edges)


def test_pruning_is_backward_reachability_from_the_targets():
    trace = synthetic_trace(T=8, L=4, parallel=(1,), seed=5)
    for renorm in (True, False):
        g = build_graph(trace, threshold=0.1, renormalize=renorm, targets=[-1])
        names = {n.name for n in g.nodes}
        ends = {e.target for e in g.edges} | {e.source for e in g.edges}
        assert ends == names
        # every node but the target output has a path to the target: it has an outgoing edge
        sources = {e.source for e in g.edges}
        for n in g.nodes:
            if n.name != "I3_7":
                assert n.name in sources, n
        assert "I3_7" in names and not any(n.name.startswith("I3_") and n.name != "I3_7" for n in g.nodes)


def test_flow_is_conserved_without_biases():
    trace = synthetic_trace(T=6, L=3, parallel=(0,), seed=2)
    g = build_graph(trace, threshold=0.0, renormalize=False)
    flow = g.flow()
    token_flow = sum(v for k, v in flow.items() if k.startswith("X0_"))
    assert token_flow == pytest.approx(1.0, abs=1e-4)


def test_networkx_and_json_exports_agree():
    trace = synthetic_trace(T=4, L=2)
    g = build_graph(trace, threshold=0.0, renormalize=False)
    G = g.to_networkx()
    assert G.number_of_edges() == len(g.edges)
    # self-attention and residual join the same nodes as two keyed edges
    assert set(G["I0_3"]["A1_3"]) == {"attention", "residual"}
    assert G.nodes["A1_3"]["layer"] == 1 and G.nodes["A1_3"]["kind"] == "A"
    assert G.nodes["X0_0"]["layer"] == -1
    data = json.loads(g.to_json())
    assert data["settings"] == {"threshold": 0.0, "renormalize": False, "targets": [3], "norm": 1}
    assert len(data["edges"]) == len(g.edges) and data["tokens"] == trace.tokens
    e0 = data["edges"][0]
    assert G.edges[e0["source"], e0["target"], e0["kind"]]["weight"] == pytest.approx(e0["weight"])


def test_edge_weights_modes():
    trace = synthetic_trace(T=5, L=2, bias=True, seed=9)
    full = attribute(trace)
    raw = edge_weights(full, 0.04, renormalize=False)
    assert raw.attn is full.attn
    ren = edge_weights(full, 0.04, renormalize=True)
    want = ref.renormalize(full.heads[1], np.stack([full.attn_resid[1], full.attn_bias[1]]), 0.04)
    np.testing.assert_allclose(ren.attn[1], want["edges"], atol=1e-6)
    np.testing.assert_allclose(ren.ffn + ren.ffn_resid, 1, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"threshold": 1.0}, ValueError, "threshold"),
        ({"threshold": -0.1}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": "0.1"}, TypeError, "threshold"),
        ({"targets": [5]}, ValueError, "targets"),
        ({"targets": [-6]}, ValueError, "targets"),
        ({"targets": "last"}, ValueError, "targets"),
        ({"targets": [1.5]}, TypeError, "targets"),
        ({"targets": []}, ValueError, "targets"),
        ({"renormalize": "yes"}, TypeError, "renormalize"),
        ({"norm": 3}, ValueError, "norm"),
    ],
)
def test_bad_arguments_are_refused(kwargs, exc, match):
    trace = synthetic_trace(T=5, L=2)
    with pytest.raises(exc, match=match):
        build_graph(trace, **kwargs)
