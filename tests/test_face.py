"""The package face without a model (issue 23): ``import ltt`` stays free of torch and
transformers, ``__all__`` names what exists, completion (``dir``) shows the lazy names, and the
shared checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import ltt
from ltt.checks import DEFAULT_THRESHOLD, is_int


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_ltt_loads_no_torch_or_transformers():
    out = json.loads(_python(
        "import json, sys, ltt\n"
        "names = dir(ltt)\n"
        "import ltt.graph, ltt.checks, ltt.nodes, ltt.trace_file\n"
        "print(json.dumps({'heavy': sorted(m for m in ('torch', 'transformers', 'anywidget') if m in sys.modules),"
        " 'load': 'load' in names}))"))
    assert out == {"heavy": [], "load": True}


def test_all_names_exist_and_dir_shows_them():
    for name in ("Model", "TraceDiff", "Faithfulness", "GraphSettings", "Trace", "Graph", "load", "load_trace",
                 "diff", "contributions", "Edge", "Node", "DEFAULT_THRESHOLD"):
        assert name in ltt.__all__, name
    assert set(ltt.__all__) <= set(dir(ltt))
    assert len(ltt.__all__) == len(set(ltt.__all__))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ltt.nope  # noqa: B018


def test_every_lazy_name_resolves_in_a_fresh_interpreter():
    out = _python("import ltt\nprint(sorted(n for n in ltt.__all__ if getattr(ltt, n, None) is None))")
    assert out.strip() == "[]"


def test_is_int_and_the_default_threshold():
    assert [is_int(v) for v in (0, -3, np.int8(2), np.uint64(1))] == [True] * 4
    assert [is_int(v) for v in (True, np.False_, 1.0, "1", None, np.float32(1))] == [False] * 6
    assert DEFAULT_THRESHOLD == ltt.GraphSettings().threshold == 0.04


def test_graph_json_round_trip_and_bad_json():
    from ltt.nodes import Edge, Node, Stage

    g = ltt.Graph(tokens=["a", "b"], token_ids=[5, 6], model_name="m", n_layers=1, threshold=0.04,
                  renormalize=True, targets=[1], norm=1,
                  nodes=[Node("X0_0", -1, 0, "X"), Node("X0_1", -1, 1, "X"), Node("A0_1", 0, 1, "A", 0.125),
                         Node("M0_1", 0, 1, "M"), Node("I0_1", 0, 1, "I")],
                  edges=[Edge.make(Stage.ATTENTION, 0, 1, 0, 0.25, False),
                         Edge.make(Stage.ATTENTION_RESIDUAL, 0, 1, 1, 0.5, False),
                         Edge.make(Stage.FFN_IN, 0, 1, 1, 0.1 + 0.2, False),
                         Edge.make(Stage.FFN_OUT, 0, 1, 1, 0.1 + 0.2, False),
                         Edge.make(Stage.FFN_RESIDUAL, 0, 1, 1, 0.7, False)])
    assert ltt.Graph.from_json(g.to_json()) == g
    with pytest.raises(ValueError, match="no JSON graph"):
        ltt.Graph.from_json("{not json")
    with pytest.raises(ValueError, match="not a graph"):
        ltt.Graph.from_json('{"nodes": []}')
