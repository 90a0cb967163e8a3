"""The ``ltt`` command, run the way a user runs it: the real entry point in a subprocess, on tiny
models saved to disk (conftest), with the output, the files and the exit status checked."""

from __future__ import annotations

import json
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

PROMPT = "When Mary and John went to the store, John gave a drink to"
LTT_SCRIPT = Path(sys.executable).with_name("ltt")


def _env(quiet: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"  # a mistyped path must never wait on the network
    if quiet:
        env["LTT_QUIET"] = "1"
    else:
        env.pop("LTT_QUIET", None)
    return env


def run_ltt(*args: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m ltt.cli ARGS`` from the running interpreter (the installed package)."""
    return subprocess.run(
        [sys.executable, "-m", "ltt.cli", *args], capture_output=True, text=True,
        env=_env(), cwd=cwd, timeout=timeout,
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The failed run's reason: exit status 1 and exactly one ``ltt: error:`` line."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ltt: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


# --------------------------------------------------------------------------------------------
# a successful trace


@pytest.fixture(scope="module")
def traced(tiny_dir, tmp_path_factory):
    """One CLI run on the tiny Llama that writes both the JSON graph and the HTML report."""
    out = tmp_path_factory.mktemp("cli")
    path = tiny_dir("llama")
    start = time.perf_counter()
    proc = run_ltt("trace", "--model", path, "--prompt", PROMPT, "--threshold", "0.05",
                   "--json", str(out / "graph.json"), "--out", str(out / "report.html"), cwd=out)
    print(f"ltt trace on the tiny llama: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr
    return path, out, proc


def test_trace_prints_prediction_and_routes(traced):
    _, _, proc = traced
    text = proc.stdout
    assert "prediction: " in text
    assert f"prompt: {PROMPT!r}" in text
    assert "input tokens carrying the most flow to the prediction:" in text
    assert "layers whose attention moves the most flow:" in text
    assert "strongest attention edges and their top heads:" in text
    assert "threshold 0.05, renormalized" in text
    # the prediction line lists five (token, probability) pairs
    line = next(l for l in text.splitlines() if l.startswith("prediction: "))
    assert line.count(", ") >= 4


def test_trace_json_matches_the_graph(traced, tiny_model):
    path, out, proc = traced
    assert f"graph JSON written to {out / 'graph.json'}" in proc.stdout
    data = json.loads((out / "graph.json").read_text(encoding="utf-8"))
    expected = tiny_model("llama").trace(PROMPT).graph(threshold=0.05).to_dict()
    assert data["model"] == expected["model"] == path
    assert data["tokens"] == expected["tokens"]
    assert data["token_ids"] == expected["token_ids"]
    assert data["settings"] == expected["settings"]
    assert data["settings"]["targets"] == [len(expected["tokens"]) - 1]
    assert [n["name"] for n in data["nodes"]] == [n["name"] for n in expected["nodes"]]
    got = {(e["source"], e["target"], e["kind"]): e["weight"] for e in data["edges"]}
    want = {(e["source"], e["target"], e["kind"]): e["weight"] for e in expected["edges"]}
    assert got.keys() == want.keys()
    for key, weight in want.items():  # the subprocess may use more threads: summation order
        assert got[key] == pytest.approx(weight, abs=1e-5), key


def test_trace_writes_html(traced):
    _, out, proc = traced
    assert f"HTML report written to {out / 'report.html'}" in proc.stdout
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    assert "</html>" in page.lower()


def test_trace_options(tiny_dir, tmp_path, tiny_model):
    """--target, --no-renormalize and --top reach the graph (JSON settings) and the printout."""
    proc = run_ltt("trace", "--model", tiny_dir("gpt2"), "--prompt", PROMPT, "--target", "-2",
                   "--threshold", "0.1", "--no-renormalize", "--top", "2",
                   "--json", str(tmp_path / "g.json"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "g.json").read_text(encoding="utf-8"))
    n = len(data["tokens"])
    assert data["settings"] == {"threshold": 0.1, "renormalize": False, "targets": [n - 2], "norm": 1}
    assert "raw, targets" in proc.stdout
    flows = proc.stdout.split("input tokens carrying the most flow to the prediction:\n")[1]
    assert len(flows.split("layers whose")[0].strip().splitlines()) <= 2
    expected = tiny_model("gpt2").trace(PROMPT).graph(threshold=0.1, renormalize=False, targets=[-2])
    assert len(data["edges"]) == len(expected.edges)


def test_console_script_is_installed(tiny_dir):
    """The ``ltt`` script of the environment (what ``pip install`` puts on PATH) runs."""
    if not LTT_SCRIPT.exists():
        pytest.skip(f"no console script next to {sys.executable}")
    proc = subprocess.run([str(LTT_SCRIPT), "models"], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "llama" in proc.stdout and "gpt2" in proc.stdout and "parallel" in proc.stdout


# --------------------------------------------------------------------------------------------
# help


def test_help_explains_every_option():
    from ltt.cli import build_parser

    top = run_ltt("--help")
    assert top.returncode == 0
    for command in ("trace", "demo", "models"):
        assert command in top.stdout
    proc = run_ltt("trace", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    parser = build_parser()
    trace_parser = next(a for a in parser._actions if a.dest == "command").choices["trace"]
    options = [a for a in trace_parser._actions if a.option_strings and a.dest != "help"]
    names = {a.option_strings[-1] for a in options}
    assert names >= {"--model", "--prompt", "--target", "--threshold", "--no-renormalize",
                     "--out", "--json", "--top", "--trust-remote-code"}
    for action in options:
        assert action.help and len(action.help) > 15, action.option_strings
        assert action.option_strings[-1] in text
        assert " ".join(action.help.split()).replace("%%", "%")[:30] in text, action.option_strings
    demo = run_ltt("demo", "--help")
    assert demo.returncode == 0 and "--prompt" in demo.stdout and "--json" in demo.stdout


# --------------------------------------------------------------------------------------------
# failures: non-zero exit, one line saying why


def test_unknown_model_path(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    err = _one_line_error(run_ltt("trace", "--model", str(missing), "--prompt", PROMPT))
    assert str(missing) in err and "no such model directory" in err
    err = _one_line_error(run_ltt("trace", "--model", "./not-here", "--prompt", PROMPT))
    assert "./not-here" in err


def test_unsupported_architecture(tmp_path):
    """A tiny XGLM (a family ltt does not decompose) saved to disk is refused by name."""
    import torch
    import transformers as tf

    from conftest import VOCAB, _make_tokenizer

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(
        tf.XGLMConfig(vocab_size=VOCAB, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64))
    model.save_pretrained(tmp_path)
    _make_tokenizer(False).save_pretrained(tmp_path)
    err = _one_line_error(run_ltt("trace", "--model", str(tmp_path), "--prompt", PROMPT))
    assert "unsupported architecture" in err and "xglm" in err
    assert "llama" in err  # the supported types are listed


def test_empty_prompt(tiny_dir):
    err = _one_line_error(run_ltt("trace", "--model", tiny_dir("llama"), "--prompt", ""))
    assert "prompt" in err and "empty" in err


@pytest.mark.parametrize("option", ["--json", "--out"])
def test_unwritable_output(tiny_dir, tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for bad in (tmp_path / "missing" / "x.out", blocker / "x.out"):
        err = _one_line_error(run_ltt("trace", "--model", tiny_dir("llama"), "--prompt", PROMPT,
                                      option, str(bad)))
        assert option in err and str(bad) in err and "cannot write" in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("value", ["1.0", "1.5", "-0.01", "nan"])
def test_threshold_out_of_range(tiny_dir, value):
    start = time.perf_counter()
    err = _one_line_error(run_ltt("trace", "--model", tiny_dir("llama"), "--prompt", PROMPT,
                                  "--threshold", value))
    assert "--threshold" in err and "[0, 1)" in err and value in err
    assert time.perf_counter() - start < 60


def test_bad_arguments_are_usage_errors(tiny_dir):
    for args in (["trace", "--prompt", PROMPT], ["trace", "--model", tiny_dir("llama"), "--prompt",
                                                 PROMPT, "--threshold", "lots"], ["frobnicate"]):
        proc = run_ltt(*args)
        assert proc.returncode == 2, args  # argparse's usage error
        assert "usage: ltt" in proc.stderr


def test_target_out_of_range(tiny_dir):
    err = _one_line_error(run_ltt("trace", "--model", tiny_dir("llama"), "--prompt", "hello",
                                  "--target", "999"))
    assert "999" in err


# --------------------------------------------------------------------------------------------
# progress bars


def _run_in_terminal(args: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    """Run ``python -m ltt.cli ARGS`` with stderr on a pseudo-terminal (progress bars only draw
    on a terminal) and stdout piped; returns (exit status, what the terminal showed)."""
    leader, follower = pty.openpty()
    # a new pseudo-terminal is 0 x 0, and tqdm draws nothing in zero columns
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "ltt.cli", *args], stdout=subprocess.PIPE,
                            stderr=follower, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
        if time.monotonic() > deadline:
            proc.kill()
            break
    os.close(leader)
    proc.communicate(timeout=30)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """A tiny Llama with 32 layers and a 128-token context: deep enough for the tracing bar
    (it appears from layers x tokens >= 2048)."""
    import torch
    import transformers as tf

    from conftest import VOCAB, _make_tokenizer

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16,
                            num_hidden_layers=32, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    path = tmp_path_factory.mktemp("deep_llama")
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    _make_tokenizer(True).save_pretrained(path)
    return str(path)


def test_progress_bars(deep_dir):
    prompt = " ".join(["one two three four"] * 6)  # about 90 tokens: 32 layers x 90 >= 2048
    args = ["trace", "--model", deep_dir, "--prompt", prompt]
    rc, shown = _run_in_terminal(args, _env(quiet=False))
    assert rc == 0, shown
    assert "Loading weights" in shown, shown  # transformers' loading bar
    assert "tracing" in shown and "layer" in shown, shown  # ltt's own bar over the layers
    rc, shown = _run_in_terminal(args, _env(quiet=True))
    assert rc == 0, shown
    assert "tracing" not in shown and "Loading weights" not in shown, shown
