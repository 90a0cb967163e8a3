"""One instrumented run: the only way ltt enters a transformers model (traces, removals,
patching, gradients).

A :class:`Run` is a context manager around one forward pass that ltt itself starts. It owns

* the per-model lock and owner entry (:data:`_OWNERS`: one run at a time per model; a second
  thread waits, a run started from inside another run's hook in the same thread is refused);
* the train/eval mode of every module and the attention implementation of every config the
  model holds (sub-configs included), saved on entry and restored on exit;
* one attention function registered with transformers (:data:`IMPLEMENTATION`) that calls the
  active run's handler for a module, or falls through to the model's own implementation;
* hooks: registered through :meth:`Run.hook` / :meth:`Run.tag`, tagged with the run's token,
  removed on exit even when their handle never reached the run;
* a clean-up an interrupt cannot cut (see below).

**Only the run's own forward pass is instrumented.** :meth:`Run.forward` sets a context
variable (:data:`_CURRENT`) around the one call it makes; every hook and the registered
attention and mask functions check it first. Any other forward of the model, from any thread
(a user's ``generate()`` in a notebook thread, a serving thread), runs the model's own code:
hooks return without touching anything, and the attention and mask functions call the
implementation the config had before the run (``eager``, ``sdpa``, ...). Its outputs are
bit-identical to an untraced model's. Two cases cannot be switched per call, and there a
foreign forward waits on the model's lock until the run has restored the model: a family whose
attention module does not use transformers' attention interface while the config is not
``eager`` (the run must switch the whole config to eager), GPT-2 with
``reorder_and_upcast_attn`` (its own upcast attention runs only under ``eager``), and a model
with modules in train mode (the run switches them to eval). docs/instrument.md lists the
families.

**Clean-up.** Every undo step is idempotent and kept in a list; :meth:`Run.__exit__` runs the
list twice through an :class:`contextlib.ExitStack` (the second pass finishes whatever an
exception cut in the first, and carries on past a step that keeps failing), then re-raises.
In the main thread, SIGINT is handled during the run by a handler that defers the signal while
any frame of the clean-up is on the stack and raises ``KeyboardInterrupt`` once the model is
restored. :data:`RESTORE_PATH` lists the clean-up's functions (the interrupt tests drive an
exception at each of their lines).

Writing a client (a patching run: the counterfactual run's per-layer attention probabilities
and values are kept, then used in the clean run; a gradient run: gradients at the attention
and FFN outputs)::

    from ltt.models.instrument import Run

    saved = {}
    with Run(model) as run:                        # the counterfactual run: keep A and v
        for l, layer in enumerate(model.decoder_layers):
            attn = model.submodule(layer, model.spec.attn)
            def keep(call, l=l):
                out, weights = call.eager()        # the module's own eager attention
                saved[l] = (weights.detach(), call.value.detach())
                return out, weights
            run.attention(attn, keep)
        run.switch_attention(True)
        run.forward(input_ids=counterfactual_ids, use_cache=False)

    with Run(model) as run:                        # the clean run, patched from `saved`
        for l, layer in enumerate(model.decoder_layers):
            def patch(call, l=l):
                out, weights = call.eager()
                w_cf, v_cf = saved[l]
                ...                                # mix per edge; return (out, weights)
            run.attention(model.submodule(layer, model.spec.attn), patch)
        run.switch_attention(True)
        logits = run.forward(input_ids=ids, use_cache=False).logits

    grads = {}
    with Run(model) as run:                        # gradients at each FFN output
        for l, layer in enumerate(model.decoder_layers):
            def retain(module, args, output, l=l):
                output.retain_grad()
                grads[l] = output
            run.hook(model.submodule(layer, model.spec.down), retain)
        run.switch_attention(True)                 # eager attention, weights returned
        out = run.forward(grad=True, input_ids=ids, use_cache=False)
        out.logits[0, -1, answer].backward()       # grads[l].grad is the metric's gradient

A handler receives a :class:`Call` (``module``, ``query``, ``key``, ``value``, ``mask``,
``args``, ``kwargs``, ``eager_fn``; ``call.eager()`` runs the module's own eager function) and
returns ``(output, weights)`` as an attention function does. Hooks have torch's signatures;
``pre=True`` registers a forward pre-hook, ``with_kwargs`` as in torch.
"""

from __future__ import annotations

import contextvars
import itertools
import signal
import threading
import weakref
from contextlib import ExitStack
from typing import Any, Callable

from ltt.models.attention import eager_function

__all__ = ["Run", "Call", "IMPLEMENTATION", "model_lock"]

IMPLEMENTATION = "ltt"  # the registered attention (and mask) implementation's name

#: The run whose own forward pass is in progress in this thread/context (None elsewhere).
_CURRENT: contextvars.ContextVar["Run | None"] = contextvars.ContextVar("ltt_run", default=None)
#: id(hf model) -> the Run holding it (the one owners map of ltt).
_OWNERS: dict[int, "Run"] = {}
#: id(attention module) -> (run, handler), while a run holds the module's model.
_ACTIVE: dict[int, tuple["Run", Callable[["Call"], Any]]] = {}
#: id(config) -> (run, the attention implementation the config had before the run).
_ORIGINAL: dict[int, tuple["Run", Any]] = {}

_tokens = itertools.count(1)
_guard = threading.Lock()
_locks: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_registered = False
_MISSING = object()
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def model_lock(hf_model: Any) -> threading.RLock:
    """The lock that makes ltt's runs on one transformers model take turns."""
    with _guard:
        lock = _locks.get(hf_model)
        if lock is None:
            lock = _locks[hf_model] = threading.RLock()
        return lock


def busy() -> bool:
    """Whether any run holds a model, a handler or a switched config (False between runs)."""
    return bool(_OWNERS or _ACTIVE or _ORIGINAL)


class Call:
    """One call of the registered attention function for a module with a handler."""

    __slots__ = ("module", "query", "key", "value", "mask", "args", "kwargs", "eager_fn")

    def __init__(self, module, query, key, value, mask, args, kwargs, eager_fn):
        self.module, self.query, self.key, self.value, self.mask = module, query, key, value, mask
        self.args, self.kwargs, self.eager_fn = args, kwargs, eager_fn

    def eager(self) -> tuple[Any, Any]:
        """``(output, weights)`` of the module's own eager attention on this call's inputs."""
        return self.eager_fn(self.module, self.query, self.key, self.value, self.mask, *self.args, **self.kwargs)


def _own_eager(module: Any) -> Callable:
    fn = eager_function(module)
    if fn is None:
        raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward in its module; "
                           "ltt cannot run its attention")
    return fn


def _attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any):
    """The registered attention function: the active run's handler for its own forward, the
    model's own implementation for every other call."""
    run = _CURRENT.get()
    entry = _ACTIVE.get(id(module))
    if entry is not None and run is not None and entry[0] is run:
        return entry[1](Call(module, query, key, value, attention_mask, args, kwargs, _own_eager(module)))
    orig = _ORIGINAL.get(id(getattr(module, "config", None)))
    impl = "eager" if orig is None or orig[0] is run else orig[1]
    if impl in (None, "eager", IMPLEMENTATION):
        fn = _own_eager(module)
    else:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        fn = ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_function(module))
    return fn(module, query, key, value, attention_mask, *args, **kwargs)


def _mask(*args: Any, config: Any = None, **kwargs: Any):
    """The registered mask function: eager masks for a run's own forward, the config's original
    mask function (e.g. ``sdpa``'s) for every other forward."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    orig = _ORIGINAL.get(id(config))
    impl = "eager" if orig is None or orig[0] is _CURRENT.get() else orig[1]
    fn = eager_mask
    if impl not in (None, "eager", IMPLEMENTATION) and impl in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        fn = ALL_MASK_ATTENTION_FUNCTIONS[impl]
    return fn(*args, config=config, **kwargs)


def _register() -> None:
    global _registered
    with _guard:
        if not _registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface

            AttentionInterface.register(IMPLEMENTATION, _attention)
            AttentionMaskInterface.register(IMPLEMENTATION, _mask)
            _registered = True


def configs_of(hf: Any, modules: Any = None) -> list[Any]:
    """Every config the model holds that has an attention implementation (sub-configs too);
    ``modules``: ``hf.modules()`` when already listed."""
    seen: dict[int, Any] = {id(hf.config): hf.config}
    for m in hf.modules() if modules is None else modules:
        c = m.__dict__.get("config")
        if c is None and hasattr(type(m), "config"):  # a config that is not a plain attribute
            c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation_internal"):
            seen.setdefault(id(c), c)
    return list(seen.values())


def _in_cleanup(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code in _CLEANUP_CODES:
            return True
        frame = frame.f_back
    return False


class Run:
    """One instrumented forward pass of ``model`` (an :class:`ltt.models.Model`); see the
    module docstring. ``point`` is the client's fault-injection function (called with
    ``"hook-registered"`` after each hook, ``"run-forward"`` before the forward call,
    ``"restore:<n>"`` before each clean-up step of the first pass)."""

    def __init__(self, model: Any, point: Callable[[str], None] | None = None):
        self.model = model
        self.hf = model.hf_model
        self.point = point or (lambda name: None)
        self.token = next(_tokens)
        self.thread = threading.get_ident()
        self._undo: list[Callable[[], None]] = []
        self._exits: ExitStack | None = None
        self._held: Any = None
        self._handles: list[Any] = []
        self._sigint: Any = _MISSING
        self._pending = False
        self._gated = False
        self._modules: list[Any] = []  # the model's modules, listed once on entry
        self._hooked: list[Any] = []  # the modules given hooks through hook() or _gate()
        self._tagged_elsewhere = False  # tag() was called by a client: its modules are unknown

    # -- entering -----------------------------------------------------------------------------

    def __enter__(self) -> "Run":
        hf, key = self.hf, id(self.hf)
        owner = _OWNERS.get(key)
        if owner is not None and owner.thread == self.thread:
            raise RuntimeError(
                f"{self.model.name!r} is already in an ltt run in this thread (a trace or intervened "
                "run started from inside a hook or callback of another one)")
        exits = ExitStack()
        exits.callback(self._unwind, True)   # the second pass: finishes what the first left
        exits.callback(self._unwind, False)  # the first pass
        self._exits = exits
        try:
            self._undo.append(self._release)
            lock = model_lock(hf)
            self._held = lock if lock.acquire() else None  # acquired and marked in one line
            self._undo.append(self._restore_sigint)
            self._defer_sigint()
            self._undo.append(self._clear_owner)
            _OWNERS[key] = self
            self._modules = list(hf.modules())
            modes = [(m, m.training) for m in self._modules]
            self._undo.append(lambda: self._restore_modes(modes))
            self._undo.append(self._remove_hooks)
            self._undo.append(self._drop_handlers)
            self._undo.append(self._leave_forward)
            if any(mode for _, mode in modes):
                self._gate()  # a foreign forward must not run in the eval mode switched below
                hf.eval()
        except BaseException as exc:
            self._exits = None
            exits.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        exits, self._exits = self._exits, None
        if exits is not None:
            exits.__exit__(*exc)
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt("deferred until ltt had restored the model")

    # -- what clients use ----------------------------------------------------------------------

    @property
    def modules(self) -> list[Any]:
        """The model's modules, listed once on entry (empty before)."""
        return self._modules

    def tag(self, fn: Callable) -> Callable:
        """``fn`` as a hook of this run: it acts only in the run's own forward pass (returns
        None, changing nothing, in any other) and is tagged for the clean-up's safety net
        (which then looks at every module of the model)."""
        self._tagged_elsewhere = True
        return self._tag(fn)

    def _tag(self, fn: Callable) -> Callable:
        run = self

        def hook(*args: Any, **kwargs: Any) -> Any:
            if _CURRENT.get() is not run:
                return None
            return fn(*args, **kwargs)

        hook._ltt_token = self.token
        return hook

    def hook(self, module: Any, fn: Callable, pre: bool = False, with_kwargs: bool = False) -> Any:
        """Register ``fn`` (see :meth:`tag`) on ``module``: a forward hook, or a forward
        pre-hook with ``pre=True``; removed on exit."""
        self._hooked.append(module)  # before registering: the safety net looks here
        self.added(module.register_forward_pre_hook(self._tag(fn), with_kwargs=with_kwargs) if pre
                   else module.register_forward_hook(self._tag(fn), with_kwargs=with_kwargs))

    def added(self, handle: Any) -> None:
        """Keep the handle of a hook registered with a function from :meth:`tag`."""
        self.point("hook-registered")  # an interrupt here: registered, handle not yet stored
        self._handles.append(handle)

    def attention(self, module: Any, handler: Callable[[Call], Any]) -> None:
        """Route the attention calls of ``module`` in this run's forward to ``handler``."""
        _ACTIVE[id(module)] = (self, handler)

    def switch_attention(self, interface: bool) -> None:
        """Switch every config's attention implementation for the run: to ltt's registered
        function (``interface=True``: the family's attention modules call transformers'
        attention interface, switchable per call), else to ``eager`` where it is not already
        (then a foreign forward waits on the lock until the run is over)."""
        configs = configs_of(self.hf, self._modules or None)
        saved = [(c, c.__dict__.get("_attn_implementation_internal", _MISSING)) for c in configs]
        self._undo.append(lambda: self._restore_configs(saved))
        if interface:
            if getattr(self.hf.config, "reorder_and_upcast_attn", False):
                self._gate()  # GPT-2's upcast attention runs only under "eager": not switchable per call
            _register()
            for c in configs:
                _ORIGINAL[id(c)] = (self, c._attn_implementation)
            for c in configs:
                c._attn_implementation_internal = IMPLEMENTATION
            return
        if any(c._attn_implementation not in (None, "eager") for c in configs):
            self._gate()
        for c in configs:
            c._attn_implementation_internal = "eager"

    def forward(self, grad: bool = False, **inputs: Any) -> Any:
        """The model's forward on ``inputs``, the one call this run instruments (no autograd
        unless ``grad=True``)."""
        import torch

        self.point("run-forward")
        token = _CURRENT.set(self)
        try:
            with torch.set_grad_enabled(bool(grad)):
                return self.hf(**inputs)
        finally:
            _CURRENT.reset(token)

    def _gate(self) -> None:
        """A root pre-hook that makes another thread's forward wait until this run is over."""
        if self._gated:
            return
        run, lock = self, model_lock(self.hf)

        def wait(module: Any, args: Any) -> None:
            if _CURRENT.get() is not run and threading.get_ident() != run.thread:
                with lock:
                    pass

        wait._ltt_token = self.token
        self._hooked.append(self.hf)
        self.added(self.hf.register_forward_pre_hook(wait))
        self._gated = True

    # -- SIGINT -------------------------------------------------------------------------------

    def _defer_sigint(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # a handler not installed from Python: left alone
            return
        run = self

        def on_sigint(signum: int, frame: Any) -> None:
            if _in_cleanup(frame):
                run._pending = True  # raised by __exit__ once the model is restored
                return
            if previous == signal.SIG_IGN:
                return
            if callable(previous):
                previous(signum, frame)
            else:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)
        self._sigint = previous

    # -- the clean-up (every step idempotent) ---------------------------------------------------

    def _unwind(self, tolerant: bool) -> None:
        undo = self._undo
        failure = None
        while undo:
            try:
                if not tolerant:
                    self.point(f"restore:{len(undo)}")  # fault injection, first pass only
                undo[-1]()
            except BaseException as exc:
                if not tolerant:
                    raise
                failure = failure or exc
            undo.pop()
        if failure is not None:
            raise failure

    def _leave_forward(self) -> None:
        if _CURRENT.get() is self:
            _CURRENT.set(None)

    def _drop_handlers(self) -> None:
        for key, entry in list(_ACTIVE.items()):
            if entry[0] is self:
                _ACTIVE.pop(key, None)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        # a hook registered just before an interrupt, its handle lost: on a module given one by
        # hook() or _gate() (listed before registering), or on any module after tag()
        scan = (self._modules or list(self.hf.modules())) if self._tagged_elsewhere else self._hooked
        for m in dict.fromkeys(scan):
            for name in ("_forward_hooks", "_forward_pre_hooks"):
                hooks = getattr(m, name, None)
                for hid, fn in list(hooks.items()) if hooks else ():
                    if getattr(fn, "_ltt_token", None) == self.token:
                        for other in _HOOK_DICTS:
                            d = getattr(m, other, None)
                            if d is not None:
                                d.pop(hid, None)

    @staticmethod
    def _restore_modes(modes: list[tuple[Any, bool]]) -> None:
        for m, mode in modes:
            if m.training != mode:
                m.training = mode

    def _restore_configs(self, saved: list[tuple[Any, Any]]) -> None:
        for c, value in saved:
            if value is _MISSING:
                c.__dict__.pop("_attn_implementation_internal", None)
            else:
                c._attn_implementation_internal = value
        for c, _ in saved:
            if _ORIGINAL.get(id(c), (None,))[0] is self:
                _ORIGINAL.pop(id(c), None)

    def _clear_owner(self) -> None:
        if _OWNERS.get(id(self.hf)) is self:
            del _OWNERS[id(self.hf)]

    def _restore_sigint(self) -> None:
        if self._sigint is not _MISSING:
            signal.signal(signal.SIGINT, self._sigint)
            self._sigint = _MISSING

    def _release(self) -> None:
        if self._held is not None:
            self._held = self._held.release()  # one line: released and marked (None) together


#: The clean-up's functions (SIGINT is deferred while one of them runs).
RESTORE_PATH = (Run.__exit__, Run._unwind, Run._leave_forward, Run._drop_handlers, Run._remove_hooks,
                Run._restore_modes, Run._restore_configs, Run._clear_owner, Run._restore_sigint, Run._release)
_CLEANUP_CODES = frozenset(f.__code__ for f in RESTORE_PATH)
