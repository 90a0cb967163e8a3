"""Trace.save / ltt.load_trace (issue 23): graphs and arrays round-trip exactly, what needs the
model is refused by name, and a model that does not reproduce the file is refused."""

from __future__ import annotations

import numpy as np
import pytest

import ltt
from ltt import scores as S
from ltt.routes import summarize
from ltt.scores import attribute
from ltt.trace_file import ModelNeeded

from conftest import PROMPT

SETTINGS = [dict(), dict(renormalize=False), dict(threshold=0.01, targets="all"),
            dict(threshold=S.CONTRIBUTION_FLOOR, targets=[0, -1])]


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def model(request, tiny_model):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def sparse_trace(model):
    """A trace that keeps only its sparse rows (as any long trace): the file's own form."""
    old = S.DENSE_BUDGET
    S.DENSE_BUDGET = 0
    try:
        return model.trace(PROMPT)
    finally:
        S.DENSE_BUDGET = old


def test_graphs_and_arrays_round_trip(model, sparse_trace, tmp_path):
    path = sparse_trace.save(tmp_path / "t.ltt")
    back = ltt.load_trace(path)
    assert back.tokens == sparse_trace.tokens and back.prompt == sparse_trace.prompt
    np.testing.assert_array_equal(back.token_ids, sparse_trace.token_ids)
    assert back.logits.tobytes() == sparse_trace.logits.tobytes()
    a, b = attribute(sparse_trace), attribute(back)
    for name in ("attn_resid", "attn_bias", "ffn", "ffn_resid", "attn_total", "parallel"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    for ra, rb in zip(a.edges + a.parts, b.edges + b.parts):
        for field in ("indptr", "sources", "values", "heads"):
            x, y = getattr(ra, field), getattr(rb, field)
            assert (x is None and y is None) or (x.dtype == y.dtype and x.tobytes() == y.tobytes()), field
    for kw in SETTINGS:
        g = sparse_trace.graph(**kw)
        assert back.graph(**kw) == g, kw
        assert ltt.Graph.from_json(back.graph(**kw).to_json()) == g
    assert g.model_name == model.name
    d0, d1 = ltt.diff(sparse_trace, sparse_trace), ltt.diff(back, back)
    assert d0.edges == d1.edges and d1.edges
    s0, s1 = summarize(sparse_trace), summarize(back)
    np.testing.assert_array_equal(s0.heads, s1.heads)
    np.testing.assert_array_equal(s0.sources, s1.sources)


def test_a_short_trace_saves_the_same_graphs(model, tmp_path):
    """A short trace holds dense arrays; its file holds their sparse rows, whose graphs equal
    the dense graphs' edges (weights to float32 rounding)."""
    trace = model.trace(PROMPT)
    back = ltt.load_trace(trace.save(tmp_path / "short.ltt"))
    g, h = trace.graph(), back.graph()
    assert [(e.source, e.target, e.kind) for e in g.edges] == [(e.source, e.target, e.kind) for e in h.edges]
    np.testing.assert_allclose([e.weight for e in h.edges], [e.weight for e in g.edges], rtol=1e-5, atol=1e-7)


def test_without_the_model_detail_is_refused_by_name(sparse_trace, tmp_path):
    back = ltt.load_trace(sparse_trace.save(tmp_path / "t.ltt"))
    last = back.n_tokens - 1
    for call in (lambda: back.top_tokens(f"I0_{last}"), lambda: back.promoted(0, last),
                 lambda: back.head_shares(0, last, 0), lambda: back.neuron_shares(0, last), back.check,
                 lambda: back.graph(threshold=1e-4), lambda: back.graph(norm=2)):
        with pytest.raises(ModelNeeded, match=r"needs the model.*reopen with ltt.load_trace"):
            call()
    assert back.top_prediction(1)[0][0] == str(int(np.argmax(back.logits)))


def test_with_the_model_it_is_a_full_trace(model, sparse_trace, tmp_path):
    path = sparse_trace.save(tmp_path / "t.ltt")
    again = ltt.load_trace(path, model=model)
    assert again.prompt == sparse_trace.prompt
    last = again.n_tokens - 1
    assert again.top_tokens(f"I0_{last}", k=3).ids == sparse_trace.top_tokens(f"I0_{last}", k=3).ids


def test_bad_files_and_other_models_are_refused(model, tiny_model, sparse_trace, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ltt.load_trace(tmp_path / "missing.ltt")
    junk = tmp_path / "junk.ltt"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a saved ltt trace"):
        ltt.load_trace(junk)
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, str(other))
    with pytest.raises(ValueError, match="not a saved ltt trace"):
        ltt.load_trace(other)
    path = sparse_trace.save(tmp_path / "t.ltt")
    stranger = tiny_model("qwen2" if model.name != tiny_model("qwen2").name else "llama")
    with pytest.raises(ValueError, match="does not reproduce"):
        ltt.load_trace(path, model=stranger)
    with pytest.raises(TypeError, match="trace must be a Trace"):
        ltt.trace_file.save_trace("not a trace", tmp_path / "x.ltt")
    assert not list(tmp_path.glob("*.tmp"))
