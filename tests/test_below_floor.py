"""Thresholds below the trace's floor (``ltt.scores.CONTRIBUTION_FLOOR``), and long traces that
keep only sparse rows: ``summarize``, ``trace_many`` and ``ltt.diff`` give what each trace's own
graph gives (issue 23)."""

from __future__ import annotations

import numpy as np
import pytest

import ltt
from ltt import routes as R
from ltt import scores as S
from ltt.graph import build_graph
from ltt.scores import attribute

from test_many import _oracle

PROMPT_A = "When Mary and John went"
PROMPT_B = "When John and Mary went"


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")


@pytest.mark.parametrize("threshold", [0.0, 5e-4])
def test_summary_below_the_floor_matches_the_oracle(llama, threshold):
    """A threshold below the floor (renormalize=True) used to raise AttributeError (assigning the
    read-only TraceScores.parts); the summary now equals the dense oracle."""
    trace = llama.trace(PROMPT_A)
    assert threshold < attribute(trace).floor
    s = R.summarize(trace, threshold=threshold, renormalize=True)
    heads, ffn, g, _ = _oracle(trace, threshold, True)
    assert g.threshold == threshold and len(g.edges) > 0
    np.testing.assert_allclose(s.heads, heads, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s.ffn, ffn, rtol=1e-5, atol=1e-7)
    # the trace's own sparse rows are left as they were (the dense fill-in is a copy's)
    full = attribute(trace)
    assert all(p.values.min() >= full.floor or len(p.values) == trace.n_tokens for p in full.parts)


def test_trace_many_and_diff_below_the_floor(llama, tmp_path):
    run = R.trace_many(llama, [PROMPT_A, PROMPT_B], out=tmp_path / "r.jsonl", threshold=1e-4)
    one = R.summarize(llama.trace(PROMPT_A), threshold=1e-4)
    np.testing.assert_allclose(run.heads[0], one.heads, rtol=1e-6, atol=1e-9)
    d = ltt.diff(llama.trace(PROMPT_A), llama.trace(PROMPT_B), threshold=1e-4)
    assert d.edges and d.settings["threshold"] == 1e-4


@pytest.mark.parametrize("renormalize", [True, False])
def test_diff_of_long_traces_reads_the_sparse_rows(llama, monkeypatch, renormalize):
    """Traces over the dense budget keep no dense arrays; diff works from their sparse rows and
    gives the same edges, weights and flows as on the short traces that hold dense arrays."""
    a, b = llama.trace(PROMPT_A), llama.trace(PROMPT_B)
    want = ltt.diff(a, b, renormalize=renormalize)
    monkeypatch.setattr(S, "DENSE_BUDGET", 0)
    la, lb = llama.trace(PROMPT_A), llama.trace(PROMPT_B)
    assert not attribute(la).holds_dense and not attribute(lb).holds_dense
    got = ltt.diff(la, lb, renormalize=renormalize)
    assert not attribute(la).holds_dense  # nothing dense was made on the way
    with pytest.raises(ValueError, match="dense budget"):
        attribute(la).heads  # noqa: B018 - the dense arrays are refused, so diff never read them
    assert [(e.source, e.target, e.kind) for e in got.edges] == [(e.source, e.target, e.kind) for e in want.edges]
    for e, w in zip(got.edges, want.edges):
        assert e.weight_a == pytest.approx(w.weight_a, rel=1e-5, abs=1e-7), e
        assert e.weight_b == pytest.approx(w.weight_b, rel=1e-5, abs=1e-7), e
        assert e.flow_delta == pytest.approx(w.flow_delta, rel=1e-5, abs=1e-7), e
    # head shares: the sparse rows / the one-edge sub-problem against the dense array, float32
    # rounding apart (as tests/test_scale.py compares them)
    np.testing.assert_allclose(got.heads_delta, want.heads_delta, rtol=1e-4, atol=1e-6)


def test_diff_of_long_traces_below_the_floor_is_refused_by_name(llama, monkeypatch):
    monkeypatch.setattr(S, "DENSE_BUDGET", 0)
    a, b = llama.trace(PROMPT_A), llama.trace(PROMPT_B)
    with pytest.raises(ValueError, match="threshold=0.0001 is below the floor"):
        ltt.diff(a, b, threshold=1e-4)
    assert build_graph(a, threshold=0.04).edges  # the same traces at the floor or above: fine
