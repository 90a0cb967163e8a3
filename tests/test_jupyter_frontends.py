"""The widget in real Jupyter front ends: JupyterLab (``/lab/tree/<nb>``) and Notebook 7
(``/notebooks/<nb>``). For each, its own server on 127.0.0.1 (random free port, token auth, a temp
root), a notebook opened in Debian's chromium, a cell that shows a trace, a click on the graph
answered by the kernel, a threshold change that comes back re-pruned.

Needs ``pip install jupyterlab "notebook>=7" playwright`` and ``apt-get install chromium``
(``make test`` installs them). The server (and the kernels it started) is always stopped, by its
own process group. VS Code's notebook front end is not covered here: it cannot run headless.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import anywidget  # noqa: E402,F401  (the test extra has all of these: pip install -e '.[test]')
import ipykernel  # noqa: E402,F401
import jupyterlab  # noqa: E402,F401
from playwright import sync_api  # noqa: E402

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts"
REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = "widget.ipynb"


@dataclasses.dataclass(frozen=True)
class Frontend:
    name: str  # the test id and the screenshot's name
    module: str  # the server is ``python -m <module>``
    page: str  # where the notebook opens, relative to the server's root URL
    args: tuple[str, ...] = ()  # options only this front end's app knows
    theme: str | None = None  # a JupyterLab theme set in the user settings before the page opens


FRONTENDS = [
    Frontend("jupyterlab", "jupyterlab", f"/lab/tree/{NOTEBOOK}", ("--LabApp.news_url=",)),
    Frontend("notebook7", "notebook", f"/notebooks/{NOTEBOOK}"),
    Frontend("jupyterlab_dark", "jupyterlab", f"/lab/tree/{NOTEBOOK}", ("--LabApp.news_url=",), "JupyterLab Dark"),
]


def _require(frontend: Frontend) -> None:
    """Notebook 7 is a per-test requirement, so that a missing package fails only its own test."""
    if frontend.module != "notebook":
        return
    try:
        import notebook
    except ImportError:
        pytest.fail('no notebook package: pip install "notebook>=7" (the test extra has it)', pytrace=False)
    if int(notebook.__version__.split(".")[0]) < 7:
        pytest.fail(f"notebook {notebook.__version__} is not Notebook 7: pip install \"notebook>=7\"",
                    pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(model_dir: str) -> dict:
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import ltt\n"
        "model = ltt.load(%r)\n"
        "w = model.trace('When Mary and John went to the store, John gave a drink to').show(threshold=0.02)\n"
        "w"
    ) % (str(REPO), model_dir)
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                   "outputs": [], "source": code}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.loads(r.read())


@pytest.fixture(params=FRONTENDS, ids=lambda f: f.name)
def server(request, tmp_path, tiny_dir):
    """``(frontend, base url, token)`` of a fresh server of that front end, stopped afterwards."""
    frontend: Frontend = request.param
    _require(frontend)
    root = tmp_path / "root"
    root.mkdir()
    (root / NOTEBOOK).write_text(json.dumps(_notebook(tiny_dir("llama"))))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    # both front ends read JupyterLab's settings: no news or update pop-ups over the notebook
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    if frontend.theme:
        (settings / "themes.jupyterlab-settings").write_text(json.dumps({"theme": frontend.theme}))
    log_path = tmp_path / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", frontend.module, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.port_retries=0", "--ServerApp.shutdown_no_activity_timeout=600", *frontend.args]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{frontend.name} exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{frontend.name} did not answer within 90 s")
            time.sleep(0.5)
        yield frontend, url, token
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()


def _wait_kernel_connected(url: str, token: str, timeout: float = 90) -> None:
    """Until the notebook's kernel is idle with the page's websocket on it.

    Asked of the server's REST API, not of the UI: JupyterLab's status bar says "Idle" but
    Notebook 7 has no status bar, so this is the one signal both front ends share."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            sessions = _get_json(f"{url}/api/sessions?token={token}")
        except OSError:
            sessions = []
        for s in sessions:
            kernel = s.get("kernel") or {}
            if s.get("path") == NOTEBOOK:
                seen = kernel
                if kernel.get("execution_state") == "idle" and kernel.get("connections", 0) >= 1:
                    return
        time.sleep(0.3)
    raise AssertionError(f"the notebook's kernel was not idle and connected within {timeout} s: {seen}")


def test_widget_renders_and_answers_clicks(server, new_page):
    frontend, url, token = server
    page = new_page(1500, 1000, timeout=60_000, strict=False)  # JupyterLab's own errors are not ours
    errors = page.errors

    def fail(why: str):
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{frontend.name}_failed.png"))
        cell = page.inner_text(".jp-Cell") if page.query_selector(".jp-Cell") else "(no cell)"
        raise AssertionError(f"{frontend.name}: {why}; the cell shows: {cell[-1500:]!r}; "
                             f"page errors: {errors}") from None

    page.goto(f"{url}{frontend.page}?token={token}")
    # both front ends render the notebook with JupyterLab's cell widgets and classes
    page.wait_for_selector(".jp-Notebook .jp-Cell .jp-InputArea-editor", timeout=90_000)
    _wait_kernel_connected(url, token)
    for attempt in range(3):
        page.click(".jp-Notebook .jp-Cell >> nth=0")
        page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor >> nth=0")
        page.keyboard.press("Shift+Enter")
        try:  # "[*]" while running, "[1]" when done
            page.wait_for_function(
                "() => !/\\[\\s*\\]/.test(document.querySelector('.jp-Cell .jp-InputPrompt').textContent)",
                timeout=15_000)
            break
        except sync_api.TimeoutError:
            continue
    else:
        fail("the cell never started running after three Shift+Enter")

    # the widget renders: the graph's SVG, with node marks the kernel's graph named
    try:
        page.wait_for_selector("svg.ltt-svg[data-edges]", timeout=120_000)
    except sync_api.TimeoutError:
        fail("no widget")
    page.wait_for_timeout(500)
    nodes = page.eval_on_selector_all("[data-node]", "els => els.map(e => e.dataset.node)")
    assert nodes and any(n.startswith("I1_") for n in nodes), nodes
    before = page.eval_on_selector(
        "svg.ltt-svg", "s => ({threshold: s.dataset.threshold, nodes: +s.dataset.nodes, edges: +s.dataset.edges})")
    assert before["threshold"] == "0.02" and before["edges"] > 0, before

    # a click on a node is answered by the kernel: the panel's table comes back
    target = sorted(n for n in nodes if n.startswith("I1_"))[-1]
    page.click(f'[data-node="{target}"]')
    try:
        page.wait_for_selector(".ltt-panel .ltt-table", timeout=60_000)
    except sync_api.TimeoutError:
        fail(f"no panel after a click on {target}")
    assert target in page.inner_text(".ltt-panel-title")
    assert page.eval_on_selector_all(".ltt-panel .ltt-table tr", "rows => rows.length") > 1

    # the kernel re-prunes: a higher threshold comes back as a new, smaller graph
    page.fill("input.ltt-threshold", "0.3")
    page.dispatch_event("input.ltt-threshold", "change")
    try:
        page.wait_for_function("() => document.querySelector('svg.ltt-svg').dataset.threshold === '0.3'")
    except sync_api.TimeoutError:
        fail("the threshold change did not come back")
    after = page.eval_on_selector(
        "svg.ltt-svg", "s => ({threshold: s.dataset.threshold, nodes: +s.dataset.nodes, edges: +s.dataset.edges})")
    assert after["edges"] < before["edges"] and after["nodes"] <= before["nodes"], (before, after)

    # the token labels stay at the top of the notebook's viewport when the graph scrolls by
    page.set_viewport_size({"width": 1500, "height": 520})  # a graph taller than the view
    page.wait_for_timeout(300)
    sticky = page.evaluate("""() => {
        const graph = document.querySelector('.ltt-graph');
        let box = graph.parentElement;
        while (box && !(/(auto|scroll)/.test(getComputedStyle(box).overflowY) && box.scrollHeight > box.clientHeight)) box = box.parentElement;
        if (!box) return null;
        box.scrollTop += graph.getBoundingClientRect().top - box.getBoundingClientRect().top + 60;
        window.__lttScroller = box; return true; }""")
    page.wait_for_timeout(150)  # the scroll event, then the frame that places the labels
    sticky = sticky and page.evaluate("""() => {
        const graph = document.querySelector('.ltt-graph'), box = window.__lttScroller;
        const top = box.getBoundingClientRect().top, controls = document.querySelector('.ltt-controls').getBoundingClientRect();
        return { top, under: Math.max(top, controls.bottom), graph: graph.getBoundingClientRect().top,
                 labels: [...document.querySelectorAll('.ltt-colbar-label')].map(e => e.getBoundingClientRect().top) }; }""")
    assert sticky and sticky["graph"] < sticky["top"], sticky  # the graph's top scrolled out of the notebook's view
    assert sticky["labels"] and all(sticky["under"] - 1 <= t < sticky["under"] + 30 for t in sticky["labels"]), sticky
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{frontend.name}_scrolled.png"))
    page.evaluate("() => document.querySelector('.ltt-root').scrollIntoView()")
    page.set_viewport_size({"width": 1500, "height": 1000})

    if frontend.theme:  # the widget follows the theme: its colours are JupyterLab's
        page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
        colours = page.evaluate("""() => {
            const root = document.querySelector('.ltt-root'), probe = document.createElement('div');
            probe.style.background = 'var(--jp-layout-color1)'; probe.style.color = 'var(--jp-ui-font-color1)';
            document.body.append(probe); const p = getComputedStyle(probe), r = getComputedStyle(root);
            const label = getComputedStyle(document.querySelector('.ltt-axis-x text')).fill;
            const out = {bg: r.backgroundColor, jpBg: p.backgroundColor, fg: r.color, jpFg: p.color, label};
            probe.remove(); return out; }""")
        assert colours["bg"] == colours["jpBg"] and colours["fg"] == colours["jpFg"], colours
        rgb = [float(v) for v in colours["bg"][colours["bg"].index("(") + 1:-1].split(",")[:3]]
        assert sum(rgb) < 3 * 80, colours  # a dark background, not the light fallback
        label = [float(v) for v in colours["label"][colours["label"].index("(") + 1:-1].split(",")[:3]]
        assert sum(label) > 3 * 170, colours  # token labels light on the dark background
        from test_page import mark_contrasts

        _, contrasts = mark_contrasts(page)  # the accents on JupyterLab's dark background: 3:1
        assert not {n: round(c, 2) for n, c in contrasts.items() if c < 3.0}, contrasts

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{frontend.name}.png"))
    assert not [e for e in errors if "ltt" in e or "graph" in e], errors
