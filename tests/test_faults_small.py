"""The smaller faults of issue 11: the core's edge cases against its twin (negative parts in
``renormalize``, a ``prune`` target beyond int64, an exception from an argument's ``__array__``),
``graph`` arguments that compared equal to valid ones, ``ltt.load`` of a missing path or an
unreachable hub id, and the CLI refusing bad outputs and targets before loading the weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import ltt
from ltt import _core
from ltt import _reference as R
from ltt import kernels as A
from ltt import routes as routes_mod

from test_core_errors import FLOAT_ARGS, NAMES, base

# --------------------------------------------------------------------------------------------
# core


@pytest.mark.parametrize("arg", ["heads", "single"])
@pytest.mark.parametrize("fn", [A.renormalize, R.renormalize], ids=["core", "twin"])
def test_renormalize_refuses_negative_parts_in_both(fn, arg):
    kw = base("renormalize")
    bad = kw[arg].copy()
    bad.reshape(-1)[3] = -0.25
    kw[arg] = bad
    with pytest.raises(ValueError, match=rf"{arg} holds a negative share"):
        fn(**kw)


def test_renormalize_states_the_twin_used_to_disagree_on():
    # all parts negative (was: core 1.0, twin -0.1): refused by both; all zero: both keep zeros;
    # -0.0 is not negative
    h, s = np.array([[[-0.5, -0.3]]], np.float32), np.array([[-0.1]], np.float32)
    for fn in (A.renormalize, R.renormalize):
        with pytest.raises(ValueError, match="heads holds a negative share"):
            fn(h, s, 0.0)
    for h, s in [(np.zeros((1, 1, 2), np.float32), np.zeros((1, 1), np.float32)),
                 (np.array([[[-0.0, 0.01]]], np.float32), np.array([[0.02]], np.float32))]:
        got, want = A.renormalize(h, s, 0.1), R.renormalize(h, s, 0.1)
        for k in ("edges", "single"):
            np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("targets", [np.array([2**64 - 1], np.uint64), [2**64 - 1], [2**63],
                                     np.array([0, 2**63 + 5], np.uint64)],
                         ids=["uint64-max", "list-max", "2**63", "mixed"])
@pytest.mark.parametrize("fn", [A.prune, R.prune], ids=["core", "twin"])
def test_prune_refuses_targets_beyond_int64(fn, targets):
    kw = base("prune")
    kw["targets"] = targets
    with pytest.raises(ValueError, match=r"targets holds \d+, which does not fit in int64"):
        fn(**kw)


def test_prune_targets_numpy_cannot_hold_exactly_are_refused():
    kw = base("prune")
    for targets in ([0, 2**63 + 5], [2**70]):  # NumPy makes float64 / object arrays of these
        kw["targets"] = targets
        with pytest.raises(TypeError, match="targets must be integer token positions"):
            A.prune(**kw)


def test_prune_uint64_targets_that_fit_still_work():
    kw = base("prune")
    kw["targets"] = np.array([4, 0], np.uint64)
    got, want = A.prune(**kw), R.prune(**kw)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


class Raising:
    """An array-like whose conversion raises ``exc``."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __array__(self, *args, **kwargs):
        raise self.exc


class Custom(Exception):
    pass


@pytest.mark.parametrize("make", [lambda: MemoryError("out of memory in __array__"),
                                  lambda: KeyboardInterrupt(), lambda: Custom("mine")],
                         ids=["MemoryError", "KeyboardInterrupt", "custom"])
@pytest.mark.parametrize("name,arg", [(n, a) for n in NAMES for a in FLOAT_ARGS[n] + (
    ["parallel", "targets"] if n == "prune" else [])])
@pytest.mark.parametrize("entry", ["core", "wrapper"])
def test_an_exception_from_array_propagates_unchanged(entry, name, arg, make):
    kw = base(name)
    exc = make()
    kw[arg] = Raising(exc)
    fn = getattr(_core if entry == "core" else A, name)  # the core takes the same keywords
    with pytest.raises(type(exc)) as info:
        fn(**kw)
    assert info.value is exc


@pytest.mark.parametrize("exc", [TypeError("no"), ValueError("no")], ids=["TypeError", "ValueError"])
def test_a_conversion_error_names_the_argument_and_keeps_the_cause(exc):
    kw = base("contributions")
    kw["whole"] = Raising(exc)
    with pytest.raises(TypeError, match="whole must be an array of floats") as info:
        _core.contributions(**kw)
    assert info.value.__cause__ is exc
    with pytest.raises(TypeError, match="parts must be an array of floats") as info:
        _core.contributions([[1.0], [1.0, 2.0]], np.ones(1, np.float32))  # ragged
    assert isinstance(info.value.__cause__, ValueError)


# --------------------------------------------------------------------------------------------
# graph arguments


@pytest.fixture(scope="module")
def trace(tiny_model):
    t = tiny_model("llama").trace("the dog sleeps")
    t.graph()  # a cached norm=1 attribution: 1.0 and True must not reach it
    return t


@pytest.mark.parametrize("norm", [1.0, True, np.float64(2.0), np.True_, "1"])
def test_graph_refuses_a_norm_that_is_not_an_int(trace, norm):
    with pytest.raises(TypeError, match="norm must be the int 1 or 2"):
        trace.graph(norm=norm)
    with pytest.raises(TypeError, match="norm must be the int 1 or 2"):
        routes_mod.trace_many(trace.model, ["a"], norm=norm)


@pytest.mark.parametrize("targets", [{1: 2}, True, np.True_, 1.0, {"a": 1}, object()],
                         ids=["dict", "True", "np.True_", "float", "str-dict", "object"])
def test_graph_refuses_targets_that_are_not_positions(trace, targets):
    with pytest.raises(TypeError, match="targets must be an int, a list of int token positions or 'all'"):
        trace.graph(targets=targets)


def test_graph_accepts_the_documented_targets(trace):
    T = len(trace.tokens)
    want = trace.graph(targets=[1, T - 1])
    for targets in ([1, -1], (1, -1), np.array([1, -1]), range(1, T, T - 2), {1, T - 1}):
        assert trace.graph(targets=targets).targets == want.targets
    assert trace.graph(targets=np.int64(-1)).targets == [T - 1]
    assert trace.graph(norm=np.int64(2)).norm == 2


# --------------------------------------------------------------------------------------------
# ltt.load


@pytest.mark.parametrize("name", ["/no/such/dir", "./no-such-model", "../no-such-model", "~/no-such-model",
                                  "a/b/c"])
def test_load_a_missing_path_says_so(name):
    with pytest.raises(FileNotFoundError, match=r"name_or_path=.*: no such directory \(the nearest folder"):
        ltt.load(name)


def test_load_a_path_whose_first_folder_exists(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'models/gpt2-ft': no such directory"):
        ltt.load("models/gpt2-ft")
    f = tmp_path / "models" / "weights.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        ltt.load(str(f))


def test_load_expands_the_home_directory(tiny_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_dir("llama"), tmp_path / "mymodel")
    monkeypatch.setenv("HOME", str(tmp_path))
    model = ltt.load("~/mymodel")
    assert model.name == str(tmp_path / "mymodel") and model.n_layers == 2


def test_offline_hub_id_fails_fast_and_says_why(monkeypatch):
    # set after huggingface_hub was imported (as in a notebook): ltt reads it at each load
    import transformers  # noqa: F401

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"name_or_path='nosuch-org/nosuch-model': .*not in the Hugging Face "
                                      r"cache; HF_HUB_OFFLINE is set, so the hub was not asked"):
        ltt.load("nosuch-org/nosuch-model")
    with pytest.raises(OSError, match=r"tokenizer='nosuch-org/nosuch-tok': .*HF_HUB_OFFLINE is set"):
        ltt.load("nosuch-org/nosuch-model", tokenizer="nosuch-org/nosuch-tok")
    # was 23-38 s of retries; a generous bound, not a benchmark
    assert time.perf_counter() - start < 15


# --------------------------------------------------------------------------------------------
# CLI: refused before the weights load


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", LTT_QUIET="1")
    return subprocess.run([sys.executable, "-m", "ltt.cli", *args], capture_output=True, text=True,
                          env=env, timeout=180)


@pytest.fixture(scope="module")
def broken_weights(tiny_dir, tmp_path_factory):
    """The tiny Llama with its weights file replaced by garbage: anything that loads the weights
    fails, so an error about something else proves it came first."""
    d = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_dir("llama"), d)
    (d / "model.safetensors").write_bytes(b"not safetensors at all")
    return d


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("ltt: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_cli_refuses_a_directory_output_before_loading(broken_weights, tmp_path):
    for option in ("--out", "--json"):
        err = _error_line(_cli("trace", "--model", str(broken_weights), "--prompt", "hello", option, str(tmp_path)))
        assert f"{option} {str(tmp_path)!r} is a directory" in err
    assert os.listdir(tmp_path) == []
    err = _error_line(_cli("trace", "--model", str(broken_weights), "--prompt", "hello",
                           "--json", str(tmp_path / "missing" / "g.json")))
    assert "--json" in err and "cannot write there" in err


def test_cli_checks_the_target_against_the_tokenised_prompt_before_loading(broken_weights, tmp_path):
    err = _error_line(_cli("trace", "--model", str(broken_weights), "--prompt", "hello", "--target", "999"))
    assert "--target 999 is outside the" in err and "tokens of the prompt" in err
    ok = _error_line(_cli("trace", "--model", str(broken_weights), "--prompt", "hello", "--target", "-1"))
    assert "--target" not in ok  # a valid target goes on to the weights, which fail to load
