"""The offline report in real Chromium: every target, lower thresholds, its size, the keyboard.

Reports of a tiny model check the page against ``trace.graph(...)``; one report of the embedded
demo model (a 150-token prompt, every target carried) checks the size bound. Chromium is
Debian's (``/usr/bin/chromium``) driven by Playwright; screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from playwright import sync_api  # noqa: E402
from conftest import chromium_path  # noqa: E402

import ltt
from ltt.export import to_html

CHROMIUM = chromium_path()
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts"
PROMPT = "When Mary and John went to the store, John gave a drink to"
LONG_PROMPT = (
    "The history of the old harbour town begins in the early middle ages, when a small group of farmers "
    "settled on the banks of the river. Over the following centuries the settlement grew into a busy market "
    "town, with merchants arriving from distant regions to trade wool, salt, timber and iron. In the fourteenth "
    "century a great fire destroyed most of the wooden houses, and the citizens rebuilt the centre in stone. "
    "The new town hall, finished in 1412, still stands on the main square today, next to the church and the "
    "covered market. Every autumn the town still holds a large fair, where farmers from the surrounding "
    "villages sell apples, cheese and honey, and children ride the old wooden carousel. When Mary and John visited the square last summer, John gave a cold drink to"
)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(20_000)
    try:
        yield pg
    finally:
        pg.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def trace(tiny_model):
    return tiny_model("llama").trace(PROMPT)


@pytest.fixture(scope="module")
def report(trace, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    return to_html(trace, path, threshold=0.04)  # every target carried, the last one shown


def _open(page, path):
    page.goto(pathlib.Path(path).as_uri())
    page.wait_for_selector("svg.ltt-svg[data-edges]")
    page.wait_for_timeout(150)


def _drawn(page):
    nodes = page.eval_on_selector_all("[data-node]", "els => els.map(e => e.dataset.node)")
    edges = page.eval_on_selector_all(
        "[data-edge]", "els => els.map(e => [e.dataset.edge, Number(e.dataset.weight)])")
    return set(nodes), {k: w for k, w in edges}


def _assert_same(page, g):
    nodes, edges = _drawn(page)
    want_nodes = {n.name for n in g.nodes}
    want_edges = {f"{e.source}|{e.target}|{e.kind}": e.weight for e in g.edges}
    assert nodes == want_nodes, (sorted(nodes - want_nodes), sorted(want_nodes - nodes))
    assert set(edges) == set(want_edges), (sorted(set(edges) - set(want_edges)), sorted(set(want_edges) - set(edges)))
    for k, w in want_edges.items():
        assert edges[k] == pytest.approx(w, abs=2e-6), k


def _wait_targets(page, targets):
    page.wait_for_function(
        "t => JSON.stringify(window.__ltt.model.get('graph').settings.targets) === JSON.stringify(t)", arg=targets)
    page.wait_for_timeout(50)


def test_every_target_switches_offline_as_trace_graph(page, report, trace):
    T = len(trace.token_ids)
    _open(page, report)
    _assert_same(page, trace.graph(threshold=0.04, targets=[T - 1]))
    for k in (0, 3, T // 2, T - 2, 5):
        page.click(f'rect.ltt-out[data-output="{k}"]')  # a real click on the output marker
        _wait_targets(page, [k])
        _assert_same(page, trace.graph(threshold=0.04, targets=[k]))
        assert page.inner_text(".ltt-notice").strip() == ""
        assert page.input_value("input.ltt-targets") == str(k)  # the box agrees with the graph
        pred = page.eval_on_selector_all("text.ltt-pred", "els => els.map(e => e.textContent)")
        assert pred and pred[0].startswith("→ ")
    # shift-click adds a second target: the union, as trace.graph gives it
    page.click(f'rect.ltt-out[data-output="{T - 1}"]', modifiers=["Shift"])
    _wait_targets(page, [5, T - 1])
    _assert_same(page, trace.graph(threshold=0.04, targets=[5, T - 1]))
    # the raw mode and a lower threshold, for a target that was never shown first
    page.click("input.ltt-renormalize")
    page.fill("input.ltt-threshold", "0.015")
    page.dispatch_event("input.ltt-threshold", "change")
    page.wait_for_function("() => document.querySelector('svg.ltt-svg').dataset.threshold === '0.015'")
    _assert_same(page, trace.graph(threshold=0.015, renormalize=False, targets=[5, T - 1]))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_targets.png"))


def test_carry_limits_the_targets(page, trace, tmp_path):
    T = len(trace.token_ids)
    path = to_html(trace, tmp_path / "few.html", threshold=0.04, carry=3)
    _open(page, path)
    carried = page.evaluate("() => window.__ltt.store.exported.carried")
    assert carried == [T - 3, T - 2, T - 1]
    page.click(f'rect.ltt-out[data-output="{T - 3}"]')
    _wait_targets(page, [T - 3])
    _assert_same(page, trace.graph(threshold=0.04, targets=[T - 3]))
    page.click('rect.ltt-out[data-output="0"]')  # not carried: said so, the graph stays valid
    page.wait_for_function("() => document.querySelector('.ltt-notice').textContent.includes('live kernel')")
    with pytest.raises(ValueError, match="carry"):
        to_html(trace, None, carry=0)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    model = ltt.load("smollm2-135m")
    trace = model.trace(LONG_PROMPT)
    path = tmp_path_factory.mktemp("demo") / "demo150.html"
    to_html(trace, path, threshold=0.04)
    return trace, path


def test_demo_report_of_150_tokens_with_every_target_fits_in_6_mb(page, demo_report):
    trace, path = demo_report
    T = len(trace.token_ids)
    assert T >= 150, T
    size = os.path.getsize(path)
    print(f"\nreport of {T} tokens x {trace.n_layers} layers, every target: {size / 1e6:.2f} MB")
    assert size <= 6_000_000
    _open(page, path)
    assert page.evaluate("() => window.__ltt.store.exported.carried.length") == T
    for k in (T - 1, T - 40):
        page.click(f'rect.ltt-out[data-output="{k}"]')
        _wait_targets(page, [k])
        _assert_same(page, trace.graph(threshold=0.04, targets=[k]))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_demo150.png"))
