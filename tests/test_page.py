"""The page (ltt/widget/static/page/*.js joined into graph.js) and its one state schema
(ltt/widget/state.py): the four places the state is known agree; the modules join; the page's
columns, hover texts, panels, faithfulness figure and dark maps in real Chromium."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time

import pytest

from conftest import assert_draws  # noqa: F401
from ltt.widget import GraphWidget, STATIC, bundle, outputs, state

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def trace(tiny_model):
    return tiny_model("llama").trace(PROMPT)


# -- one schema ----------------------------------------------------------------------------------

def test_traits_report_serve_and_page_derive_from_one_schema(trace):
    from ltt.report import report_data
    from ltt.serve.session import WRITABLE, synced_traits

    names = [f.name for f in state.FIELDS]
    assert sorted(synced_traits()) == sorted(names)  # the widget's synced traits
    w = GraphWidget(trace)
    w.faithfulness_baselines = 0
    fresh = GraphWidget.class_own_traits(sync=lambda v: bool(v))
    for f in state.FIELDS:
        default = fresh[f.name].default()
        assert (default if f.kind != "bytes" else b"") == (f.default if f.kind != "bytes" else b""), f.name
    assert WRITABLE == state.WRITABLE == tuple(f.name for f in state.FIELDS if f.writable)
    store = report_data(trace, with_panels=False, carry=2)
    assert sorted(store["state"]) == sorted(names)  # marks included, nothing extra
    assert store["state"]["marks"] == {} and store["state"]["faithfulness_for"] == [len(trace.token_ids) - 1]
    # the page's constant: generated from the schema, the same in the joined graph.js
    assert (bundle.PAGE / "schema.js").read_text(encoding="utf-8") == state.js_module()
    code = f"import {{ STATE_FIELDS }} from {json.dumps((bundle.PAGE / 'schema.js').as_uri())}; console.log(JSON.stringify(STATE_FIELDS));"
    proc = subprocess.run(["node", "--input-type=module", "-e", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    page = json.loads(proc.stdout)
    assert [(f["name"], f["kind"], f["writable"]) for f in page] == [(f.name, f.kind, f.writable) for f in state.FIELDS]


def test_graph_js_is_the_join_of_the_page_modules_in_memory(monkeypatch):
    assert not (STATIC / "graph.js").exists()  # no generated file: joined in memory, once
    js = bundle.script()
    assert js == bundle.join() and bundle.script() is js
    assert not [line for line in js.splitlines() if line.startswith("import ")]
    for name in bundle.MODULES:
        n = len((bundle.PAGE / f"{name}.js").read_text(encoding="utf-8").splitlines())
        assert n < 400, (name, n)
    monkeypatch.setattr(bundle, "MODULES", ("layout", "schema", "state"))
    bundle.join()  # state imports layout and schema, both before it
    monkeypatch.setattr(bundle, "MODULES", ("state", "layout"))
    with pytest.raises(RuntimeError, match="page/state.js imports 'layout'"):
        bundle.join()


def test_page_helpers_under_node():
    proc = subprocess.run(["node", "--test", str(ROOT / "tests" / "js")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "# fail 0" in proc.stdout


# -- the widget's side -----------------------------------------------------------------------------

def _wait(cond, timeout=60.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_faithfulness_runs_off_the_ui_thread_and_a_stale_figure_is_marked(trace):
    T = len(trace.token_ids)
    w = GraphWidget(trace, threshold=0.04)
    _wait(lambda: w.faithfulness_state == "current")
    first = w.faithfulness
    assert "keeps" in first and w.faithfulness_for == [T - 1]
    seen = []
    w.observe(lambda c: seen.append((c["new"], w.faithfulness)), names="faithfulness_state")
    w.targets = [T - 2]  # a new graph: the old line stays, marked as being recomputed
    _wait(lambda: w.faithfulness_state == "current")
    assert seen[0] == ("computing", first)
    assert w.faithfulness_for == [T - 2]
    from ltt.faithfulness import summary_line

    assert w.faithfulness == summary_line(trace.faithfulness(trace.graph(threshold=0.04, targets=[T - 2]), baselines=8))
    # going back is immediate (cached), and current
    w.targets = [T - 1]
    assert w.faithfulness_state == "current" and w.faithfulness == first


def test_counterfactual_box_patches_from_the_counterfactual(trace):
    w = GraphWidget(trace, threshold=0.04)
    _wait(lambda: w.faithfulness_state == "current")
    w.counterfactual = "When John and Mary went to the store, Mary gave a drink to"  # the same tokens, reordered
    _wait(lambda: w.faithfulness_state in ("current", "failed"))
    assert w.faithfulness_state == "current", w.faithfulness
    assert w.faithfulness.startswith("patched from 'When John and Mary"), w.faithfulness
    assert "normalised faithfulness" in w.faithfulness, w.faithfulness
    w.counterfactual = "When Mary and John went"  # another length: refused, the figure says why
    _wait(lambda: w.faithfulness_state in ("current", "failed"))
    assert w.faithfulness_state == "failed" and "tokens" in w.faithfulness, w.faithfulness
    w.counterfactual = ""
    _wait(lambda: w.faithfulness_state == "current")
    assert "keeps" in w.faithfulness


def test_a_target_change_clears_a_selection_the_new_graph_lacks(trace):
    T = len(trace.token_ids)
    w = GraphWidget(trace, threshold=0.01)
    w.faithfulness_baselines = 0
    old = {f"{e['source']}|{e['target']}|{e['kind']}" for e in w.graph["edges"]}
    key = next(k for k in sorted(old) if k.endswith("|attention")  # not a self-edge: its source is another token
               and k.split("|")[0].split("_")[1] != k.split("|")[1].split("_")[1])
    w.selection = {"edge": key}
    assert w.panel["type"] == "attention"
    w.targets = [int(key.split("|")[0].split("_")[1])]  # the edge's source as the target: no edge reaches it
    new = {f"{e['source']}|{e['target']}|{e['kind']}" for e in w.graph["edges"]}
    assert key not in new
    assert w.selection == {} and w.panel == {} and w.panel_maps == b""
    node = w.graph["nodes"][0]["name"]  # a selection the new graph keeps is refilled, not dropped
    w.selection = {"node": node}
    w.threshold = 0.05
    assert w.selection == {"node": node} and w.panel["node"] == node


def test_outputs_are_the_top_prediction_after_every_token(trace):
    from ltt import interpret

    out = outputs(trace)
    assert len(out) == len(trace.token_ids)
    top = interpret.top_tokens(trace, f"I{len(trace.layers) - 1}_3", k=1)
    assert out[3]["token"] == top.tokens[0].token and abs(out[3]["prob"] - top.tokens[0].prob) < 1e-6


# -- in the browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(trace, tmp_path_factory):
    from ltt.report import to_html

    path = tmp_path_factory.mktemp("page") / "report.html"
    to_html(trace, path, threshold=0.02)
    return path


def _open(pg, path):
    pg.goto(pathlib.Path(path).as_uri())
    pg.wait_for_selector("svg.ltt-svg[data-edges]")
    pg.wait_for_timeout(150)


def test_token_labels_stay_visible_after_scrolling(new_page, report, trace):
    pg = new_page(1400, 420)
    _open(pg, report)
    pg.evaluate("() => window.scrollTo(0, document.querySelector('.ltt-graph').getBoundingClientRect().top + window.scrollY + 120)")
    pg.wait_for_timeout(100)
    graph_top = pg.eval_on_selector(".ltt-graph", "e => e.getBoundingClientRect().top")
    assert graph_top < 0  # the graph's top is scrolled out of view
    assert pg.locator(".ltt-colbar").count() == 1, pg.errors
    labels = pg.eval_on_selector_all(".ltt-colbar-label", "els => els.map(e => [e.textContent, e.getBoundingClientRect().top, e.dataset.token])")
    under = pg.eval_on_selector(".ltt-controls", "e => getComputedStyle(e).position === 'sticky' ? e.getBoundingClientRect().bottom : 0")
    assert labels and all(under - 1 <= top < under + 30 for _, top, _ in labels), (under, labels)  # at the viewport's top, under the sticky controls
    # a repeated token carries its position (" Jo" "hn" twice here), the others do not
    repeated = {t for t, tok in enumerate(trace.tokens) if trace.tokens.count(tok) > 1}
    assert repeated
    shown = {int(t): text for text, _, t in labels}
    assert set(shown) & repeated and set(shown) - repeated
    for t, text in shown.items():
        assert text.startswith(f"{t}:") == (t in repeated), (t, text)
    pg.check(".ltt-numbers")  # on demand: every label numbered
    pg.wait_for_timeout(50)
    texts = pg.eval_on_selector_all(".ltt-colbar-label", "els => els.map(e => [e.dataset.token, e.textContent])")
    assert all(text.startswith(f"{t}:") for t, text in texts)


def test_every_output_marker_hover_says_the_prediction_and_its_probability(page, report, trace):
    _open(page, report)
    out = outputs(trace)
    for t in (0, 4, len(trace.token_ids) - 1):
        page.hover(f'rect.ltt-out[data-output="{t}"]')
        page.wait_for_function("t => document.querySelector('.ltt-tooltip').textContent.includes(`token ${t}:`)", arg=t)
        tip = page.inner_text(".ltt-tooltip")
        assert f"probability {out[t]['prob']:.3f}" in tip, tip
        assert "predicts" in tip
        label = page.get_attribute(f'rect.ltt-out[data-output="{t}"]', "aria-label")
        assert f"(p {out[t]['prob']:.3f})" in label


def test_report_figure_says_which_target_it_holds_for_and_stale_is_marked(page, report, trace):
    T = len(trace.token_ids)
    _open(page, report)
    faith = page.locator(".ltt-faithfulness")
    assert faith.get_attribute("data-state") == "current" and "keeps" in faith.inner_text()
    page.click('rect.ltt-out[data-output="3"]')
    page.wait_for_function("() => document.querySelector('.ltt-faithfulness').dataset.state === 'other-targets'")
    assert f"holds for target {T - 1}" in faith.inner_text()
    page.evaluate("() => window.__ltt.model.apply({ faithfulness_state: 'computing' })")
    assert faith.get_attribute("data-state") == "stale"
    assert faith.inner_text().startswith("stale")


def test_panel_cleared_after_a_target_change_in_the_report(page, report, trace):
    _open(page, report)
    key = page.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")[-1]
    page.focus(f'[data-edge="{key}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector(".ltt-head")
    page.click('rect.ltt-out[data-output="1"]')
    page.wait_for_function("() => !document.querySelector('.ltt-head') && !!document.querySelector('.ltt-help')")
    assert page.evaluate("() => window.__ltt.model.get('selection')") == {}


def _contrast(pg, a, b):
    return pg.evaluate("""([a, b]) => {
        const lum = (c) => { const [r, g, bb] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * bb; };
        const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); }""", [a, b])


def map_cells(pg):
    """Each open head map's masked zero cell (row 0, last column) and its most intense cell (the
    farthest from that zero), as painted."""
    return pg.eval_on_selector_all(".ltt-heatmap-canvas", """cs => cs.map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const z = 4 * (c.width - 1);
        let hi = null, best = -1;
        for (let i = 0; i < d.length; i += 4) {
          const dist = Math.abs(d[i] - d[z]) + Math.abs(d[i + 1] - d[z + 1]) + Math.abs(d[i + 2] - d[z + 2]);
          if (dist > best) { best = dist; hi = [d[i], d[i + 1], d[i + 2]]; } }
        return { zero: [d[z], d[z + 1], d[z + 2]], top: hi, w: c.width }; })""")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_head_maps_follow_the_scheme_with_3_to_1_marks(new_page, report, scheme):
    pg = new_page(1400, 900, color_scheme=scheme)
    _open(pg, report)
    key = pg.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")[-1]
    pg.focus(f'[data-edge="{key}"]')
    pg.keyboard.press("Enter")
    pg.wait_for_selector(".ltt-heatmap-canvas")
    rgb = lambda css: [int(float(v)) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3]]  # noqa: E731
    bg = rgb(pg.evaluate("() => getComputedStyle(document.querySelector('.ltt-root')).backgroundColor"))
    assert (sum(bg) < 3 * 80) == (scheme == "dark"), bg
    cells = map_cells(pg)
    assert len(cells) == 2
    for c in cells:  # the upper-right cell is masked (zero): it is the background, not white in the dark
        assert _contrast(pg, c["zero"], bg) < 1.1, (scheme, c)
        assert _contrast(pg, c["top"], bg) >= 3.0, (scheme, c)
    outline = rgb(pg.eval_on_selector(".ltt-map-row", "e => getComputedStyle(e).outlineColor"))
    assert _contrast(pg, outline, bg) >= 3.0, (scheme, outline)


# the colours that draw marks: edges and nodes by kind, the target, the markers, the diff's change
# marks and the panels' up/down numbers
MARK_COLOURS = ("--ltt-attn", "--ltt-resid", "--ltt-ffn", "--ltt-emb", "--ltt-state", "--ltt-target", "--ltt-marker",
                "--ltt-rose", "--ltt-fell", "--ltt-appeared", "--ltt-vanished", "--ltt-up", "--ltt-down")


def mark_contrasts(pg, root=".ltt-root"):
    """Each mark colour of the view's theme against the view's background, as the browser resolves them."""
    colours = pg.evaluate("""([sel, names]) => { const root = document.querySelector(sel);
        const rgb = (css) => css.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const probe = document.createElement('span'); root.append(probe); const out = {};
        for (const n of names) { probe.style.color = `var(${n})`; out[n] = rgb(getComputedStyle(probe).color); }
        probe.remove(); out.bg = rgb(getComputedStyle(root).backgroundColor); return out; }""", [root, list(MARK_COLOURS)])
    bg = colours.pop("bg")
    return bg, {name: _contrast(pg, c, bg) for name, c in colours.items()}


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_mark_colour_keeps_3_to_1_in_either_scheme(new_page, report, scheme):
    pg = new_page(1400, 900, color_scheme=scheme)
    _open(pg, report)
    bg, contrasts = mark_contrasts(pg)
    assert (sum(bg) < 3 * 80) == (scheme == "dark"), bg
    assert pg.evaluate("() => document.querySelector('.ltt-root').classList.contains('ltt-dark')") == (scheme == "dark")
    low = {n: round(c, 2) for n, c in contrasts.items() if c < 3.0}
    assert not low, (scheme, low)


def test_switching_the_scheme_repaints_the_accents_and_the_maps(new_page, report):
    """The reader switches to dark with the page open: the view turns dark, its accents keep 3:1
    and an open head map is repainted from the new background (its pixels are not left light)."""
    pg = new_page(1400, 900, color_scheme="light")
    _open(pg, report)
    key = pg.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")[-1]
    pg.focus(f'[data-edge="{key}"]')
    pg.keyboard.press("Enter")
    pg.wait_for_selector(".ltt-heatmap-canvas")
    zero = "() => { const c = document.querySelector('.ltt-heatmap-canvas'); return [...c.getContext('2d').getImageData(c.width - 1, 0, 1, 1).data].slice(0, 3); }"
    assert sum(pg.evaluate(zero)) > 3 * 200  # light: the masked cell is the white background
    pg.emulate_media(color_scheme="dark")
    pg.wait_for_function("() => document.querySelector('.ltt-root').classList.contains('ltt-dark')")
    pg.wait_for_selector(".ltt-heatmap-canvas")
    bg, contrasts = mark_contrasts(pg)
    assert sum(bg) < 3 * 80 and not {n: c for n, c in contrasts.items() if c < 3.0}, contrasts
    assert _contrast(pg, pg.evaluate(zero), bg) < 1.1


def test_column_labels_never_overlap_and_the_target_keeps_its_own(new_page, report, trace):
    pg = new_page(760, 700)
    _open(pg, report)
    pg.check(".ltt-numbers")  # every label numbered: longer labels than the columns are wide
    pg.wait_for_timeout(50)
    boxes = pg.eval_on_selector_all(".ltt-colbar-label", """els => els.map(e => { const r = e.getBoundingClientRect();
        return [Number(e.dataset.token), r.left, r.right]; }).sort((a, b) => a[1] - b[1])""")
    assert len(boxes) > 2
    assert all(a[2] <= b[1] + 0.5 for a, b in zip(boxes, boxes[1:])), boxes
    assert len(boxes) < len(trace.tokens)  # some left out, not squeezed
    assert len(trace.tokens) - 1 in {t for t, _, _ in boxes}  # the target's label is always there


def test_labels_and_panel_pinned_by_hand_where_sticky_cannot_hold(new_page, report):
    """An ancestor that clips without scrolling (as JupyterLab's output area does) defeats
    position: sticky; the view then places its controls, token labels and side panel itself."""
    pg = new_page(1400, 420)
    _open(pg, report)
    pg.evaluate("() => { document.getElementById('ltt-app').style.overflowX = 'auto'; }")
    pg.evaluate("() => window.scrollTo(0, document.querySelector('.ltt-graph').getBoundingClientRect().top + window.scrollY + 120)")
    pg.wait_for_timeout(150)
    assert pg.eval_on_selector(".ltt-graph", "e => e.getBoundingClientRect().top") < 0
    at = pg.evaluate("""() => { const r = (s) => document.querySelector(s).getBoundingClientRect();
        return { controls: r('.ltt-controls').top, under: r('.ltt-controls').bottom, bar: r('.ltt-colbar').bottom,
                 panel: r('.ltt-panel').top, labels: [...document.querySelectorAll('.ltt-colbar-label')].map(e => e.getBoundingClientRect().top) }; }""")
    assert abs(at["controls"]) < 2, at  # the controls at the viewport's top
    assert at["labels"] and all(at["under"] - 1 <= t < at["under"] + 30 for t in at["labels"]), at
    assert abs(at["panel"] - at["bar"]) <= 1, at  # the (short) help panel right under the labels
