"""The widget in a real JupyterLab: a server on 127.0.0.1 (random free port, token auth, a temp
root), a notebook opened in Debian's chromium, a cell that shows a trace, a click on the graph.

Needs ``pip install jupyterlab playwright`` and ``apt-get install chromium`` (``make test`` installs both).
The server (and the kernels it started) is always stopped, by its own process group.
"""

from __future__ import annotations

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
from conftest import chromium_path  # noqa: E402

CHROMIUM = chromium_path()

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts"
REPO = pathlib.Path(__file__).resolve().parent.parent


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


@pytest.fixture
def lab(tmp_path, tiny_dir):
    root = tmp_path / "root"
    root.mkdir()
    (root / "widget.ipynb").write_text(json.dumps(_notebook(tiny_dir("llama"))))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.port_retries=0", "--LabApp.news_url=", "--ServerApp.shutdown_no_activity_timeout=600"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyterlab exited ({proc.returncode}): {(tmp_path / 'lab.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("jupyterlab did not answer within 90 s")
            time.sleep(0.5)
        yield url, token
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


def test_widget_renders_in_jupyterlab_and_answers_clicks(lab):
    url, token = lab
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/lab/tree/widget.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            # the kernel must be up before the cell runs: the status bar then says "Idle"
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /\\|\\s*Idle/.test(e.textContent))",
                timeout=90_000)
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
            try:
                page.wait_for_selector("svg.ltt-svg[data-edges]", timeout=120_000)
            except sync_api.TimeoutError:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "jupyterlab_failed.png"))
                raise AssertionError(f"no widget; the cell shows: {page.inner_text('.jp-Cell')[-1500:]!r}; "
                                     f"page errors: {errors}") from None
            page.wait_for_timeout(500)
            nodes = page.eval_on_selector_all("[data-node]", "els => els.map(e => e.dataset.node)")
            assert nodes and any(n.startswith("I1_") for n in nodes)
            target = sorted(n for n in nodes if n.startswith("I1_"))[-1]
            page.click(f'[data-node="{target}"]')
            page.wait_for_selector(".ltt-panel .ltt-table", timeout=60_000)  # answered by the kernel
            assert target in page.inner_text(".ltt-panel-title")
            # the kernel re-prunes: a new threshold comes back as a new graph
            page.fill("input.ltt-threshold", "0.3")
            page.dispatch_event("input.ltt-threshold", "change")
            page.wait_for_function("() => document.querySelector('svg.ltt-svg').dataset.threshold === '0.3'")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))
            assert not [e for e in errors if "ltt" in e or "graph" in e], errors
        finally:
            browser.close()
