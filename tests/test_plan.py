"""One trace plan (ltt/plan.py) from memory= and the budgets of ltt/config.py, read at call time."""

import numpy as np
import pytest

from ltt import config, plan
from ltt.scores import attribute

from conftest import PROMPT


def test_budgets_are_read_when_a_trace_is_planned(monkeypatch, tiny_model):
    model = tiny_model("llama")
    assert model.trace(PROMPT).plan.modes[0] == "dense"
    monkeypatch.setenv("LTT_DENSE_BUDGET", "0")  # after import: still honoured
    assert model.trace(PROMPT).plan.modes[0] == "layer"
    monkeypatch.setenv("LTT_STREAM_BYTES", "0")
    assert model.trace(PROMPT).plan.modes == ("stream",) * model.n_layers
    monkeypatch.setenv("LTT_STREAM_BYTES", "lots")
    with pytest.raises(ValueError, match="LTT_STREAM_BYTES='lots'"):
        model.trace(PROMPT)


def test_every_memory_mode_gives_the_same_graphs(tiny_model):
    model = tiny_model("gemma2")
    base = model.trace(PROMPT)
    for mode in plan.MODES:
        t = model.trace(PROMPT, memory=mode)
        assert t.plan.modes == (mode,) * model.n_layers
        assert attribute(t).holds_dense == (mode == "dense")
        for kw in (dict(), dict(threshold=0.01, renormalize=False, targets="all")):
            assert [(e.source, e.target, e.kind) for e in t.graph(**kw).edges] == \
                [(e.source, e.target, e.kind) for e in base.graph(**kw).edges]
        np.testing.assert_allclose(t.head_shares(1, -1, 0), base.head_shares(1, -1, 0), rtol=1e-5, atol=1e-6)


def test_plan_defaults_and_bad_memory():
    p = plan.make_plan(2, 4, 8, dtype="bfloat16")
    assert p.modes == ("dense", "dense") and p.floor == plan.CONTRIBUTION_FLOOR and p.tolerance == plan.TOLERANCE["bfloat16"]
    assert plan.auto_mode(32, 32, 4096) == "stream"
    for bad in ("fast", 1, ""):
        with pytest.raises(ValueError, match="memory must be"):
            plan.check_memory_mode(bad)
    assert set(config.VARIABLES) >= {"LTT_DENSE_BUDGET", "LTT_QUIET", "LTT_CACHE_DIR", "SLURM_ARRAY_TASK_ID"}
