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
