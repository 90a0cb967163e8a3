"""ltt.progress: the quiet rule (LTT_QUIET, or a stderr that is not a terminal) and the bars it governs."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios

import pytest

from ltt import progress


@pytest.fixture
def terminal():
    """A real pseudo-terminal: ``(master fd, slave file)``. The test itself puts the slave in
    sys.stderr (pytest's capture sets sys.stderr again between a fixture and its test)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a new pty is 0 columns wide
    tty = os.fdopen(slave, "w")
    try:
        yield master, tty
    finally:
        tty.close()
        os.close(master)


def _read_all(fd: int) -> bytes:
    """What the terminal shows so far (reads until nothing more is waiting)."""
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        out += chunk
    return out


def test_quiet_when_asked_whatever_stderr_is(monkeypatch, terminal):
    monkeypatch.setattr(sys, "stderr", terminal[1])
    monkeypatch.setenv("LTT_QUIET", "1")
    assert progress.quiet_requested() and progress.quiet()
    assert progress.bar(5, "tracing prompts", "prompt") is None


def test_a_terminal_shows_bars_unless_asked_not_to(monkeypatch, terminal):
    master, tty = terminal
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.delenv("LTT_QUIET", raising=False)
    assert not progress.quiet_requested() and not progress.quiet()
    bar = progress.bar(5, "tracing prompts", "prompt")
    assert bar is not None and bar.total == 5
    bar.update(2)
    bar.close()
    tty.flush()
    assert b"tracing prompts" in _read_all(master)
    assert progress.bar(5, "tracing prompts", "prompt", show=False) is None


def test_no_terminal_is_quiet_unless_shown(monkeypatch, capsys):
    monkeypatch.delenv("LTT_QUIET", raising=False)
    assert not progress.quiet_requested() and progress.quiet()  # captured stderr: not a terminal
    assert progress.bar(3, "tracing", "layer") is None
    bar = progress.bar(3, "tracing", "layer", show=True)  # asked for (trace_many(progress=True))
    assert bar is not None
    bar.close()
    monkeypatch.setattr(sys, "stderr", object())  # no isatty at all: quiet, no exception
    assert progress.quiet()


def test_progress_depends_on_nothing_else_of_ltt():
    # models and routes both use the rule; it must not bring either in (no import cycle through it)
    code = ("import sys; from ltt import progress; progress.quiet(); "
            "print(sorted(m for m in sys.modules if m.startswith('ltt.') and m != 'ltt._core'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout.strip())  # ltt itself imports the core's wrappers and their checks
    assert "ltt.progress" in loaded
    assert not [m for m in loaded if m.startswith(("ltt.models", "ltt.routes", "ltt.graph", "ltt.trace"))], loaded
