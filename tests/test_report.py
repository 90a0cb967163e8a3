"""The offline report in real Chromium: every target, lower thresholds, its size, the keyboard.

Reports of a tiny model check the page against ``trace.graph(...)``; one report of the embedded
demo model (a 150-token prompt, every target carried) checks the size bound. Chromium is
Debian's (``/usr/bin/chromium``) driven by Playwright; screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import inspect
import os
import pathlib

import pytest


import ltt
from conftest import assert_draws, visible_token
from ltt.report import to_html

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


@pytest.fixture
def page(new_page):
    return new_page(1280, 860, timeout=20_000)


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


def _wait_targets(page, targets):
    page.wait_for_function(
        "t => JSON.stringify(window.__ltt.model.get('graph').settings.targets) === JSON.stringify(t)", arg=targets)
    page.wait_for_timeout(50)


def test_every_target_switches_offline_as_trace_graph(page, report, trace):
    T = len(trace.token_ids)
    _open(page, report)
    assert_draws(page, trace.graph(threshold=0.04, targets=[T - 1]))
    for k in (0, 3, T // 2, T - 2, 5):
        page.click(f'rect.ltt-out[data-output="{k}"]')  # a real click on the output marker
        _wait_targets(page, [k])
        assert_draws(page, trace.graph(threshold=0.04, targets=[k]))
        assert page.inner_text(".ltt-notice").strip() == ""
        assert page.input_value("input.ltt-targets") == str(k)  # the box agrees with the graph
        pred = page.eval_on_selector_all("text.ltt-pred", "els => els.map(e => e.textContent)")
        assert pred and pred[0].startswith("→ ")
    # shift-click adds a second target: the union, as trace.graph gives it
    page.click(f'rect.ltt-out[data-output="{T - 1}"]', modifiers=["Shift"])
    _wait_targets(page, [5, T - 1])
    assert_draws(page, trace.graph(threshold=0.04, targets=[5, T - 1]))
    # the raw mode and a lower threshold, for a target that was never shown first
    page.click("input.ltt-renormalize")
    page.fill("input.ltt-threshold", "0.015")
    page.dispatch_event("input.ltt-threshold", "change")
    page.wait_for_function("() => document.querySelector('svg.ltt-svg').dataset.threshold === '0.015'")
    assert_draws(page, trace.graph(threshold=0.015, renormalize=False, targets=[5, T - 1]))
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
    assert_draws(page, trace.graph(threshold=0.04, targets=[T - 3]))
    page.click('rect.ltt-out[data-output="0"]')  # not carried: said so, the graph stays valid
    page.wait_for_function("() => document.querySelector('.ltt-notice').textContent.includes('live kernel')")
    assert page.input_value("input.ltt-targets") == str(T - 3)  # the box says what is drawn
    assert_draws(page, trace.graph(threshold=0.04, targets=[T - 3]))
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
        assert_draws(page, trace.graph(threshold=0.04, targets=[k]))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_demo150.png"))


def test_keyboard_operates_nodes_edges_markers_and_head_rows(page, trace, tmp_path):
    T = len(trace.token_ids)
    _open(page, to_html(trace, tmp_path / "keys.html", threshold=0.01))
    # Tab from the last control reaches the graph's elements
    page.focus("input.ltt-all-positions")
    page.keyboard.press("Tab")
    first = page.evaluate("() => { const d = document.activeElement.dataset; return d.output ?? d.edge ?? d.node ?? null; }")
    assert first is not None
    # a node: Enter opens its panel
    node = f"I1_{T - 1}"
    page.focus(f'[data-node="{node}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector(".ltt-panel .ltt-table")
    assert node in page.inner_text(".ltt-panel-title")
    assert page.get_attribute(f'[data-node="{node}"]', "aria-label").startswith(f"{node}, after FFN")
    # beside its logit lens, what the block before the state promoted (the FFN block of layer 1)
    from ltt import interpret

    block = interpret.promoted(trace, 1, T - 1, block="ffn", k=5)
    effects = page.eval_on_selector(".ltt-panel .ltt-effects", """e => [e.querySelector('.ltt-sub').textContent,
        [...e.querySelectorAll('.ltt-up .ltt-tok')].map(x => x.textContent)]""")
    assert "FFN block of layer 1" in effects[0]
    assert effects[1] == [visible_token(t.token) for t in block.promoted]
    # an attention edge: Space opens its heads; a head row: Enter selects it
    key = page.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")[-1]
    page.focus(f'[data-edge="{key}"]')
    page.keyboard.press("Space")
    page.wait_for_selector(".ltt-head")
    rows = page.eval_on_selector_all(".ltt-head", "els => els.map(e => Number(e.dataset.head))")
    assert page.get_attribute(".ltt-head-selected", "data-head") == str(rows[0])
    page.focus(f'.ltt-head[data-head="{rows[1]}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector(f'.ltt-head-selected[data-head="{rows[1]}"]')
    assert page.evaluate("() => window.__ltt.model.get('selection').head") == rows[1]
    assert page.get_attribute(f'.ltt-head[data-head="{rows[1]}"]', "aria-selected") == "true"
    page.keyboard.press("Tab")  # the next head row is reachable too
    assert page.evaluate("() => document.activeElement.classList.contains('ltt-head')")
    # a target marker: Enter makes it the target
    page.focus('rect.ltt-out[data-output="2"]')
    page.keyboard.press("Enter")
    _wait_targets(page, [2])
    assert_draws(page, trace.graph(threshold=0.01, targets=[2]))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_keyboard.png"))


def _contrast(page, a, b):
    """WCAG contrast ratio of two CSS colours as the page resolves them."""
    return page.evaluate("""([a, b]) => {
        const rgb = (c) => { const el = document.createElement('div'); el.style.color = c; document.body.append(el);
            const m = getComputedStyle(el).color.match(/[\\d.]+/g).map(Number); el.remove(); return m; };
        const lum = (c) => { const [r, g, b] = rgb(c).slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
        const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); }""", [a, b])


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_report_follows_the_colour_scheme_with_3_to_1_marks(new_page, report, scheme):
    pg = new_page(1280, 860, strict=False, color_scheme=scheme)
    _open(pg, report)
    var = lambda name: pg.evaluate(  # noqa: E731
        "n => getComputedStyle(document.querySelector('.ltt-root')).getPropertyValue(n).trim()", name)
    bg = pg.evaluate("() => getComputedStyle(document.querySelector('.ltt-root')).backgroundColor")
    dark = sum(map(int, bg[bg.index("(") + 1:bg.index(")")].split(",")[:3])) < 3 * 80
    assert dark == (scheme == "dark"), bg
    for mark in ("--ltt-attn", "--ltt-resid", "--ltt-ffn", "--ltt-emb", "--ltt-state", "--ltt-target", "--ltt-marker"):
        assert _contrast(pg, var(mark), var("--ltt-bg")) >= 3.0, (scheme, mark, var(mark))
    stroke = pg.eval_on_selector("[data-node^='I']", "e => getComputedStyle(e).stroke")
    assert pg.evaluate("c => c", stroke) and _contrast(pg, stroke, bg) >= 3.0
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"report_{scheme}.png"))


def test_layout_uses_the_width_from_800_px(new_page, report):
    for width in (800, 1000, 1600):
        pg = new_page(width, 800, strict=False)
        _open(pg, report)
        svg_w = pg.eval_on_selector("svg.ltt-svg", "s => s.getBoundingClientRect().width")
        page_w = pg.evaluate("() => document.documentElement.scrollWidth")
        assert page_w <= width, (width, page_w)  # nothing sticks out sideways
        assert svg_w >= 0.5 * (width - 60), (width, svg_w)  # the graph takes the room it is given
        # the controls stay in reach: scrolled down a tall page, they are still on screen
        pg.mouse.wheel(0, 0)
        pg.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        top = pg.eval_on_selector(".ltt-controls", "e => e.getBoundingClientRect().top")
        assert -1 <= top < 800, top


def test_map_budget_keeps_the_heads_with_the_largest_shares(trace):
    import numpy as np

    from ltt import interpret
    from ltt.report import report_data

    T = len(trace.token_ids)
    L, H = trace.n_layers, trace.model.n_heads
    per_head = 2 * T * (T + 1) // 2
    store = report_data(trace, threshold=0.04, max_map_bytes=3 * per_head + 1)
    kept = set(store["offline"]["maps"])
    shares = {f"{l}:{h}": float(np.max(interpret.head_view(trace, l, h).contribution)) for l in range(L) for h in range(H)}
    want = set(sorted(shares, key=lambda k: -shares[k])[:3])
    assert kept == want, (kept, want)
    assert f"3 of the {L * H} heads'" in store["precision"]
    full = report_data(trace, threshold=0.04)
    assert len(full["offline"]["maps"]) == L * H and "every head's" in full["precision"]
    none = report_data(trace, threshold=0.04, max_map_bytes=0)
    assert not none["offline"]["maps"] and "attention pattern" not in none["precision"]


def test_to_html_names_an_unknown_keyword_before_any_work(trace, monkeypatch, tmp_path):
    from ltt import report

    calls = []
    monkeypatch.setattr(report, "report_data", lambda *a, **k: calls.append(1))
    for call in (lambda: to_html(trace, tmp_path / "x.html", thresold=0.1),
                 lambda: trace.to_html(tmp_path / "x.html", thresold=0.1),
                 lambda: to_html(trace, tmp_path / "x.html", _progress=None)):
        with pytest.raises(TypeError, match="to_html: .*unexpected keyword argument '(thresold|_progress)'"):
            call()
    with pytest.raises(TypeError, match="show\\(\\) got an unexpected keyword argument 'thresold'"):
        trace.show(thresold=0.1)
    assert calls == [] and os.listdir(tmp_path) == []
    assert "max_extra_states" in str(inspect.signature(to_html))  # report_data's keywords, for help()


def test_a_measured_faithfulness_is_carried_instead_of_a_rerun(trace, monkeypatch):
    from ltt import faithfulness as F
    from ltt.report import report_data

    g = trace.graph(threshold=0.04)
    measured = trace.faithfulness(g, baselines=3)
    other = trace.faithfulness(trace.graph(threshold=0.04, targets=[len(trace.token_ids) - 2]), baselines=1)
    mean = trace.faithfulness(g, baselines=1, ablation="mean")
    calls = []
    real = F.faithfulness
    monkeypatch.setattr(F, "faithfulness", lambda *a, **k: calls.append(1) or real(*a, **k))
    store = report_data(trace, threshold=0.04, with_panels=False, faithfulness=measured)
    assert calls == [] and store["state"]["faithfulness"] == f"at threshold 0.04: {F.summary_line(measured)}"
    assert store["state"]["faithfulness_for"] == [len(trace.token_ids) - 1]
    for bad, err in ((other, ValueError), ("0.9", TypeError), (mean, ValueError)):
        with pytest.raises(err, match="faithfulness"):
            report_data(trace, threshold=0.04, with_panels=False, faithfulness=bad)
    assert calls == []
