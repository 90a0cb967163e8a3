"""The one instrumented run (ltt/models/instrument.py, issues 23 and 24): only the run's own
forward is instrumented (another thread's forward of the model, parked at every phase of a
trace or an intervened run, is bit-identical to the untraced model's), the clean-up survives an
interrupt at every line of its restore path (sys.settrace, deterministic), a real SIGINT inside
the clean-up is deferred, and weight edits through ``.data`` / NumPy views are detected."""

from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np
import pytest
import torch

import ltt
from ltt.models import instrument, record

from conftest import PROMPT, build_tiny

SAME = PROMPT  # a user prompt of the trace's own length
OTHER = "Hello there, a different"  # and one of another length


def _load(key: str, impl: str = "eager"):
    hf, tok = build_tiny(key)
    if impl != "eager":
        hf.config._attn_implementation = impl  # also sets the sub-configs
    return ltt.load(hf, tokenizer=tok)


def _ids(model, text):
    return [int(i) for i in model.tokenizer(text)["input_ids"]]


def _user_forward(hf, ids):
    """A plain user forward of the model (what a notebook thread or eval loop does)."""
    with torch.no_grad():
        return hf(input_ids=torch.tensor([ids])).logits


def _state(hf):
    hooks = sum(len(getattr(m, name)) for m in hf.modules() for name in (
        "_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"))
    impls = [c.__dict__.get("_attn_implementation_internal", "<missing>") for c in instrument.configs_of(hf)]
    return hooks, impls, [m.training for m in hf.modules()]


def _lock_free(hf) -> bool:
    got = []
    t = threading.Thread(target=lambda: got.append(instrument.model_lock(hf).acquire(blocking=False)
                                                   and instrument.model_lock(hf).release() is None))
    t.start()
    t.join(10)
    return got == [True]


def _edges(trace):
    g = trace.graph()
    return [(e.source, e.target, e.kind, e.weight) for e in g.edges]


def _exact_next_trace(model, reference):
    tr = model.trace(PROMPT)
    assert max(tr.check().values()) < 1e-4
    np.testing.assert_array_equal(tr.logits, reference.logits)
    assert _edges(tr) == _edges(reference)
    with torch.no_grad():
        own = model.hf_model(input_ids=torch.tensor([tr.token_ids.tolist()]), logits_to_keep=1).logits[0, -1]
    np.testing.assert_array_equal(tr.logits, own.numpy())


@pytest.fixture
def fault(monkeypatch):
    def set_fault(fn):
        monkeypatch.setattr(record, "FAULT", fn)
    return set_fault


# --------------------------------------------------------------------------------------------
# another thread's forward during each phase

TRACE_PHASES = ["register", "hook-registered", "registered", "forward", "run-forward", "hook:0:y",
                "layer:0", "layer:1", "forward-done", "restore:8", "restore:6", "restore:3", "restore:1"]


def _park_at(fault, phase):
    """FAULT that parks the (first) thread reaching ``phase`` until released."""
    inside, release = threading.Event(), threading.Event()

    def park(name):
        if name == phase and not inside.is_set():
            inside.set()
            assert release.wait(60)

    fault(park)
    return inside, release


def _during(fault, phase, work, users, gated=False):
    """Run ``work()`` in a thread parked at ``phase``; meanwhile run each of ``users`` (callables)
    in this thread; returns (work's result, users' results)."""
    inside, release = _park_at(fault, phase)
    box: dict = {}

    def run():
        try:
            box["out"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["out"] = exc

    t = threading.Thread(target=run)
    t.start()
    assert inside.wait(60), f"the run never reached {phase!r}"
    got = []
    if gated:  # the user's forward waits for the run instead of running beside it
        waiter = threading.Thread(target=lambda: got.extend(u() for u in users))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not got
        release.set()
        waiter.join(60)
    else:
        got = [u() for u in users]
        release.set()
    t.join(60)
    fault(None)
    if isinstance(box["out"], BaseException):
        raise box["out"]
    return box["out"], got


@pytest.mark.parametrize("key,impl", [("llama", "eager"), ("llama", "sdpa"), ("gpt_neo", "eager"), ("gemma2", "eager")])
def test_a_user_forward_in_another_thread_during_each_trace_phase_is_the_models_own(key, impl, fault):
    model = _load(key, impl)
    hf = model.hf_model
    same, other = _ids(model, SAME), _ids(model, OTHER)
    want = [_user_forward(hf, same), _user_forward(hf, other)]
    reference = model.trace(PROMPT)
    before = _state(hf)
    points = []
    fault(points.append)
    model.trace(PROMPT)
    fault(None)
    for phase in TRACE_PHASES:
        assert phase in points, phase
        trace, got = _during(fault, phase, lambda: model.trace(PROMPT),
                             [lambda: _user_forward(hf, same), lambda: _user_forward(hf, other)])
        for g, w in zip(got, want):
            assert torch.equal(g, w), f"{key}/{impl}: a user forward during {phase!r} differs"
        np.testing.assert_array_equal(trace.logits, reference.logits)
        assert _edges(trace) == _edges(reference), phase
        assert _state(hf) == before and not instrument.busy()


def test_a_user_forward_waits_where_the_run_cannot_switch_per_call(fault):
    """Modules in train mode: the run switches the model to eval, so a foreign forward waits on
    the model's lock (and then runs in the user's own mode)."""
    model = _load("llama")
    hf = model.hf_model
    hf.train()  # the tiny configs have no dropout: train mode gives the same numbers
    ids = _ids(model, OTHER)
    want = _user_forward(hf, ids)
    reference = model.trace(PROMPT)
    trace, got = _during(fault, "layer:1", lambda: model.trace(PROMPT), [lambda: _user_forward(hf, ids)], gated=True)
    assert torch.equal(got[0], want)
    np.testing.assert_array_equal(trace.logits, reference.logits)
    assert all(m.training for m in hf.modules())


FAITH_PHASES = ["hook-registered", "run-forward", "restore:6", "restore:2"]


@pytest.mark.parametrize("key", ["llama", "falcon"])
def test_a_user_forward_during_faithfulness_is_the_models_own(key, fault):
    model = _load(key)
    hf = model.hf_model
    same, other = _ids(model, SAME), _ids(model, OTHER)
    want = [_user_forward(hf, same), _user_forward(hf, other)]
    trace = model.trace(PROMPT)
    g = trace.graph(threshold=0.05)
    reference = trace.faithfulness(g, baselines=2, seed=0).to_dict()
    for phase in FAITH_PHASES:
        got_f, got = _during(fault, phase, lambda: trace.faithfulness(g, baselines=2, seed=0).to_dict(),
                             [lambda: _user_forward(hf, same), lambda: _user_forward(hf, other)])
        for a, w in zip(got, want):
            assert torch.equal(a, w), f"{key}: a user forward during {phase!r} differs"
        assert got_f == reference, phase
    assert not instrument.busy()


def test_a_foreign_call_of_the_registered_function_falls_through():
    """The registered attention function, called outside any run (a config left pointing at it
    by user code), runs the module's own eager attention."""
    model = _load("llama")
    hf = model.hf_model
    ids = _ids(model, OTHER)
    want = _user_forward(hf, ids)
    model.trace(PROMPT)  # registers the implementation
    hf.config._attn_implementation = instrument.IMPLEMENTATION
    try:
        assert torch.equal(_user_forward(hf, ids), want)
    finally:
        hf.config._attn_implementation = "eager"


# --------------------------------------------------------------------------------------------
# an interrupt at every line of the restore path


def _restore_codes():
    codes = {f.__code__ for f in instrument.RESTORE_PATH if f.__name__ != "__exit__"}  # its one dispatch line: see docs
    return codes, instrument._CLEANUP_CODES


def _injector(k):
    """A sys.settrace function raising KeyboardInterrupt at the k-th line event of the restore
    path (None: only count), returning the (code, line) of every line event seen."""
    codes, cleanup = _restore_codes()
    seen = []

    def local(frame, event, arg):
        if event == "line":
            seen.append((frame.f_code, frame.f_lineno))
            if k is not None and len(seen) == k + 1:
                raise KeyboardInterrupt(f"injected at line {frame.f_lineno} of {frame.f_code.co_name}")
        return local

    def global_(frame, event, arg):
        c = frame.f_code
        if c in codes:
            return local
        if (c.co_name == "<lambda>" and c.co_filename == instrument.__file__ and frame.f_back is not None
                and frame.f_back.f_code in cleanup):
            return local
        return None

    return global_, seen


@pytest.mark.parametrize("key,work", [("llama", "trace"), ("llama", "faithfulness"), ("gpt_neo", "trace")])
def test_an_interrupt_at_every_line_of_the_restore_path_leaves_the_model_as_found(key, work, monkeypatch):
    model = _load(key)
    hf = model.hf_model
    hf.model.layers[0].mlp.train() if hasattr(hf, "model") else hf.transformer.h[0].mlp.train()
    reference = model.trace(PROMPT)
    g = reference.graph(threshold=0.05)
    run = (lambda: model.trace(PROMPT)) if work == "trace" else (lambda: reference.faithfulness(g, baselines=1))
    before = _state(hf)
    active = {}
    real_exit = instrument.Run.__exit__

    def traced_exit(self, *exc):  # the tracer runs from the clean-up's start (fast: no forward traced)
        sys.settrace(active["tracer"])
        try:
            return real_exit(self, *exc)
        finally:
            sys.settrace(None)

    monkeypatch.setattr(instrument.Run, "__exit__", traced_exit)
    active["tracer"], seen = _injector(None)
    run()
    assert len(seen) > 30
    # every distinct line, at its first and its last occurrence (a loop cut before and after its work)
    first, last = {}, {}
    for i, where in enumerate(seen):
        first.setdefault(where, i)
        last[where] = i
    moments = sorted(set(first.values()) | set(last.values()))
    assert len({c for c, _ in seen}) >= 8  # every step of the clean-up was reached
    for k in moments:
        active["tracer"], _ = _injector(k)
        with pytest.raises(KeyboardInterrupt):
            run()
        where = f"{seen[k][0].co_name}:{seen[k][1]}"
        assert _state(hf) == before, f"model changed by an interrupt at {where}"
        assert not instrument.busy() and _lock_free(hf), where
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, where
    monkeypatch.setattr(instrument.Run, "__exit__", real_exit)
    _exact_next_trace(model, reference)


def test_a_real_sigint_inside_the_clean_up_is_deferred_until_the_model_is_restored(fault):
    model = _load("llama")
    hf = model.hf_model
    reference = model.trace(PROMPT)
    before = _state(hf)
    for step in ("restore:8", "restore:5", "restore:2"):
        fault(lambda name, step=step: os.kill(os.getpid(), signal.SIGINT) if name == step else None)
        with pytest.raises(KeyboardInterrupt, match="deferred"):
            model.trace(PROMPT)
        fault(None)
        assert _state(hf) == before and not instrument.busy()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    fault(lambda name: os.kill(os.getpid(), signal.SIGINT) if name == "layer:1" else None)
    with pytest.raises(KeyboardInterrupt):  # outside the clean-up: raised at once, as Python does
        model.trace(PROMPT)
    fault(None)
    assert _state(hf) == before
    _exact_next_trace(model, reference)


def test_a_fault_that_keeps_failing_in_the_clean_up_still_restores_the_rest(fault):
    model = _load("llama")
    hf = model.hf_model
    before = _state(hf)

    def always(name):
        if name.startswith("restore:"):
            raise RuntimeError("injected in the clean-up")

    fault(always)
    with pytest.raises(RuntimeError, match="injected in the clean-up"):
        model.trace(PROMPT)
    fault(None)
    assert _state(hf) == before and not instrument.busy() and _lock_free(hf)


def test_a_nested_run_in_the_same_thread_is_refused_and_leaves_the_outer_one():
    model = _load("llama")
    errors = []

    def nested(module, args):
        if not errors:
            try:
                model.trace(PROMPT)
            except RuntimeError as exc:
                errors.append(str(exc))

    h = model.decoder_layers[0].register_forward_pre_hook(nested)
    try:
        tr = model.trace(PROMPT)
    finally:
        h.remove()
    assert errors and "already in an ltt run in this thread" in errors[0]
    assert max(tr.check().values()) < 1e-4 and not instrument.busy()


# --------------------------------------------------------------------------------------------
# weights edited behind the version counter


@pytest.mark.parametrize("how", ["data", "numpy", "numpy-one-element"])
def test_weight_edits_through_data_or_numpy_views_invalidate_the_cache(how):
    model = _load("llama")
    hf = model.hf_model
    old = model.trace(PROMPT)
    old.layers[1].w_o  # fills the caches
    w = hf.model.layers[1].self_attn.o_proj.weight
    version = w._version
    if how == "data":
        w.data.mul_(1.5)
    elif how == "numpy":
        w.detach().numpy()[:] *= 1.5
    else:
        w.detach().numpy()[3, 5] += 0.5
    assert w._version == version  # the edit the version counter does not see
    new = model.trace(PROMPT)  # not refused: the cached w_o was invalidated
    assert max(new.check().values()) < 1e-4
    np.testing.assert_array_equal(new.layers[1].w_o.reshape(-1, model.d_model),
                                  w.detach().numpy().T.reshape(-1, model.d_model))
    with pytest.raises(RuntimeError, match="changed after this trace"):
        old.layers[1].w_o
