"""Bad names and paths fail before any model work: each test asserts that the work that would
follow (a hub call, a model load, a trace, the report's data) was never started."""

from __future__ import annotations

import os

import pytest

import ltt
from ltt import cli
from ltt.models import loading
from ltt.models.model import Model


class Called(Exception):
    """Raised by a stand-in for work that must not start."""


@pytest.fixture
def no_work(monkeypatch):
    """Every way into model work replaced by a recorder that fails the test's premise."""
    calls: list[str] = []

    def forbid(name):
        def fn(*a, **k):
            calls.append(name)
            raise Called(name)
        return fn

    monkeypatch.setattr(loading, "_from_hub", forbid("hub"))
    monkeypatch.setattr(loading, "load_embedded", forbid("embedded"))
    monkeypatch.setattr(Model, "trace", forbid("trace"))
    return calls


def _cli_error(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ltt: ")]
    assert len(err) == 1, err  # one line says why (the fixtures' own loading noise aside)
    return err[0]


def test_misspelt_embedded_name_suggests_it(no_work):
    with pytest.raises(ValueError, match=r"did you mean 'smollm2-135m'") as info:
        ltt.load("smollm-135m")
    assert "name_or_path='smollm-135m'" in str(info.value)
    assert no_work == []  # no hub call, no embedded load


def test_misspelt_embedded_name_in_the_cli(no_work, capsys):
    err = _cli_error(capsys, "trace", "--model", "SmolLM2-135", "--prompt", "hi")
    assert "--model" in err and "'SmolLM2-135'" in err and "did you mean 'smollm2-135m'" in err
    assert no_work == []


def test_hub_ids_are_not_taken_for_typos():
    loading.near_embedded("gpt2", "name_or_path")
    loading.near_embedded("HuggingFaceTB/SmolLM2-135M", "name_or_path")


def test_local_folder_did_you_mean(tmp_path, no_work):
    (tmp_path / "models" / "tiny-llama").mkdir(parents=True)
    wrong = tmp_path / "models" / "tiny-lama"
    with pytest.raises(FileNotFoundError) as info:
        ltt.load(str(wrong))
    text = str(info.value)
    assert str(wrong) in text and "did you mean" in text and repr(str(tmp_path / "models" / "tiny-llama")) in text
    # a missing folder higher up: the suggestion is made where the path first goes wrong
    with pytest.raises(FileNotFoundError, match="did you mean") as info:
        ltt.load(str(tmp_path / "modls" / "tiny-llama"))
    assert repr(str(tmp_path / "models")) in str(info.value)
    assert no_work == []


def test_cli_local_folder_did_you_mean(tmp_path, no_work, capsys):
    (tmp_path / "tiny-llama").mkdir()
    err = _cli_error(capsys, "trace", "--model", str(tmp_path / "tiny-lama"), "--prompt", "hi")
    assert "no such model directory" in err and "did you mean" in err and "tiny-llama" in err
    assert no_work == []


def test_cli_file_given_as_model_directory(tmp_path, no_work, capsys):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"not a model")
    err = _cli_error(capsys, "trace", "--model", str(f), "--prompt", "hi")
    assert str(f) in err and "is a file, not a model directory" in err
    assert "no such" not in err
    assert f.read_bytes() == b"not a model"
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        ltt.load(str(f))
    assert no_work == []


def test_out_of_vocabulary_ids_named_as_ids(tiny_dir, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(Model, "trace", lambda *a, **k: calls.append(1))
    err = _cli_error(capsys, "trace", "--model", tiny_dir("llama"), "--ids", "1,2,99999", "--baselines", "0")
    assert err.startswith("ltt: error: --ids: token id 99999 is outside the embedding table"), err
    assert "prompt" not in err
    assert calls == []


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_cli_unwritable_path_before_the_model(option, no_work, capsys, monkeypatch):
    monkeypatch.setattr(ltt, "load", lambda *a, **k: no_work.append("load"))
    err = _cli_error(capsys, "demo", option, "/proc/ltt-no-such.html")
    assert err.startswith(f"ltt: error: {option} '/proc/ltt-no-such.html': cannot write"), err
    assert no_work == []


def test_to_html_checks_its_path_first(traced, monkeypatch, tmp_path):
    from ltt import report

    _, trace = traced("llama")
    calls = []
    monkeypatch.setattr(report, "report_data", lambda *a, **k: calls.append(1))
    for bad, why in (("/proc/ltt-no-such.html", "cannot write"), (str(tmp_path), "is a directory"),
                     (str(tmp_path / "no" / "x.html"), "does not exist")):
        with pytest.raises(ValueError, match=why) as info:
            trace.to_html(bad)
        assert "path" in str(info.value) and repr(bad) in str(info.value)
    with pytest.raises(TypeError, match="path must be a file path"):
        trace.to_html(3)
    assert calls == [] and os.listdir(tmp_path) == []


def test_to_html_keeps_the_old_file_on_failure(traced, monkeypatch, tmp_path):
    from ltt import output

    _, trace = traced("llama")
    out = tmp_path / "report.html"
    out.write_text("the user's own file")

    def fail(*a, **k):
        raise RuntimeError("injected")

    monkeypatch.setattr(output.os, "replace", fail)  # the page is complete, the rename fails
    with pytest.raises(RuntimeError, match="injected"):
        trace.to_html(str(out))
    assert out.read_text() == "the user's own file" and os.listdir(tmp_path) == ["report.html"]


@pytest.mark.parametrize("option", ["--out", "--json"])
@pytest.mark.parametrize("bad", ["/proc/ltt-no-such.html", "/ltt-nonexistent-dir/x.html"])
def test_cli_trace_unwritable_path_before_the_model(option, bad, tiny_dir, no_work, capsys, monkeypatch):
    monkeypatch.setattr(ltt, "load", lambda *a, **k: no_work.append("load"))
    err = _cli_error(capsys, "trace", "--model", tiny_dir("llama"), "--prompt", "a b c", option, bad)
    assert err.startswith(f"ltt: error: {option} {bad!r}: cannot write"), err
    assert no_work == []


def test_graph_json_and_trace_file_paths_checked_before_any_work(traced, monkeypatch, tmp_path):
    from ltt import trace_file
    from ltt.graph import Graph

    _, trace = traced("llama")
    g = trace.graph()
    calls = []
    monkeypatch.setattr(Graph, "to_dict", lambda self: calls.append("to_dict"))
    monkeypatch.setattr(trace_file, "_arrays", lambda *a: calls.append("arrays"))
    for bad, why in (("/proc/ltt-no-such.json", "cannot write"), (str(tmp_path / "no" / "g.json"), "does not exist")):
        with pytest.raises(ValueError, match=why) as info:
            g.to_json(bad)
        assert str(info.value).startswith(f"path {bad!r}")
        with pytest.raises(ValueError, match=why) as info:
            trace.save(bad)
        assert str(info.value).startswith(f"path {bad!r}")
    assert calls == [] and os.listdir(tmp_path) == []


def test_graph_json_written_whole(traced, tmp_path):
    import json

    _, trace = traced("llama")
    g = trace.graph()
    path = tmp_path / "g.json"
    text = g.to_json(str(path))
    assert path.read_text(encoding="utf-8") == text and json.loads(text)["edges"]
    assert os.listdir(tmp_path) == ["g.json"]  # no temporary file left beside it
