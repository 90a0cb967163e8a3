"""ltt.progress.Steps: plain lines on a stderr that is not a terminal, after the delay; nothing
with LTT_QUIET; nothing for work shorter than the delay."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

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


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_long_step_gets_a_line_every_few_seconds(monkeypatch):
    """The watcher's turn with a clock moved by hand: nothing before the delay, then one line as
    soon as it has passed, then one per ``every`` seconds, whichever thread's turn comes first."""
    monkeypatch.delenv("LTT_QUIET", raising=False)
    clock, out = Clock(), io.StringIO()
    with Steps(2, "checking", delay=2.0, every=5.0, stream=out, clock=clock) as steps:
        steps.step("one long rerun")  # at 0 s: before the delay, no line
        steps._tick()
        assert _lines(out) == []
        clock.now = 2.5
        steps._tick()
        steps._tick()  # the same moment again: still one line
        assert _lines(out) == ["ltt: checking: 1/2, one long rerun (2 s)"]
        clock.now = 6.0
        steps._tick()  # 3.5 s after the last line: none yet
        assert len(_lines(out)) == 1
        clock.now = 8.0
        steps._tick()
        assert _lines(out)[1:] == ["ltt: checking: 1/2, one long rerun (8 s)"]
    assert _lines(out)[-1] == "ltt: checking: done (8 s)"
    steps._tick()
    steps.close()  # closed twice, ticked after: nothing more
    assert len(_lines(out)) == 3


def test_the_watcher_writes_lines_and_ends_on_close_or_drop(monkeypatch):
    import gc
    import time

    monkeypatch.delenv("LTT_QUIET", raising=False)
    out = io.StringIO()
    steps = Steps(2, "checking", delay=0.0, every=0.05, stream=out)
    steps.step("one long rerun")
    watcher = steps._watcher
    deadline = time.monotonic() + 30
    while len(_lines(out)) < 3 and time.monotonic() < deadline:  # no step comes: the watcher writes
        time.sleep(0.01)
    steps.close()
    watcher.join(timeout=30)
    assert not watcher.is_alive()
    lines = _lines(out)
    assert len(lines) >= 4 and all(line.startswith("ltt: checking: 1/2, one long rerun (") for line in lines[:-1])
    assert lines[-1].startswith("ltt: checking: done (")
    dropped = Steps(2, "dropped", delay=0.0, every=0.05, stream=io.StringIO())
    watcher = dropped._watcher
    del dropped
    gc.collect()
    watcher.join(timeout=30)
    assert not watcher.is_alive()


def test_quiet_starts_no_watcher_and_a_broken_stream_stops_the_lines(monkeypatch):
    monkeypatch.setenv("LTT_QUIET", "1")
    assert Steps(2, "quiet", delay=0.0, every=0.05)._watcher is None
    monkeypatch.delenv("LTT_QUIET", raising=False)

    class Broken(io.StringIO):
        def write(self, text):
            raise OSError("stderr is gone")

    with Steps(2, "broken", delay=0.0, every=0.0, stream=Broken()) as steps:
        steps.step("a")  # the work goes on: no exception
        steps.step("b")


def test_an_exception_inside_the_work_ends_the_watcher(monkeypatch):
    monkeypatch.delenv("LTT_QUIET", raising=False)
    out = io.StringIO()
    try:
        with Steps(2, "failing", delay=0.0, every=0.05, stream=out) as steps:
            watcher = steps._watcher
            steps.step("a")
            raise RuntimeError("injected")
    except RuntimeError:
        pass
    watcher.join(timeout=30)
    assert not watcher.is_alive()
    assert _lines(out)[-1].startswith("ltt: failing: stopped (")  # not "done"


# the CLI with its stderr a pipe: the trace of a long prompt, the faithfulness rerun and the
# report's panels each write plain lines (the delays set to 0 in the child, so short work shows)
CHILD = """
import sys
from ltt import cli, progress
init = progress.Steps.__init__
def quick(self, *a, **k):
    k.update(delay=0.0, every=0.0)
    init(self, *a, **k)
progress.Steps.__init__ = quick
sys.exit(cli.main(sys.argv[1:]))
"""
LONG = " ".join(["The river ran past the old mill and under the stone bridge."] * 7)  # 30 layers x >70 tokens


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_trace_writes_progress_lines_to_a_pipe(tmp_path, quiet):
    env = {k: v for k, v in os.environ.items() if k != "LTT_QUIET"}
    env.update(OMP_NUM_THREADS="1", **({"LTT_QUIET": "1"} if quiet else {}))
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-c", CHILD, "trace", "--model", "smollm2-135m", "--prompt", LONG,
                           "--baselines", "1", "--out", str(out), "--report-targets", "1"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.exists()
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ltt: ")]
    if quiet:
        assert lines == []
        return
    assert any(re.match(r"ltt: tracing \d+ tokens: 1/30 \(", line) for line in lines), lines
    assert any(line.startswith("ltt: measuring faithfulness: 1/1, the model rerun") for line in lines), lines
    assert any(line.startswith("ltt: writing the report: ") and ", panels (" in line for line in lines), lines
    assert lines[-1].startswith("ltt: writing the report: done (")
