"""``ltt serve``'s parts without a browser: options, prompt files, the worker queue, the model
cache and one page's Session, with the tiny models loaded for real (no server, no socket)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from ltt.cli import main as cli_main
from ltt.serve import read_prompts
from ltt.serve.jobs import Worker


@pytest.fixture(scope="module")
def dirs(tiny_dir, tmp_path_factory):
    """The tiny llama directory (a --model) and a --models-dir holding the tiny gpt2."""
    import shutil

    models_dir = tmp_path_factory.mktemp("serve_parts") / "models"
    shutil.copytree(tiny_dir("gpt2"), models_dir / "tiny-gpt2")
    return {"llama": tiny_dir("llama"), "models_dir": str(models_dir)}


def test_bad_options_are_refused_before_serving(tmp_path, capsys):
    bad_json = tmp_path / "p.jsonl"
    bad_json.write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    for argv, fragment in [
        (["serve", "--models-dir", str(tmp_path / "missing")], "no such directory"),
        (["serve", "--model", "/no/such/model"], "no such model directory"),
        (["serve", "--model", "gpt2", "--token", "short"], "at least 8 characters"),
        (["serve", "--model", "gpt2", "--max-tokens", "0"], "--max-tokens must be a positive integer"),
        (["serve", "--model", "gpt2", "--prompts", str(bad_json)], "line 2"),
        (["serve", "--model", "gpt2", "--port", "70000"], "--port must be in"),
    ]:
        assert cli_main(argv) == 1
        assert fragment in capsys.readouterr().err


def test_read_prompts_text_and_json_lines(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("The cat\n\n  \nA {brace} prompt\n", encoding="utf-8")
    assert read_prompts(text) == ["The cat", "A {brace} prompt"]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "The cat", "id": 1}) + "\n" + json.dumps({"prompt": "東京 is"}) + "\n", encoding="utf-8")
    assert read_prompts(jl) == ["The cat", "東京 is"]


class _Recorder:
    """A job owner that keeps every notification it hears."""

    def __init__(self):
        self.heard: list[tuple[int, str, int]] = []
        self.lock = threading.Lock()

    def on_job(self, job):
        with self.lock:
            self.heard.append((job.id, job.state, job.position))


def test_worker_runs_one_job_at_a_time_in_order_and_cancels_waiting_ones():
    worker = Worker()
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []
    a, b = _Recorder(), _Recorder()
    try:
        first = worker.submit(a, "long", lambda job: (started.set(), gate.wait(10), ran.append("long")))
        assert started.wait(10)
        second = worker.submit(b, "second", lambda job: ran.append("second"))
        third = worker.submit(a, "third", lambda job: ran.append("third"))
        fourth = worker.submit(b, "fails", lambda job: 1 / 0)
        assert (second.state, second.position, third.position, fourth.position) == ("queued", 1, 2, 3)
        assert not worker.cancel(a, second.id)  # not a's job
        assert not worker.cancel(a, first.id)  # running: runs to its end
        assert worker.cancel(b, second.id)
        assert third.position == 1 and fourth.position == 2  # the line moved up, and a heard it
        assert (third.id, "queued", 1) in a.heard
        gate.set()
        deadline = time.monotonic() + 10
        while fourth.state not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == ["long", "third"]
        assert (second.state, first.state, third.state) == ("cancelled", "done", "done")
        assert fourth.state == "failed" and fourth.error.startswith("ZeroDivisionError")
        assert worker.submit(a, "after a failure", lambda job: ran.append("after")) is not None
        deadline = time.monotonic() + 10
        while len(ran) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran[-1] == "after"
    finally:
        gate.set()
        worker.stop(timeout=5)
    with pytest.raises(RuntimeError, match="shutting down"):
        worker.submit(a, "late", lambda job: None)


def test_model_cache_keeps_the_most_recently_used(dirs, tmp_path):
    from ltt.serve.models import ModelCache, ModelRegistry

    reg = ModelRegistry([dirs["llama"]], [dirs["models_dir"]], embedded=False)
    assert [e.id for e in reg.entries] == [os.path.basename(dirs["llama"]), "tiny-gpt2"]
    for bad in (dirs["llama"], "gpt2", None, ["tiny-gpt2"]):
        with pytest.raises(KeyError, match="not one of the models this server offers"):
            reg.get(bad)
    cache = ModelCache(reg, max_models=2, max_tokens=32)
    llama = reg.entries[0].id
    first = cache.get(llama)
    assert cache.get(llama) is first and first.max_tokens == 32
    cache.get("tiny-gpt2")
    cache.get(llama)  # llama is now the most recently used
    half = cache.get(llama, "cpu", "bfloat16")  # a third model: gpt2 goes
    assert cache.loaded() == [(llama, "cpu", "float32"), (llama, "cpu", "bfloat16")]
    assert str(half.hf_model.dtype) == "torch.bfloat16"
    with pytest.raises(ValueError, match="device must be one of"):
        cache.key(llama, "tpu", "float32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        cache.key(llama, "cpu", "int8")


def test_session_bounds_the_traces_a_page_keeps(dirs, monkeypatch, tmp_path):
    """A Session on its own (no server): real models, the real worker, messages collected."""
    from conftest import ServeSession
    from ltt.serve import session as sess
    from ltt.serve.app import ServeConfig, ServeState

    monkeypatch.setattr(sess, "MAX_TRACES", 2)
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    driver = ServeSession(ServeState(ServeConfig(models=[dirs["llama"]], models_dirs=[str(tmp_path / "models")],
                                                 embedded=False, max_tokens=40)))
    s, got, ask = driver.session, driver.got, driver.ask
    llama = os.path.basename(dirs["llama"])
    try:
        job = ask({"method": "open", "model": "broken", "prompt": "The cat"})  # a model that cannot load
        assert job["state"] == "failed" and job["error"], job
        assert ask({"method": "open", "model": llama, "prompt": "The cat"})["state"] == "done"
        assert ask({"method": "custom", "content": {"type": "run", "prompt": "The dog"}})["state"] == "done"
        assert s.widget.prompts == ["The cat", "The dog"]
        job = ask({"method": "custom", "content": {"type": "run", "prompt": "The fox"}})
        assert job["state"] == "failed" and "already keeps 2 traced prompts" in job["error"]
        old = s.widget
        assert ask({"method": "open", "model": llama, "prompt": "The fox"})["state"] == "done"
        assert s.widget is not old and s.widget.prompts == ["The fox"]
        states = [m for m in got if m["method"] == "state"]
        assert len(states) == 2 and states[-1]["views"]["main"]["prompts"] == ["The fox"]
        # a diff of prompts of different lengths: aligned at their last tokens
        job = ask({"method": "diff", "model": llama, "prompt_a": "The cat", "prompt_b": "The quick brown fox jumps"})
        assert job["state"] == "done", job
        assert sorted(s.views) == ["a", "b"] and s.widget is None
        assert got[-2]["method"] == "diff" and got[-2]["changes"] and "b: " in got[-2]["labels"][1]
        assert ask({"method": "pick", "index": 0})["state"] == "done"
        assert s.views["a"].selection and s.views["b"].selection
        driver.send({"method": "update", "state": {"threshold": 0.1}})  # which view?
        assert got[-1] == {"method": "error", "message": "view must be one of a, b, got None"}
    finally:
        driver.close()


def test_outbox_coalesces_by_key_and_overflows_at_its_byte_bound():
    from ltt.serve.outbox import Outbox

    box = Outbox(4096)
    box.put({"method": "update", "view": "main", "state": {"threshold": 0.1, "graph": {"edges": [1]}}})
    box.put({"method": "job", "job": {"id": 7, "state": "running"}})
    for i in range(500):  # a flood: only the latest value of each trait and job waits
        box.put({"method": "update", "view": "main", "state": {"threshold": i / 1000}})
        box.put({"method": "job", "job": {"id": 7, "state": "running", "n": i}})
    box.put({"method": "prompts", "start": 3, "add": ["a"]})
    box.put({"method": "prompts", "start": 4, "add": ["b"]})
    assert len(box) == 3 and box.coalesced == 1001 and box.pending_bytes < 4096
    got = [json.loads(t) for t in iter(box.pop, None)]
    assert got[0] == {"method": "update", "view": "main", "state": {"threshold": 0.499, "graph": {"edges": [1]}}}
    assert got[1]["job"]["n"] == 499 and got[2] == {"method": "prompts", "start": 3, "add": ["a", "b"]}
    # a state message replaces the views: waiting updates of the old ones are dropped
    box.put({"method": "update", "view": "main", "state": {"threshold": 0.2}})
    box.put({"method": "state", "views": {"main": {}}})
    assert [json.loads(t)["method"] for t in iter(box.pop, None)] == ["state"]
    # one message larger than the bound still goes when nothing else waits; a second one overflows
    box.put({"method": "error", "message": "x" * 10_000})
    assert not box.overflowed and len(box) == 1
    box.put({"method": "diff", "summary": "y" * 100})
    assert "behind" in box.overflowed and box.pending_bytes == 0 and len(box) == 0
    box.put({"method": "error", "message": "after"})  # nothing more is kept for a page being closed
    assert len(box) == 0


def test_trace_budget_refuses_before_tracing_and_evicts_the_least_recently_used(dirs, monkeypatch):
    from conftest import ServeSession
    from ltt.serve.app import ServeConfig, ServeState

    state = ServeState(ServeConfig(models=[dirs["llama"]], embedded=False, max_tokens=40))
    driver = ServeSession(state)
    s, got, ask = driver.session, driver.got, driver.ask
    llama = os.path.basename(dirs["llama"])
    try:
        model = state.cache.get(llama)
        calls = []
        real = model.trace
        monkeypatch.setattr(model, "trace", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
        state.budget.max_bytes = 100  # smaller than any trace: refused by its estimate, never run
        job = ask({"method": "open", "model": llama, "prompt": "The cat sat"})
        assert job["state"] == "failed" and "trace budget of 0.0 MiB (--max-memory)" in job["error"], job
        assert calls == [] and s.widget is None and state.budget.used == 0
        state.budget.max_bytes = 1 << 30
        assert ask({"method": "open", "model": llama, "prompt": "The cat sat"})["state"] == "done"
        one = state.budget.used
        assert one > 0 and state.budget.held(s) == 1
        state.budget.max_bytes = int(one * 1.5)  # room for one trace: the next evicts the first
        assert ask({"method": "custom", "content": {"type": "run", "prompt": "The dog ran"}})["state"] == "done"
        assert s.widget._traces[0] is None and s.widget._traces[1] is not None
        notice = [m for m in got if m["method"] == "evicted"]
        assert len(notice) == 1 and "'The cat sat'" in notice[0]["message"] and "--max-memory" in notice[0]["message"]
        assert state.budget.used <= state.budget.max_bytes and state.budget.evictions == 1
        n = len(calls)
        assert ask({"method": "update", "state": {"prompt_index": 0}})["state"] == "done"  # traced again
        assert len(calls) == n + 1 and s.widget._traces[0] is not None and s.widget._traces[1] is None
        assert s.widget.graph["tokens"] and state.budget.used <= state.budget.max_bytes
    finally:
        driver.close()


def test_token_guesses_are_rate_limited_per_address_and_bad_families_refused(dirs, tmp_path):
    from starlette.requests import Request

    from ltt.serve import parse_size
    from ltt.serve.app import DEMO_PROMPTS, TOKEN_FAILURES, ServeConfig, ServeState

    state = ServeState(ServeConfig(models=[dirs["llama"]], embedded=False, host="0.0.0.0", token="right-token-123"))
    try:
        def ask(token, client="10.0.0.9"):
            scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"example.org:8765")],
                     "query_string": f"token={token}".encode(), "client": (client, 5555)}
            return state.refusal_status(Request(scope))

        assert ask("right-token-123") is None
        for i in range(TOKEN_FAILURES):
            assert ask(f"guess-{i}")[0] == 403
        status, why = ask("right-token-123")  # even the right token waits once the address guessed too often
        assert status == 429 and "too many wrong tokens from 10.0.0.9" in why
        assert ask("right-token-123", client="10.0.0.10") is None  # another address is not blocked
        assert state.prompts == list(DEMO_PROMPTS)  # no --prompts: the demo prompts
    finally:
        state.worker.stop()
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ValueError, match=r"unsupported architecture model_type='bert'; ltt supports the model types: .*llama"):
        ServeState(ServeConfig(models=[str(bert)], embedded=False))
    assert parse_size("2G") == 2 << 30 and parse_size("800M") == 800 << 20
    with pytest.raises(ValueError, match="--max-memory must be a size"):
        parse_size("lots")


def test_prompt_list_changes_go_as_deltas_to_every_page(dirs):
    from ltt.serve.app import ServeConfig, ServeState
    from ltt.serve.session import Session

    state = ServeState(ServeConfig(models=[dirs["llama"]], embedded=False, prompts=["The cat"]))
    heard: list[dict] = []
    try:
        pages = [Session(state, heard.append) for _ in range(3)]
        state.sessions.update(pages)
        assert pages[0].hello()["prompts"] == ["The cat"]
        pages[0].handle(json.dumps({"method": "add_prompt", "prompt": "The dog"}))
        assert heard == [{"method": "prompts", "start": 1, "add": ["The dog"]}] * 3  # the change, not the list
        assert state.prompts == ["The cat", "The dog"]
    finally:
        state.worker.stop()


def test_a_flood_of_changes_from_one_page_is_one_job(dirs):
    from conftest import ServeSession
    from ltt.serve.app import ServeConfig, ServeState

    driver = ServeSession(ServeState(ServeConfig(models=[dirs["llama"]], embedded=False, max_tokens=40)))
    s, got, ask = driver.session, driver.got, driver.ask
    llama = os.path.basename(dirs["llama"])
    gate = threading.Event()
    try:
        assert ask({"method": "open", "model": llama, "prompt": "The cat sat on the mat"})["state"] == "done"
        s.state.worker.submit(object(), "busy", lambda job: gate.wait(30))  # another page's long job
        start = len(got)
        for i in range(40):
            driver.send({"method": "update", "state": {"threshold": 0.01 + i / 1000}})
        driver.send({"method": "update", "state": {"normalize": False}})
        waiting = [j for j in s.state.worker.waiting() if j.owner is s]
        assert len(waiting) == 1  # 41 messages, one job: the latest value of each trait
        driver._done.clear()
        driver._want = waiting[0].id  # the one job the flood became
        gate.set()
        assert driver._done.wait(60)
        assert s.widget.threshold == 0.049 and s.widget.normalize is False
        assert s.widget.graph["settings"]["threshold"] == 0.049
        check = "checking the graph's faithfulness"  # the page's own follow-up job, not a change
        ids = {m["job"]["id"] for m in got[start:] if m["method"] == "job" and m["job"]["label"] != check}
        assert len(ids) == 1
    finally:
        gate.set()
        driver.close()


def test_the_toolbar_prompt_bar_carries_the_bos_checkbox(dirs):
    """The page's one prompt bar (``open``) traces as ``model.trace(prompt, prepend_bos=bos)``,
    in a fresh view and in the view already shown; a bos that is not true/false/null is refused."""
    from conftest import ServeSession
    from ltt.serve.app import ServeConfig, ServeState

    driver = ServeSession(ServeState(ServeConfig(models=[dirs["llama"]], embedded=False, max_tokens=40)))
    llama = os.path.basename(dirs["llama"])
    try:
        assert driver.ask({"method": "open", "model": llama, "prompt": "The cat sat", "bos": False})["state"] == "done"
        model = driver.session.widget._model
        ids = lambda p, bos: [int(i) for i in model.trace(p, prepend_bos=bos).token_ids]  # noqa: E731
        assert len(ids("The dog ran", True)) == len(ids("The dog ran", False)) + 1  # the checkbox matters here
        assert [int(i) for i in driver.session.widget.trace.token_ids] == ids("The cat sat", False)
        assert driver.ask({"method": "open", "model": llama, "prompt": "The dog ran", "bos": True})["state"] == "done"
        w = driver.session.widget
        assert w.prompts == ["The cat sat", "The dog ran"]  # the same view: a second prompt in its picker
        assert [int(i) for i in w.trace.token_ids] == ids("The dog ran", True)
        driver.send({"method": "open", "model": llama, "prompt": "The dog ran", "bos": "yes"})
        assert driver.got[-1] == {"method": "error", "message": "bos must be true, false or null, got 'yes'"}
    finally:
        driver.close()
        driver.state.worker.stop()


def test_a_diffs_faithfulness_lines_reach_the_page(dirs):
    """A diff's two views come with their faithfulness lines current (checked in the diff's job);
    after a threshold change each view checks again as a job of the page, and the new lines
    reach the page (they never stay "computing" there)."""
    from conftest import ServeSession
    from ltt.serve.app import ServeConfig, ServeState

    driver = ServeSession(ServeState(ServeConfig(models=[dirs["llama"]], embedded=False, max_tokens=40)))
    llama = os.path.basename(dirs["llama"])
    check = "checking the graph's faithfulness"
    try:
        assert driver.ask({"method": "diff", "model": llama, "prompt_a": "The cat sat on the mat",
                           "prompt_b": "A dog ran"})["state"] == "done"
        views = driver.session.views
        assert sorted(views) == ["a", "b"]
        state = next(m for m in driver.got if m["method"] == "state")
        for name, w in views.items():
            assert state["views"][name]["faithfulness_state"] == "current" and state["views"][name]["faithfulness"]
        start = len(driver.got)
        driver.ask({"method": "update", "view": "a", "state": {"threshold": 0.02}})
        deadline = time.monotonic() + 60
        while any(w.faithfulness_state != "current" for w in views.values()) or driver.state.worker.waiting() \
                or driver.state.worker.running is not None:
            assert time.monotonic() < deadline, {n: w.faithfulness_state for n, w in views.items()}
            time.sleep(0.05)
        time.sleep(0.3)
        got = driver.got[start:]
        ids = {m["job"]["id"] for m in got if m["method"] == "job" and m["job"]["label"] == check}
        assert len(ids) == 2  # one check per view (the threshold is shared)
        for name, w in views.items():
            sent = [m["state"] for m in got if m["method"] == "update" and m.get("view") == name
                    and "faithfulness_state" in m["state"]]
            assert sent and sent[-1]["faithfulness_state"] == "current" and sent[-1]["faithfulness"] == w.faithfulness
            assert w.faithfulness_for and w.graph["settings"]["threshold"] == 0.02
    finally:
        driver.close()
        driver.state.worker.stop()
