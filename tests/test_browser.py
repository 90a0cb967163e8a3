"""The front end in a real browser: Debian's chromium driven by Playwright over exported reports.

Needs ``apt-get install chromium`` and ``pip install playwright`` (never ``playwright install``:
the system browser is used); without them the module fails and says what to install. Screenshots go to
``artifacts/`` (gitignored).
"""

from __future__ import annotations

import pathlib
from types import SimpleNamespace

import numpy as np
import pytest



from conftest import assert_draws, visible_token  # noqa: E402
from ltt.buffers import PostNorm
from ltt import interpret  # noqa: E402
from ltt.report import to_html  # noqa: E402

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts"
PROMPT = "When Mary and John went to the store, John gave a drink to"
EVIL = '<img src=x onerror=alert(1)></script><!--<b onclick="__pwned=1">'
EXPORTED = 0.02


@pytest.fixture(scope="module")
def trace(tiny_model):
    return tiny_model("llama").trace(PROMPT)


@pytest.fixture(scope="module")
def report(trace, tmp_path_factory):
    T = len(trace.token_ids)
    path = tmp_path_factory.mktemp("report") / "report.html"
    to_html(trace, path, threshold=EXPORTED, targets=[T - 4, T - 1])
    return path


def _open(page, path):
    page.goto(pathlib.Path(path).as_uri())
    page.wait_for_selector("svg.ltt-svg[data-edges]")
    page.wait_for_timeout(100)


def _set_threshold(page, value, shown=None):
    """Type a threshold into the number box; wait until the drawn graph is at ``shown``."""
    page.fill("input.ltt-threshold", str(value))
    page.dispatch_event("input.ltt-threshold", "change")
    page.wait_for_function("v => document.querySelector('svg.ltt-svg').dataset.threshold === String(v)",
                           arg=value if shown is None else shown)


def _click_edge(page, key):
    """A real mouse click on the middle of an edge's drawn path."""
    x, y = page.eval_on_selector(f'[data-edge="{key}"]', """p => {
        const pt = p.getPointAtLength(p.getTotalLength() / 2);
        const m = p.getScreenCTM(); return [pt.x * m.a + pt.y * m.c + m.e, pt.x * m.b + pt.y * m.d + m.f]; }""")
    page.mouse.click(x, y)


def test_report_draws_exactly_the_graph(page, report, trace):
    T = len(trace.token_ids)
    _open(page, report)
    g = trace.graph(threshold=EXPORTED, targets=[T - 4, T - 1])
    assert_draws(page, g)
    kinds = page.eval_on_selector_all("[data-edge]", "els => els.map(e => e.getAttribute('class'))")
    assert {"ltt-edge ltt-attention", "ltt-edge ltt-residual", "ltt-edge ltt-ffn"} <= set(kinds)
    labels = page.eval_on_selector_all(".ltt-axis-x text", "els => els.map(e => e.textContent)")
    assert labels and all(lbl for lbl in labels)
    facts = page.inner_text(".ltt-facts")
    for word in ("layers 2", "heads 4", "d_model 32", f"vocabulary {trace.model.vocab_size}", f"tokens {T}"):
        assert word in facts
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"))


def test_threshold_moves_up_offline_exactly_as_trace_graph(page, report, trace):
    T = len(trace.token_ids)
    targets = [T - 4, T - 1]
    _open(page, report)
    for thr in (0.03, 0.05, 0.08, 0.2):
        _set_threshold(page, thr)
        assert_draws(page, trace.graph(threshold=thr, targets=targets))
    page.click("input.ltt-renormalize")
    page.wait_for_timeout(200)
    assert_draws(page, trace.graph(threshold=0.2, renormalize=False, targets=targets))
    for thr in (0.02, 0.06):
        _set_threshold(page, thr)
        assert_draws(page, trace.graph(threshold=thr, renormalize=False, targets=targets))
    # one of the exported targets on its own: a subset re-prunes offline too
    page.fill("input.ltt-targets", str(T - 4))
    page.dispatch_event("input.ltt-targets", "change")
    page.wait_for_timeout(200)
    assert_draws(page, trace.graph(threshold=0.06, renormalize=False, targets=[T - 4]))
    # below the exported threshold, down to the report's floor (0.01): still exact offline
    _set_threshold(page, 0.01)
    assert_draws(page, trace.graph(threshold=0.01, renormalize=False, targets=[T - 4]))
    assert page.inner_text(".ltt-notice").strip() == ""
    page.click("input.ltt-renormalize")
    page.wait_for_timeout(200)
    assert_draws(page, trace.graph(threshold=0.01, renormalize=True, targets=[T - 4]))
    # below the floor: the page says so and shows the floor's graph
    _set_threshold(page, 0.005, shown=0.01)
    assert "floor" in page.inner_text(".ltt-notice")
    assert_draws(page, trace.graph(threshold=0.01, targets=[T - 4]))
    assert page.is_disabled("button.ltt-run")


def test_attention_edge_click_shows_the_heads_panel(page, report, trace):
    T = len(trace.token_ids)
    _open(page, report)
    keys = page.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")
    assert keys
    key = keys[-1]
    _click_edge(page, key)
    page.wait_for_selector(".ltt-head")
    assert page.evaluate("() => window.__ltt.model.get('selection').edge") == key
    src, dst, _ = key.split("|")
    layer, target, source = int(dst[1:].split("_")[0]), int(dst.split("_")[1]), int(src.split("_")[1])
    eh = interpret.edge_heads(trace, layer, target, source)
    rows = page.eval_on_selector_all(".ltt-head", "els => els.map(e => [Number(e.dataset.head), e.title])")
    assert [h for h, _ in rows] == [h.head for h in eh.heads]  # largest share first, as edge_heads
    shares = {h.head: h.share for h in eh.heads}
    for h, title in rows:
        assert float(title.split("share ")[1]) == pytest.approx(shares[h], rel=1e-5, abs=1e-7)
    top = eh.heads[0].head
    assert page.get_attribute(".ltt-head-selected", "data-head") == str(top)
    assert page.eval_on_selector_all(".ltt-heatmap-canvas", "els => els.map(e => e.dataset.map)") == [
        "attention pattern", "contribution map"]
    hv = interpret.head_view(trace, layer, top, target)
    lists = page.eval_on_selector_all(".ltt-effects", """els => els.map(e => ['.ltt-up', '.ltt-down'].map(
        c => [...e.querySelectorAll(c + ' .ltt-tok')].map(x => x.textContent)))""")
    block = interpret.promoted(trace, layer, target, block="attn")
    assert lists == [  # the selected head's view, then the whole block's
        [[visible_token(t.token) for t in hv.promoted.promoted], [visible_token(t.token) for t in hv.promoted.suppressed]],
        [[visible_token(t.token) for t in block.promoted], [visible_token(t.token) for t in block.suppressed]],
    ]
    # another head: the bars stay, its own view replaces the first one's
    other = eh.heads[1].head
    page.click(f'.ltt-head[data-head="{other}"]')
    page.wait_for_selector(f'.ltt-head-selected[data-head="{other}"]')
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_heads.png"))
    # the embedded maps are the head's attention pattern and contribution map, to 8 bits
    maps = page.evaluate("""() => { const m = window.__ltt.model;
        return [m.get('panel_maps_shape'), Array.from(m.get('panel_maps'))]; }""")
    assert maps[0] == [2, T, T]
    hv = interpret.head_view(trace, layer, other, target)
    got = np.array(maps[1], np.float32).reshape(2, T, T)
    for i, want in enumerate((hv.pattern, hv.contribution)):
        step = float(np.max(want)) / 255
        np.testing.assert_allclose(got[i], np.tril(want), rtol=0, atol=step / 2 * 1.001 + 1e-9)
    assert "8 bits per value" in page.inner_text("#ltt-precision")


def test_state_and_ffn_nodes_open_their_panels(page, report, trace):
    T = len(trace.token_ids)
    _open(page, report)
    node = f"I1_{T - 1}"
    page.click(f'[data-node="{node}"]')
    page.wait_for_selector(".ltt-table")
    for normalize in (True, False):
        want = interpret.top_tokens(trace, node, k=10, normalize=normalize)
        got = page.eval_on_selector_all(".ltt-table td.ltt-tok", "els => els.map(e => e.textContent)")
        assert got == [visible_token(t.token) for t in want.tokens]
        changes = page.eval_on_selector_all(".ltt-table tr td:last-child", "els => els.map(e => e.textContent)")
        sym = lambda c: "" if c is None else (f"▲{c}" if c > 0 else f"▼{-c}" if c < 0 else "=")  # noqa: E731
        assert changes == [sym(t.rank_change) for t in want.tokens]
        if normalize:
            page.click("input.ltt-normalize")
            page.wait_for_function("() => window.__ltt.model.get('panel').normalize === false")
    mids = page.eval_on_selector_all("[data-node^='M']", "els => els.map(e => e.dataset.node)")
    assert mids
    page.click(f'[data-node="{mids[0]}"]')
    page.wait_for_selector(".ltt-neuron")
    layer, tok = int(mids[0][1:].split("_")[0]), int(mids[0].split("_")[1])
    want = interpret.top_neurons(trace, layer, tok, k=10)
    got = page.eval_on_selector_all(".ltt-neuron", "els => els.map(e => Number(e.dataset.neuron))")
    assert got == [n.neuron for n in want.neurons]
    # hover shows exact values
    page.hover(f'[data-node="{node}"]')
    page.wait_for_selector(".ltt-tooltip", state="visible")
    assert node in page.inner_text(".ltt-tooltip")


def test_markup_in_tokens_renders_as_text(new_page, tiny_model, tmp_path):
    trace = tiny_model("llama").trace(EVIL)
    path = to_html(trace, tmp_path / "evil.html", threshold=0.01, targets="all")
    page = new_page(strict=False)
    dialogs = page.dialogs
    _open(page, path)
    page.click(f'[data-node="X0_{len(trace.token_ids) - 1}"]')
    page.wait_for_selector(".ltt-table")
    for k in range(3):  # hover a few token labels: tooltips carry token text too
        page.hover(f'.ltt-axis-x text >> nth={k}')
    page.wait_for_timeout(300)
    assert dialogs == []
    assert page.evaluate("() => window.__pwned") is None
    assert page.eval_on_selector_all("img", "els => els.length") == 0
    assert page.inner_text("#ltt-prompt") == EVIL
    labels = "".join(page.eval_on_selector_all(
        ".ltt-axis-x text", "els => els.map(e => e.textContent)"))
    assert "<" in labels and "img" in labels
    assert page.evaluate("() => window.__ltt.store.state.prompts[0]") == EVIL
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report_markup.png"))


def _synthetic_trace(T: int, L: int, seed: int = 1):
    """A trace-like object with an exact random decomposition (no model, so no panels)."""
    from ltt import _reference as ref
    from ltt.graph import build_graph

    rng = np.random.default_rng(seed)
    H, G, d, d_h, F = 4, 2, 16, 4, 8
    layers = []
    for _ in range(L):
        x = rng.standard_normal((T, d)).astype(np.float32)
        logits = rng.standard_normal((H, T, T)) * 3
        logits[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a = (a / a.sum(-1, keepdims=True)).astype(np.float32)
        values = rng.standard_normal((T, G, d_h)).astype(np.float32)
        w_o = (rng.standard_normal((H, d_h, d)) / np.sqrt(d_h)).astype(np.float32)
        mid = (x + np.einsum("hts,hsd->td", a.astype(np.float64), ref.head_vectors(values, w_o))).astype(np.float32)
        act = rng.standard_normal((T, F)).astype(np.float32)
        w_down = (rng.standard_normal((F, d)) / np.sqrt(F)).astype(np.float32)
        ffn_out = (act.astype(np.float64) @ w_down).astype(np.float32)
        layers.append(SimpleNamespace(
            parallel=False, resid_pre=x, resid_mid=mid, resid_post=(mid + ffn_out).astype(np.float32),
            attn=a, values=values, w_o=w_o, attn_bias=None, attn_norm=PostNorm(),
             ffn_out=ffn_out, act=act, w_down=w_down, ffn_bias=None,
            ffn_norm=PostNorm()))
    tr = SimpleNamespace(layers=layers, tokens=[f"tok{i}" for i in range(T)], token_ids=np.arange(T),
                         prompt="synthetic", model=None)
    tr.graph = lambda **kw: build_graph(tr, **kw)
    return tr


def test_512_tokens_by_32_layers_renders_within_a_second(page, tmp_path):
    tr = _synthetic_trace(512, 32)
    path = to_html(tr, tmp_path / "big.html", threshold=0.04, targets="all", with_panels=False)
    g = tr.graph(threshold=0.04, targets="all")
    _open(page, path)
    info = page.eval_on_selector("svg.ltt-svg", "s => ({...s.dataset})")
    assert int(info["nodes"]) == len(g.nodes) and int(info["edges"]) == len(g.edges)
    assert info["mode"] == "batched"
    times = []
    for _ in range(3):  # a full re-render: layout, draw, and two frames for the paint
        times.append(page.evaluate("""async () => {
            const m = window.__ltt.model; const g = m.get('graph'); const t0 = performance.now();
            m.set('graph', {...g}); m.save_changes();
            await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
            return performance.now() - t0; }"""))
    print(f"\n512x32 graph, {len(g.nodes)} nodes, {len(g.edges)} edges: render {min(times):.0f} ms "
          f"(runs {', '.join(f'{t:.0f}' for t in times)})")
    (ARTIFACTS).mkdir(exist_ok=True)
    (ARTIFACTS / "render_512x32.txt").write_text(
        f"nodes {len(g.nodes)} edges {len(g.edges)} render_ms {[round(t) for t in times]}\n")
    assert min(times) < 1000
    # focus a token range: the axis then shows exactly those tokens' labels
    page.fill("input.ltt-from", "100")
    page.fill("input.ltt-to", "131")
    page.click("button.ltt-focus")
    page.wait_for_timeout(200)
    shown = page.eval_on_selector_all(".ltt-axis-x text", "els => els.map(e => Number(e.dataset.token))")
    assert min(shown) >= 99 and max(shown) <= 132 and 115 in shown
    before = page.get_attribute("g.ltt-content", "transform")
    page.mouse.move(600, 400)
    page.mouse.wheel(0, -300)  # zoom
    page.wait_for_timeout(100)
    page.mouse.move(600, 400)
    page.mouse.down()
    page.mouse.move(500, 380, steps=4)  # pan
    page.mouse.up()
    page.wait_for_timeout(100)
    assert page.get_attribute("g.ltt-content", "transform") != before
    page.screenshot(path=str(ARTIFACTS / "report_512x32.png"))
    # a click in the canvas finds the node under the mouse
    page.click("button.ltt-fit")
    page.wait_for_timeout(100)


@pytest.mark.parametrize("family", ["gpt_neox", "gemma2"])
def test_other_block_shapes_draw_and_reprune_exactly(page, tiny_model, tmp_path, family):
    """Parallel blocks (GPT-NeoX: no A states) and post-branch norms with biases (Gemma 2)."""
    trace = tiny_model(family).trace(PROMPT)
    T = len(trace.token_ids)
    targets = [T - 3, T - 1]
    path = to_html(trace, tmp_path / f"{family}.html", threshold=0.01, targets=targets)
    _open(page, path)
    assert_draws(page, trace.graph(threshold=0.01, targets=targets))
    if family == "gpt_neox":
        assert not page.eval_on_selector_all("[data-node^='A']", "els => els.length")
    for thr in (0.02, 0.04, 0.1):
        _set_threshold(page, thr)
        assert_draws(page, trace.graph(threshold=thr, targets=targets))
    page.click("input.ltt-renormalize")
    for thr in (0.03, 0.07):
        _set_threshold(page, thr)
        assert_draws(page, trace.graph(threshold=thr, renormalize=False, targets=targets))
