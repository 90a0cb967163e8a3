"""Routes over many prompts: per-prompt importance against an independent oracle, aggregates
against individual traces, resumable files, shards (explicit, from the environment, torchrun),
bad inputs, tables and the importance widget."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ltt import routes as R
from ltt.graph import build_graph
from ltt.scores import attribute

from conftest import node_path

PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave",
    "A quick brown fox jumps",
    "1 2 3 4 5 6",
    "Tracing a language model shows",
    "the dog sleeps",
    "<img src=x onerror=alert(1)> and café",
]


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module")
def neox(tiny_model):
    return tiny_model("gpt_neox")  # parallel blocks: attention edges enter I{l}_t


@pytest.fixture(scope="module")
def full_run(llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("routes") / "full.jsonl"
    return R.trace_many(llama, PROMPTS, out=path), path


def _oracle(trace, threshold, renormalize):
    """Head shares [L, H] and FFN shares [L] computed straight from the full graph: each kept
    attention edge's head parts after the threshold mode (per state, as the method renormalises),
    times the flow of the edge's target."""
    g = build_graph(trace, threshold=threshold, renormalize=renormalize)
    full = attribute(trace)
    flow = g.flow()
    L, H, T, _ = full.heads.shape
    heads = np.zeros((L, H))
    ffn = np.zeros(L)
    for e in g.edges:
        t = int(e.target.split("_")[1])
        scale = flow[e.target]
        if e.kind == "attention":
            s = int(e.source.split("_")[1])
            l = e.layer
            parts = full.heads[l, :, t, :].astype(np.float64)
            if renormalize:
                single = [full.attn_resid[l, t], full.attn_bias[l, t]]
                if full.parallel[l]:
                    single.append(full.ffn[l, t])
                allp = np.concatenate([parts.reshape(-1), np.array(single, dtype=np.float64)])
                keep = allp >= threshold
                if not keep.any():
                    keep[int(np.argmax(allp))] = True
                kept = np.where(keep, allp, 0.0)
                kept /= kept.sum()
                head_parts = kept[: H * T].reshape(H, T)[:, s]
            else:
                head_parts = parts[:, s]
            assert head_parts.sum() == pytest.approx(e.weight, rel=1e-4, abs=1e-6)
            heads[l] += head_parts * scale
        elif e.kind == "ffn" and e.target.startswith("I"):
            ffn[e.layer] += e.weight * scale
    return heads, ffn, g, flow


# -- one prompt ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["llama", "neox"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_summary_matches_independent_oracle(request, key, renormalize):
    model = request.getfixturevalue(key)
    for prompt in PROMPTS[:3]:
        trace = model.trace(prompt)
        s = R.summarize(trace, threshold=0.04, renormalize=renormalize)
        heads, ffn, g, flow = _oracle(trace, 0.04, renormalize)
        np.testing.assert_allclose(s.heads, heads, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(s.ffn, ffn, rtol=1e-5, atol=1e-7)
        want = np.zeros(trace.n_tokens)
        for n in g.nodes:
            if n.kind == "X":
                want[n.token] = flow[n.name]
        np.testing.assert_allclose(s.sources, want)
        assert s.patterns.shape == heads.shape + (4,)
        assert s.tokens == trace.tokens
        probs = np.exp(trace.logits - trace.logits.max())
        probs /= probs.sum()
        assert s.prediction["id"] == int(np.argmax(trace.logits))
        assert s.prediction["prob"] == pytest.approx(float(probs.max()), rel=1e-5)


def test_flow_shares_are_fractions_of_the_prediction(llama):
    for prompt in PROMPTS:
        s = R.summarize(llama.trace(prompt))
        assert (s.heads >= 0).all() and (s.ffn >= 0).all()
        assert (s.heads.sum(axis=1) <= 1 + 1e-6).all()  # per layer: part of the flow only
        assert (s.ffn <= 1 + 1e-6).all()
        assert 0 < s.sources.sum() <= 1 + 1e-6


def test_source_position_patterns_split_each_edge(llama):
    trace = llama.trace(PROMPTS[1])
    g = build_graph(trace, threshold=0.0, renormalize=False)
    s = R.summarize(trace, threshold=0.0, renormalize=False, graph=g)
    full = attribute(trace)
    flow = g.flow()
    L, H, T, _ = full.heads.shape
    want = np.zeros((L, H, 4))
    for e in g.edges:
        if e.kind != "attention":
            continue
        t, src = int(e.target.split("_")[1]), int(e.source.split("_")[1])
        p = 0 if src == t else 1 if src == t - 1 else 2 if src == 0 else 3
        want[e.layer, :, p] += full.heads[e.layer, :, t, src] * flow[e.target]
    np.testing.assert_allclose(s.patterns, want, rtol=1e-5, atol=1e-8)
    assert (want[..., 3] > 0).any() and (want[..., 0] > 0).any()


# -- many prompts ----------------------------------------------------------------------------------


def test_aggregates_equal_the_individual_traces(llama, full_run):
    rs, _ = full_run
    assert len(rs) == len(PROMPTS) and rs.indices == list(range(len(PROMPTS)))
    singles = [R.summarize(llama.trace(p)) for p in PROMPTS]
    heads = np.stack([s.heads for s in singles])
    ffn = np.stack([s.ffn for s in singles])
    np.testing.assert_allclose(rs.heads, heads, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(rs.ffn, ffn, rtol=1e-6, atol=1e-9)
    for a, b in zip(rs.records, singles):
        np.testing.assert_allclose(a.sources, b.sources, rtol=1e-6, atol=1e-9)
        assert a.prediction == b.prediction and a.prompt == b.prompt
    L, H = heads.shape[1:]
    for l in range(L):
        for h in range(H):
            on = [x for x in heads[:, l, h] if x > 0]
            assert rs.head_frequency[l, h] == pytest.approx(len(on) / len(PROMPTS))
            assert rs.head_mean_share[l, h] == pytest.approx(np.mean(on) if on else 0.0)
            assert rs.head_mean[l, h] == pytest.approx(heads[:, l, h].mean())
        on = [x for x in ffn[:, l] if x > 0]
        assert rs.ffn_frequency[l] == pytest.approx(len(on) / len(PROMPTS))
        assert rs.ffn_mean_share[l] == pytest.approx(np.mean(on) if on else 0.0)
    pats = np.stack([s.patterns for s in singles])
    counts = dict(rs.pattern_counts())
    on = pats.sum(-1) > 0
    for i, name in enumerate(R.PATTERNS):
        assert counts[name] == int(((pats.argmax(-1) == i) & on).sum())
    assert sum(counts.values()) == int(on.sum())
    frac = rs.head_pattern_fractions
    np.testing.assert_allclose(frac.sum(-1), (pats.sum(0).sum(-1) > 0).astype(float))
    assert ((rs.head_pattern >= 0) == (pats.sum(0).sum(-1) > 0)).all()


def test_top_prompts_lists_where_a_component_mattered_most(full_run):
    rs, _ = full_run
    l, h = np.unravel_index(np.argmax(rs.head_frequency), rs.head_frequency.shape)
    top = rs.top_prompts(int(l), int(h), k=3)
    shares = [row["share"] for row in top]
    assert shares == sorted(shares, reverse=True) and all(s > 0 for s in shares)
    assert shares[0] == pytest.approx(rs.heads[:, l, h].max())
    assert top[0]["prompt"] == PROMPTS[top[0]["index"]]
    ffn_top = rs.top_prompts(0, None, k=100)
    assert len(ffn_top) == int((rs.ffn[:, 0] > 0).sum())
    with pytest.raises(ValueError, match="head"):
        rs.top_prompts(0, 99)
    with pytest.raises(ValueError, match="layer"):
        rs.top_prompts(99)


def test_file_round_trip(full_run):
    rs, path = full_run
    back = R.load_routes(path)
    np.testing.assert_array_equal(back.patterns, rs.patterns)
    np.testing.assert_array_equal(back.ffn, rs.ffn)
    assert back.settings == rs.settings and back.prompts == PROMPTS
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["format"] == "ltt-routes" and len(lines) == 1 + len(PROMPTS)


def test_model_trace_many_is_the_same_run(llama, full_run):
    rs, _ = full_run
    again = llama.trace_many(PROMPTS[:2])
    np.testing.assert_array_equal(again.patterns, rs.patterns[:2])


def test_resume_after_an_exception_from_the_iterable(llama, full_run, tmp_path, monkeypatch):
    rs, _ = full_run
    out = tmp_path / "r.jsonl"

    def stopping(k):
        for i, p in enumerate(PROMPTS):
            if i == k:
                raise KeyboardInterrupt("stopped")
            yield p

    with pytest.raises(KeyboardInterrupt):
        R.trace_many(llama, stopping(3), out=out)
    done = R.load_routes(out)
    assert done.indices == [0, 1, 2]
    np.testing.assert_array_equal(done.patterns, rs.patterns[:3])
    traced = []
    real = llama.trace
    monkeypatch.setattr(llama, "trace", lambda p, *a, **k: traced.append(p) or real(p, *a, **k))
    resumed = R.trace_many(llama, iter(PROMPTS), out=out)
    assert traced == PROMPTS[3:]  # the first three come from the file
    np.testing.assert_array_equal(resumed.patterns, rs.patterns)
    np.testing.assert_array_equal(R.load_routes(out).patterns, rs.patterns)


def test_resume_after_a_truncated_last_line(llama, full_run, tmp_path):
    rs, path = full_run
    out = tmp_path / "r.jsonl"
    data = path.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 40  # inside the last record: a crash mid-write
    out.write_bytes(data[:cut])
    assert len(R.load_routes(out)) == len(PROMPTS) - 1  # readable as it is
    resumed = R.trace_many(llama, PROMPTS, out=out)
    np.testing.assert_array_equal(resumed.patterns, rs.patterns)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(PROMPTS) and all(json.loads(x) for x in lines)
    np.testing.assert_array_equal(R.load_routes(out).patterns, rs.patterns)


def test_a_changed_prompt_list_is_not_resumed(llama, full_run, tmp_path):
    # issue 11: a file of another prompt list is refused (it used to re-trace the changed prompt
    # and mix both lists in one file); resume=False starts the file again
    rs, path = full_run
    out = tmp_path / "r.jsonl"
    shutil.copy(path, out)
    before = out.read_bytes()
    changed = list(PROMPTS)
    changed[2] = "A slow brown fox"
    with pytest.raises(ValueError, match=r"prompt list.*prompts\[2\] is 'A quick brown fox jumps'"):
        R.trace_many(llama, changed, out=out)
    assert out.read_bytes() == before
    again = R.trace_many(llama, changed, out=out, resume=False)
    assert again.prompts == changed
    np.testing.assert_allclose(again.records[2].heads, R.summarize(llama.trace(changed[2])).heads)
    assert R.load_routes(out).prompts == changed


def test_resume_refuses_other_settings(llama, full_run, tmp_path):
    _, path = full_run
    out = tmp_path / "r.jsonl"
    shutil.copy(path, out)
    with pytest.raises(ValueError, match="threshold"):
        R.trace_many(llama, PROMPTS, out=out, threshold=0.1)
    fresh = R.trace_many(llama, PROMPTS[:1], out=out, threshold=0.1, resume=False)
    assert R.load_routes(out).settings["threshold"] == 0.1 and len(fresh) == 1


def test_text_file_input(llama, full_run, tmp_path):
    rs, _ = full_run
    f = tmp_path / "prompts.txt"
    f.write_text(PROMPTS[0] + "\n\n" + PROMPTS[1] + "\r\n" + PROMPTS[2], encoding="utf-8")
    got = R.trace_many(llama, f)
    assert got.indices == [0, 2, 3]  # line numbers; the blank line is skipped
    assert got.prompts == PROMPTS[:3]
    np.testing.assert_array_equal(got.patterns, rs.patterns[:3])


# -- shards ------------------------------------------------------------------------------------------


def test_explicit_shards_merge_to_the_single_run(llama, full_run, tmp_path):
    rs, _ = full_run
    out = tmp_path / "r.jsonl"
    parts = [R.trace_many(llama, PROMPTS, out=out, shard=(i, 3)) for i in range(3)]
    assert parts[1].indices == [1, 4]
    assert sorted(os.listdir(tmp_path)) == [f"r.shard{i}of3.jsonl" for i in range(3)]
    merged = R.merge_shards(out, out=tmp_path / "merged.jsonl")
    assert merged.indices == list(range(len(PROMPTS)))
    np.testing.assert_array_equal(merged.patterns, rs.patterns)
    np.testing.assert_array_equal(merged.ffn, rs.ffn)
    np.testing.assert_array_equal(R.load_routes(tmp_path / "merged.jsonl").patterns, rs.patterns)
    os.remove(tmp_path / "r.shard1of3.jsonl")
    with pytest.raises(ValueError, match=r"shards \[1\] of 3 are missing"):
        R.merge_shards(out)
    assert len(R.merge_shards(out, allow_missing=True)) == len(PROMPTS) - 2


def test_shards_from_the_environment(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    got = R.trace_many(llama, PROMPTS[:4], out=tmp_path / "r.jsonl")
    assert got.indices == [1, 3] and os.path.isfile(tmp_path / "r.shard1of2.jsonl")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK"):
        R.trace_many(llama, PROMPTS[:4])


def test_merge_refuses_mixed_settings(llama, tmp_path):
    R.trace_many(llama, PROMPTS[:2], out=tmp_path / "r.jsonl", shard=(0, 2))
    R.trace_many(llama, PROMPTS[:2], out=tmp_path / "r.jsonl", shard=(1, 2), threshold=0.1)
    with pytest.raises(ValueError, match="settings"):
        R.merge_shards(tmp_path / "r.jsonl")
    with pytest.raises(FileNotFoundError, match="paths"):
        R.merge_shards(tmp_path / "none.jsonl")


def test_torchrun_two_processes_merge_to_the_single_run(tiny_dir, full_run, tmp_path):
    rs, _ = full_run
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        torch.set_num_threads(1)
        import ltt
        model = ltt.load({tiny_dir("llama")!r})
        routes = model.trace_many({PROMPTS!r}, out={str(tmp_path / "r.jsonl")!r})
        print("rank", os.environ["RANK"], "did", routes.indices)
    """))
    env = dict(os.environ, OMP_NUM_THREADS="1", LTT_QUIET="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert os.path.isfile(tmp_path / "r.shard0of2.jsonl") and os.path.isfile(tmp_path / "r.shard1of2.jsonl")
    merged = R.merge_shards(tmp_path / "r.jsonl")
    assert merged.indices == list(range(len(PROMPTS)))
    np.testing.assert_allclose(merged.patterns, rs.patterns, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(merged.ffn, rs.ffn, rtol=1e-5, atol=1e-8)


# -- bad input ----------------------------------------------------------------------------------------


def test_empty_prompts_are_refused(llama, tmp_path):
    with pytest.raises(ValueError, match="prompts is empty"):
        R.trace_many(llama, [])
    with pytest.raises(ValueError, match="prompts is empty"):
        R.trace_many(llama, (p for p in []), out=tmp_path / "r.jsonl")
    assert R.load_routes(tmp_path / "r.jsonl").records == []  # still a valid file
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        R.trace_many(llama, blank)
    with pytest.raises(TypeError, match="prompts"):
        R.trace_many(llama, None)
    with pytest.raises(TypeError, match="prompts"):
        R.trace_many(llama, 42)


def test_unreadable_files_are_named(llama, tmp_path):
    with pytest.raises(FileNotFoundError, match="prompts="):
        R.trace_many(llama, str(tmp_path / "missing.txt"))
    with pytest.raises(IsADirectoryError, match="prompts="):
        R.trace_many(llama, tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        R.trace_many(llama, bad)
    with pytest.raises(FileNotFoundError, match="out="):
        R.trace_many(llama, PROMPTS[:1], out=tmp_path / "nope" / "r.jsonl")
    with pytest.raises(FileNotFoundError, match="path="):
        R.load_routes(tmp_path / "missing.jsonl")


def test_a_bad_prompt_stops_the_run_and_keeps_the_file_valid(llama, full_run, tmp_path):
    rs, _ = full_run
    out = tmp_path / "r.jsonl"
    too_long = "word " * 200  # the tiny models have 64 positions
    with pytest.raises(ValueError, match=r"prompts\[2\] is \d+ tokens long"):
        R.trace_many(llama, PROMPTS[:2] + [too_long] + PROMPTS[2:], out=out)
    done = R.load_routes(out)
    assert done.indices == [0, 1]
    np.testing.assert_array_equal(done.patterns, rs.patterns[:2])
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        R.trace_many(llama, [PROMPTS[0], ""])
    with pytest.raises(TypeError, match=r"prompts\[1\] must be a string"):
        R.trace_many(llama, [PROMPTS[0], 3])


def test_on_error_skip_records_the_error_and_goes_on(llama, full_run, tmp_path):
    rs, _ = full_run
    out = tmp_path / "r.jsonl"
    prompts = PROMPTS[:2] + ["word " * 200] + PROMPTS[2:4]
    got = R.trace_many(llama, prompts, out=out, on_error="skip")
    assert got.indices == [0, 1, 3, 4] and [e["index"] for e in got.errors] == [2]
    assert "tokens long" in got.errors[0]["error"]
    np.testing.assert_array_equal(got.patterns, rs.patterns[:4])
    again = R.trace_many(llama, prompts, out=out, on_error="skip")  # resumes: nothing to do
    assert [e["index"] for e in again.errors] == [2] and len(again) == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"renormalize": "yes"}, "renormalize"),
        ({"norm": 3}, "norm"),
        ({"on_error": "ignore"}, "on_error"),
        ({"shard": (2, 2)}, "shard"),
        ({"shard": "0/2"}, "shard"),
        ({"targets": "last"}, "targets"),
    ],
)
def test_bad_options_are_named(llama, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        R.trace_many(llama, PROMPTS[:1], **kwargs)


def test_targets_out_of_range_for_one_prompt_name_it(llama):
    with pytest.raises(ValueError, match=r"prompts\[0\]: targets holds -8"):
        R.trace_many(llama, ["ab", PROMPTS[1]], targets=[-8])


def test_parquet_output_needs_pyarrow_or_round_trips(llama, full_run, tmp_path):
    rs, _ = full_run
    out = tmp_path / "r.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pyarrow"):
            R.trace_many(llama, PROMPTS[:1], out=out)
        assert not out.exists()
        return
    def stopping():
        yield from PROMPTS[:3]
        raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):
        R.trace_many(llama, stopping(), out=out, on_error="skip")
    assert R.load_routes(out).indices == [0, 1, 2]  # the Parquet file is written when a run stops
    got = R.trace_many(llama, PROMPTS[:5] + ["word " * 200] + PROMPTS[5:], out=out, on_error="skip")
    assert not os.path.exists(str(out) + ".partial.jsonl")
    back = R.load_routes(out)
    np.testing.assert_array_equal(back.patterns, got.patterns)
    np.testing.assert_array_equal(back.patterns, rs.patterns)
    assert [e["index"] for e in back.errors] == [5] and back.indices == [0, 1, 2, 3, 4, 6, 7]
    for i in range(2):
        R.trace_many(llama, PROMPTS, out=tmp_path / "s.parquet", shard=(i, 2))
    np.testing.assert_array_equal(R.merge_shards(tmp_path / "s.parquet").patterns, rs.patterns)


# -- tables and display ---------------------------------------------------------------------------


def test_tidy_tables(full_run, monkeypatch):
    rs, _ = full_run
    L, H = rs.n_layers, rs.n_heads
    heads = rs.table("heads")
    assert {len(v) for v in heads.values()} == {L * H}
    np.testing.assert_array_equal(heads["mean"].reshape(L, H), rs.head_mean)
    ffn = rs.table("ffn")
    np.testing.assert_array_equal(ffn["frequency"], rs.ffn_frequency)
    rows = rs.table("prompts")
    assert len(rows["index"]) == int((rs.heads > 0).sum() + (rs.ffn > 0).sum())
    with pytest.raises(ValueError, match="kind"):
        rs.table("neurons")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        rs.to_frame()


def test_importance_widget(llama, full_run):
    import traitlets

    from ltt.widget.importance import ImportanceWidget, with_graph_output

    rs, _ = full_run
    w = ImportanceWidget(rs)
    assert w.heads_shape == [rs.n_layers, rs.n_heads]
    np.testing.assert_array_equal(np.frombuffer(w.heads, np.float32).reshape(w.heads_shape),
                                  rs.head_frequency.astype(np.float32))
    w.metric = "mean"
    np.testing.assert_array_equal(np.frombuffer(w.ffn, np.float32), rs.ffn_mean.astype(np.float32))
    l, h = np.unravel_index(np.argmax(rs.head_mean), rs.head_mean.shape)
    w.selection = {"layer": int(l), "head": int(h)}
    assert w.top == rs.top_prompts(int(l), int(h), k=10)
    w.selection = {"layer": 0, "head": None}
    assert w.top == rs.top_prompts(0, None, k=10)
    for bad in [{"metric": "max"}, {"selection": {"layer": 99, "head": 0}},
                {"selection": {"layer": 0, "head": 99}}, {"selection": {"node": "I0_1"}}]:
        with pytest.raises(traitlets.TraitError):
            setattr(w, *next(iter(bad.items())))
    box = with_graph_output(w)
    assert w.output is not None and box.children[0] is w
    w._on_msg(w, {"type": "open", "index": 1}, [])  # what a click on a prompt sends
    assert w.error == "" and w.opened is not None
    w._on_msg(w, {"type": "open", "index": 999}, [])
    assert "999" in w.error
    with pytest.raises(TypeError, match="routes"):
        ImportanceWidget([1, 2])


def test_importance_js_helpers():
    from ltt.widget import STATIC

    js = (STATIC / "importance.js").as_uri()
    code = textwrap.dedent(f"""
        import {{ toFloat32, cellColour, formatValue, maxOf }} from {json.dumps(js)};
        const f = new Float32Array([0.5, 0.25, 1.0]);
        const back = toFloat32(new DataView(f.buffer));
        if (back.length !== 3 || back[2] !== 1.0) throw new Error("toFloat32 " + back);
        if (maxOf(back) !== 1.0 || maxOf(new Float32Array(0)) !== 0) throw new Error("maxOf");
        if (cellColour(0, 1) !== "rgb(255, 255, 255)") throw new Error(cellColour(0, 1));
        if (cellColour(1, 1) !== "rgb(33, 102, 172)") throw new Error(cellColour(1, 1));
        if (cellColour(5, 0) !== "rgb(255, 255, 255)") throw new Error("max 0");
        if (formatValue(NaN) !== "-" || formatValue(0.5) !== "0.500") throw new Error("formatValue");
        console.log("ok");
    """)
    proc = subprocess.run([node_path(), "--input-type=module", "-e", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_resume_after_a_cut_before_the_newline(llama, full_run, tmp_path):
    rs, path = full_run
    out = tmp_path / "r.jsonl"
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]).rstrip(b"\n"))  # two whole records, the last one unended
    resumed = R.trace_many(llama, PROMPTS, out=out)
    np.testing.assert_array_equal(resumed.patterns, rs.patterns)
    assert [json.loads(x).get("index") for x in out.read_text(encoding="utf-8").splitlines()[1:]] == list(
        range(len(PROMPTS)))


def test_importance_js_renders_in_a_browser(full_run, new_page):
    """The ES module in chromium with a model shim: the grid, a click on a cell, the prompt list
    (a prompt holding HTML renders as text) and the open message."""
    from ltt.widget import STATIC
    from ltt.widget.importance import ImportanceWidget

    rs, _ = full_run
    w = ImportanceWidget(rs)
    l, h = np.unravel_index(np.argmax(rs.head_frequency), rs.head_frequency.shape)
    top = rs.top_prompts(int(l), int(h), k=10)
    evil = dict(top[0], prompt="<img src=x onerror=alert(1)>")
    state = {"heads": list(w.heads), "ffn": list(w.ffn), "heads_shape": w.heads_shape, "metric": w.metric,
             "selection": {}, "top": [], "info": dict(w.info, can_open=True), "status": "", "error": ""}
    src = (STATIC / "importance.js").read_text(encoding="utf-8")
    page = new_page(1280, 720)
    errors, dialogs = page.errors, page.dialogs
    page.set_content("<html><body><div id='root'></div></body></html>")
    page.evaluate("""async ([src, state]) => {
        const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
        const mod = await import(url);
        for (const k of ["heads", "ffn"]) state[k] = new DataView(new Uint8Array(state[k]).buffer);
        const handlers = {};
        window.__sent = []; window.__saved = 0;
        const model = {
            get: (k) => state[k],
            set: (k, v) => { state[k] = v; (handlers["change:" + k] || []).forEach((f) => f()); },
            save_changes: () => { window.__saved += 1; },
            on: (ev, f) => { (handlers[ev] ||= []).push(f); },
            off: (ev, f) => { handlers[ev] = (handlers[ev] || []).filter((g) => g !== f); },
            send: (m) => window.__sent.push(m),
        };
        window.__model = model;
        window.__cleanup = mod.render({ model, el: document.getElementById("root") });
    }""", [src, state])
    L, H = rs.n_layers, rs.n_heads
    cells = page.locator("#root [title^='layer']")
    assert cells.count() == L * H + L
    cells.nth(int(l) * (H + 1) + int(h)).click()
    assert page.evaluate("window.__model.get('selection')") == {"layer": int(l), "head": int(h)}
    page.evaluate("(top) => window.__model.set('top', top)", [evil] + top[1:])
    assert page.locator("#root li").count() == len(top)
    assert page.locator("#root li").first.inner_text().count("<img src=x onerror=alert(1)>") == 1
    page.locator("#root li button").first.click()
    assert page.evaluate("window.__sent") == [{"type": "open", "index": evil["index"]}]
    page.evaluate("window.__cleanup()")
    assert page.locator("#root .ltt-importance").count() == 0
    assert not errors and not dialogs, (errors, dialogs)
