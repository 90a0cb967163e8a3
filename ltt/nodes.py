"""Nodes and edges of the contribution graph: the one place that names them and reads names back.

A node is a residual state or an FFN block: ``X0_t`` (embedding), ``A{l}_t`` (after
attention), ``M{l}_t`` (the FFN block), ``I{l}_t`` (after the FFN). An edge is one of five
:class:`Stage` s of a layer; its stage, layer and two token positions decide both of its
nodes (DESIGN.md, "Graph"):

=====================  =====================================  ==============
stage                  sequential layer ``l``                 parallel layer
=====================  =====================================  ==============
``attention``          ``input(s) -> A{l}_t``                 ``input(s) -> I{l}_t``
``attention residual`` ``input(t) -> A{l}_t``                 ``input(t) -> I{l}_t``
``ffn in``             ``A{l}_t -> M{l}_t``                   ``input(t) -> M{l}_t``
``ffn out``            ``M{l}_t -> I{l}_t``                   the same
``ffn residual``       ``A{l}_t -> I{l}_t``                   none
=====================  =====================================  ==============

where ``input(t)`` is the state entering layer ``l`` (:func:`input_state`). Code that holds an
:class:`Edge` reads its typed fields; :func:`parse_node` and :func:`parse_edge` are for names
that arrive as text (the page's selection, a user's ``"I3_5"``).

>>> Edge.make(Stage.ATTENTION, layer=2, target=5, source=1, weight=0.3, parallel=False)[:3]
('I1_1', 'A2_5', 'attention')
>>> parse_node("M2_5")
('M', 2, 5)
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple

__all__ = ["Stage", "Node", "Edge", "node_name", "parse_node", "input_state", "attention_state",
           "endpoints", "endpoint_names", "edge_key", "parse_edge", "ATTENTION", "RESIDUAL", "FFN",
           "EDGE_KINDS"]

# Edge kinds, as the JSON and networkx exports key them.
ATTENTION, RESIDUAL, FFN = "attention", "residual", "ffn"
EDGE_KINDS = (ATTENTION, RESIDUAL, FFN)

_NODE_RE = re.compile(r"^([XAMI])(\d+)_(\d+)$")
_NEAR_RE = re.compile(r"^([A-Za-z])(-?\d+)_(-?\d+)$")


class Stage(str, Enum):
    """Where in a layer an edge sits; :attr:`kind` is its exported kind."""

    ATTENTION = "attention"
    ATTENTION_RESIDUAL = "attention residual"
    FFN_IN = "ffn in"
    FFN_OUT = "ffn out"
    FFN_RESIDUAL = "ffn residual"

    @property
    def kind(self) -> str:
        """``"attention"``, ``"residual"`` or ``"ffn"``."""
        if self is Stage.ATTENTION:
            return ATTENTION
        if self in (Stage.ATTENTION_RESIDUAL, Stage.FFN_RESIDUAL):
            return RESIDUAL
        return FFN


class Node(NamedTuple):
    """A state or block of the graph: ``name`` is ``X0_t``, ``A{l}_t``, ``M{l}_t`` or ``I{l}_t``.

    ``layer`` is -1 for embeddings; ``kind`` is the name's letter; ``bias`` is the share of the
    state that no edge carries (a bias), 0 where there is none."""

    name: str
    layer: int
    token: int
    kind: str
    bias: float = 0.0


class Edge(NamedTuple):
    """A weighted edge ``source -> target`` of a layer: the node names and ``kind`` (attention,
    residual or ffn) as exported, and the typed ``stage``, ``target_token`` and
    ``source_token`` (the same as ``target_token`` for every stage but attention). Built by
    :meth:`make`, so that names and fields agree."""

    source: str
    target: str
    kind: str
    weight: float
    layer: int
    stage: Stage
    target_token: int
    source_token: int

    @classmethod
    def make(cls, stage: Stage, layer: int, target: int, source: int, weight: float, parallel: bool) -> "Edge":
        """The edge of ``stage`` in ``layer`` (``parallel``: whether it is a parallel block) from
        token ``source`` to token ``target``."""
        stage = Stage(stage)
        src, dst = endpoint_names(stage, layer, target, source, parallel)
        return cls(src, dst, stage.kind, weight, layer, stage, target, source)

    def to_dict(self) -> dict:
        """The exported fields: ``source``, ``target``, ``kind``, ``weight``, ``layer``."""
        return {"source": self.source, "target": self.target, "kind": self.kind,
                "weight": self.weight, "layer": self.layer}


def node_name(kind: str, layer: int, token: int) -> str:
    """``node_name("I", 3, 5) == "I3_5"``; the embeddings are ``X0_t`` (layer -1)."""
    return f"X0_{token}" if kind == "X" else f"{kind}{layer}_{token}"


def parse_node(name: str) -> tuple[str, int, int]:
    """``(kind, layer, token)`` of a node name; layer -1 for ``X0_t``. ValueError if malformed.

    >>> parse_node("X0_3")
    ('X', -1, 3)
    """
    m = _NODE_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"not a node name (X0_t, A{{l}}_t, M{{l}}_t, I{{l}}_t): {name!r}")
    kind = m.group(1)
    return kind, (-1 if kind == "X" else int(m.group(2))), int(m.group(3))


def split_name(name: str) -> tuple[str, int, int] | None:
    """``(letter, number, token)`` of anything shaped like a node name (any letter, signed
    numbers: ``"Z-1_4"`` gives ``("Z", -1, 4)``), or None; for callers that say what is wrong
    with a near miss (:func:`ltt.interpret.trace_indices._parse_node`)."""
    m = _NEAR_RE.match(name.strip()) if isinstance(name, str) else None
    return None if m is None else (m.group(1), int(m.group(2)), int(m.group(3)))


def input_state(layer: int, token: int) -> tuple[str, int, int]:
    """``(kind, layer, token)`` of the state entering ``layer`` at ``token``: ``X0_t`` for layer
    0, else ``I{l-1}_t``."""
    return ("X", -1, token) if layer == 0 else ("I", layer - 1, token)


def attention_state(layer: int, token: int, parallel: bool) -> tuple[str, int, int]:
    """``(kind, layer, token)`` of the state the attention edges of ``layer`` enter at
    ``token``: ``A{l}_t``, or ``I{l}_t`` when the layer is a parallel block (it has no
    after-attention state)."""
    return ("I" if parallel else "A"), layer, token


def endpoints(stage: Stage, layer: int, target: int, source: int,
              parallel: bool) -> tuple[tuple[str, int, int], tuple[str, int, int]]:
    """``(kind, layer, token)`` of the source and the target node of an edge of ``stage`` (the
    module docstring's table).

    >>> endpoints(Stage.FFN_IN, 0, 4, 4, parallel=True)
    (('X', -1, 4), ('M', 0, 4))
    """
    if stage == Stage.ATTENTION:
        return input_state(layer, source), attention_state(layer, target, parallel)
    if stage == Stage.ATTENTION_RESIDUAL:
        return input_state(layer, target), attention_state(layer, target, parallel)
    if stage == Stage.FFN_IN:
        return (input_state(layer, target) if parallel else ("A", layer, target)), ("M", layer, target)
    if stage == Stage.FFN_OUT:
        return ("M", layer, target), ("I", layer, target)
    if stage == Stage.FFN_RESIDUAL:
        return attention_state(layer, target, parallel), ("I", layer, target)
    raise ValueError(f"stage must be one of {[m.value for m in Stage]}, got {stage!r}")


def endpoint_names(stage: Stage, layer: int, target: int, source: int, parallel: bool) -> tuple[str, str]:
    """The names of :func:`endpoints`: ``(source node, target node)``.

    >>> endpoint_names(Stage.ATTENTION, 2, 5, 1, parallel=True)
    ('I1_1', 'I2_5')
    """
    a, b = endpoints(stage, layer, target, source, parallel)
    return node_name(*a), node_name(*b)


def edge_key(source: str, target: str, kind: str) -> str:
    """The page's name of an edge: ``"source|target|kind"``."""
    return f"{source}|{target}|{kind}"


def parse_edge(key: str) -> tuple[str, str, str]:
    """``(source, target, kind)`` of an edge key ``"source|target|kind"``; ValueError if malformed.

    >>> parse_edge("I0_1|A1_2|attention")
    ('I0_1', 'A1_2', 'attention')
    """
    parts = key.split("|") if isinstance(key, str) else []
    if len(parts) != 3 or parts[2] not in EDGE_KINDS:
        raise ValueError(f"not an edge key 'source|target|kind' (kind one of {EDGE_KINDS}): {key!r}")
    parse_node(parts[0])
    parse_node(parts[1])
    return parts[0], parts[1], parts[2]
