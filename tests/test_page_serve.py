"""The page in ``ltt serve`` (real Chromium against a real server): one prompt bar (the toolbar's;
the view shows no box of its own), the panel cleared after a target change, the faithfulness
figure computed as a job and never shown as current while stale, the diff box's wording."""

from __future__ import annotations

import pytest

from test_serve import PROMPT, OTHER, Server, _open, _run, _set_threshold, _wait_shown, dirs, llama_id, server  # noqa: F401


@pytest.fixture
def page(new_page):
    return new_page(1400, 900)


def test_one_prompt_state_and_the_panel_cleared_after_a_target_change(page, server, llama_id):
    _open(page, server.url)
    _run(page, llama_id, PROMPT)
    # one prompt bar: one prompt box and one Run button on the page (the view shows none of its own)
    assert page.locator("input.ltt-prompt, input.ltt-serve-prompt").count() == 1
    assert page.locator("button.ltt-run, button.ltt-serve-run").count() == 1
    assert page.locator("#ltt-app input.ltt-prompt, #ltt-app button.ltt-run").count() == 0
    # both boxes show the prompt on screen; typing in one types in the other
    assert page.input_value(".ltt-serve-prompt") == page.input_value("input.ltt-prompt") == PROMPT
    page.fill("input.ltt-prompt", OTHER)
    page.dispatch_event("input.ltt-prompt", "input")
    assert page.input_value(".ltt-serve-prompt") == OTHER
    page.press("input.ltt-prompt", "Enter")
    _wait_shown(page, OTHER)
    page.click(".ltt-threshold")  # focus away from the boxes, then the picker goes back
    page.select_option("select.ltt-picker", "0")
    _wait_shown(page, PROMPT)
    page.wait_for_function("p => document.querySelector('.ltt-serve-prompt').value === p", arg=PROMPT)
    assert page.input_value("input.ltt-prompt") == PROMPT
    # the faithfulness figure arrives as a job and is current
    page.wait_for_function("() => document.querySelector('.ltt-faithfulness').dataset.state === 'current'")
    assert "keeps" in page.inner_text(".ltt-faithfulness")
    page.fill("input.ltt-threshold", "0.01")
    page.dispatch_event("input.ltt-threshold", "change")
    page.wait_for_function("() => document.querySelector('svg.ltt-svg').dataset.threshold === '0.01' && !document.querySelector('.ltt-serve-job')")
    # select an attention edge into the last token, then pick another target: the panel goes
    keys = page.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")
    key = next(k for k in keys if k.split("|")[0].split("_")[1] != k.split("|")[1].split("_")[1])  # not a self-edge
    page.focus(f'[data-edge="{key}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector(".ltt-head")
    src = int(key.split("|")[0].split("_")[1])
    page.click(f'rect.ltt-out[data-output="{src}"]')
    page.wait_for_function("() => !document.querySelector('.ltt-head') && !!document.querySelector('.ltt-help')")
    page.wait_for_function("() => Object.keys(window.__ltt.model.get('selection')).length === 0")
    state = page.get_attribute(".ltt-faithfulness", "data-state")
    assert state in ("stale", "current")  # recomputed for the new graph: marked stale until it is
    page.wait_for_function("() => document.querySelector('.ltt-faithfulness').dataset.state === 'current'")
    assert page.evaluate("() => window.__ltt.model.get('faithfulness_for')") == [src]


def test_the_diff_box_says_when_the_same_length_is_needed(page, server):
    _open(page, server.url)
    text = page.get_attribute(".ltt-serve-prompt-b", "placeholder")
    assert "any length" in text and "same length: compared token by token" in text


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_serve_follows_the_scheme_maps_and_marks_at_3_to_1_and_labels_stay_in_view(new_page, server, llama_id, scheme):
    """ltt serve in the reader's scheme: the page, the view and its panel dark (or light) alike;
    the head maps ramp from the background with 3:1 marks, every mark colour keeps 3:1; the token
    labels stay at the top of the viewport when the graph scrolls by."""
    from test_page import _contrast, map_cells, mark_contrasts

    page = new_page(1400, 400, color_scheme=scheme)
    _open(page, server.url)
    _run(page, llama_id, PROMPT)
    rgb = lambda css: [int(float(v)) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3]]  # noqa: E731
    body = rgb(page.evaluate("() => getComputedStyle(document.body).backgroundColor"))
    bg, contrasts = mark_contrasts(page)
    assert (sum(body) < 3 * 80) == (sum(bg) < 3 * 80) == (scheme == "dark"), (body, bg)
    assert not {n: c for n, c in contrasts.items() if c < 3.0}, contrasts
    for sel in (".ltt-serve-limits", ".ltt-serve-prompt", ".ltt-panel"):  # the toolbar's and the panel's text
        fg = rgb(page.eval_on_selector(sel, "e => getComputedStyle(e).color"))
        assert _contrast(page, fg, body if sel.startswith(".ltt-serve") else bg) >= 4.5, (scheme, sel, fg)
    # scrolled: the graph's top out of view, its token labels at the viewport's top
    page.evaluate("() => window.scrollTo(0, document.querySelector('.ltt-graph').getBoundingClientRect().top + window.scrollY + 120)")
    page.wait_for_timeout(100)
    assert page.eval_on_selector(".ltt-graph", "e => e.getBoundingClientRect().top") < 0, \
        page.evaluate("() => [document.documentElement.scrollHeight, window.innerHeight, window.scrollY]")
    under = page.eval_on_selector(".ltt-controls", "e => e.getBoundingClientRect().bottom")
    tops = page.eval_on_selector_all(".ltt-colbar-label", "els => els.map(e => e.getBoundingClientRect().top)")
    assert tops and all(0 <= under - 1 <= top < under + 30 for top in tops), (under, tops)
    page.evaluate("() => window.scrollTo(0, 0)")
    _set_threshold(page, 0.01)
    # an attention edge's maps: zero is the background, the top cell and the target row 3:1 on it
    key = page.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")[-1]
    page.focus(f'[data-edge="{key}"]')
    page.keyboard.press("Enter")
    page.wait_for_selector(".ltt-heatmap-canvas")
    cells = map_cells(page)
    assert len(cells) == 2
    for c in cells:
        assert _contrast(page, c["zero"], bg) < 1.1 and _contrast(page, c["top"], bg) >= 3.0, (scheme, c)
    outline = rgb(page.eval_on_selector(".ltt-map-row", "e => getComputedStyle(e).outlineColor"))
    assert _contrast(page, outline, bg) >= 3.0, (scheme, outline)
