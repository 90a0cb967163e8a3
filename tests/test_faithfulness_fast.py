"""The faithfulness rerun's shortcuts against the plain batched rerun: every FFN computed at every
(row, position) pair (``handlers.COMPACT_FFN = False``) and the full model's row rerun in the
batch. Same numbers, every family, every ablation."""

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
    monkeypatch.setattr(handlers, "COMPACT_FFN", False)
    slow = trace.faithfulness(graph, **kw)
    monkeypatch.setattr(handlers, "COMPACT_FFN", True)
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
def test_compact_ffn_when_patching(monkeypatch, traced, key):
    model, trace = traced(key)
    ids = [int(i) for i in trace.token_ids]
    cf = ids[:-2] + [ids[-1], ids[-2]]  # the same length, two tokens swapped
    g = trace.graph(threshold=0.05)
    fast, slow = _both(monkeypatch, trace, g, baselines=2, counterfactual=cf, tokens=[5, 7])
    _same(fast, slow)


def test_which_ffns_are_compacted(tiny_model):
    """Dense MLP modules called with the state alone are; OPT (no MLP module), Bloom and MPT
    (the residual goes in too) and mixtures of experts are not."""
    for key, want in [("llama", True), ("gpt2", True), ("gemma2", True), ("opt", False), ("bloom", False),
                      ("mpt", False), ("mixtral", False)]:
        model = tiny_model(key)
        got = handlers._ffn_module(model, model.decoder_layers[0]) is not None
        assert got == want, key
