"""Node names, edge stages and graph settings: ltt.nodes, ltt.checks and graph.GraphSettings."""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pytest

from ltt import checks, nodes
from ltt.graph import GraphSettings, build, build_graph
from ltt.nodes import Edge, Stage, endpoint_names, parse_edge, parse_node

from test_graph import synthetic_trace


@pytest.mark.parametrize("module", [nodes, checks])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def graph():
    # layer 1 is a parallel block: its attention edges enter I1_t and its FFN reads the layer input
    return build_graph(synthetic_trace(T=6, L=3, parallel=(1,)), threshold=0.0, renormalize=False, targets="all")


def test_typed_fields_agree_with_the_names(graph):
    token = {n.name: (n.kind, n.layer, n.token) for n in graph.nodes}
    stages = set()
    for e in graph.edges:
        stages.add(e.stage)
        assert isinstance(e.stage, Stage) and e.kind == e.stage.kind
        parallel = e.layer == 1
        assert (e.source, e.target) == endpoint_names(e.stage, e.layer, e.target_token, e.source_token, parallel)
        assert token[e.source][2] == e.source_token and token[e.target][2] == e.target_token
        if e.stage is not Stage.ATTENTION:
            assert e.source_token == e.target_token
        assert Edge.make(e.stage, e.layer, e.target_token, e.source_token, e.weight, parallel) == e
    assert stages == set(Stage)
    by_stage = {(e.stage, e.layer) for e in graph.edges}
    assert (Stage.FFN_RESIDUAL, 1) not in by_stage  # a parallel layer has no after-attention state
    assert all(e.target.startswith("I1_") for e in graph.edges if e.stage is Stage.ATTENTION and e.layer == 1)
    assert all(e.target.startswith("A0_") for e in graph.edges if e.stage is Stage.ATTENTION and e.layer == 0)


def test_exports_keep_their_five_edge_fields(graph):
    data = graph.to_dict()
    assert all(set(e) == {"source", "target", "kind", "weight", "layer"} for e in data["edges"])
    assert graph.settings == GraphSettings(0.0, False, tuple(range(6)), 1)


def test_stage_table():
    assert endpoint_names(Stage.ATTENTION, 0, 4, 2, parallel=False) == ("X0_2", "A0_4")
    assert endpoint_names(Stage.ATTENTION_RESIDUAL, 3, 4, 4, parallel=True) == ("I2_4", "I3_4")
    assert endpoint_names(Stage.FFN_IN, 3, 4, 4, parallel=False) == ("A3_4", "M3_4")
    assert endpoint_names(Stage.FFN_IN, 3, 4, 4, parallel=True) == ("I2_4", "M3_4")
    assert endpoint_names(Stage.FFN_OUT, 3, 4, 4, parallel=False) == ("M3_4", "I3_4")
    assert endpoint_names(Stage.FFN_RESIDUAL, 3, 4, 4, parallel=False) == ("A3_4", "I3_4")
    with pytest.raises(ValueError, match="stage must be one of"):
        endpoint_names("teleport", 3, 4, 4, parallel=False)


@pytest.mark.parametrize("name, want", [("X0_3", ("X", -1, 3)), ("A2_0", ("A", 2, 0)),
                                        ("M10_7", ("M", 10, 7)), ("I0_1", ("I", 0, 1))])
def test_parse_node_reads_what_node_name_writes(name, want):
    assert parse_node(name) == want
    assert nodes.node_name(*want) == name


@pytest.mark.parametrize("bad", ["Z1_1", "I1-1", "I_1", " I1_1", "I-1_1", 5, None])
def test_parse_node_refuses_other_text(bad):
    with pytest.raises(ValueError, match="not a node name"):
        parse_node(bad)


def test_parse_edge():
    assert parse_edge(nodes.edge_key("I0_1", "A1_2", "attention")) == ("I0_1", "A1_2", "attention")
    for bad in ["I0_1|A1_2|teleport", "I0_1|A1_2", "I0_1|Q1_2|ffn", 3]:
        with pytest.raises(ValueError):
            parse_edge(bad)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"threshold": 1.0}, ValueError, ["threshold", "1.0"]),
        ({"threshold": "0.1"}, TypeError, ["threshold", "'0.1'"]),
        ({"renormalize": 1}, TypeError, ["renormalize", "1"]),
        ({"norm": 1.0}, TypeError, ["norm", "1.0"]),
        ({"norm": 3}, ValueError, ["norm", "3"]),
        ({"targets": "last"}, ValueError, ["targets", "'last'"]),
        ({"targets": {1: 2}}, TypeError, ["targets", "dict"]),
        ({"targets": [0, 1.5]}, TypeError, ["targets", "1.5"]),
        ({"targets": []}, ValueError, ["targets", "empty"]),
    ],
)
def test_settings_are_checked_when_made(kwargs, exc, words):
    with pytest.raises(exc) as info:
        GraphSettings(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_settings_are_frozen_and_resolved_per_prompt():
    s = GraphSettings(threshold=np.float32(0.25), renormalize=np.True_, targets=np.int64(-1), norm=np.int64(2))
    assert (s.threshold, s.renormalize, s.targets, s.norm) == (0.25, True, (-1,), 2)
    assert type(s.threshold) is float and type(s.renormalize) is bool and type(s.norm) is int
    assert s.positions(4) == [3] and s.positions(9) == [8]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.threshold = 0.5
    with pytest.raises(ValueError, match="targets holds 5, outside the 4 tokens"):
        GraphSettings(targets=[5]).positions(4)
    assert GraphSettings(targets=(i for i in [2, 0, 2])).targets == (2, 0, 2)  # an iterator, read once


def test_build_equals_build_graph():
    trace = synthetic_trace(T=5, L=2)
    a = build(trace, GraphSettings(0.05, True, [-1, 0]))
    b = build_graph(trace, threshold=0.05, renormalize=True, targets=[-1, 0])
    assert a == b and a.targets == [0, 4]
    with pytest.raises(TypeError, match="settings must be a GraphSettings"):
        build(trace, {"threshold": 0.05})
