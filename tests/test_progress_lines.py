"""ltt.progress.Steps: plain lines on a stderr that is not a terminal, after the delay; nothing
with LTT_QUIET; nothing for work shorter than the delay."""

from __future__ import annotations

import io

from ltt.progress import Steps


def test_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("LTT_QUIET", raising=False)
    out = io.StringIO()
    with Steps(3, "writing the report", delay=0.0, every=0.0, stream=out) as steps:
        for layer in range(3):
            steps.step(f"layer {layer}")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ltt: writing the report: 1/3, layer 0 (")
    assert lines[2].startswith("ltt: writing the report: 3/3, layer 2 (")
    assert lines[-1].startswith("ltt: writing the report: done (")


def test_quiet_and_short_work_print_nothing(monkeypatch):
    out = io.StringIO()
    monkeypatch.delenv("LTT_QUIET", raising=False)
    with Steps(3, "short", delay=60.0, stream=out) as steps:
        steps.step("a")
    monkeypatch.setenv("LTT_QUIET", "1")
    with Steps(3, "quiet", delay=0.0, every=0.0, stream=out) as steps:
        steps.step("a")
    assert out.getvalue() == ""


def test_a_long_step_still_gets_lines_and_the_watcher_ends(monkeypatch):
    import gc
    import threading
    import time

    monkeypatch.delenv("LTT_QUIET", raising=False)
    out = io.StringIO()
    with Steps(2, "checking", delay=0.0, every=0.2, stream=out) as steps:
        steps.step("one long rerun")
        time.sleep(0.9)  # no step comes: the watcher writes the lines
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("ltt: checking: 1/2, one long rerun (") for line in lines) >= 3, lines
    assert lines[-1].startswith("ltt: checking: done (")
    time.sleep(0.5)
    assert out.getvalue().splitlines() == lines  # closed: nothing after "done"
    before = sum(t.name == "ltt-progress" for t in threading.enumerate())
    dropped = Steps(2, "dropped", delay=0.0, every=0.2, stream=io.StringIO())
    dropped.step("a")
    del dropped
    gc.collect()
    time.sleep(0.6)
    assert sum(t.name == "ltt-progress" for t in threading.enumerate()) < before + 1
