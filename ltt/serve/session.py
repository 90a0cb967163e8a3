"""One page's kernel in ``ltt serve``: a headless GraphWidget driven by the page's messages.

The page exchanges the widget's own messages with this kernel, as JSON over a WebSocket:
``{"method": "update", "state": {...}}`` (trait changes, both ways) and ``{"method": "custom",
"content": {"type": "run", "prompt": ...}}`` (the prompt box), the same two kinds of message
anywidget's comm carries. The widget's logic is not re-implemented here: each session holds a
real :class:`ltt.widget.GraphWidget` created without a front end; the page's changes are set on
its traits (validated by the widget), its observers re-prune and fill panels, and every synced
trait it changed goes back to the page. Serve's own messages: ``hello`` (models, devices, dtypes,
prompts, limits), ``open`` (load a model, trace a prompt), ``cancel``, ``add_prompt``, ``job``
(queue position and progress) and ``error``.

All widget work runs in the server's single worker thread (:mod:`ltt.serve.jobs`); ``handle``
only validates the message's shape on the event loop and queues the work.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

__all__ = ["Session", "WRITABLE", "synced_traits", "check_prompt"]

# Traits the page may set (what render() commits); everything else is the kernel's to set.
WRITABLE = ("threshold", "renormalize", "normalize", "targets", "selection", "prompt_index")
MAX_WAITING = 32  # jobs one page may have waiting at once


class ClientError(ValueError):
    """A message the server will not act on; its text goes back to the page."""


def synced_traits() -> list[str]:
    """The GraphWidget traits the page sees (its own synced traits, not ipywidgets' layout)."""
    from ltt.widget import GraphWidget

    return sorted(GraphWidget.class_own_traits(sync=lambda v: bool(v)))


def check_prompt(value: Any, max_chars: int, what: str = "prompt") -> str:
    """A prompt from the page: a non-empty string of at most ``max_chars`` characters.

    >>> check_prompt("The cat", 100)
    'The cat'
    """
    if not isinstance(value, str):
        raise ClientError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ClientError(f"{what} is empty: type some text first")
    if len(value) > max_chars:
        raise ClientError(f"{what} is {len(value)} characters long, more than this server's limit of {max_chars}")
    return value


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _wire(value: Any) -> Any:
    """A trait value as JSON: bytes travel as base64 (the page's toFloat32 reads it)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


class Session:
    """The kernel of one connection. ``send(msg)`` must be safe to call from any thread.

    >>> s = Session(state, send)          # doctest: +SKIP
    >>> s.handle('{"method": "open", "model": "gpt2", "prompt": "Hello"}')   # doctest: +SKIP
    """

    def __init__(self, state: Any, send: Callable[[dict], None]):
        self.state = state
        self._send = send
        self.widget: Any = None
        self.model_key: tuple[str, str, str] | None = None
        self._dirty: list[str] = []
        self._traits = synced_traits()
        self.closed = False

    # -- to the page -----------------------------------------------------------------------------

    def send(self, msg: dict) -> None:
        if not self.closed:
            self._send(msg)

    def error(self, message: str) -> None:
        self.send({"method": "error", "message": str(message)})

    def on_job(self, job: Any) -> None:
        self.send({"method": "job", "job": job.to_dict()})

    def hello(self) -> dict:
        st = self.state
        return {
            "method": "hello",
            "models": [{"id": e.id, "label": e.label} for e in st.registry.entries],
            "devices": st.cache.devices,
            "dtypes": st.cache.dtypes,
            "prompts": list(st.prompts),
            "limits": st.limits(),
            "writable": list(WRITABLE),
        }

    # -- from the page (event loop: validate the shape, queue the work) --------------------------

    def handle(self, text: Any) -> None:
        """Act on one message from the page; a bad one gets an ``error`` message back."""
        try:
            if not isinstance(text, str):
                raise ClientError("binary messages are not understood: send JSON text")
            try:
                msg = json.loads(text)
            except ValueError as exc:
                raise ClientError(f"message is not JSON ({exc}): {text[:80]!r}") from None
            if not isinstance(msg, dict):
                raise ClientError(f"message must be a JSON object, got {type(msg).__name__}")
            method = msg.get("method")
            handler = {
                "update": self._update, "custom": self._custom, "open": self._open,
                "cancel": self._cancel, "add_prompt": self._add_prompt,
            }.get(method if isinstance(method, str) else "")
            if handler is None:
                raise ClientError(
                    f"method must be one of update, custom, open, cancel, add_prompt; got {str(method)[:60]!r}")
            handler(msg)
        except ClientError as exc:
            self.error(str(exc))
        except Exception as exc:  # never let a message take the connection (or server) down
            self.error(f"{type(exc).__name__}: {exc}")

    def _queue(self, label: str, fn: Callable[[Any], None]) -> None:
        waiting = sum(1 for j in self.state.worker.waiting() if j.owner is self)
        if waiting >= MAX_WAITING:
            raise ClientError(f"{waiting} requests of this page are already waiting: wait or cancel some")
        self.state.worker.submit(self, label, fn)

    def _open(self, msg: dict) -> None:
        cache = self.state.cache
        try:
            key = cache.key(msg.get("model"), msg.get("device", "cpu"), msg.get("dtype", "float32"))
        except (KeyError, ValueError) as exc:
            raise ClientError(str(exc.args[0])) from None
        prompt = check_prompt(msg.get("prompt"), self.state.max_chars)
        loaded = cache.cached(key)
        label = f"tracing {_short(prompt)}" if loaded else f"loading {key[0]} ({key[1]}, {key[2]})"

        def work(job: Any) -> None:
            if self.widget is not None and self.model_key == key:
                return self._run_here(prompt)
            model = cache.get(*key)
            job.progress(f"tracing {_short(prompt)} on {key[0]}")
            self._show(model, key, prompt)

        self._queue(label, work)

    def _custom(self, msg: dict) -> None:
        content = msg.get("content")
        if not isinstance(content, dict) or content.get("type") != "run":
            raise ClientError(f"custom message must be {{'type': 'run', 'prompt': ...}}, got {str(content)[:80]}")
        prompt = check_prompt(content.get("prompt"), self.state.max_chars)
        if self.model_key is None:
            raise ClientError("pick a model and run a prompt with it first")
        self._queue(f"tracing {_short(prompt)}", lambda job: self._run_here(prompt))

    def _update(self, msg: dict) -> None:
        changes = msg.get("state")
        if not isinstance(changes, dict) or not changes:
            raise ClientError(f"update needs a non-empty 'state' object, got {str(changes)[:80]}")
        bad = [k for k in changes if k not in WRITABLE]
        if bad:
            raise ClientError(f"the page may only set {', '.join(WRITABLE)}; got {', '.join(map(str, bad))[:200]}")
        if self.widget is None:
            raise ClientError("no graph yet: pick a model and run a prompt first")
        label = "re-pruning" if {"threshold", "renormalize", "targets"} & set(changes) else "filling the panel"
        self._queue(label, lambda job: self._apply(changes))

    def _cancel(self, msg: dict) -> None:
        job_id = msg.get("job")
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise ClientError(f"cancel needs a job id (an integer), got {str(job_id)[:40]!r}")
        if not self.state.worker.cancel(self, job_id):
            raise ClientError(f"job {job_id} is not waiting (it is running, finished, or not this page's)")

    def _add_prompt(self, msg: dict) -> None:
        prompt = check_prompt(msg.get("prompt"), self.state.max_chars)
        self.state.add_prompt(prompt)

    # -- in the worker thread ----------------------------------------------------------------------

    def _observe(self, change: dict) -> None:
        name = change["name"]
        if name not in self._dirty:
            self._dirty.append(name)

    def _run_here(self, prompt: str) -> None:
        """Show ``prompt`` in the current widget, as the widget's own prompt box does (a prompt
        it already traced is picked again, not traced twice)."""
        w = self.widget
        if w is None or self.closed:
            return
        if prompt in w.prompts:
            w.prompt_index = w.prompts.index(prompt)
        else:
            w.run(prompt)
        self._flush()

    def _show(self, model: Any, key: tuple[str, str, str], prompt: str) -> None:
        """Show ``prompt`` traced on ``model`` in a new GraphWidget (the settings carried over)."""
        if self.closed:
            return
        from ltt.widget import GraphWidget

        w = self.widget
        settings = {}
        if w is not None:
            settings = dict(threshold=w.threshold, renormalize=w.renormalize, normalize=w.normalize)
        new = GraphWidget([prompt], model=model, **settings)
        new.observe(self._observe, names=self._traits)
        self.widget, self.model_key = new, key
        if w is not None:
            w.close()
        self._dirty = []
        self.send({"method": "state", "state": {n: _wire(getattr(new, n)) for n in self._traits},
                   "model": {"id": key[0], "device": key[1], "dtype": key[2]}})

    def _apply(self, changes: dict) -> None:
        w = self.widget
        if w is None or self.closed:
            return
        errors = []
        for name, value in changes.items():
            try:
                setattr(w, name, value)
            except Exception as exc:  # traitlets' TraitError names the trait and the value
                errors.append(f"{type(exc).__name__}: {exc}")
                self._observe({"name": name})  # the page gets the value the widget kept
        self._flush()
        if errors:
            raise ValueError("; ".join(errors))

    def _flush(self) -> None:
        w, names, self._dirty = self.widget, self._dirty, []
        if w is None or not names:
            return
        self.send({"method": "update", "state": {n: _wire(getattr(w, n)) for n in names}})

    # -- end -------------------------------------------------------------------------------------

    def close(self) -> None:
        """The page went away: drop its waiting work and, in the worker, its widget."""
        if self.closed:
            return
        self.closed = True
        worker = self.state.worker
        worker.cancel_owner(self)

        def drop(job: Any) -> None:
            if self.widget is not None:
                self.widget.close()
                self.widget = None

        try:
            worker.submit(self, "closing", drop)
        except RuntimeError:  # shutting down: the process is going away with the widget
            pass
