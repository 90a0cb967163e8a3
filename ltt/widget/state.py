"""The widget's state, defined once: every synced field, its type, its default, and whether the page
may write it.

Everything that knows the page's state derives from :data:`FIELDS`: the anywidget traits of
:class:`ltt.widget.GraphWidget` (:func:`traits`), the offline report's initial state
(:func:`initial`), ``ltt serve``'s set of fields a page may send (:data:`WRITABLE`), and the
page's own constant ``STATE_FIELDS`` in ``static/page/schema.js`` (:func:`js_module`, written by
``python -m ltt.widget.bundle`` and checked by the tests to equal this module).

>>> from ltt.widget.state import WRITABLE, initial
>>> "threshold" in WRITABLE, "graph" in WRITABLE
(True, False)
>>> initial()["threshold"]
0.04
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ltt.checks import DEFAULT_THRESHOLD

__all__ = ["Field", "FIELDS", "WRITABLE", "NAMES", "traits", "initial", "js_module"]


@dataclass(frozen=True)
class Field:
    """One synced field: ``kind`` is one of ``dict``, ``float``, ``bool``, ``int``, ``str``,
    ``bytes``, ``list[int]``, ``list[float]``, ``list[str]``, ``list[dict]``; ``writable``: the page may set it."""

    name: str
    kind: str
    default: Any
    writable: bool
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("graph", "dict", {}, False, "trace.graph(...).to_dict() for the settings, with parallel and predictions"),
    Field("threshold", "float", DEFAULT_THRESHOLD, True, "the pruning threshold, in [0, 1)"),
    Field("renormalize", "bool", True, True, "the threshold mode"),
    Field("normalize", "bool", True, True, "apply the final norm before unembedding in the top-token panels"),
    Field("targets", "list[int]", [], True, "the target token positions"),
    Field("selection", "dict", {}, True, "{'node': name}, {'edge': key, 'head': h} or {}"),
    Field("panel", "dict", {}, False, "the selected thing's panel data"),
    Field("panel_maps", "bytes", b"", False, "the panel's heatmaps, float32 bytes"),
    Field("panel_maps_shape", "list[int]", [], False, "the heatmaps' shape"),
    Field("prompts", "list[str]", [], False, "the prompt picker's prompts"),
    Field("prompt_index", "int", 0, True, "the picked prompt"),
    Field("model_info", "dict", {}, False, "the model's facts (name, layers, heads, ...)"),
    Field("status", "str", "", False, "what the kernel is doing now"),
    Field("error", "str", "", False, "the last error, shown in the page"),
    Field("notice", "str", "", False, "a note shown under the header"),
    Field("live", "bool", True, False, "a kernel answers (False in the offline report)"),
    Field("marks", "dict", {}, False, "change marks: edge key -> rose | fell | appeared | vanished"),
    Field("slider", "list[float]", [0.01, 0.10], False, "the threshold slider's [min, max]"),
    Field("faithfulness", "str", "", False, "the shown graph's faithfulness line"),
    Field("faithfulness_state", "str", "", False, "'' (none), 'computing' (the line is stale), 'current', 'failed'"),
    Field("faithfulness_for", "list[int]", [], False, "the targets the faithfulness line holds for"),
    Field("outputs", "list[dict]", [], False, "the top prediction after every token: {token, prob}"),
    Field("counterfactual", "str", "", True, "a counterfactual prompt to patch from (empty: zero ablation)"),
)

NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
WRITABLE: tuple[str, ...] = tuple(f.name for f in FIELDS if f.writable)


def _copy(v: Any) -> Any:
    return json.loads(json.dumps(v)) if isinstance(v, (dict, list)) else v


def initial() -> dict[str, Any]:
    """Every field at its default (bytes as ``""``, as the report's page reads them)."""
    return {f.name: ("" if f.kind == "bytes" else _copy(f.default)) for f in FIELDS}


def traits() -> dict[str, Any]:
    """The synced traitlets of every field, for a widget class body."""
    import traitlets as tl

    make = {
        "dict": lambda d: tl.Dict(),
        "float": lambda d: tl.Float(d),
        "bool": lambda d: tl.Bool(d),
        "int": lambda d: tl.Int(d),
        "str": lambda d: tl.Unicode(d),
        "bytes": lambda d: tl.Bytes(d),
        "list[int]": lambda d: tl.List(tl.Int(), default_value=list(d)),
        "list[str]": lambda d: tl.List(tl.Unicode(), default_value=list(d)),
        "list[dict]": lambda d: tl.List(tl.Dict(), default_value=list(d)),
        "list[float]": lambda d: tl.List(tl.Float(), default_value=list(d), minlen=2, maxlen=2),
    }
    return {f.name: make[f.kind](f.default).tag(sync=True) for f in FIELDS}


def js_module() -> str:
    """The text of ``static/page/schema.js``: the fields as the page sees them."""
    rows = [{"name": f.name, "kind": f.kind, "default": "" if f.kind == "bytes" else f.default,
             "writable": f.writable} for f in FIELDS]
    body = ",\n".join("  " + json.dumps(r, separators=(", ", ": ")) for r in rows)
    return ("// GENERATED from ltt/widget/state.py by `python -m ltt.widget.bundle`: do not edit.\n"
            "// The widget's synced fields, their kinds and defaults, and which the page may write.\n\n"
            f"export const STATE_FIELDS = [\n{body},\n];\n\n"
            "/** The fields the page may set (what render() commits). */\n"
            "export const WRITABLE = STATE_FIELDS.filter((f) => f.writable).map((f) => f.name);\n")
