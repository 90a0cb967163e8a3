"""ltt's own progress bars and the one rule for when they stay quiet (``LTT_QUIET``, or no terminal).

A bar shows on stderr when it is a terminal; setting ``LTT_QUIET`` (any non-empty value) keeps
every ltt bar and notice off, whatever stderr is. Callers that take a ``progress`` option pass
it as ``show`` (True or False decides; None follows the rule). Depends on nothing else of ltt.

>>> import os; os.environ["LTT_QUIET"] = "1"
>>> quiet(), bar(10, "tracing prompts", "prompt") is None
(True, True)
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any


def quiet_requested() -> bool:
    """Whether ``LTT_QUIET`` is set (to anything but the empty string), read now.

    >>> quiet_requested()                  # doctest: +SKIP
    False
    """
    from ltt import config

    return config.quiet()


def _in_notebook() -> bool:
    """Whether this process is a running Jupyter kernel (an IPython shell over ZMQ)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def quiet() -> bool:
    """Whether ltt's progress bars stay off: ``LTT_QUIET`` is set, or stderr is not a terminal
    (a log file, a pipe, a captured stream) outside a Jupyter kernel.

    >>> quiet()                            # doctest: +SKIP
    True
    """
    if quiet_requested():
        return True
    if _in_notebook():  # tqdm.auto draws its bars as widgets there
        return False
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced by an object without isatty, or closed
        return True


def bar(total: int | None, desc: str, unit: str, *, leave: bool = True, show: Any = None) -> Any:
    """A tqdm bar of ``total`` steps on stderr, or None when it stays off: ``show`` decides when
    given (any true value shows it), else :func:`quiet` does. The caller closes it.

    >>> b = bar(30, "tracing 4096 tokens", "layer", leave=False)   # doctest: +SKIP
    >>> b.update(1); b.close()                                    # doctest: +SKIP
    """
    if not (show if show is not None else not quiet()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave)


class Steps:
    """Progress of a long piece of work in ``total`` steps, shown only once it has run ``delay``
    seconds (default 2): a tqdm bar when stderr is a terminal (or in a Jupyter kernel), plain
    lines on any other stderr (a log, a pipe: one line at most every ``every`` seconds and one
    at the end), nothing with ``LTT_QUIET`` set. ``step(note)`` counts one step; ``note`` says
    what is running now. A step that runs long (one rerun of the model) still gets a line, or a
    refreshed bar, every ``every`` seconds: a daemon thread watches, until :meth:`close` or
    until the object is dropped.

    >>> with Steps(3, "writing the report") as steps:      # doctest: +SKIP
    ...     for layer in range(3):
    ...         steps.step(f"layer {layer}")
    """

    def __init__(self, total: int, desc: str, *, delay: float = 2.0, every: float = 5.0, stream: Any = None,
                 unit: str = "step", leave: bool = True, clock: Any = None):
        import time

        self._clock = clock or time.perf_counter
        self.total, self.desc, self.delay, self.every = int(total), desc, float(delay), float(every)
        self.unit, self.leave = unit, bool(leave)
        self.done, self.note = 0, ""
        self._stream = stream
        self._start = self._clock()
        self._last = None  # when the last plain line was written
        self._bar = None
        self._off = quiet_requested()
        if stream is None:
            self._terminal = not quiet()
        else:  # a stream of the caller's: a bar only on a terminal
            isatty = getattr(stream, "isatty", None)
            self._terminal = bool(isatty and isatty())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if not self._off and self.every > 0:
            self._watcher = threading.Thread(target=_watch, name="ltt-progress", daemon=True,
                                             args=(weakref.ref(self), self._stop, min(self.every, 1.0)))
            self._watcher.start()

    @property
    def stream(self) -> Any:
        return self._stream if self._stream is not None else sys.stderr

    def elapsed(self) -> float:
        return self._clock() - self._start

    def step(self, note: str = "", n: int = 1) -> None:
        with self._lock:
            self._step(note, n)

    def update(self, n: int = 1) -> None:
        """``n`` steps done (a tqdm bar's name for :meth:`step`)."""
        self.step(n=n)

    def _step(self, note: str, n: int) -> None:
        self.done = min(self.total, self.done + int(n))
        self.note = note or self.note
        if self._off or self.elapsed() < self.delay:
            return
        if self._terminal:
            self._open_bar(self.done - n).set_postfix_str(self.note, refresh=False)
            self._bar.update(n)
        elif self._last is None or self._clock() - self._last >= self.every:
            self._line(f"{self.done}/{self.total}" + (f", {self.note}" if self.note else ""))

    def _tick(self) -> None:
        """The watcher's turn: a line (or a refreshed bar) when none came for ``every`` seconds."""
        with self._lock:
            if self._off or self.elapsed() < self.delay:
                return
            if self._terminal:
                self._open_bar(self.done).set_postfix_str(self.note, refresh=False)
                self._bar.refresh()
            elif self._last is None or self._clock() - self._last >= self.every:
                self._line(f"{self.done}/{self.total}" + (f", {self.note}" if self.note else ""))

    def _open_bar(self, initial: int) -> Any:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, initial=initial,
                             file=self._stream, leave=self.leave)
        return self._bar

    def _line(self, text: str) -> None:
        self._last = self._clock()
        try:
            print(f"ltt: {self.desc}: {text} ({self.elapsed():.0f} s)", file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stderr: the work goes on
            self._off = True

    def close(self, failed: bool = False) -> None:
        """The last line ("done", or "stopped" when ``failed``, where lines were written) or the
        bar closed; the watcher ends. Closing twice does nothing more."""
        self._stop.set()
        with self._lock:
            self._close(failed)
            self._off = True  # nothing after the end

    def _close(self, failed: bool) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last is not None and not self._off:
            self._line("stopped" if failed else "done")

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()  # dropped unclosed: the watcher ends at once, not at its next turn

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)


def steps(total: int, desc: str, unit: str = "step", *, leave: bool = True, delay: float = 2.0) -> Steps | None:
    """Progress of work that may run long (a trace of a long prompt), used like a tqdm bar
    (``update(n)``, ``close()``): on a terminal or in a Jupyter kernel tqdm's bar at once (as
    :func:`bar`), on any other stderr a :class:`Steps` writing plain lines once it has run
    ``delay`` seconds; None with ``LTT_QUIET``.

    >>> s = steps(30, "tracing 4096 tokens", "layer", leave=False)   # doctest: +SKIP
    >>> s.update(1); s.close()                                       # doctest: +SKIP
    """
    if quiet_requested():
        return None
    if not quiet():
        return bar(total, desc, unit, leave=leave)
    return Steps(total, desc, unit=unit, leave=leave, delay=delay)


def _watch(ref: Any, stop: threading.Event, every: float) -> None:
    """The watcher thread of one :class:`Steps`: ticks until it is closed or dropped."""
    while not stop.wait(every):
        steps = ref()
        if steps is None:
            return
        try:
            steps._tick()
        except Exception:  # a broken stream or bar: the work goes on without lines
            return
        finally:
            del steps
