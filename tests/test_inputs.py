"""Input control: prompts as token ids, and ``prepend_bos`` in trace, trace_many, the CLI and
the widget, on tiny models whose tokenizers do (llama) and do not (gpt2) add a BOS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ltt

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def models(tiny_model):
    return {"bos": tiny_model("llama"), "nobos": tiny_model("gpt2")}


def test_ids_trace_as_given(models):
    model = models["nobos"]
    ref = model.trace(PROMPT)
    ids = ref.token_ids.tolist()
    for given in (ids, tuple(ids), np.asarray(ids, dtype=np.int32), torch.tensor(ids)):
        tr = model.trace(given)
        np.testing.assert_array_equal(tr.token_ids, ref.token_ids)
        np.testing.assert_array_equal(tr.logits, ref.logits)
        assert tr.tokens == ref.tokens and tr.prompt == PROMPT  # prompt: the decoded text
    # a BOS-adding tokenizer: ids are traced as given, without a BOS added
    model = models["bos"]
    ref = model.trace(PROMPT)
    tr = model.trace(ref.token_ids[1:].tolist())
    assert tr.n_tokens == ref.n_tokens - 1 and tr.tokens == ref.tokens[1:]


def test_prepend_bos_on_strings(models):
    bos_model, plain = models["bos"], models["nobos"]
    bos = plain.tokenizer.bos_token_id
    default = plain.trace(PROMPT)
    forced = plain.trace(PROMPT, prepend_bos=True)
    assert default.token_ids[0] != bos
    assert forced.token_ids[0] == bos and forced.tokens[0] == "<bos>"
    np.testing.assert_array_equal(forced.token_ids[1:], default.token_ids)
    assert forced.prompt == PROMPT and "".join(forced.tokens[1:]) == PROMPT
    assert not np.allclose(forced.logits, default.logits)  # BOS changes the prediction
    assert max(forced.check().values()) < 1e-4
    np.testing.assert_array_equal(plain.trace(PROMPT, prepend_bos=False).token_ids, default.token_ids)
    # the llama tokenizer adds one: None keeps it, False removes it, True does not double it
    with_bos = bos_model.trace(PROMPT)
    assert with_bos.token_ids[0] == bos
    np.testing.assert_array_equal(bos_model.trace(PROMPT, prepend_bos=True).token_ids, with_bos.token_ids)
    without = bos_model.trace(PROMPT, prepend_bos=False)
    np.testing.assert_array_equal(without.token_ids, with_bos.token_ids[1:])
    assert "".join(without.tokens) == PROMPT
    # multi-byte characters keep their offsets when a BOS is put first
    tokens = plain.trace("東京 café", prepend_bos=True).tokens
    assert tokens[0] == "<bos>" and "東" in tokens and "\ufffd" not in "".join(tokens)


def test_prepend_bos_on_ids(models):
    model = models["nobos"]
    bos = model.tokenizer.bos_token_id
    ids = model.trace(PROMPT).token_ids.tolist()
    tr = model.trace(ids, prepend_bos=True)
    assert tr.token_ids.tolist() == [bos] + ids
    assert model.trace([bos] + ids, prepend_bos=True).token_ids.tolist() == [bos] + ids
    assert model.trace([bos] + ids, prepend_bos=False).token_ids.tolist() == ids
    assert model.trace([bos] + ids).token_ids.tolist() == [bos] + ids  # None: as given


def test_batches_of_ids(models):
    model = models["nobos"]
    a, b = model.trace("Mary went").token_ids, model.trace("John gave").token_ids
    traces = model.trace([a.tolist(), b])
    assert [t.prompt for t in traces] == ["Mary went", "John gave"]
    both = np.stack([a[:2], b[:2]])
    assert [t.token_ids.tolist() for t in model.trace(both)] == [a[:2].tolist(), b[:2].tolist()]
    mixed = model.trace(["Mary went", a.tolist()], prepend_bos=True)
    assert all(t.token_ids[0] == model.tokenizer.bos_token_id for t in mixed)


@pytest.mark.parametrize(
    "prompt, kw, exc, words",
    [
        ([1.0, 2.0], {}, TypeError, ["prompt", "1.0", "float"]),
        ([True, False], {}, TypeError, ["prompt[0]", "True"]),
        (np.array([1.5, 2.5]), {}, TypeError, ["prompt", "float64"]),
        ([5, 100000], {}, ValueError, ["prompt", "100000", "embedding table"]),
        ([-1, 5], {}, ValueError, ["prompt", "-1"]),
        (np.zeros((0,), dtype=np.int64), {}, ValueError, ["prompt", "empty"]),
        (np.zeros((2, 2, 2), dtype=np.int64), {}, ValueError, ["prompt", "1-D", "(2, 2, 2)"]),
        ([[1, 2], []], {}, ValueError, ["prompt[1]", "empty"]),
        ("Mary", {"prepend_bos": "yes"}, TypeError, ["prepend_bos", "'yes'"]),
        ([0], {"prepend_bos": False}, ValueError, ["prepend_bos=False", "only token"]),
        (list(range(3, 70)), {}, ValueError, ["prompt", "67 tokens long", "64"]),
        ({"ids": [1]}, {}, TypeError, ["prompt", "dict"]),
    ],
)
def test_bad_ids(models, prompt, kw, exc, words):
    with pytest.raises(exc) as info:
        models["nobos"].trace(prompt, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_no_bos_token_refuses_true(tiny_dir):
    from transformers import AutoTokenizer

    path = tiny_dir("gpt2")
    tok = AutoTokenizer.from_pretrained(path)
    tok.bos_token = None
    model = ltt.load(path, tokenizer=tok)
    assert model.trace("Mary", prepend_bos=False).n_tokens == model.trace("Mary").n_tokens
    with pytest.raises(ValueError, match="prepend_bos=True.*no BOS token"):
        model.trace("Mary", prepend_bos=True)


def test_trace_many_bos_and_ids(models, tmp_path):
    model = models["nobos"]
    ids = model.trace("John gave").token_ids.tolist()
    out = tmp_path / "r.jsonl"
    rs = model.trace_many(["Mary went", ids], prepend_bos=True, out=str(out), progress=False)
    assert rs.settings["prepend_bos"] is True
    assert [r.tokens[0] for r in rs.records] == ["<bos>", "<bos>"]
    assert rs.records[1].prompt == "<bos>John gave"
    again = model.trace_many(["Mary went", ids], prepend_bos=True, out=str(out), progress=False)
    assert len(again.records) == 2 and out.read_text().count("\n") == 3  # resumed, nothing re-traced
    assert "prepend_bos" not in model.trace_many(["Mary went"], progress=False).settings


def test_cli_ids_and_bos(tiny_dir, capsys):
    from ltt.cli import main

    path = tiny_dir("gpt2")
    model = ltt.load(path)
    ids = model.trace(PROMPT).token_ids.tolist()
    assert main(["trace", "--model", path, "--ids", ",".join(map(str, ids)), "--bos"]) == 0
    text = capsys.readouterr().out
    assert f"tokens: {len(ids) + 1}" in text and "<bos>" in text
    assert main(["trace", "--model", path, "--prompt", PROMPT, "--no-bos"]) == 0
    assert f"tokens: {len(ids)} " in capsys.readouterr().out
    assert main(["trace", "--model", path, "--ids", "1,x"]) == 1
    assert "--ids '1,x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --prompt and --ids together
        main(["trace", "--model", path, "--ids", "1", "--prompt", "a"])


def test_widget_prompt_box_bos(models):
    from ltt.widget import GraphWidget

    model = models["nobos"]
    w = GraphWidget(model.trace("Mary went"), model=model)
    w._on_msg(w, {"type": "run", "prompt": "John gave", "bos": True}, [])
    assert w.trace.token_ids[0] == model.tokenizer.bos_token_id
    w._on_msg(w, {"type": "run", "prompt": "John gave", "bos": None}, [])
    assert w.trace.token_ids[0] != model.tokenizer.bos_token_id


def test_bos_is_a_token_in_graph_and_report(models):
    """The BOS shows as a token of its own in the graph, its JSON and the offline report."""
    import json

    tr = models["nobos"].trace("Mary went", prepend_bos=True)
    g = tr.graph()
    assert g.tokens[0] == "<bos>" and any(n.token == 0 for n in g.nodes)
    assert json.loads(g.to_json())["tokens"][0] == "<bos>"
    from ltt.report import report_data

    assert report_data(tr)["state"]["graph"]["tokens"][0] == "<bos>"  # what the report's page shows


def test_serve_prompt_box_bos(tiny_dir, tmp_path):
    """``ltt serve``: the page's run message carries the BOS checkbox to the trace."""
    import os

    from conftest import ServeSession
    from ltt.serve.app import ServeConfig, ServeState

    path = tiny_dir("gpt2")
    driver = ServeSession(ServeState(ServeConfig(models=[path], models_dirs=[], embedded=False, max_tokens=40)))
    s, got, ask = driver.session, driver.got, driver.ask
    try:
        assert ask({"method": "open", "model": os.path.basename(path), "prompt": "Mary went"})["state"] == "done"
        bos_id = s.widget.trace.model.tokenizer.bos_token_id
        assert s.widget.trace.token_ids[0] != bos_id
        job = ask({"method": "custom", "content": {"type": "run", "prompt": "Mary went", "bos": True}})
        assert job["state"] == "done" and s.widget.trace.token_ids[0] == bos_id
        driver.send({"method": "custom", "content": {"type": "run", "prompt": "x", "bos": "yes"}})
        assert got[-1]["method"] == "error" and "bos must be true, false or null" in got[-1]["message"]
    finally:
        driver.close()
