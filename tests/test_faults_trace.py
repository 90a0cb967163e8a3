"""Tracing under faults (issue 11): interrupts injected at every point of a trace, two threads,
weights changed under a trace, a foreign hook, a trace too large for memory. The user's model is
always left as found and no wrong trace is ever returned."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import ltt
from ltt.models import instrument, record
from ltt.models.tracing import estimate_bytes

from test_models import PROMPT

OTHER = "The capital of France is Paris, and the capital of Italy is"


def _state(hf):
    """What a trace must leave unchanged: hooks, attention implementation, train/eval modes."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
                + len(m._forward_pre_hooks_with_kwargs) for m in hf.modules())
    modes = [m.training for m in hf.modules()]
    return hooks, hf.config._attn_implementation, modes


def _same_trace(a, b):
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    ga, gb = a.graph(), b.graph()
    assert [(e.source, e.target, e.kind) for e in ga.edges] == [(e.source, e.target, e.kind) for e in gb.edges]
    np.testing.assert_allclose([e.weight for e in ga.edges], [e.weight for e in gb.edges], atol=1e-5)


@pytest.fixture(scope="module")
def llama(tiny_dir):
    return ltt.load(tiny_dir("llama"))


@pytest.fixture
def fault(monkeypatch):
    """Set ``record.FAULT`` for one test."""
    def set_fault(fn):
        monkeypatch.setattr(record, "FAULT", fn)
    return set_fault


def test_interrupt_at_every_point_leaves_the_model_as_found(llama, fault):
    hf = llama.hf_model
    hf.model.layers[1].train()  # a mode the trace changes and must restore
    reference = llama.trace(PROMPT)
    before = _state(hf)
    points: list[str] = []
    fault(points.append)
    llama.trace(PROMPT)
    assert len(points) > 20 and "hook-registered" in points and "forward" in points
    for k in range(len(points)):
        calls = iter(range(len(points) + 1))

        def interrupt(name, k=k):
            if next(calls) == k:
                raise KeyboardInterrupt(f"injected at {name}")

        fault(interrupt)
        with pytest.raises(KeyboardInterrupt):
            llama.trace(PROMPT)
        assert _state(hf) == before, f"model changed by an interrupt at point {k}: {points[k]}"
        assert instrument._ACTIVE == {}
    fault(None)
    _same_trace(llama.trace(PROMPT), reference)  # the lock was released, nothing left behind
    hf.model.layers[1].eval()


def test_a_hook_whose_handle_was_never_stored_is_removed(llama, fault):
    hf = llama.hf_model
    before = _state(hf)

    def interrupt(name):
        if name == "hook-registered":
            raise KeyboardInterrupt

    fault(interrupt)
    with pytest.raises(KeyboardInterrupt):
        llama.trace(PROMPT)
    assert _state(hf) == before


def test_two_threads_trace_one_model_one_at_a_time(llama, fault):
    """The second thread waits for the first (held inside its forward pass); both traces are
    exactly the single-threaded ones, for prompts of equal and of unequal lengths."""
    ref_a, ref_b = llama.trace(PROMPT), llama.trace(OTHER)
    inside, release = threading.Event(), threading.Event()
    owner = []

    def hold(name):
        if name == "forward" and not owner:
            owner.append(threading.get_ident())
            inside.set()
            assert release.wait(30)

    fault(hold)
    results: dict[str, object] = {}

    def run(key, prompt):
        try:
            results[key] = llama.trace(prompt)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            results[key] = exc

    first = threading.Thread(target=run, args=("a", PROMPT))
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=run, args=("b", OTHER))
    second.start()
    second.join(0.5)
    assert second.is_alive() and "b" not in results  # waiting for the lock, not mixing activations
    release.set()
    first.join(30)
    second.join(30)
    fault(None)
    _same_trace(results["a"], ref_a)
    _same_trace(results["b"], ref_b)

    out: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, llama.trace(PROMPT if i % 2 else OTHER)))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, tr in out.items():
        _same_trace(tr, ref_a if i % 2 else ref_b)


def test_changed_weights_are_used_and_old_traces_refuse_stale_detail(tiny_dir):
    model = ltt.load(tiny_dir("llama"))
    hf = model.hf_model
    old = model.trace(PROMPT)
    old.layers[0].w_o  # fills the weight caches
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    for k in state:
        if k.endswith("o_proj.weight") or k.endswith("down_proj.weight") or k == "model.norm.weight":
            state[k] = state[k] * 1.5
    hf.load_state_dict(state)
    new = model.trace(PROMPT)
    assert max(new.check().values()) < 1e-4
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([new.token_ids.tolist()])).logits[0, -1].numpy()
    np.testing.assert_allclose(new.logits, want, atol=1e-5)
    assert not np.allclose(new.logits, old.logits, atol=1e-3)
    with pytest.raises(RuntimeError, match="changed after this trace"):
        old.layers[0].w_o
    with torch.no_grad():  # an optimiser-style in-place step
        hf.model.layers[1].mlp.down_proj.weight.add_(0.01)
    assert max(model.trace(PROMPT).check().values()) < 1e-4


def test_a_foreign_hook_that_changes_outputs_is_refused(tiny_dir):
    model = ltt.load(tiny_dir("llama"))
    hf = model.hf_model

    def shift(module, args, output):
        return output + 1.0

    handle = hf.model.layers[1].mlp.down_proj.register_forward_hook(shift)
    try:
        before = _state(hf)
        with pytest.raises(RuntimeError, match=r"layer 1 .*verify=False") as err:
            model.trace(PROMPT)
        assert "forward hook" in str(err.value)
        assert _state(hf) == before  # the user's own hook is still there, ours are gone
        model.trace(PROMPT, verify=False)  # the explicit opt-out
    finally:
        handle.remove()
    with pytest.raises(TypeError, match="verify"):
        model.trace(PROMPT, verify="no")


def test_memory_estimate_refuses_before_the_forward_pass(llama, fault):
    points = []
    fault(points.append)
    with pytest.raises(MemoryError, match=r"needs about .* GiB .* available: use a shorter prompt"):
        llama.trace(PROMPT, memory_limit=1000)
    assert points == []  # refused before any hook or forward
    small, big = estimate_bytes(llama, 512), estimate_bytes(llama, 1024)
    assert 1.9 < big["kept"] / small["kept"] < 2.1  # kept memory grows like T
    assert 3.9 < big["layer_peak"] / small["layer_peak"] < 4.1  # one layer's peak like T^2
    with pytest.raises(ValueError, match="memory_limit"):
        llama.trace(PROMPT, memory_limit=-5)
