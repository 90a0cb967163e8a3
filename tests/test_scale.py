"""A trace that streams: probabilities recomputed on demand, sparse contributions, half
precision, offloaded and spilled layers (issue 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ltt
from ltt import graph as G
from ltt import scores as S
from ltt import interpret
from ltt.graph import build_graph, edge_weights
from ltt.scores import attribute

from conftest import PROMPT
from test_models import FAMILIES

LONG = " ".join([PROMPT] * 2)


@pytest.mark.parametrize("key", list(FAMILIES))
def test_recomputed_probabilities_equal_the_models_own(key, traced):
    """Every family (sliding windows, soft-capping, alibi, GQA, parallel blocks): the
    probabilities a trace recomputes on demand equal the model's own eager attention weights."""
    model, trace = traced(key)
    hf = model.hf_model
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([trace.token_ids.tolist()]), output_attentions=True, use_cache=False)
    T = trace.n_tokens
    for l, lb in enumerate(trace.layers):
        want = out.attentions[l][0].float().numpy()
        np.testing.assert_allclose(lb.attn, want, atol=1e-6, err_msg=f"layer {l}")
        rows = [0, T // 2, T - 1]
        np.testing.assert_allclose(lb.attn_rows(rows), want[:, rows], atol=1e-6)
        np.testing.assert_array_equal(lb.attn_head(1), lb.attn[1])


@pytest.mark.parametrize("key", list(FAMILIES))
def test_head_detail_on_demand_equals_dense(key, traced):
    """Head shares of an edge and a head's contribution map, computed by the core on the
    sub-problem (no [T, T] array kept), equal the dense per-head array."""
    model, trace = traced(key)
    full = attribute(trace)
    T = trace.n_tokens
    for l in range(trace.n_layers):
        for t, s in ((T - 1, 0), (T - 1, T - 1), (T // 2, 1)):
            got = interpret.edge_head_shares(trace, l, t, s, dense=False)
            np.testing.assert_allclose(got, full.heads[l, :, t, s], rtol=1e-4, atol=1e-6)
        for h in (0, model.n_heads - 1):
            got = interpret._head_map(trace, full, l, h)
            np.testing.assert_allclose(got, full.heads[l, h], rtol=1e-4, atol=1e-6)


def test_sparse_graphs_equal_dense_graphs(traced, monkeypatch):
    """Above the floor, the graph built from the sparse rows (a trace over the dense budget)
    equals the one built from the dense arrays (a short trace holds them), in both threshold
    modes and for several targets."""
    from ltt import kernels

    for key in ("llama", "gpt_neox", "gemma2"):
        model, trace = traced(key)
        full = attribute(trace)
        assert full.holds_dense
        with monkeypatch.context() as m:
            m.setattr(S, "DENSE_BUDGET", 0)
            sparse_trace = model.trace(PROMPT)
        assert not attribute(sparse_trace).holds_dense
        for renormalize in (True, False):
            for threshold in (full.floor, 0.01, 0.04, 0.1):
                for targets in ([trace.n_tokens - 1], [0, 3], "all"):
                    g = build_graph(sparse_trace, threshold=threshold, renormalize=renormalize, targets=targets)
                    w = edge_weights(full, threshold, renormalize)
                    tgt = G.resolve_targets(targets, trace.n_tokens)
                    kept = kernels.prune(w.attn, w.attn_resid, w.ffn, w.ffn_resid, full.parallel,
                                             np.array(tgt, np.int64), threshold)
                    dense = G._assemble(trace, full, w, kept, lambda l, t, s: float(w.attn[l, t, s]),
                                        G.GraphSettings(threshold, renormalize, tgt, 1))
                    assert [(e.source, e.target, e.kind) for e in g.edges] == \
                        [(e.source, e.target, e.kind) for e in dense.edges], (key, renormalize, threshold)
                    np.testing.assert_allclose([e.weight for e in g.edges], [e.weight for e in dense.edges],
                                               rtol=1e-5, atol=1e-6)


def _big_arrays(obj, limit, seen=None, path="trace"):
    """Paths of every NumPy array or torch tensor reachable from ``obj`` with >= limit elements."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found = []
    if isinstance(obj, np.ndarray):
        return [path] if obj.size >= limit else []
    if isinstance(obj, torch.Tensor):
        return [path] if obj.numel() >= limit else []
    if isinstance(obj, (torch.nn.Module, ltt.models.Model, str, bytes)) or callable(obj) and not hasattr(obj, "__dict__"):
        return []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif hasattr(obj, "__dict__"):
        items = vars(obj).items()
    else:
        return []
    for k, v in items:
        if isinstance(v, (torch.nn.Module, ltt.models.Model)):
            continue
        found += _big_arrays(v, limit, seen, f"{path}.{k}")
    return found


def test_long_trace_keeps_no_per_head_square_array(tiny_model, monkeypatch):
    """Over the dense budget, nothing a trace holds (layers, recorded queries and keys, the
    sparse contributions, caches filled by graphs and head clicks) has H*T*T elements."""
    monkeypatch.setattr(S, "DENSE_BUDGET", 0)
    model = tiny_model("llama")
    trace = model.trace(LONG)
    T, H = trace.n_tokens, model.n_heads
    assert T >= 40, T
    trace.graph(threshold=0.04)
    trace.graph(threshold=0.02, renormalize=False, targets="all")
    trace.edge_heads(1, -1, 0)
    trace.head_view(1, 2)
    trace.top_neurons(1, -1)
    assert _big_arrays(trace, H * T * T) == []
    full = attribute(trace)
    with pytest.raises(ValueError, match="dense budget"):
        full.heads
    with pytest.raises(ValueError, match="floor"):
        trace.graph(threshold=full.floor / 2)


def test_threshold_below_the_floor_uses_dense_arrays_when_they_fit(traced):
    model, trace = traced("llama")
    g = trace.graph(threshold=0.0, renormalize=False, targets="all")
    T, L = trace.n_tokens, trace.n_layers
    assert sum(e.kind == "attention" for e in g.edges) == L * T * (T + 1) // 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_traced_with_dtype_tolerance(tiny_dir, traced, dtype):
    """A half-precision model: float32 buffers, no float32 copy of its weights kept, an exact
    decomposition to the model's own rounding, and a graph close to the float32 model's."""
    from ltt.models.tracing import TOLERANCE

    model = ltt.load(tiny_dir("llama"), dtype=dtype)
    trace = model.trace(PROMPT)
    assert trace.layers[0].resid_pre.dtype == np.float32
    assert max(trace.check().values()) < TOLERANCE[dtype]
    # half-precision weights are converted per use: no float32 copy of a weight matrix is cached
    assert not any(isinstance(v, np.ndarray) for _, v in model._weights.values())
    _, ref = traced("llama")
    fa, fb = attribute(trace), attribute(ref)
    np.testing.assert_allclose(fa.attn_resid, fb.attn_resid, atol=0.05)
    np.testing.assert_allclose(fa.ffn, fb.ffn, atol=0.05)
    ga, gb = trace.graph(threshold=0.04), ref.graph(threshold=0.04)
    ea = {(e.source, e.target, e.kind) for e in ga.edges}
    eb = {(e.source, e.target, e.kind) for e in gb.edges}
    assert len(ea & eb) / len(ea | eb) > 0.7


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_trace_keeps_the_models_own_numbers_in_two_bytes(tiny_dir, tmp_path, dtype):
    """A half-precision trace keeps its states, values and activations packed (two bytes per
    value), shares the state between two layers, reads back exactly the float32 numbers an
    unpacked trace holds (spill keeps float32 files) and gives the identical graph."""
    from ltt.buffers import Half

    model = ltt.load(tiny_dir("llama"), dtype=dtype)
    packed, plain = model.trace(PROMPT), model.trace(PROMPT, spill=tmp_path)
    for a, b in zip(packed.layers, plain.layers):
        for name in ("resid_pre", "resid_mid", "resid_post", "values", "act", "ffn_out"):
            assert isinstance(a.stored(name), Half), name
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for prev, nxt in zip(packed.layers, packed.layers[1:]):
        assert nxt.stored("resid_pre") is prev.stored("resid_post")
    biases = sum(b.nbytes for lb in packed.layers for b in (lb.attn_bias, lb.ffn_bias) if b is not None)
    kept = packed.nbytes()["layers"] - biases - sum(lb._attention.nbytes() for lb in packed.layers)
    floats = sum(getattr(lb, n).nbytes for lb in packed.layers for n in ("resid_mid", "resid_post", "values", "act", "ffn_out"))
    assert kept == (floats + packed.layers[0].resid_pre.nbytes) // 2
    ga, gb = packed.graph(), plain.graph()
    assert [(e.source, e.target, e.weight) for e in ga.edges] == [(e.source, e.target, e.weight) for e in gb.edges]
    np.testing.assert_array_equal(packed.neuron_shares(1, -1), plain.neuron_shares(1, -1))
    half = {"bfloat16": np.uint16, "float16": np.float16}[dtype]
    assert Half.pack(np.float32([1.0, 1 + 2.0**-20]), dtype).dtype == np.float32  # not exact: kept
    assert Half.pack(np.float32([1.0, -2.5]), dtype).bits.dtype == half


def test_disk_offloaded_model_traces_exactly(tiny_dir, traced, tmp_path):
    """Layers forced to disk offload (accelerate): the trace pages each layer in as the model's
    forward does and equals the in-memory model's trace."""
    pytest.importorskip("accelerate")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    model = ltt.load(tiny_dir("llama"), device_map=device_map, offload_folder=tmp_path / "offload")
    assert model.hf_model.model.layers[0].self_attn.o_proj.weight.device.type == "meta"
    trace = model.trace(PROMPT)
    _, ref = traced("llama")
    np.testing.assert_allclose(trace.logits, ref.logits, atol=1e-5)
    assert max(trace.check().values()) < 1e-4
    ga, gb = trace.graph(), ref.graph()
    assert [(e.source, e.target) for e in ga.edges] == [(e.source, e.target) for e in gb.edges]
    np.testing.assert_allclose(trace.neuron_shares(0, -1), ref.neuron_shares(0, -1), atol=1e-6)
    np.testing.assert_allclose(trace.head_shares(1, -1, 0), ref.head_shares(1, -1, 0), atol=1e-6)
    assert not any(isinstance(v, np.ndarray) for _, v in model._weights.values())  # no weight kept in RAM


def test_spill_to_memory_mapped_files(tiny_model, traced, tmp_path):
    model, ref = traced("llama")
    trace = model.trace(PROMPT, spill=tmp_path)
    assert all(isinstance(lb.act, np.memmap) for lb in trace.layers)
    assert len(list(tmp_path.glob("layer*_act.npy"))) == trace.n_layers
    assert [(e.source, e.target) for e in trace.graph().edges] == [(e.source, e.target) for e in ref.graph().edges]
    assert max(trace.check().values()) < 1e-4
    with pytest.raises(ValueError, match="spill"):
        model.trace(PROMPT, spill=tmp_path / "missing")


def test_only_the_last_logits_unless_asked(traced):
    model, trace = traced("llama")
    assert trace.all_logits is None
    full = model.trace(PROMPT, all_logits=True)
    assert full.all_logits.shape == (trace.n_tokens, model.vocab_size)
    np.testing.assert_allclose(full.all_logits[-1], trace.logits, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_sparse_rows_equal_the_twins_sparsify(seed):
    """What a trace keeps of a layer (SparseRows.from_dense) is the twin's sparse form: every
    part >= the floor plus each row's first largest, in (head, source) order; ties included."""
    from ltt import _reference as ref

    rng = np.random.default_rng(seed)
    H, T = 3, 7
    dense = np.tril(rng.choice([0.0, 5e-4, 0.02, 0.3], size=(H, T, T)).astype(np.float32))
    for floor in (0.0005, 1e-3, 0.05):
        got = S.SparseRows.from_dense(dense, floor)
        want = ref.sparsify(dense, floor, heads=True)
        np.testing.assert_array_equal(got.indptr, want["indptr"])
        np.testing.assert_array_equal(got.sources, want["sources"])
        np.testing.assert_array_equal(got.heads, want["heads"])
        np.testing.assert_array_equal(got.values, want["parts"])
        edges = S.SparseRows.from_dense(dense[0], floor)
        want = ref.sparsify(dense[:1], floor)
        np.testing.assert_array_equal(edges.sources, want["sources"])
        np.testing.assert_array_equal(edges.values, want["weights"])


@pytest.mark.parametrize("knob", ["HEAD_CHUNK_BYTES", "STREAM_BYTES"])
@pytest.mark.parametrize("key", ["llama", "gpt_neox", "gemma2"])
def test_long_layers_scored_head_by_head_keep_the_same_parts(key, knob, tiny_model, monkeypatch):
    """A layer whose per-head shares are too large is scored head by head; one whose
    probabilities are too large also runs its attention one kv group at a time and scores each
    head from recomputed probabilities. The model's outputs, the sparse parts and the graphs
    equal the one-array path."""
    from ltt.models import attention

    model = tiny_model(key)
    monkeypatch.setattr(S, "DENSE_BUDGET", 0)  # both traces sparse: only the head scoring differs
    whole = model.trace(PROMPT)
    monkeypatch.setattr(S, knob, 0)
    groups = []
    real = attention._by_group
    monkeypatch.setattr(attention, "_by_group", lambda *a: groups.append(a[2].shape[1]) or real(*a))
    chunked = model.trace(PROMPT)
    streamed = knob == "STREAM_BYTES"
    assert groups == ([model.n_heads] * model.n_layers if streamed else [])  # attention by kv group
    np.testing.assert_array_equal(chunked.logits, whole.logits)
    for la, lb in zip(whole.layers, chunked.layers):
        np.testing.assert_array_equal(la.resid_post, lb.resid_post)
    assert max(chunked.check().values()) < 1e-4
    fa, fb = attribute(whole), attribute(chunked)
    for pa, pb in zip(fa.parts, fb.parts):
        np.testing.assert_array_equal(pa.indptr, pb.indptr)
        np.testing.assert_array_equal(pa.sources, pb.sources)
        np.testing.assert_array_equal(pa.heads, pb.heads)
        np.testing.assert_allclose(pa.values, pb.values, rtol=1e-5, atol=1e-7)
    for kw in (dict(), dict(renormalize=False, threshold=0.01, targets="all")):
        ga, gb = whole.graph(**kw), chunked.graph(**kw)
        assert [(e.source, e.target, e.kind) for e in ga.edges] == [(e.source, e.target, e.kind) for e in gb.edges]
