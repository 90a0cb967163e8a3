"""The faithfulness rerun's shortcuts against the plain batched rerun (``handlers.COMPACT =
False``: every FFN at every (row, position) pair, every row's attention at every query). Same
numbers, every family, every ablation."""

from __future__ import annotations

import numpy as np
import pytest

from ltt.models import handlers
from test_models import FAMILIES

ALL = list(FAMILIES)


def _numbers(f) -> np.ndarray:
    out = []
    for t in f.targets:
        for s in [t.full, t.kept, t.removed, *t.random]:
            out.extend([*s.prob, *s.logit, s.kl])
        if t.logit_diff is not None:
            ld = t.logit_diff
            out.extend([ld["full"], ld["kept"], ld["removed"], ld["empty"], *ld["random"]])
    return np.array(out, np.float64)


def _both(monkeypatch, trace, graph, **kw):
    fast = trace.faithfulness(graph, **kw)
    monkeypatch.setattr(handlers, "COMPACT", False)
    slow = trace.faithfulness(graph, **kw)
    monkeypatch.setattr(handlers, "COMPACT", True)
    return fast, slow


def _same(fast, slow) -> None:
    assert [t.token_ids for t in fast.targets] == [t.token_ids for t in slow.targets]
    assert (fast.attention_edges, fast.ffn_blocks) == (slow.attention_edges, slow.ffn_blocks)
    np.testing.assert_allclose(_numbers(fast), _numbers(slow), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_compact_ffn_gives_the_plain_rerun_s_numbers(monkeypatch, traced, key, ablation):
    model, trace = traced(key)
    T = trace.n_tokens
    g = trace.graph(threshold=0.05, targets=[T - 2, T - 1])
    fast, slow = _both(monkeypatch, trace, g, baselines=3, ablation=ablation, seed=1)
    _same(fast, slow)
    # the runs differ from the full model: a real comparison
    assert max(s.kl for t in fast.targets for s in [t.kept, t.removed, *t.random]) > 1e-6


@pytest.mark.parametrize("key", ["llama", "gemma2", "gpt2", "falcon"])
def test_patching_runs_whole(monkeypatch, traced, key):
    """Patching takes neither shortcut (patched from the prompt itself, it gives the full row's
    numbers bit for bit only with every product in one shape): the plain run's numbers exactly."""
    model, trace = traced(key)
    ids = [int(i) for i in trace.token_ids]
    cf = ids[:-2] + [ids[-1], ids[-2]]  # the same length, two tokens swapped
    g = trace.graph(threshold=0.05)
    called = []
    monkeypatch.setattr(handlers, "_gather_hooks", lambda *a: called.append(1))
    monkeypatch.setattr(handlers, "_by_queries", lambda *a: called.append(1))
    fast, slow = _both(monkeypatch, trace, g, baselines=2, counterfactual=cf, tokens=[5, 7])
    assert called == []
    np.testing.assert_array_equal(_numbers(fast), _numbers(slow))


def test_which_ffns_are_compacted(tiny_model):
    """Dense MLP modules called with the state alone are; OPT (no MLP module), Bloom and MPT
    (the residual goes in too) and mixtures of experts are not."""
    for key, want in [("llama", True), ("gpt2", True), ("gemma2", True), ("opt", False), ("bloom", False),
                      ("mpt", False), ("mixtral", False)]:
        model = tiny_model(key)
        got = handlers._ffn_module(model, model.decoder_layers[0]) is not None
        assert got == want, key


def test_graph_rows_run_their_attention_at_their_edges_queries(monkeypatch, traced):
    """The shortcut is taken (zero ablation, every layer), and not where every query's output
    matters (mean ablation)."""
    model, trace = traced("llama")
    seen = []
    plain = handlers._by_queries

    def spy(call, plan, *rest):
        seen.append(int(plan[3].sum(axis=1).max()))  # the most queries a graph row needs
        return plain(call, plan, *rest)

    monkeypatch.setattr(handlers, "_by_queries", spy)
    trace.faithfulness(trace.graph(threshold=0.05), baselines=2)
    assert len(seen) == model.n_layers and max(seen) < trace.n_tokens
    seen.clear()
    trace.faithfulness(trace.graph(threshold=0.05), baselines=2, ablation="mean")
    assert seen == []
