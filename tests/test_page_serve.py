"""The page in ``ltt serve`` (real Chromium against a real server): one prompt bar (the toolbar's;
the view shows no box of its own), the panel cleared after a target change, the faithfulness
figure computed as a job and never shown as current while stale, the diff box's wording."""

from __future__ import annotations

import pytest

from test_serve import PROMPT, OTHER, Server, _open, _run, _wait_shown, dirs, llama_id, server  # noqa: F401


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
