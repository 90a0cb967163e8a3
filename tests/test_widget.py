"""The widget's Python side: its synced state is what the trace computes; bad values are refused.

No browser here (tests/test_browser.py drives the front end): these tests set traits the way the
page does and compare the results with ``trace.graph(...)`` and :mod:`ltt.interpret`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import traitlets  # noqa: E402

from ltt import interpret  # noqa: E402
from ltt.report import embed_json, report_data, to_html  # noqa: E402
from ltt.widget import GraphWidget  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def trace(tiny_model):
    return tiny_model("llama").trace(PROMPT)


@pytest.fixture(scope="module")
def parallel_trace(tiny_model):
    return tiny_model("gpt_neox").trace(PROMPT)


def _same_graph(payload, g):
    want = g.to_dict()
    assert payload["tokens"] == want["tokens"]
    assert payload["settings"] == want["settings"]
    assert [n["name"] for n in payload["nodes"]] == [n["name"] for n in want["nodes"]]
    got = [(e["source"], e["target"], e["kind"], e["layer"]) for e in payload["edges"]]
    assert got == [(e["source"], e["target"], e["kind"], e["layer"]) for e in want["edges"]]
    np.testing.assert_allclose([e["weight"] for e in payload["edges"]], [e["weight"] for e in want["edges"]])


def test_initial_graph_and_settings_changes_match_trace_graph(trace):
    w = GraphWidget(trace, threshold=0.02)
    T = len(trace.token_ids)
    assert w.targets == [T - 1]
    _same_graph(w.graph, trace.graph(threshold=0.02))
    assert w.graph["parallel"] == [False] * len(trace.layers)
    assert str(T - 1) in w.graph["predictions"]
    w.threshold = 0.08
    _same_graph(w.graph, trace.graph(threshold=0.08))
    w.renormalize = False
    _same_graph(w.graph, trace.graph(threshold=0.08, renormalize=False))
    w.targets = [-1, 3]  # negative positions count from the end, as in trace.graph
    assert w.targets == [3, T - 1]
    _same_graph(w.graph, trace.graph(threshold=0.08, renormalize=False, targets=[3, T - 1]))
    w.threshold = 0.5  # any value in [0, 1), not only the slider's range
    _same_graph(w.graph, trace.graph(threshold=0.5, renormalize=False, targets=[3, T - 1]))
    assert w.error == ""


def test_parallel_layers_have_no_after_attention_nodes(parallel_trace):
    w = GraphWidget(parallel_trace, threshold=0.01, targets="all")
    assert w.graph["parallel"] == [True] * len(parallel_trace.layers)
    assert not any(n["kind"] == "A" for n in w.graph["nodes"])
    _same_graph(w.graph, parallel_trace.graph(threshold=0.01, targets="all"))


def test_model_facts(trace):
    info = GraphWidget(trace).model_info
    m = trace.model
    assert info["n_layers"] == m.n_layers and info["n_heads"] == m.n_heads
    assert info["d_model"] == m.d_model and info["vocab_size"] == m.vocab_size and info["name"] == m.name


def test_state_node_panel_is_the_logit_lens(trace):
    w = GraphWidget(trace)
    node = f"I{len(trace.layers) - 1}_{len(trace.token_ids) - 1}"
    w.selection = {"node": node}
    want = interpret.top_tokens(trace, node, k=10, normalize=True).to_dict()
    assert w.panel["type"] == "state" and w.panel["tokens"] == want["tokens"]
    w.normalize = False
    want = interpret.top_tokens(trace, node, k=10, normalize=False).to_dict()
    assert w.panel["tokens"] == want["tokens"] and w.panel["normalize"] is False
    assert w.panel_maps == b"" and w.panel_maps_shape == []


def test_attention_edge_panel_lists_heads_and_sends_maps_as_float32_bytes(trace):
    T = len(trace.token_ids)
    w = GraphWidget(trace)
    key = f"I0_2|A1_{T - 1}|attention"
    w.selection = {"edge": key}
    eh = interpret.edge_heads(trace, 1, T - 1, 2)
    p = w.panel
    assert p["type"] == "attention" and (p["layer"], p["target"], p["source"]) == (1, T - 1, 2)
    assert [(h["head"], h["share"]) for h in p["heads"]] == [(h.head, pytest.approx(h.share)) for h in eh.heads]
    assert p["head"] == eh.heads[0].head
    for head in (p["head"], 0, 3):
        w.selection = {"edge": key, "head": head}
        hv = interpret.head_view(trace, 1, head, T - 1)
        assert w.panel["head"] == head
        assert w.panel_maps_shape == [2, T, T]
        maps = np.frombuffer(w.panel_maps, dtype=np.float32).reshape(w.panel_maps_shape)
        np.testing.assert_array_equal(maps[0], hv.pattern)
        np.testing.assert_array_equal(maps[1], hv.contribution)
        assert [t["token"] for t in w.panel["head_view"]["promoted"]] == [t.token for t in hv.promoted.promoted]
    block = interpret.promoted(trace, 1, T - 1, block="attn")
    assert [t["token_id"] for t in w.panel["block"]["suppressed"]] == [t.token_id for t in block.suppressed]


def test_ffn_node_panel_lists_top_neurons(trace):
    w = GraphWidget(trace)
    w.selection = {"node": "M0_4"}
    want = interpret.top_neurons(trace, 0, 4, k=10).to_dict()
    assert w.panel["type"] == "ffn" and w.panel["neurons"] == want["neurons"]
    w.selection = {"edge": "A0_4|M0_4|ffn"}  # an FFN edge opens the same panel
    assert w.panel["neurons"] == want["neurons"]
    w.selection = {"edge": "I0_4|A1_4|residual"}
    assert w.panel["type"] == "residual"
    w.selection = {}
    assert w.panel == {}


@pytest.mark.parametrize(
    "trait, value, words",
    [
        ("threshold", 1.5, ["threshold", "1.5"]),
        ("threshold", -0.01, ["threshold", "-0.01"]),
        ("threshold", float("nan"), ["threshold", "nan"]),
        ("threshold", "high", ["threshold", "high"]),
        ("targets", [99], ["targets", "99"]),
        ("targets", [True], ["targets", "True"]),
        ("targets", [], ["targets"]),
        ("selection", {"node": "Z1_1"}, ["selection", "Z1_1"]),
        ("selection", {"node": "I9_0"}, ["selection", "I9_0"]),
        ("selection", {"edge": "I0_1|A1_2|teleport"}, ["selection", "teleport"]),
        ("selection", {"edge": "I0_1|A1_2|attention", "head": 77}, ["head", "77"]),
        ("selection", {"node": "I0_1", "edge": "I0_1|A1_2|attention"}, ["selection"]),
        ("prompt_index", 5, ["prompt_index", "5"]),
        ("renormalize", "yes", ["renormalize", "yes"]),
        ("slider", [0.2, 0.1], ["slider"]),
    ],
)
def test_bad_values_are_refused_naming_trait_and_value(trace, trait, value, words):
    w = GraphWidget(trace)
    before = (w.graph, w.selection, getattr(w, trait))
    with pytest.raises(traitlets.TraitError) as info:
        setattr(w, trait, value)
    msg = str(info.value)
    for word in words:
        assert word in msg, (word, msg)
    assert (w.graph, w.selection, getattr(w, trait)) == before


def test_constructor_refuses_bad_sources(trace):
    with pytest.raises(ValueError, match="model="):
        GraphWidget(["a prompt"])
    with pytest.raises(TypeError, match="source\\[0\\]"):
        GraphWidget([42])
    with pytest.raises(ValueError, match="non-empty"):
        GraphWidget([])
    with pytest.raises(traitlets.TraitError, match="threshold"):
        GraphWidget(trace, threshold=2.0)


def test_prompt_picker_and_prompt_box(tiny_model):
    model = tiny_model("llama")
    w = GraphWidget(["The capital of France is", "A quick brown fox"], model=model)
    assert w.prompts == ["The capital of France is", "A quick brown fox"]
    first = w.graph["tokens"]
    w.selection = {"node": "X0_0"}
    w.prompt_index = 1
    assert w.graph["tokens"] == model.trace("A quick brown fox").tokens != first
    assert w.targets == [len(w.graph["tokens"]) - 1] and w.selection == {} and w.panel == {}
    w._on_msg(w, {"type": "run", "prompt": "The dog sleeps"}, [])  # what the page's Run sends
    assert w.prompts[-1] == "The dog sleeps" and w.prompt_index == 2
    assert w.graph["tokens"] == model.trace("The dog sleeps").tokens
    w._on_msg(w, {"type": "run", "prompt": "   "}, [])
    assert "prompt" in w.error and w.prompt_index == 2


def test_errors_from_the_page_are_shown_not_raised(trace, monkeypatch):
    w = GraphWidget(trace)
    monkeypatch.setattr(type(trace), "graph", lambda self, **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    w.threshold = 0.05
    assert w.error == "RuntimeError: boom" and w.status == ""


def test_import_ltt_stays_light_and_exports_the_widget_lazily():
    code = (
        "import sys, ltt; assert 'anywidget' not in sys.modules and 'torch' not in sys.modules;"
        "W = ltt.GraphWidget; assert 'anywidget' in sys.modules; print(W.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "GraphWidget"


def test_embed_json_cannot_close_the_script():
    text = embed_json({"tok": "</script><!-- <img src=x onerror=alert(1)> & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text)["tok"] == "</script><!-- <img src=x onerror=alert(1)> & \u2028"


def test_report_embeds_the_graph_and_the_panels(trace, tmp_path):
    store = report_data(trace, threshold=0.03)
    _same_graph(store["state"]["graph"], trace.graph(threshold=0.03))
    _same_graph(store["graphs"]["raw"], trace.graph(threshold=0.03, renormalize=False))
    assert store["state"]["live"] is False
    for g in store["graphs"].values():
        for n in g["nodes"]:
            key = f"ffn:{n['name']}" if n["kind"] == "M" else f"state:{n['name']}:1"
            assert key in store["panels"], key
        for e in g["edges"]:
            assert f"edge:{e['source']}|{e['target']}|{e['kind']}" in store["panels"] or e["kind"] == "ffn"
    path = to_html(trace, tmp_path / "r.html", threshold=0.03)
    page = open(path, encoding="utf-8").read()
    assert page.count("</script>") == 3  # the data, the binary buffer, the module
    assert "https://" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_report_module_is_the_view_then_its_kernel(monkeypatch):
    """The report inlines graph.js and report_kernel.js as one module, the kernel's import of the
    view dropped; a module importing one that is not inlined before it is refused by name."""
    from ltt import report

    js = report._report_js()
    assert js.index("// --- graph.js ---") < js.index("// --- report_kernel.js ---")
    assert not [line for line in js.splitlines() if line.startswith("import ")]
    for name in ("export function render(", "export function offlineKernel(", "export function createModelShim("):
        assert js.count(name) == 1, name
    monkeypatch.setattr(report, "_REPORT_MODULES", ("report_kernel.js", "graph.js"))
    with pytest.raises(RuntimeError, match="report_kernel.js imports 'graph.js'"):
        report._report_js()


def test_report_panels_are_the_single_clicks_panels(trace, parallel_trace):
    from ltt.widget import panels

    for tr in (trace, parallel_trace):
        store = report_data(tr, threshold=0.02)
        P = store["panels"]
        seen = set()
        for key, panel in P.items():
            kind, _, rest = key.partition(":")
            seen.add(kind)
            if kind == "state":
                node, flag = rest.rsplit(":", 1)
                assert panel == panels.state_panel(tr, node, normalize=flag == "1"), key
            elif kind == "ffn":
                assert panel == panels.ffn_panel(tr, rest, weight=panel.get("weight")), key
            elif kind == "hv":
                layer, head, target = map(int, rest.split(":"))
                view, maps = panels.head_view(tr, layer, head, target)
                assert panel == view, key
                m = store["offline"]["maps"][f"{layer}:{head}"]  # every head's maps, 8 bits each
                tri = np.tril_indices(maps.shape[1])
                for i, name in enumerate(("pattern", "contribution")):
                    want = maps[i][tri]
                    np.testing.assert_allclose(m[name] * np.float32(m["step"][i]), want,
                                               rtol=0, atol=float(want.max()) / 510 * 1.001 + 1e-9)
            elif panel["type"] == "attention":
                want, _ = panels.attention_panel(tr, rest, panel["weight"], with_head=False)
                assert panel == want, key
        assert seen == {"state", "ffn", "hv", "edge"}
