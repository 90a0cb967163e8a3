"""``ltt serve`` end to end: the real command in a subprocess on loopback, driven by real Chromium.

The server serves the tiny llama model (``--model DIR``) and the tiny gpt2 model (found under
``--models-dir``); the test process loads the same directories with ``ltt.load`` and checks that
what the page draws is what the kernel computes. Only 127.0.0.1 is ever contacted (the token
test binds 0.0.0.0 and talks to it over loopback).
"""

from __future__ import annotations

import base64
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from playwright import sync_api

from conftest import assert_draws, visible_token
from ltt import interpret

PROMPT = "When Mary and John went to the store, John gave a drink to"
OTHER = "The capital of France is Paris, and the capital of Italy is"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "ltt")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "ltt.cli"]


class Server:
    """``ltt serve ...`` as a real subprocess; its output is collected in a thread."""

    def __init__(self, *args: str):
        self.port = _free_port()
        env = dict(os.environ, LTT_QUIET="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(_command() + ["serve", "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while not any(line.startswith("ltt serve: open ") for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("ltt serve did not start:\n" + "\n".join(self.lines))
            time.sleep(0.1)
        self.url = next(line for line in self.lines if line.startswith("ltt serve: open ")).split()[-1]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def interrupt(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def dirs(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    models_dir = root / "models"
    shutil.copytree(tiny_dir("gpt2"), models_dir / "tiny-gpt2")
    (models_dir / "not-a-model").mkdir()  # no config.json: not offered
    prompts = root / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n\n{OTHER}\n", encoding="utf-8")
    return {"llama": tiny_dir("llama"), "models_dir": str(models_dir), "prompts": str(prompts)}


@pytest.fixture(scope="module")
def server(dirs):
    s = Server("--model", dirs["llama"], "--models-dir", dirs["models_dir"], "--prompts", dirs["prompts"],
               "--max-tokens", "48")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def llama_id(dirs):
    """The id the server gives a --model directory: its name."""
    return os.path.basename(dirs["llama"])


@pytest.fixture
def page(new_page):
    return new_page(1360, 900)


def _open(page, url):
    page.goto(url)
    page.wait_for_function("() => document.querySelector('.ltt-serve-conn').textContent === 'connected'")


def _run(page, model_id, prompt):
    """Pick a model in the picker, type a prompt, press Run; wait until its graph is drawn."""
    page.select_option(".ltt-serve-model", model_id)
    page.fill(".ltt-serve-prompt", prompt)
    page.click(".ltt-serve-run")
    _wait_shown(page, prompt)


def _wait_shown(page, prompt):
    page.wait_for_function("""p => { const m = window.__ltt && window.__ltt.model;
        return !!m && m.get('prompts')[m.get('prompt_index')] === p && !document.querySelector('.ltt-serve-job')
            && !!document.querySelector('svg.ltt-svg[data-edges]'); }""", arg=prompt)


def _wait_graph(page, g, scope=""):
    """Wait until the page draws exactly the edges of ``g`` (after a change the page made itself,
    its own state moves before the kernel's answer comes)."""
    want = sorted(f"{e.source}|{e.target}|{e.kind}" for e in g.edges)
    page.wait_for_function("""([scope, want]) => {
        const got = [...document.querySelectorAll(scope + ' [data-edge]')].map(e => e.dataset.edge).sort();
        return got.length === want.length && got.every((k, i) => k === want[i]); }""", arg=[scope, want])


def _idle(page):
    page.wait_for_function("() => !document.querySelector('.ltt-serve-job')")


def _set_threshold(page, value):
    page.fill("input.ltt-threshold", str(value))
    page.dispatch_event("input.ltt-threshold", "change")
    page.wait_for_function("v => document.querySelector('svg.ltt-svg').dataset.threshold === String(v)", arg=value)
    _idle(page)


def test_page_traces_and_reprunes_exactly_as_the_kernel(page, server, tiny_model, llama_id):
    _open(page, server.url)
    options = page.eval_on_selector_all(".ltt-serve-model option", "els => els.map(e => e.value)")
    assert options[:2] == [llama_id, "tiny-gpt2"] and "not-a-model" not in options
    listed = page.eval_on_selector_all(".ltt-serve-prompts option", "els => els.map(e => e.textContent)")
    assert listed[1:] == [PROMPT, OTHER]
    assert "48 tokens" in page.inner_text(".ltt-serve-limits")
    page.select_option(".ltt-serve-prompts", "0")  # the --prompts list fills the prompt box
    assert page.input_value(".ltt-serve-prompt") == PROMPT
    _run(page, llama_id, PROMPT)
    trace = tiny_model("llama").trace(PROMPT)
    T = len(trace.token_ids)
    assert_draws(page, trace.graph())
    for thr in (0.08, 0.015):  # above and below the first threshold: the live kernel re-prunes
        _set_threshold(page, thr)
        assert_draws(page, trace.graph(threshold=thr))
    page.fill("input.ltt-targets", f"{T - 3}, -1")
    page.dispatch_event("input.ltt-targets", "change")
    page.wait_for_function("t => window.__ltt.model.get('graph').settings.targets.join() === t", arg=f"{T - 3},{T - 1}")
    _idle(page)
    assert_draws(page, trace.graph(threshold=0.015, targets=[T - 3, T - 1]))
    page.click("input.ltt-renormalize")
    page.wait_for_function("() => window.__ltt.model.get('graph').settings.renormalize === false")
    _idle(page)
    assert_draws(page, trace.graph(threshold=0.015, renormalize=False, targets=[T - 3, T - 1]))
    page.screenshot(path=str(_artifacts() / "serve.png"))


def _artifacts():
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "artifacts"
    path.mkdir(exist_ok=True)
    return path


def _click_edge(page, key):
    x, y = page.eval_on_selector(f'[data-edge="{key}"]', """p => {
        const pt = p.getPointAtLength(p.getTotalLength() / 2);
        const m = p.getScreenCTM(); return [pt.x * m.a + pt.y * m.c + m.e, pt.x * m.b + pt.y * m.d + m.f]; }""")
    page.mouse.click(x, y)


def test_panels_are_the_kernels_heads_neurons_and_tokens(page, server, tiny_model, llama_id):
    _open(page, server.url)
    _run(page, llama_id, OTHER)
    trace = tiny_model("llama").trace(OTHER)
    T = len(trace.token_ids)
    keys = page.eval_on_selector_all("[data-edge$='|attention']", "els => els.map(e => e.dataset.edge)")
    key = next(k for k in keys if k.split("|")[0].split("_")[1] != k.split("|")[1].split("_")[1])
    _click_edge(page, key)
    page.wait_for_selector(".ltt-head")
    src, dst, _ = key.split("|")
    layer, target, source = int(dst[1:].split("_")[0]), int(dst.split("_")[1]), int(src.split("_")[1])
    eh = trace.edge_heads(layer, target, source)
    rows = page.eval_on_selector_all(".ltt-head", "els => els.map(e => [Number(e.dataset.head), e.title])")
    assert [h for h, _ in rows] == [h.head for h in eh.heads]  # listed by share, largest first
    shares = {h.head: h.share for h in eh.heads}
    for h, title in rows:
        assert float(title.split("share ")[1]) == pytest.approx(shares[h], rel=1e-5, abs=1e-7)
    # another head: its maps come from the kernel as float32 bytes
    other = eh.heads[1].head
    page.click(f'.ltt-head[data-head="{other}"]')
    page.wait_for_selector(f'.ltt-head-selected[data-head="{other}"]')
    page.wait_for_function("h => window.__ltt.model.get('panel').head === h", arg=other)
    shape, b64 = page.evaluate("() => [window.__ltt.model.get('panel_maps_shape'), window.__ltt.model.get('panel_maps')]")
    hv = interpret.head_view(trace, layer, other, target)
    maps = np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(shape)
    np.testing.assert_array_equal(maps, np.stack([hv.pattern, hv.contribution]))
    # a state's top tokens, with and without the final norm
    node = f"I1_{T - 1}"
    page.click(f'[data-node="{node}"]')
    page.wait_for_selector(".ltt-table")
    got = page.eval_on_selector_all(".ltt-table td.ltt-tok", "els => els.map(e => e.textContent)")
    assert got == [visible_token(t.token) for t in trace.top_tokens(node, k=10).tokens]
    page.click("input.ltt-normalize")
    page.wait_for_function("() => window.__ltt.model.get('panel').normalize === false")
    got = page.eval_on_selector_all(".ltt-table td.ltt-tok", "els => els.map(e => e.textContent)")
    assert got == [visible_token(t.token) for t in trace.top_tokens(node, k=10, normalize=False).tokens]
    # an FFN block's neurons and the promoted tokens of its output
    mid = page.eval_on_selector_all("[data-node^='M']", "els => els.map(e => e.dataset.node)")[0]
    page.click(f'[data-node="{mid}"]')
    page.wait_for_selector(".ltt-neuron")
    l, t = int(mid[1:].split("_")[0]), int(mid.split("_")[1])
    got = page.eval_on_selector_all(".ltt-neuron", "els => els.map(e => Number(e.dataset.neuron))")
    assert got == [n.neuron for n in trace.top_neurons(l, t, k=10).neurons]
    block = interpret.promoted(trace, l, t, block="ffn")
    shown = page.eval_on_selector_all(".ltt-effects .ltt-up .ltt-tok", "els => els.map(e => e.textContent)")
    assert shown == [visible_token(x.token) for x in block.promoted]


def test_prompt_box_and_picker_add_prompts_live(page, server, tiny_model, llama_id, dirs):
    import ltt

    _open(page, server.url)
    _run(page, llama_id, PROMPT)
    page.fill("input.ltt-prompt", "A quick brown fox")  # the page's one prompt box
    page.press("input.ltt-prompt", "Enter")
    _wait_shown(page, "A quick brown fox")
    assert_draws(page, tiny_model("llama").trace("A quick brown fox").graph())
    page.select_option("select.ltt-picker", "0")  # back to the first prompt, not traced again
    g = tiny_model("llama").trace(PROMPT).graph()
    _wait_graph(page, g)
    assert_draws(page, g)
    page.fill(".ltt-serve-prompt", "The dog sleeps")  # added to the server's list, for every page
    page.click(".ltt-serve-add")
    page.wait_for_function("() => [...document.querySelectorAll('.ltt-serve-prompts option')].some(o => o.textContent === 'The dog sleeps')")
    # another dtype: the same model loaded again in bfloat16, traced as ltt.load(dtype=) traces it
    page.select_option(".ltt-serve-dtype", "bfloat16")
    page.fill(".ltt-serve-prompt", PROMPT)
    page.click(".ltt-serve-run")
    page.wait_for_function("() => document.getElementById('ltt-serve').dataset.dtype === 'bfloat16'")
    _wait_shown(page, PROMPT)
    assert_draws(page, ltt.load(dirs["llama"], dtype="bfloat16").trace(PROMPT).graph())


def test_two_tabs_each_get_their_own_graph(new_page, server, tiny_model, llama_id):
    a, b = new_page(1280, 720, strict=False), new_page(1280, 720, strict=False)
    for pg in (a, b):
        _open(pg, server.url)
    a.select_option(".ltt-serve-model", llama_id)
    a.fill(".ltt-serve-prompt", PROMPT)
    b.select_option(".ltt-serve-model", "tiny-gpt2")
    b.fill(".ltt-serve-prompt", OTHER)
    a.click(".ltt-serve-run")
    b.click(".ltt-serve-run")
    _wait_shown(a, PROMPT)
    _wait_shown(b, OTHER)
    assert_draws(a, tiny_model("llama").trace(PROMPT).graph())
    assert_draws(b, tiny_model("gpt2").trace(OTHER).graph())
    _set_threshold(b, 0.1)  # one tab's settings never reach the other
    assert_draws(b, tiny_model("gpt2").trace(OTHER).graph(threshold=0.1))
    assert_draws(a, tiny_model("llama").trace(PROMPT).graph())
    assert a.evaluate("() => window.__ltt.model.get('threshold')") == 0.04


def _errors_with(page, fragment):
    try:
        page.wait_for_function("f => document.querySelector('.ltt-serve-error').textContent.includes(f)",
                               arg=fragment, timeout=10_000)
    except sync_api.TimeoutError:
        raise AssertionError(f"{fragment!r} not in the page's error: {page.inner_text('.ltt-serve-error')!r}") from None


def test_only_offered_models_load_and_bad_messages_get_an_error(page, server, tiny_model, dirs, llama_id):
    _open(page, server.url)
    # a model the server does not offer, put into the picker by hand: a path, a hub id
    for bad in (dirs["llama"], "gpt2", "../models/tiny-gpt2"):
        page.evaluate("v => { const s = document.querySelector('.ltt-serve-model'); const o = document.createElement('option'); o.value = v; o.textContent = v; s.append(o); }", bad)
        page.select_option(".ltt-serve-model", bad)
        page.fill(".ltt-serve-prompt", PROMPT)
        page.click(".ltt-serve-run")
        _errors_with(page, "is not one of the models this server offers")
        page.evaluate("() => { document.querySelector('.ltt-serve-error').textContent = ''; }")
    assert page.evaluate("() => window.__ltt.model") is None
    send = "m => window.__ltt.conn.ws.send(m)"
    for raw, fragment in [
        ("{not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"method": "explode"}', "method must be one of"),
        ('{"method": "update", "state": {"threshold": 0.1}}', "no graph yet"),
        ('{"method": "open", "model": "tiny-gpt2", "prompt": ""}', "prompt is empty"),
        ('{"method": "open", "model": "tiny-gpt2", "prompt": "x", "device": "tpu"}', "device must be one of"),
        (json.dumps({"method": "open", "model": "tiny-gpt2", "prompt": "x" * 20000}), "characters long"),
        ('{"method": "cancel", "job": "all"}', "cancel needs a job id"),
    ]:
        page.evaluate(send, raw)
        _errors_with(page, fragment)
    page.evaluate("() => window.__ltt.conn.ws.send(new Uint8Array([1, 2, 3]))")
    _errors_with(page, "binary messages")
    _run(page, llama_id, PROMPT)  # the same connection still serves
    # bad values for the widget's traits: the widget's own messages, the value it kept comes back
    page.evaluate(send, '{"method": "update", "state": {"threshold": "high", "selection": {"node": "Z9_9"}}}')
    _errors_with(page, "expected a float, not the str 'high'")
    _errors_with(page, "selection: not a node name")
    page.evaluate(send, '{"method": "update", "state": {"graph": {}}}')
    _errors_with(page, "the page may only set")
    page.evaluate(send, '{"method": "custom", "content": {"type": "run", "prompt": "' + "word " * 60 + '"}}')
    _errors_with(page, "more than the limit of 48 tokens")
    assert page.evaluate("() => window.__ltt.model.get('threshold')") == 0.04
    _set_threshold(page, 0.06)
    assert_draws(page, tiny_model("llama").trace(PROMPT).graph(threshold=0.06))
    # a message over the size limit (1 MiB) ends that connection, with the reason shown; the
    # server goes on serving
    page.evaluate("() => window.__ltt.conn.ws.send('x'.repeat(2 << 20))")
    page.wait_for_function("() => document.querySelector('.ltt-serve-conn').textContent.startsWith('disconnected (1009')")
    _open(page, server.url)
    _run(page, llama_id, OTHER)


def test_token_required_off_loopback_and_ctrl_c_stops_cleanly(dirs, browser):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    s = Server("--host", "0.0.0.0", "--model", dirs["llama"], "--max-connections", "1")
    try:
        assert "?token=" in s.url
        token = s.url.split("?token=")[1]
        base = f"http://127.0.0.1:{s.port}"
        for path in ("/", "/static/graph.js", "/?token=wrong-token-value"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=10)
            assert err.value.code == 403
        with urllib.request.urlopen(f"{base}/?token={token}", timeout=10) as resp:
            assert resp.status == 200 and b"socket_kernel.js" in resp.read()
        req = urllib.request.Request(f"{base}/static/graph.js", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        with pytest.raises(InvalidStatus) as err:
            connect(f"ws://127.0.0.1:{s.port}/ws", open_timeout=10)
        assert err.value.response.status_code == 403
        with pytest.raises(InvalidStatus):  # the token, but from another site's page
            connect(f"ws://127.0.0.1:{s.port}/ws?token={token}", origin="http://evil.example", open_timeout=10)
        # the browser with the printed URL (on loopback): page, modules and socket all pass
        pg = browser.new_page()
        pg.set_default_timeout(60_000)  # a fresh server loads the model first; CI machines may be slow
        try:
            _open(pg, f"{base}/?token={token}")
            # three requests at once: the first loads the model (seconds in a fresh server) and
            # shows it; the others wait with their place in line, and the last is cancelled
            pg.evaluate("""ps => { const c = window.__ltt.conn, m = document.querySelector('.ltt-serve-model').value;
                for (const p of ps) c.send({method: "open", model: m, device: "cpu", dtype: "float32", prompt: p}); }""",
                        [PROMPT, OTHER, "A quick brown fox"])
            last = pg.wait_for_selector('.ltt-serve-job[data-state="queued"][data-position="2"]')
            # its text says it waits; by the time it is read the first job may be done (position 1)
            assert re.search(r"waiting · position [12] in the queue", last.inner_text()), last.inner_text()
            assert "loading " in pg.inner_text('.ltt-serve-job[data-state="running"]')
            last.query_selector("button.ltt-serve-cancel").click()
            _wait_shown(pg, OTHER)
            shown = pg.evaluate("() => window.__ltt.model.get('prompts')")
            assert shown == [PROMPT, OTHER], (shown, pg.inner_text(".ltt-serve-error"))
            with connect(f"ws://127.0.0.1:{s.port}/ws?token={token}", open_timeout=10) as extra:
                msg = json.loads(extra.recv(timeout=10))
                assert msg["method"] == "error" and "1 connections" in msg["message"]
            assert any("limits: prompts up to 512 tokens" in line for line in s.lines)
            # Ctrl-C with the page still connected: a clean stop, exit 0, the page hears it
            rc = s.interrupt()
            assert rc == 0, s.lines
            assert s.lines[-1] == "ltt serve: stopped", s.lines
            assert not any("Traceback" in line or "ERROR" in line for line in s.lines), s.lines
            pg.wait_for_function("() => document.querySelector('.ltt-serve-conn').textContent.startsWith('disconnected')")
        finally:
            pg.close()
    finally:
        s.stop()


def test_diff_of_two_prompts_side_by_side(page, server, tiny_model, llama_id):
    import ltt
    from ltt.widget.diff import diff_marks

    swapped = "When John and Mary went to the store, Mary gave a drink to"
    _open(page, server.url)
    page.select_option(".ltt-serve-model", llama_id)
    page.fill(".ltt-serve-prompt", PROMPT)
    page.fill(".ltt-serve-prompt-b", swapped)
    page.click(".ltt-serve-diff-run")
    page.wait_for_function("() => document.getElementById('ltt-serve').dataset.views === 'a,b'"
                           " && document.querySelectorAll('.ltt-serve-change').length > 0")
    _idle(page)
    model = tiny_model("llama")
    ta, tb = model.trace(PROMPT), model.trace(swapped)
    assert len(ta.token_ids) == len(tb.token_ids)  # token by token
    d = ltt.diff(ta, tb)
    ma, mb = diff_marks(d, _parallel(ta), _parallel(tb), 0.01)
    for side, trace, marks in (("a", ta, ma), ("b", tb, mb)):
        scope = f".ltt-serve-side-{side}"
        nodes = set(page.eval_on_selector_all(f"{scope} [data-node]", "els => els.map(e => e.dataset.node)"))
        edges = dict(page.eval_on_selector_all(f"{scope} [data-edge]", "els => els.map(e => [e.dataset.edge, Number(e.dataset.weight)])"))
        g = trace.graph()
        assert nodes == {n.name for n in g.nodes}
        assert set(edges) == {f"{e.source}|{e.target}|{e.kind}" for e in g.edges}
        shown = dict(page.eval_on_selector_all(f"{scope} [data-mark]", "els => els.map(e => [e.dataset.mark, e.dataset.status])"))
        assert shown == marks
    rows = page.eval_on_selector_all(".ltt-serve-change", "els => els.map(e => e.textContent)")
    top = d.top_edges(12)
    assert len(rows) == len(top) and rows[0].startswith(f"{top[0].flow_delta:+.4f}")
    page.click('.ltt-serve-change[data-index="0"]')
    page.wait_for_function("k => window.__ltt.view('b').get('selection').edge === k",
                           arg=f"{top[0].source_b}|{top[0].target_b}|{top[0].kind}")
    assert page.evaluate("() => window.__ltt.view('a').get('selection').edge") == f"{top[0].source}|{top[0].target}|{top[0].kind}"
    # the threshold is shared: set in view a, both views re-prune
    page.fill(".ltt-serve-side-a input.ltt-threshold", "0.08")
    page.dispatch_event(".ltt-serve-side-a input.ltt-threshold", "change")
    page.wait_for_function("() => document.querySelector('.ltt-serve-side-b svg.ltt-svg').dataset.threshold === '0.08'")
    _idle(page)
    edges_b = set(page.eval_on_selector_all(".ltt-serve-side-b [data-edge]", "els => els.map(e => e.dataset.edge)"))
    assert edges_b == {f"{e.source}|{e.target}|{e.kind}" for e in tb.graph(threshold=0.08).edges}
    page.screenshot(path=str(_artifacts() / "serve_diff.png"))


def _parallel(trace):
    from ltt.widget import panels

    return panels.graph_payload(trace, trace.graph())["parallel"]


def test_loopback_server_answers_loopback_names_and_its_own_page_only(server, llama_id, dirs):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    base = f"http://127.0.0.1:{server.port}"
    with urllib.request.urlopen(base + "/", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Referrer-Policy"] == "no-referrer"  # the token in a URL goes nowhere else
    req = urllib.request.Request(base + "/", headers={"Host": f"rebound.example:{server.port}"})
    with pytest.raises(urllib.error.HTTPError) as err:  # DNS rebinding: another name for this socket
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403
    for path in ("/static/panels.py", "/static/..%2F__init__.py", "/static/serve.html"):
        with pytest.raises(urllib.error.HTTPError) as err:  # only the page's three files are served
            urllib.request.urlopen(base + path, timeout=10)
        assert err.value.code == 404
    with pytest.raises(InvalidStatus):  # another site's page may not open a socket here
        connect(f"ws://127.0.0.1:{server.port}/ws", origin="http://evil.example", open_timeout=10)
    with connect(f"ws://127.0.0.1:{server.port}/ws", origin=f"http://127.0.0.1:{server.port}", open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["method"] == "hello" and hello["limits"]["max_tokens"] == 48
        assert [m["id"] for m in hello["models"]][:2] == [llama_id, "tiny-gpt2"]
        assert not any(dirs["models_dir"] in m["label"] for m in hello["models"])  # no server paths shown


def test_the_page_names_its_favicon_and_the_script_is_the_joined_view(server):
    """The page links its icon, which the server answers as SVG (no 404 in the console); the
    view's script is the page's modules joined in memory, exactly."""
    from ltt.widget import bundle

    base = f"http://127.0.0.1:{server.port}"
    with urllib.request.urlopen(base + "/", timeout=10) as resp:
        html = resp.read().decode()
    assert '<link rel="icon" href="favicon.ico" type="image/svg+xml">' in html
    with urllib.request.urlopen(base + "/favicon.ico", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "image/svg+xml"
        assert resp.read().startswith(b"<svg")
    with urllib.request.urlopen(base + "/static/graph.js", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert resp.read().decode() == bundle.script()
