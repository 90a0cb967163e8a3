"""Batch files under faults (issue 11): two real processes on one file, resume across a changed
model, settings or prompt list, merges of shards of different runs, files that are not ltt's
left byte for byte as they were, prompt files with a byte-order mark or bytes that are not UTF-8."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ltt
from ltt import routes as R
from ltt.routes import fingerprint as F
from ltt.routes import store as S

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave",
    "A quick brown fox jumps",
    "1 2 3 4 5 6",
    "the dog sleeps",
]


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def run(llama, tmp_path_factory):
    """One finished run of PROMPTS and its file."""
    path = tmp_path_factory.mktemp("faults") / "run.jsonl"
    return R.trace_many(llama, PROMPTS, out=path), path


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def _snapshot(path):
    st = os.stat(path)
    return path.read_bytes(), st.st_mtime_ns, st.st_size


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------
# two processes


WRITER = """
import os, sys, time, torch
torch.set_num_threads(1)
import ltt
model = ltt.load({model!r})
prompts = {prompts!r}

def slow():
    for i, p in enumerate(prompts):
        yield p
        if i == 0:  # the first record is written: say so, then wait for the go
            open({ready!r}, "w").close()
            deadline = time.time() + 240
            while not os.path.exists({go!r}) and time.time() < deadline:
                time.sleep(0.02)

routes = model.trace_many(slow() if sys.argv[1] == "slow" else prompts, out={out!r})
print("did", routes.indices)
"""


def _spawn(script, mode):
    env = dict(os.environ, OMP_NUM_THREADS="1", LTT_QUIET="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_on_one_file(tiny_dir, run, tmp_path):
    """Process A holds the file mid-run; process B, given the same file, is refused with a clear
    message and changes nothing; A finishes with every line whole; B run again resumes A's run
    and traces nothing."""
    rs, _ = run
    out, ready, go = tmp_path / "r.jsonl", tmp_path / "ready", tmp_path / "go"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(model=tiny_dir("llama"), prompts=PROMPTS, ready=str(ready),
                                    go=str(go), out=str(out)))
    a = _spawn(script, "slow")
    try:
        deadline = time.time() + 240
        while not ready.exists():
            assert a.poll() is None, a.communicate()
            assert time.time() < deadline, "process A never wrote its first record"
            time.sleep(0.05)
        held = out.read_bytes()
        assert len(held.splitlines()) == 2  # the header and the first record
        b = _spawn(script, "fast")
        b_out, b_err = b.communicate(timeout=240)
        assert b.returncode != 0
        assert "is locked by another process" in b_err and str(out) in b_err, b_err
        assert out.read_bytes() == held  # B neither truncated nor appended
        go.touch()
        a_out, a_err = a.communicate(timeout=240)
        assert a.returncode == 0, a_err
    finally:
        go.touch()
        if a.poll() is None:
            a.kill()
            a.wait()
    lines = _lines(out)  # every line is whole JSON
    assert lines[0]["format"] == "ltt-routes" and [x["index"] for x in lines[1:]] == list(range(len(PROMPTS)))
    np.testing.assert_allclose(R.load_routes(out).patterns, rs.patterns, rtol=1e-5, atol=1e-8)
    finished = out.read_bytes()
    b = _spawn(script, "fast")
    b_out, b_err = b.communicate(timeout=240)
    assert b.returncode == 0, b_err
    assert f"did {list(range(len(PROMPTS)))}" in b_out
    assert out.read_bytes() == finished  # resumed: everything came from the file


def test_a_held_lock_refuses_before_reading(llama, run, tmp_path):
    """Another open file description holding the flock (as another process would): refused, and
    the torn last line of the file is not repaired by the refused writer."""
    _, path = run
    out = _copy(path, tmp_path / "r.jsonl")
    with open(out, "ab") as fh:
        fh.write(b'{"index": 9, "ke')
    before = _snapshot(out)
    with open(out, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(BlockingIOError, match="out=.*is locked by another process"):
            R.trace_many(llama, PROMPTS, out=out)
        with pytest.raises(BlockingIOError, match="is locked"):
            R.trace_many(llama, PROMPTS, out=out, resume=False)  # no truncation before the lock
        with pytest.raises(BlockingIOError, match="is locked"):
            R.load_routes(out).save(out)
    assert _snapshot(out) == before


# --------------------------------------------------------------------------------------------
# resume of another run


def test_resume_refuses_another_model_of_the_same_name(tiny_dir, run, tmp_path):
    import torch

    _, path = run
    out = _copy(path, tmp_path / "r.jsonl")
    before = _snapshot(out)
    other = ltt.load(tiny_dir("llama"))  # same path, same name
    with torch.no_grad():
        other.hf_model.model.layers[1].mlp.down_proj.weight.mul_(1.01)  # a fine-tuning step
    with pytest.raises(ValueError, match=r"holds another run.*the model's weights \(checksum\)"):
        R.trace_many(other, PROMPTS, out=out)
    half = ltt.load(tiny_dir("llama"), dtype="bfloat16")
    with pytest.raises(ValueError, match=r"the model's dtype: 'float32' in the file, 'bfloat16' now"):
        R.trace_many(half, PROMPTS, out=out)
    neox = ltt.load(tiny_dir("gpt_neox"))
    neox.name = other.name
    with pytest.raises(ValueError, match="the model's config"):
        R.trace_many(neox, PROMPTS, out=out)
    assert _snapshot(out) == before


def test_weights_checksum_sees_every_tensor_and_a_reload(tiny_dir, llama):
    import torch

    fresh = ltt.load(tiny_dir("llama"))
    base = F.weights_checksum(fresh.hf_model)
    assert base == F.weights_checksum(llama.hf_model)  # the same checkpoint loaded twice
    for name, p in fresh.hf_model.named_parameters():
        with torch.no_grad():
            p.add_(1e-3)
            assert F.weights_checksum(fresh.hf_model) != base, name
            p.sub_(1e-3)
    state = {k: v.clone() for k, v in fresh.hf_model.state_dict().items()}
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])
    fresh.hf_model.load_state_dict(state)
    assert F.weights_checksum(fresh.hf_model) != base


@pytest.mark.parametrize("kwargs, word", [
    ({"threshold": 0.1}, "settings threshold: 0.04 in the file, 0.1 now"),
    ({"renormalize": False}, "settings renormalize"),
    ({"targets": [-1, -2]}, "settings targets"),
    ({"norm": 2}, "settings norm"),
    ({"shard": (0, 1)}, None),  # one shard of one is the unsharded run: resumable
])
def test_resume_refuses_other_settings_naming_them(llama, run, tmp_path, kwargs, word):
    _, path = run
    out = _copy(path, tmp_path / "r.jsonl")
    before = _snapshot(out)
    if word is None:
        assert len(R.trace_many(llama, PROMPTS, out=out, **kwargs)) == len(PROMPTS)
    else:
        with pytest.raises(ValueError, match=word):
            R.trace_many(llama, PROMPTS, out=out, **kwargs)
    assert _snapshot(out) == before


@pytest.mark.parametrize("change", ["edited", "appended", "removed", "reordered"])
def test_resume_refuses_another_prompt_list(llama, run, tmp_path, change):
    _, path = run
    out = _copy(path, tmp_path / "r.jsonl")
    before = _snapshot(out)
    other = {"edited": PROMPTS[:3] + ["1 2 3 4 5 7"] + PROMPTS[4:], "appended": PROMPTS + ["more"],
             "removed": PROMPTS[:-1], "reordered": PROMPTS[1:] + PROMPTS[:1]}[change]
    with pytest.raises(ValueError, match=r"the prompt list: 5 prompts .* in the file"):
        R.trace_many(llama, other, out=out)
    with pytest.raises(ValueError, match="prompt"):  # the same list, streamed, is read whole first
        R.trace_many(llama, iter(other), out=out)
    assert _snapshot(out) == before
    if change == "edited":
        with pytest.raises(ValueError, match=r"prompts\[3\] is '1 2 3 4 5 6' in the file, '1 2 3 4 5 7' now"):
            R.trace_many(llama, other, out=out)


def test_streamed_runs_are_checked_prompt_by_prompt(llama, run, tmp_path):
    """A run read from a generator has no whole-list hash: each record's chain hash is checked as
    the prompts come back, before anything new is traced."""
    rs, _ = run
    out = tmp_path / "r.jsonl"

    def stopping(prompts, k):
        for i, p in enumerate(prompts):
            if i == k:
                raise KeyboardInterrupt("stopped")
            yield p

    with pytest.raises(KeyboardInterrupt):
        R.trace_many(llama, stopping(PROMPTS, 3), out=out)
    assert _lines(out)[0]["fingerprint"]["prompts"] == {"count": None, "sha256": None}
    before = _snapshot(out)
    changed = [PROMPTS[0], "another second prompt"] + PROMPTS[2:]
    with pytest.raises(ValueError, match=r"prompts\[1\] or a prompt before it differs"):
        R.trace_many(llama, iter(changed), out=out)
    with pytest.raises(ValueError, match=r"prompts\[1\] or a prompt before it differs"):
        R.trace_many(llama, changed, out=out)
    with pytest.raises(ValueError, match="holds prompts up to index 2"):
        R.trace_many(llama, PROMPTS[:2], out=out)
    assert _snapshot(out) == before
    done = R.trace_many(llama, iter(PROMPTS), out=out)  # the same prompts: resumed
    np.testing.assert_array_equal(done.patterns, rs.patterns)


def test_a_prompt_file_and_its_list_are_one_run(llama, run, tmp_path):
    """The fingerprint is of (index, prompt): a file with a BOM and CRLF lines holding the same
    prompts resumes the list's run; a blank line (another index) makes another run."""
    rs, path = run
    out = _copy(path, tmp_path / "r.jsonl")
    f = tmp_path / "prompts.txt"
    f.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(PROMPTS).encode("utf-8") + b"\r\n")
    again = R.trace_many(llama, f, out=out)
    assert again.prompts == PROMPTS and again.indices == list(range(len(PROMPTS)))
    np.testing.assert_array_equal(again.patterns, rs.patterns)
    streamed = R.trace_many(llama, (p for p in PROMPTS), out=out)  # read whole, then compared
    np.testing.assert_array_equal(streamed.patterns, rs.patterns)
    gap = tmp_path / "gap.txt"
    gap.write_text(PROMPTS[0] + "\n\n" + "\n".join(PROMPTS[1:]), encoding="utf-8")
    with pytest.raises(ValueError, match="the prompt list"):
        R.trace_many(llama, gap, out=out)


def test_old_format_files_are_read_but_not_resumed(llama, run, tmp_path):
    _, path = run
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    header["version"] = 1
    del header["fingerprint"]
    out = tmp_path / "old.jsonl"
    out.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n", encoding="utf-8")
    assert len(R.load_routes(out)) == len(PROMPTS)
    before = _snapshot(out)
    with pytest.raises(ValueError, match="format version 1, without this version's run fingerprint"):
        R.trace_many(llama, PROMPTS, out=out)
    assert _snapshot(out) == before
    R.trace_many(llama, PROMPTS[:1], out=out, resume=False)  # replaced on request (it is ltt's)
    assert _lines(out)[0]["version"] == S.VERSION and len(_lines(out)) == 2


def test_files_from_before_flow_was_the_only_weighting(llama, run, tmp_path):
    """A header's ``"weighting": "flow"`` (written while an edge weighting existed) is this run's
    weighting: such a file loads and resumes; an ``"edge"`` file is refused naming it, and is
    replaced only on request."""
    rs, path = run
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    for weighting in ("flow", "edge"):
        header["settings"]["weighting"] = weighting
        out = tmp_path / f"{weighting}.jsonl"
        out.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n", encoding="utf-8")
        if weighting == "flow":
            assert "weighting" not in R.load_routes(out).settings
            np.testing.assert_array_equal(R.load_routes(out).patterns, rs.patterns)
            np.testing.assert_array_equal(R.trace_many(llama, PROMPTS, out=out).patterns, rs.patterns)
            continue
        before = _snapshot(out)
        with pytest.raises(ValueError, match=r"holds routes with weighting='edge', which this ltt no longer reads"):
            R.load_routes(out)
        with pytest.raises(ValueError, match="settings weighting: 'edge' in the file, None now"):
            R.trace_many(llama, PROMPTS, out=out)
        assert _snapshot(out) == before
        R.trace_many(llama, PROMPTS[:1], out=out, resume=False)  # replaced on request (it is ltt's)
        assert "weighting" not in _lines(out)[0]["settings"] and len(R.load_routes(out)) == 1


def test_a_torn_line_is_repaired_only_for_the_same_run(llama, run, tmp_path):
    rs, path = run
    out = _copy(path, tmp_path / "r.jsonl")
    data = out.read_bytes()
    out.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 30])  # the last record cut mid-write
    before = _snapshot(out)
    with pytest.raises(ValueError, match="settings threshold"):
        R.trace_many(llama, PROMPTS, out=out, threshold=0.2)
    assert _snapshot(out) == before  # not repaired for another run
    done = R.trace_many(llama, PROMPTS, out=out)
    np.testing.assert_array_equal(done.patterns, rs.patterns)
    assert [x.get("index") for x in _lines(out)[1:]] == list(range(len(PROMPTS)))


# --------------------------------------------------------------------------------------------
# merges


def _shards(model, out, prompts=PROMPTS, **kwargs):
    return [R.trace_many(model, prompts, out=out, shard=(i, 2), **kwargs) for i in range(2)]


def test_merge_refuses_shards_of_different_runs(tiny_dir, llama, run, tmp_path):
    import torch

    rs, _ = run
    R.trace_many(llama, PROMPTS, out=tmp_path / "w.jsonl", shard=(0, 2))
    other = ltt.load(tiny_dir("llama"))
    with torch.no_grad():
        other.hf_model.model.embed_tokens.weight.add_(0.01)
    R.trace_many(other, PROMPTS, out=tmp_path / "w.jsonl", shard=(1, 2))
    with pytest.raises(ValueError, match=r"w.shard1of2.jsonl.*and.*w.shard0of2.jsonl.* are shards of "
                                         r"different runs \(the model's weights"):
        R.merge_shards(tmp_path / "w.jsonl")

    R.trace_many(llama, PROMPTS, out=tmp_path / "p.jsonl", shard=(0, 2))
    R.trace_many(llama, PROMPTS[::-1], out=tmp_path / "p.jsonl", shard=(1, 2))
    with pytest.raises(ValueError, match="different runs .*the prompt list"):
        R.merge_shards(tmp_path / "p.jsonl")

    R.trace_many(llama, PROMPTS, out=tmp_path / "s.jsonl", shard=(0, 2))
    R.trace_many(llama, PROMPTS, out=tmp_path / "s.jsonl", shard=(1, 2), threshold=0.1)
    with pytest.raises(ValueError, match="settings threshold: 0.04 in s.shard0of2.jsonl, 0.1 in s.shard1of2"):
        R.merge_shards(tmp_path / "s.jsonl")

    # a shard written by another ltt version (its header says so)
    _shards(llama, tmp_path / "v.jsonl")
    f = tmp_path / "v.shard1of2.jsonl"
    lines = f.read_text(encoding="utf-8").splitlines()
    h = json.loads(lines[0])
    h["fingerprint"]["model"]["ltt"] = "0.0.1"
    f.write_text("\n".join([json.dumps(h)] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the ltt version"):
        R.merge_shards(tmp_path / "v.jsonl")

    # shards of runs read from generators: no whole-list hash, the records' chains differ
    R.trace_many(llama, iter(PROMPTS), out=tmp_path / "g.jsonl", shard=(0, 2))
    R.trace_many(llama, iter(PROMPTS[:1] + ["another second prompt"] + PROMPTS[2:]), out=tmp_path / "g.jsonl",
                 shard=(1, 2))
    with pytest.raises(ValueError, match=r"g.shard0of2.jsonl.* and .*g.shard1of2.jsonl.* are shards of different "
                                         r"runs \(the prompt list: prompts\[2\]"):
        R.merge_shards(tmp_path / "g.jsonl")
    R.trace_many(llama, iter(PROMPTS), out=tmp_path / "g.jsonl", shard=(1, 2), resume=False)
    np.testing.assert_array_equal(R.merge_shards(tmp_path / "g.jsonl").patterns, rs.patterns)

    merged = R.merge_shards([tmp_path / "w.shard0of2.jsonl", tmp_path / "s.shard0of2.jsonl"], allow_missing=True)
    assert merged.indices == [0, 2, 4]  # shards of one run (same model, settings, prompts) merge
    np.testing.assert_array_equal(merged.patterns, rs.patterns[[0, 2, 4]])


# --------------------------------------------------------------------------------------------
# files that are not ltt's


FOREIGN = {
    "text": b"my notes, one line without a newline",
    "lines": b"line one\nline two\n",
    "jsonl": b'{"a": 1}\n{"b": 2}\n',
    "torn_jsonl": b'{"a": 1}\n{"b": ',
    "other_format": b'{"format": "something-else", "version": 2}\n',
    "binary": bytes(range(256)) * 4,
    "whitespace": b"\n\n  \n",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
@pytest.mark.parametrize("resume", [True, False])
def test_a_file_that_is_not_ltts_is_left_untouched(llama, run, tmp_path, kind, resume):
    f = tmp_path / "precious.jsonl"
    f.write_bytes(FOREIGN[kind])
    before = _snapshot(f)
    with pytest.raises(ValueError, match="is not an ltt routes file"):
        R.trace_many(llama, PROMPTS[:1], out=f, resume=resume)
    rs, _ = run
    with pytest.raises(ValueError, match="is not an ltt routes file"):
        rs.save(f)
    with pytest.raises(ValueError, match="is not an ltt routes file"):
        R.merge_shards([run[1]], out=f)
    assert _snapshot(f) == before
    assert sorted(os.listdir(tmp_path)) == ["precious.jsonl"]  # no temporary file left either


def test_a_parquet_file_that_is_not_ltts_is_left_untouched(llama, run, tmp_path):
    pa = pytest.importorskip("pyarrow")  # the tables extra (installed by make test)
    import pyarrow.parquet as pq

    f = tmp_path / "table.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), f)
    before = _snapshot(f)
    with pytest.raises(ValueError, match="is not an ltt routes Parquet file"):
        R.trace_many(llama, PROMPTS[:1], out=f)
    with pytest.raises(ValueError, match="is not an ltt routes Parquet file"):
        run[0].save(f)
    assert _snapshot(f) == before and sorted(os.listdir(tmp_path)) == ["table.parquet"]


def test_a_directory_or_missing_folder_is_named(llama, tmp_path):
    with pytest.raises(IsADirectoryError, match="out=.* is a directory"):
        R.trace_many(llama, PROMPTS[:1], out=tmp_path)
    with pytest.raises(FileNotFoundError, match="out="):
        R.trace_many(llama, PROMPTS[:1], out=tmp_path / "no" / "r.jsonl")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# prompt files


def test_prompt_file_byte_order_mark_is_dropped(llama, run, tmp_path):
    rs, _ = run
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbf" + "\n".join(PROMPTS[:2]).encode("utf-8"))
    got = R.trace_many(llama, f)
    assert got.prompts == PROMPTS[:2] and not got.prompts[0].startswith("\ufeff")
    np.testing.assert_array_equal(got.patterns, rs.patterns[:2])


@pytest.mark.parametrize("data, line, extra", [
    (b"fine\nalso fine\nbroken \xc3\x28 here\n", 3, "byte 8 of the line"),
    (b"\xff\xfeh\x00i\x00\n\x00", 1, "looks like UTF-16"),
    (b"\xef\xbb\xbfok\n\n\x80\n", 3, "byte 1 of the line"),
])
def test_prompt_file_that_is_not_utf8_names_the_line(llama, tmp_path, data, line, extra):
    f = tmp_path / "bad.txt"
    f.write_bytes(data)
    with pytest.raises(ValueError, match=rf"prompts=.*line {line} is not valid UTF-8.*{extra}"):
        R.trace_many(llama, f, out=tmp_path / "r.jsonl")
    assert not (tmp_path / "r.jsonl").exists()  # refused before the output file was made


def test_save_keeps_a_file_mode_and_leaves_no_temporary(run, tmp_path):
    rs, _ = run
    new = tmp_path / "new.jsonl"
    rs.save(new)
    assert os.stat(new).st_mode & 0o777 == 0o644  # not mkstemp's 0600
    os.chmod(new, 0o640)
    rs.save(new)  # an ltt routes file: replaced, its mode kept
    assert os.stat(new).st_mode & 0o777 == 0o640
    assert R.load_routes(new).prompts == PROMPTS and os.listdir(tmp_path) == ["new.jsonl"]
