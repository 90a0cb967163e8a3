"""Interpret functions take a graph's own Edge and Node objects (and node names) as well as
indices, and give the same answers (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest

from ltt.nodes import Stage

from conftest import PROMPT


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def traced_graph(request, traced):
    _, trace = traced(request.param)
    return trace, trace.graph(threshold=0.02)


def test_attention_edges(traced_graph):
    trace, g = traced_graph
    att = [e for e in g.edges if e.stage is Stage.ATTENTION]
    assert att
    for e in att[:5]:
        want = trace.edge_heads(e.layer, e.target_token, e.source_token)
        assert trace.edge_heads(e) == want
        np.testing.assert_array_equal(trace.head_shares(e), trace.head_shares(e.layer, e.target_token, e.source_token))
        assert trace.promoted(e).to_dict() == trace.promoted(e.layer, e.target_token, block="attn").to_dict()
        assert trace.top_tokens(e).to_dict() == trace.top_tokens(e.target).to_dict()


def test_ffn_edges_and_nodes(traced_graph):
    trace, g = traced_graph
    ffn = [e for e in g.edges if e.stage is Stage.FFN_OUT]
    assert ffn
    for e in ffn[:3]:
        l, t = e.layer, e.target_token
        np.testing.assert_array_equal(trace.neuron_shares(e), trace.neuron_shares(l, t))
        np.testing.assert_array_equal(trace.neuron_shares(f"M{l}_{t}"), trace.neuron_shares(l, t))
        node = next(n for n in g.nodes if n.name == f"M{l}_{t}")
        assert trace.top_neurons(node, k=3).to_dict() == trace.top_neurons(l, t, k=3).to_dict()
        assert trace.promoted(e).to_dict() == trace.promoted(l, t, block="ffn").to_dict()
        assert trace.promoted(f"M{l}_{t}").to_dict() == trace.promoted(l, t, block="ffn").to_dict()
    state = next(n for n in g.nodes if n.kind == "I")
    assert trace.top_tokens(state).to_dict() == trace.top_tokens(state.name).to_dict()


def test_wrong_edges_are_named(traced_graph):
    trace, g = traced_graph
    resid = next(e for e in g.edges if e.kind == "residual")
    att = next(e for e in g.edges if e.stage is Stage.ATTENTION)
    ffn_in = next(e for e in g.edges if e.stage is Stage.FFN_IN)
    with pytest.raises(ValueError, match="residual edge: head shares belong to attention edges"):
        trace.edge_heads(resid)
    with pytest.raises(TypeError, match="give it alone"):
        trace.head_shares(att, 1, 0)
    with pytest.raises(ValueError, match="not an FFN edge"):
        trace.neuron_shares(att)
    with pytest.raises(ValueError, match="residual edge: it carries no update"):
        trace.promoted(resid)
    with pytest.raises(ValueError, match="ends in an FFN block"):
        trace.top_tokens(ffn_in)
    with pytest.raises(ValueError, match="not an FFN block"):
        trace.top_neurons("I0_1")
    with pytest.raises(TypeError, match="layer, target and source"):
        trace.edge_heads(0, 1)
    assert PROMPT
