"""Contrastive graphs (``ltt.diff``): edge and component changes between two traces, checked
against the graphs and summaries of each trace on its own; alignment; bad input; HTML view."""

from __future__ import annotations

import numpy as np
import pytest

import ltt
from ltt.graph import build_graph, edge_weights
from ltt.scores import attribute
from ltt.routes import summarize

A = "When Mary and John went"
B = "When John and Mary went"


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def model(request, tiny_model):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def pair(model):
    a, b = model.trace(A), model.trace(B)
    assert a.n_tokens == b.n_tokens
    return a, b


def test_a_trace_against_itself_changes_nothing(pair):
    a, _ = pair
    d = ltt.diff(a, a)
    assert d.edges and all(e.delta == 0 and e.flow_delta == 0 for e in d.edges)
    assert all(c["delta"] == 0 for c in d.top_components(100))
    assert not d.sources_delta.any() and d.unmatched == 0


def _kept_flows(trace, threshold=0.04):
    g = build_graph(trace, threshold=threshold)
    flow = g.flow()
    out = {}
    for e in g.edges:
        if e.kind == "ffn" and e.target.startswith("M"):
            continue
        out[(e.source, e.target, e.kind)] = e.weight * flow[e.target]
    return out


def test_edges_and_components_match_each_trace_on_its_own(pair):
    a, b = pair
    d = ltt.diff(a, b)
    fa, fb = _kept_flows(a), _kept_flows(b)
    got = {(e.source, e.target, e.kind): e for e in d.edges}
    assert set(got) == set(fa) | set(fb)  # the union of both pruned graphs
    wa = edge_weights(attribute(a), 0.04, True)
    wb = edge_weights(attribute(b), 0.04, True)
    for key, e in got.items():
        assert e.flow_a == pytest.approx(fa.get(key, 0.0)) and e.flow_b == pytest.approx(fb.get(key, 0.0))
        assert e.delta == pytest.approx(e.weight_b - e.weight_a)
        assert (e.source_b, e.target_b) == (e.source, e.target)  # same length: identity alignment
        t = int(e.target.split("_")[1])
        s = int(e.source.split("_")[1])
        if e.kind == "attention":
            assert e.weight_a == pytest.approx(float(wa.attn[e.layer, t, s]))
            assert e.weight_b == pytest.approx(float(wb.attn[e.layer, t, s]))
        elif e.kind == "ffn":
            assert e.weight_a == pytest.approx(float(wa.ffn[e.layer, t]))
    flows = [abs(e.flow_delta) for e in d.edges]
    assert flows == sorted(flows, reverse=True)
    sa, sb = summarize(a), summarize(b)
    np.testing.assert_allclose(d.heads_delta, sb.heads - sa.heads)
    np.testing.assert_allclose(d.ffn_delta, sb.ffn - sa.ffn)
    np.testing.assert_allclose(d.sources_delta, sb.sources - sa.sources)
    top = d.top_components(5)
    assert [abs(c["delta"]) for c in top] == sorted((abs(c["delta"]) for c in top), reverse=True)
    for c in top:
        want = (sb.heads - sa.heads)[c["layer"], c["head"]] if c["component"] == "head" else (sb.ffn - sa.ffn)[c["layer"]]
        assert c["delta"] == pytest.approx(want)
    by_weight = d.top_edges(5, by="weight")
    assert [abs(e.delta) for e in by_weight] == sorted((abs(e.delta) for e in by_weight), reverse=True)


def test_alignment_of_prompts_of_different_lengths(model):
    a = model.trace("When Mary went")
    b = model.trace("So, When Mary went")
    shift = b.n_tokens - a.n_tokens
    k = 1 if a.tokens[0] == "<bos>" else 0  # BOS maps to BOS, the rest shifts
    assert shift > 0 and b.tokens[k + shift:] == a.tokens[k:]
    align = list(range(k)) + [i + shift for i in range(k, a.n_tokens)]
    d = ltt.diff(a, b, align=align)
    assert d.align == align and d.edges
    for e in d.edges:
        for na, nb in ((e.source, e.source_b), (e.target, e.target_b)):
            assert nb.split("_")[0] == na.split("_")[0]
            assert int(nb.split("_")[1]) == align[int(na.split("_")[1])]
    sb = summarize(b)
    np.testing.assert_allclose(d.sources_b, sb.sources[align])
    # The same mapping as a dict, negative positions allowed.
    d2 = ltt.diff(a, b, align={i - a.n_tokens: j - b.n_tokens for i, j in enumerate(align)})
    assert [e._asdict() for e in d2.edges] == [e._asdict() for e in d.edges]
    # Unmapped tokens: their edges are counted, not listed.
    d3 = ltt.diff(a, b, align=align[:1] + [None] + align[2:])
    assert d3.sources_b[1] == 0.0
    assert all(not e.source.endswith("_1") for e in d3.edges) and d3.unmatched > 0


def test_bad_input_is_named(pair, tiny_model):
    a, b = pair
    short = a.model.trace("When")
    with pytest.raises(ValueError, match=r"trace_a has \d+ tokens and trace_b has \d+.*align="):
        ltt.diff(a, short)
    with pytest.raises(ValueError, match="align has 2 entries"):
        ltt.diff(a, short, align=[0, 0])
    with pytest.raises(ValueError, match="outside the"):
        ltt.diff(a, b, align={0: 99})
    with pytest.raises(ValueError, match="same position"):
        ltt.diff(a, b, align={0: 1, 1: 1})
    with pytest.raises(TypeError, match="not an integer"):
        ltt.diff(a, b, align={0: "x"})
    with pytest.raises(ValueError, match="no position"):
        ltt.diff(a, b, align=[None] * a.n_tokens)
    with pytest.raises(TypeError, match="trace_b must be a Trace"):
        ltt.diff(a, "When John")
    other = tiny_model("qwen3").trace(A)  # 2 layers, 4 heads as well: compare a 1-layer trace
    other.layers = other.layers[:1]
    with pytest.raises(ValueError, match="trace_b comes from a model with 1 layers"):
        ltt.diff(a, other)
    with pytest.raises(ValueError, match="threshold"):
        ltt.diff(a, b, threshold=2.0)
    with pytest.raises(ValueError, match="by"):
        ltt.diff(a, b).top_edges(by="size")


def test_html_view_escapes_tokens(model):
    a = model.trace("<img src=x onerror=alert(1)>")
    b = model.trace("<img src=y onerror=alert(2)>")
    assert a.n_tokens == b.n_tokens  # the test's premise: the two prompts tokenize alike
    d = ltt.diff(a, b)
    page = d._repr_html_()
    assert "<img" not in page and "&lt;img" in page
    assert "TraceDiff(" in repr(d)
    data = d.to_dict(k=3)
    assert len(data["edges"]) <= 3 and data["tokens_a"] == a.tokens
