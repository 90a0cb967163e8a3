"""The contrastive view (``ltt.DiffWidget``): its traits carry what ``ltt.diff`` computes, the
threshold is shared and re-diffs, bad input is named; and in chromium, the two graph views mark
exactly the diff's changed edges."""

from __future__ import annotations

import json
import pathlib
import subprocess
import textwrap

import pytest
import traitlets as tl

import ltt
from ltt.widget import STATIC, bundle
from ltt.widget.diff import DiffWidget

from conftest import node_path

A = "When Mary and John went"
B = "When John and Mary went"
EVIL_A = "<b>Mary</b> went"
EVIL_B = "<b>John</b> went"
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def pair(model):
    a, b = model.trace(A), model.trace(B)
    assert a.n_tokens == b.n_tokens
    return a, b


def _keys(graph: dict) -> set[str]:
    return {f"{e['source']}|{e['target']}|{e['kind']}" for e in graph["edges"]}


def _expected_status(e, min_change):
    """The status of an edge written out from the diff's numbers, independently of the widget."""
    if e.flow_a == 0 and e.flow_b > 0:
        return "appeared"
    if e.flow_a > 0 and e.flow_b == 0:
        return "vanished"
    if e.flow_delta != 0 and abs(e.flow_delta) >= min_change:
        return "rose" if e.flow_delta > 0 else "fell"
    return None


def _check_marks(w, a, b, threshold):
    d = ltt.diff(a, b, threshold=threshold)
    assert [e._asdict() for e in w.diff.edges] == [e._asdict() for e in d.edges]
    want_a, want_b = {}, {}
    for e in d.edges:
        s = _expected_status(e, w.min_change)
        if s:
            want_a[f"{e.source}|{e.target}|{e.kind}"] = s
            want_b[f"{e.source_b}|{e.target_b}|{e.kind}"] = s
    assert want_a and set(want_a.values()) >= {"rose", "fell"} or threshold > 0.05
    ga, gb = _keys(w.a.graph), _keys(w.b.graph)
    assert ga == _keys(a.graph(threshold=threshold).to_dict()) and gb == _keys(b.graph(threshold=threshold).to_dict())
    for marks, want, own, other_missing in ((w.a.marks, want_a, ga, "appeared"), (w.b.marks, want_b, gb, "vanished")):
        # the diff's edges (FFN routes as M -> I) plus the input -> M half of each marked FFN route
        halves = {k: s for k, s in marks.items() if k.split("|")[1].startswith("M")}
        assert {k: s for k, s in marks.items() if k not in halves} == want
        for k, s in halves.items():
            mid = k.split("|")[1]
            assert want[f"{mid}|I{mid[1:]}|ffn"] == s
        for k, s in marks.items():  # drawn where the side keeps the edge, dashed elsewhere
            assert (k in own) == (s != other_missing), (k, s)
    return d


def test_traits_carry_the_diff(pair):
    a, b = pair
    w = DiffWidget(a, b, k=5)
    d = _check_marks(w, a, b, 0.04)
    assert [row[1] for row in w.changes.options] == list(range(5))
    for (label, _), e in zip(w.changes.options, d.top_edges(5)):
        assert label.startswith(f"{e.flow_delta:+.4f}") and e.source in label and e.target in label
    assert w.changes.index is None and w.a.selection == {} and w.b.selection == {}
    assert "When Mary and John went" in w.label_a.value and "When John and Mary went" in w.label_b.value
    assert all(c in w.summary.value for c in ("rose", "fell", "appeared", "vanished"))
    # picking a change selects that edge in both views (each side's own positions)
    w.changes.index = 2
    e = d.top_edges(5)[2]
    assert w.a.selection == {"edge": f"{e.source}|{e.target}|{e.kind}"}
    assert w.b.selection == {"edge": f"{e.source_b}|{e.target_b}|{e.kind}"}
    assert w.a.panel and w.b.panel and not w.a.error and not w.b.error
    # clicking a changed edge in one view selects its counterpart in the other
    e = d.top_edges(5)[0]
    w.b.selection = {"edge": f"{e.source_b}|{e.target_b}|{e.kind}"}
    assert w.a.selection == {"edge": f"{e.source}|{e.target}|{e.kind}"}


def test_threshold_is_shared_and_re_diffs(pair):
    a, b = pair
    w = DiffWidget(a, b)
    w.b.threshold = 0.08  # the slider of either view
    assert w.a.threshold == 0.08 and w.threshold == 0.08 and w.diff.settings["threshold"] == 0.08
    _check_marks(w, a, b, 0.08)
    w.threshold = 0.03
    assert w.b.threshold == 0.03
    _check_marks(w, a, b, 0.03)
    w.a.targets = [5]
    assert w.b.targets == [5] and w.diff.settings["targets_b"] == [5]
    assert not w.a.error


def test_prompts_of_different_lengths_through_align(model):
    a, b = model.trace("When Mary went"), model.trace("So, When Mary went")
    shift = b.n_tokens - a.n_tokens
    align = [0] + [i + shift for i in range(1, a.n_tokens)]
    w = DiffWidget(a, b, align=align)
    assert w.diff.align == align and w.a.marks and w.b.marks
    for k in w.b.marks:
        assert all(int(n.split("_")[1]) in align for n in k.split("|")[:2])
    w.threshold = 0.06
    assert w.b.threshold == 0.06 and w.diff.settings["threshold"] == 0.06 and not w.a.error


def test_bad_input_is_named(pair, model):
    a, b = pair
    short = model.trace("When")
    with pytest.raises(ValueError, match=r"trace_a has \d+ tokens and trace_b has \d+.*align="):
        DiffWidget(a, short)
    with pytest.raises(ValueError, match="align has 2 entries"):
        DiffWidget(a, short, align=[0, 0])
    with pytest.raises(TypeError, match="trace_b must be a Trace"):
        DiffWidget(a, "When John")
    with pytest.raises(ValueError, match="threshold"):
        DiffWidget(a, b, threshold=2.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        DiffWidget(a, b, k=0)
    with pytest.raises(ValueError, match="min_change must be"):
        DiffWidget(a, b, min_change=-1)
    w = DiffWidget(a, b)
    with pytest.raises(tl.TraitError, match="marks:.*'grew'"):
        w.a.marks = {"X0_1|A0_2|attention": "grew"}
    with pytest.raises(tl.TraitError, match="marks:.*not an edge key"):
        w.a.marks = {"X0_1": "rose"}
    with pytest.raises(ValueError, match="index must be in"):
        w.select(99)
    with pytest.raises(tl.TraitError, match="threshold"):
        w.threshold = 1.5


def test_lazy_export():
    assert ltt.DiffWidget is DiffWidget and "DiffWidget" in ltt.__all__


_STATE_KEYS = ("graph", "threshold", "renormalize", "normalize", "targets", "selection", "panel",
               "panel_maps_shape", "prompts", "prompt_index", "model_info", "status", "error", "notice",
               "live", "slider", "marks")

_RENDER = """async ([src, states]) => {
    const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
    const mod = await import(url);
    window.__models = {};
    for (const [side, state] of Object.entries(states)) {
        state.panel_maps = new DataView(new ArrayBuffer(0));
        const handlers = {};
        const model = {
            get: (k) => state[k],
            set: (k, v) => { state[k] = v; (handlers["change:" + k] || []).forEach((f) => f()); },
            save_changes: () => {},
            on: (ev, f) => { (handlers[ev] ||= []).push(f); },
            off: (ev, f) => { handlers[ev] = (handlers[ev] || []).filter((g) => g !== f); },
            send: () => {},
        };
        window.__models[side] = model;
        mod.render({ model, el: document.getElementById(side) });
    }
}"""


def test_both_views_mark_exactly_the_changed_edges_in_a_browser(model, new_page):
    a, b = model.trace(EVIL_A), model.trace(EVIL_B)
    assert a.n_tokens == b.n_tokens and any("<" in t for t in a.tokens)
    w = DiffWidget(a, b, k=100)
    d = ltt.diff(a, b)
    changed_a = {f"{e.source}|{e.target}|{e.kind}": _expected_status(e, w.min_change) for e in d.edges}
    changed_a = {k: s for k, s in changed_a.items() if s}
    states = {side: {k: gw.get_state(k)[k] for k in _STATE_KEYS} for side, gw in (("a", w.a), ("b", w.b))}
    page_html = (
        "<html><head><style>" + (STATIC / "graph.css").read_text(encoding="utf-8") + "</style></head>"
        "<body style='margin:8px;font-family:sans-serif'><div style='display:flex;gap:8px'>"
        "<div style='width:50%;min-width:0'><div id='label-a'></div><div id='a' class='ltt-diff-side'></div></div>"
        "<div style='width:50%;min-width:0'><div id='label-b'></div><div id='b' class='ltt-diff-side'></div></div>"
        "</div></body></html>")
    page = new_page(1500, 900)
    errors, dialogs = page.errors, page.dialogs
    page.set_content(page_html)
    page.evaluate("([la, lb]) => { document.getElementById('label-a').textContent = la; "
                  "document.getElementById('label-b').textContent = lb; }", [w.label_a.value, w.label_b.value])
    page.evaluate(_RENDER, [bundle.script(), states])
    page.wait_for_selector("#b svg.ltt-svg[data-marks]")
    page.wait_for_timeout(200)
    drawn = {}
    for side, gw in (("a", w.a), ("b", w.b)):
        marks = page.eval_on_selector_all(
            f"#{side} [data-mark]", "els => els.map(e => [e.dataset.mark, e.dataset.status, e.classList.contains('ltt-mark-ghost')])")
        drawn[side] = {k: s for k, s, _ in marks}
        assert drawn[side] == gw.marks
        edges = _keys(gw.graph)
        assert {k for k, _, ghost in marks if ghost} == set(gw.marks) - edges
        # the existing edges are drawn as before: the marks are an overlay, not data-edge paths
        assert set(page.eval_on_selector_all(f"#{side} [data-edge]", "els => els.map(e => e.dataset.edge)")) == edges
        assert page.is_visible(f"#{side} .ltt-legend-diff")
    # side a's marks are exactly the diff's changed edges (plus each FFN route's first half)
    assert {k: s for k, s in drawn["a"].items() if not k.split("|")[1].startswith("M")} == changed_a
    # tokens holding markup are text, never elements
    labels = page.eval_on_selector_all("#a .ltt-axis-x text", "els => els.map(e => e.textContent)")
    assert "<" in labels and ">" in labels
    assert page.locator("#label-a b, #label-b b, .ltt-axis-x b").count() == 0
    assert page.inner_text("#label-a").count("<b>Mary</b> went") == 1
    # picking a change: the kernel selects the edge in both views; an edge kept by one side
    # only is highlighted where the other would have it
    top = d.top_edges(100)
    pick = next(i for i, e in enumerate(top) if e.flow_a == 0 or e.flow_b == 0)
    w.select(pick)
    page.evaluate("([sa, sb]) => { window.__models.a.set('selection', sa); window.__models.b.set('selection', sb); }",
                  [w.a.selection, w.b.selection])
    for side in ("a", "b"):
        assert page.locator(f"#{side} .ltt-hi-edge").count() == 1
    assert page.locator(".ltt-hi-ghost").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "diff.png"), full_page=True)
    assert not errors and not dialogs, (errors, dialogs)


def test_key_path_puts_a_ghost_where_the_edge_is_drawn(pair, tmp_path):
    """keyPath (a mark on an edge this graph does not keep) draws the same path as the layout of
    a kept edge; a malformed key gives null."""
    w = DiffWidget(*pair)
    (tmp_path / "graph.js").write_text(bundle.script(), encoding="utf-8")  # the joined module, as the page loads it
    code = textwrap.dedent(f"""
        import {{ keyPath, layoutGraph, edgePath }} from {json.dumps((tmp_path / "graph.js").as_uri())};
        const g = {json.dumps(w.b.graph)};
        const lay = layoutGraph(g);
        let n = 0;
        for (const e of lay.edges) {{
          if (keyPath(e.key, g.parallel, g.n_layers) !== edgePath(e.kind, e.a, e.b)) throw new Error(e.key);
          n++;
        }}
        if (keyPath("X0_1|nope|attention", g.parallel, g.n_layers) !== null) throw new Error("malformed");
        console.log(n);
    """)
    proc = subprocess.run([node_path(), "--input-type=module", "-e", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len(w.b.graph["edges"]) > 0


def test_summary_says_how_the_positions_are_compared(pair, model):
    """Same length: token by token; other lengths: the pairs ``align`` gives, as the diff uses them."""
    w = DiffWidget(*pair)
    assert "compared token by token" in w.summary.value
    a, c = pair[0], model.trace("The cat sat")
    Ta, Tc = len(a.token_ids), len(c.token_ids)
    assert Ta != Tc
    w = DiffWidget(a, c, align={Ta - 1: Tc - 1})
    assert f"compared at a's token {Ta - 1} ↔ b's token {Tc - 1}" in w.summary.value
    assert "token by token" not in w.summary.value
    w = DiffWidget(a, c, align=[None] * (Ta - 3) + [Tc - 3, Tc - 2, Tc - 1])
    assert f"a's token {Ta - 3} ↔ b's token {Tc - 3}" in w.summary.value
