"""One page's kernel in ``ltt serve``: a headless GraphWidget driven by the page's messages.

The page exchanges the widget's own messages with this kernel, as JSON over a WebSocket:
``{"method": "update", "state": {...}}`` (trait changes, both ways) and ``{"method": "custom",
"content": {"type": "run", "prompt": ...}}`` (the widget's prompt box), the same two kinds of message
anywidget's comm carries. The widget's logic is not re-implemented here: each session holds a
real :class:`ltt.widget.GraphWidget` created without a front end; the page's changes are set on
its traits (validated by the widget), its observers re-prune and fill panels, and every synced
trait it changed goes back to the page. Serve's own messages: ``hello`` (models, devices, dtypes,
prompts, limits), ``open`` (the toolbar's one prompt bar: load a model, trace a prompt, with its BOS
checkbox), ``diff`` (two prompts side by side,
the views of a :class:`ltt.widget.diff.DiffWidget`, with ``pick`` for its list of changes),
``cancel``, ``add_prompt``, ``job`` (queue position and progress), ``prompts`` (the shared
list: whole in ``hello``, then only what was added: ``{"start": n, "add": [...]}``),
``evicted`` (a kept trace was dropped to stay within the trace budget) and ``error``.

Every trace a view keeps is counted in the server's one :class:`ltt.serve.budget.TraceBudget`:
estimated and refused before it runs when it cannot fit, measured once made.

All widget work runs in the server's single worker thread (:mod:`ltt.serve.jobs`); ``handle``
only validates the message's shape on the event loop and queues the work.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable

from ltt.checks import is_int
from ltt.serve.models import clip

__all__ = ["Session", "WRITABLE", "synced_traits", "check_prompt"]

# Traits the page may set (what render() commits); everything else is the kernel's to set.
from ltt.widget.state import WRITABLE  # noqa: E402  (the schema: ltt/widget/state.py)
MAX_WAITING = 32  # jobs one page may have waiting at once
MAX_TRACES = 64  # traced prompts one view keeps (its picker); the toolbar's Run then starts afresh


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


def _check_bos(value: Any) -> bool | None:
    """The BOS checkbox: true or false force a BOS token first, null follows the tokenizer."""
    if value is not None and not isinstance(value, bool):
        raise ClientError(f"bos must be true, false or null, got {clip(value, 40)}")
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

    It shows one view (``"main"``: a GraphWidget) or, for a diff of two prompts, two (``"a"``,
    ``"b"``: the views of an :class:`ltt.widget.diff.DiffWidget`); the widget messages name
    their view (``"view"``, default the only one).

    >>> s = Session(state, send)          # doctest: +SKIP
    >>> s.handle('{"method": "open", "model": "gpt2", "prompt": "Hello"}')   # doctest: +SKIP
    """

    def __init__(self, state: Any, send: Callable[[dict], None]):
        self.state = state
        self._send = send
        self.views: dict[str, Any] = {}  # view name -> GraphWidget
        self.diff: Any = None  # the DiffWidget of a diff, else None
        self.model_key: tuple[str, str, str] | None = None
        self._dirty: dict[str, list[str]] = {}
        self._traits = synced_traits()
        self.closed = False
        self._pending: dict[str, tuple[Any, dict]] = {}  # view -> its waiting update job and changes
        self.last_seen = time.monotonic()  # the page's last message (idle pages yield a full server's slot)

    @property
    def widget(self) -> Any:
        """The main view's GraphWidget (None before the first graph or in a diff)."""
        return self.views.get("main")

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
        self.last_seen = time.monotonic()
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
                "update": self._update, "custom": self._custom, "open": self._open, "diff": self._open_diff,
                "pick": self._pick, "cancel": self._cancel, "add_prompt": self._add_prompt,
            }.get(method if isinstance(method, str) else "")
            if handler is None:
                raise ClientError("method must be one of update, custom, open, diff, pick, cancel, add_prompt; "
                                  f"got {clip(method, 60)}")
            handler(msg)
        except ClientError as exc:
            self.error(str(exc))
        except Exception as exc:  # never let a message take the connection (or server) down
            self.error(f"{type(exc).__name__}: {exc}")

    def _queue(self, label: str, fn: Callable[[Any], None]) -> Any:
        waiting = sum(1 for j in self.state.worker.waiting() if j.owner is self)
        if waiting >= MAX_WAITING:
            raise ClientError(f"{waiting} requests of this page are already waiting: wait or cancel some")
        def run(job: Any) -> None:
            try:
                fn(job)
            finally:
                if not self.closed:
                    self._account()

        return self.state.worker.submit(self, label, run)

    def _model_key(self, msg: dict) -> tuple[str, str, str]:
        try:
            return self.state.cache.key(msg.get("model"), msg.get("device", "cpu"), msg.get("dtype", "float32"))
        except (KeyError, ValueError) as exc:
            raise ClientError(str(exc.args[0])) from None

    def _load(self, job: Any, key: tuple[str, str, str]) -> Any:
        if not self.state.cache.cached(key):
            job.progress(f"loading {key[0]} ({key[1]}, {key[2]})")
        return self.state.cache.get(*key)

    def _open(self, msg: dict) -> None:
        key = self._model_key(msg)
        prompt = check_prompt(msg.get("prompt"), self.state.max_chars)
        bos = _check_bos(msg.get("bos"))

        def work(job: Any) -> None:
            w = self.widget
            if w is not None and self.model_key == key and (prompt in w.prompts or len(w.prompts) < MAX_TRACES):
                return self._run_here("main", prompt, bos)
            model = self._load(job, key)
            self._reserve(model, [prompt], bos)
            job.progress(f"tracing {_short(prompt)} on {key[0]}")
            self._show(model, key, prompt, bos)

        loading = not self.state.cache.cached(key)
        self._queue(f"loading {key[0]} ({key[1]}, {key[2]})" if loading else f"tracing {_short(prompt)} on {key[0]}", work)

    def _open_diff(self, msg: dict) -> None:
        key = self._model_key(msg)
        pa = check_prompt(msg.get("prompt_a"), self.state.max_chars, "prompt_a")
        pb = check_prompt(msg.get("prompt_b"), self.state.max_chars, "prompt_b")

        def work(job: Any) -> None:
            model = self._load(job, key)
            self._reserve(model, [pa, pb])
            job.progress(f"tracing and diffing {_short(pa, 24)} and {_short(pb, 24)}")
            self._show_diff(model, key, pa, pb, job)

        self._queue(f"diffing {_short(pa, 24)} and {_short(pb, 24)} on {key[0]}", work)

    def _view(self, msg: dict) -> str:
        view = msg.get("view", "main" if "main" in self.views else None)
        if not self.views:
            raise ClientError("no graph yet: pick a model and run a prompt first")
        if view not in self.views:
            raise ClientError(f"view must be one of {', '.join(self.views)}, got {clip(view, 40)}")
        return view

    def _custom(self, msg: dict) -> None:
        content = msg.get("content")
        if not isinstance(content, dict) or content.get("type") != "run":
            raise ClientError(f"custom message must be {{'type': 'run', 'prompt': ...}}, got {clip(content, 80)}")
        prompt = check_prompt(content.get("prompt"), self.state.max_chars)
        bos = _check_bos(content.get("bos"))
        view = self._view(msg)
        self._queue(f"tracing {_short(prompt)}", lambda job: self._run_here(view, prompt, bos))

    def _update(self, msg: dict) -> None:
        changes = msg.get("state")
        if not isinstance(changes, dict) or not changes:
            raise ClientError(f"update needs a non-empty 'state' object, got {clip(changes, 80)}")
        bad = [k for k in changes if k not in WRITABLE]
        if bad:
            raise ClientError(f"the page may only set {', '.join(WRITABLE)}; got {', '.join(map(str, bad))[:200]}")
        view = self._view(msg)
        pending = self._pending.get(view)
        if pending is not None and self.state.worker.merge(self, pending[0], lambda: pending[1].update(changes)):
            return  # a flood of changes is one job: the latest value of each trait
        changes = dict(changes)
        label = "re-pruning" if {"threshold", "renormalize", "targets"} & set(changes) else "filling the panel"
        self._pending[view] = (self._queue(label, lambda job: self._apply(view, changes)), changes)

    def _pick(self, msg: dict) -> None:
        index = msg.get("index")
        if self.diff is None:
            raise ClientError("pick selects a change of a diff: diff two prompts first")
        if not is_int(index):
            raise ClientError(f"pick needs the index of a listed change (an integer), got {clip(index, 40)}")
        self._queue("selecting the change in both views", lambda job: self._select_change(index))

    def _cancel(self, msg: dict) -> None:
        job_id = msg.get("job")
        if not is_int(job_id):
            raise ClientError(f"cancel needs a job id (an integer), got {clip(job_id, 40)}")
        if not self.state.worker.cancel(self, job_id):
            raise ClientError(f"job {job_id} is not waiting (it is running, finished, or not this page's)")

    def _add_prompt(self, msg: dict) -> None:
        prompt = check_prompt(msg.get("prompt"), self.state.max_chars)
        self.state.add_prompt(prompt)

    # -- in the worker thread ----------------------------------------------------------------------

    def _watch(self, view: str, widget: Any) -> None:
        def observe(change: dict) -> None:
            names = self._dirty.setdefault(view, [])
            if change["name"] not in names:
                names.append(change["name"])

        widget.observe(observe, names=self._traits)

    def _run_here(self, view: str, prompt: str, bos: bool | None = None) -> None:
        """Show ``prompt`` in a view, as the widget's own prompt box does (a prompt it already
        traced is picked again, not traced twice, unless the BOS checkbox is set)."""
        w = self.views.get(view)
        if w is None or self.closed:
            return
        if bos is None and prompt in w.prompts:
            index = w.prompts.index(prompt)
            self._ensure(w, index)
            w.prompt_index = index
        elif len(w.prompts) >= MAX_TRACES:
            raise ValueError(f"this view already keeps {len(w.prompts)} traced prompts, the most a page keeps: "
                             "press the toolbar's Run to start a fresh view with this prompt")
        else:
            model = w._model or getattr(w._traces[w.prompt_index], "model", None)
            if model is not None:
                self._reserve(model, [prompt], bos)
            w.run(prompt, prepend_bos=bos)
        self._flush()

    def _settings(self) -> dict[str, Any]:
        w = next(iter(self.views.values()), None)
        return {} if w is None else dict(threshold=w.threshold, renormalize=w.renormalize)

    def _replace(self, views: dict[str, Any], diff: Any, key: tuple[str, str, str]) -> None:
        old = list(self.views.values()) + ([self.diff] if self.diff is not None else [])
        self.views, self.diff, self.model_key, self._dirty = views, diff, key, {}
        for name, w in views.items():
            self._watch(name, w)
        for w in old:
            self._release(w)
            w.close()
        self.send({"method": "state", "views": {name: {n: _wire(getattr(w, n)) for n in self._traits}
                                                for name, w in views.items()},
                   "model": {"id": key[0], "device": key[1], "dtype": key[2]}})
        if diff is not None:
            self._send_diff()

    def _background(self, label: str, fn: Callable[[], None]) -> None:
        """Where a view's faithfulness check runs: a job of this page, its result flushed to it."""
        self._queue(label, lambda job: (fn(), self._flush()))

    def _show(self, model: Any, key: tuple[str, str, str], prompt: str, bos: bool | None = None) -> None:
        """Show ``prompt`` traced on ``model`` in a new GraphWidget (the settings carried over;
        ``bos`` as the BOS checkbox says)."""
        if self.closed:
            return
        from ltt.widget import GraphWidget

        source = [prompt] if bos is None else [model.trace(prompt, prepend_bos=bos)]
        self._replace({"main": GraphWidget(source, model=model, background=self._background, **self._settings())}, None, key)

    def _show_diff(self, model: Any, key: tuple[str, str, str], pa: str, pb: str, job: Any = None) -> None:
        """Trace two prompts and show them side by side with ltt.diff's changes marked (a
        DiffWidget); prompts of different lengths are aligned at their last tokens. The two
        views' first faithfulness checks run here, in this job, so that they arrive current with
        the views; later ones are jobs of the page, as a single view's are."""
        if self.closed:
            return
        from ltt.widget.diff import DiffWidget

        ta, tb = model.trace(pa), model.trace(pb)
        Ta, Tb = len(ta.token_ids), len(tb.token_ids)
        align = None if Ta == Tb else {Ta - 1: Tb - 1}
        first: list[Callable[[], None]] = []
        dw = DiffWidget(ta, tb, align=align, background=lambda label, fn: first.append(fn), **self._settings())
        if first and job is not None:
            job.progress("checking both graphs' faithfulness")
        for fn in first:
            fn()
        for w in (dw.a, dw.b):
            w.background = self._background
        self._replace({"a": dw.a, "b": dw.b}, dw, key)

    def _send_diff(self) -> None:
        dw = self.diff
        self.send({"method": "diff", "labels": [dw.label_a.value, dw.label_b.value], "summary": dw.summary.value,
                   "changes": [label for label, _ in dw.changes.options]})

    def _select_change(self, index: int) -> None:
        if self.diff is None or self.closed:
            return
        self.diff.select(index)
        self._flush()

    def _apply(self, view: str, changes: dict) -> None:
        w = self.views.get(view)
        if w is None or self.closed:
            return
        index = changes.get("prompt_index", w.prompt_index)
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(w._traces):
            self._ensure(w, index)  # an evicted prompt is traced again within the budget
        self._ensure(w, w.prompt_index)
        errors = []
        for name, value in changes.items():
            try:
                setattr(w, name, value)
            except Exception as exc:  # traitlets' TraitError names the trait and the value
                errors.append(f"{type(exc).__name__}: {exc}")
                self._dirty.setdefault(view, []).append(name)  # the page gets the value the widget kept
        self._flush()
        if errors:
            raise ValueError("; ".join(errors))

    # -- the trace budget (worker thread) --------------------------------------------------------

    def _reserve(self, model: Any, prompts: list[str], bos: bool | None = None) -> None:
        """Refuse, before any forward pass, traces whose estimated kept size cannot fit the
        server's budget; otherwise make room for them (least recently used traces go)."""
        from ltt.models.tracing import estimate_bytes

        need = 0
        for p in prompts:
            T = len(model._encode(p, prepend_bos=bos))
            need += estimate_bytes(model, T)["kept"]
        what = f"a trace of {_short(prompts[0])}" if len(prompts) == 1 else f"the {len(prompts)} traces of this diff"
        keep = frozenset((id(w), w.prompt_index) for w in self.views.values())
        self.state.budget.reserve(need, what, keep)

    def _ensure(self, w: Any, index: int) -> None:
        if w._traces[index] is None and w._model is not None:
            self._reserve(w._model, [w.prompts[index]])

    def _account(self) -> None:
        """Count every trace the views keep now; the shown ones become the most recently used."""
        budget = self.state.budget
        for w in self.views.values():
            for i, t in enumerate(w._traces):
                if t is not None and not budget.holds(w, i):
                    budget.hold(w, i, t, self, self._evict)
            budget.touch(w, w.prompt_index)

    def _release(self, w: Any) -> None:
        self.state.budget.release_widget(w)

    def _evict(self, w: Any, index: int, why: str) -> None:
        """The budget dropped trace ``index`` of view widget ``w``: a prompt view traces it again
        when picked; a diff (made from traces, not prompts) is dropped whole."""
        prompt = w.prompts[index] if index < len(w.prompts) else "?"
        if self.diff is not None and w in self.views.values():
            for other in list(self.views.values()):
                self._release(other)
            self.views, self.diff = {}, None
            self.send({"method": "evicted", "message": f"the diff was dropped from the server's memory {why}; "
                                                       "press Diff to trace it again"})
            return
        w._traces[index] = None
        self.send({"method": "evicted", "message": f"the trace of {_short(prompt)} was dropped from the server's "
                                                   f"memory {why}; picking it again traces it again"})

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for view, names in dirty.items():
            w = self.views.get(view)
            if w is None or not names:
                continue
            self.send({"method": "update", "view": view, "state": {n: _wire(getattr(w, n)) for n in dict.fromkeys(names)}})
        if dirty and self.diff is not None:
            self._send_diff()

    # -- end -------------------------------------------------------------------------------------

    def close(self) -> None:
        """The page went away: drop its waiting work and, in the worker, its widgets."""
        if self.closed:
            return
        self.closed = True
        worker = self.state.worker
        worker.cancel_owner(self)

        def drop(job: Any) -> None:
            for w in list(self.views.values()) + ([self.diff] if self.diff is not None else []):
                self._release(w)
                w.close()
            self.views, self.diff = {}, None

        try:
            worker.submit(self, "closing", drop)
        except RuntimeError:  # shutting down: the process is going away with the widgets
            pass
