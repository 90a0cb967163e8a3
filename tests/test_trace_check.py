"""The running exactness check of a trace (issue 22): each layer compared at a few rows along
fixed random directions, the weights' projections cached, against the full check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ltt
from ltt.buffers import PostNorm, probe_directions
from ltt.models import tracing, weights

from test_models import PROMPT


@pytest.fixture(scope="module")
def llama(tiny_dir):
    return ltt.load(tiny_dir("llama"))


def _probe(lb, rows):
    z = probe_directions(lb.resid_pre.shape[1])
    lb.pinned = {"w_o": lb.w_o, "w_down": lb.w_down}
    try:
        return lb.check_probes(rows, lb.attn_rows(rows), lb.probe_weights(z), z)
    finally:
        lb.pinned = None


def test_post_norm_directions_pull_back_exactly():
    rng = np.random.default_rng(0)
    norm = PostNorm(col_scale=rng.standard_normal(6).astype(np.float32), center=True)
    v, z = rng.standard_normal((3, 6)), rng.standard_normal((6, 2))
    np.testing.assert_allclose(norm.linear(v) @ z, v @ norm.along(z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma2"])
def test_probe_check_agrees_with_the_full_check_and_catches_a_changed_row(tiny_dir, family):
    model = ltt.load(tiny_dir(family))
    tr = model.trace(PROMPT)
    T = tr.layers[0].n_tokens
    rows = tracing._sample_rows(T)
    for lb in tr.layers:
        clean = _probe(lb, rows)
        assert set(clean) == set(lb.check(rows=rows))
        assert max(clean.values()) < 1e-5
        ffn_out = lb.ffn_out.copy()
        changed = ffn_out.copy()
        changed[rows[1]] *= 1.02  # one sampled row's branch 2% off
        lb.ffn_out = changed
        try:
            exact, probed = lb.check(rows=rows)["neurons"], _probe(lb, rows)["neurons"]
        finally:
            lb.ffn_out = ffn_out
        assert exact > 1e-2 and probed > 1e-3  # far above float32 noise and the tolerance
        assert probed < 5 * exact  # |e|_2 / |y|_2 times at most a few standard normal factors


def test_projections_are_cached_and_a_stale_one_is_remade_before_refusing(llama, monkeypatch):
    model = llama
    tracing._PROBED.pop(model, None)
    assert max(model.trace(PROMPT).check().values()) < 1e-4
    kept = {l: entry[4] for l, entry in tracing._PROBED[model].items()}
    model.trace(PROMPT)
    assert all(tracing._PROBED[model][l][4] is kept[l] for l in kept)  # reused, not recomputed
    # an edit in place between the stamp's samples: the same stamp, a stale projection of the
    # down projection (read as a view, so the trace itself stays exact)
    monkeypatch.setattr(weights, "SAMPLE", 4)
    w = model.hf_model.model.layers[1].mlp.down_proj.weight
    model.trace(PROMPT)  # the stamps of the sampled hash at this SAMPLE
    stamp, before = model.layer_stamp(1), tracing._PROBED[model][1][4]
    step = w.numel() // 4
    w.detach().numpy().reshape(-1)[step // 2] += 5.0  # behind the version counter and the samples
    try:
        assert model.layer_stamp(1) == stamp
        tr = model.trace(PROMPT)  # not refused: the projection was made again
        assert max(tr.check().values()) < 1e-4
        assert tracing._PROBED[model][1][4] is not before
    finally:
        w.detach().numpy().reshape(-1)[step // 2] -= 5.0


def test_a_stale_cached_weight_copy_is_still_refused(llama, monkeypatch):
    model = llama
    monkeypatch.setattr(weights, "SAMPLE", 4)
    model.trace(PROMPT)
    w = model.hf_model.model.layers[1].self_attn.o_proj.weight
    stamp = model.layer_stamp(1)
    step = w.numel() // 4
    w.detach().numpy().reshape(-1)[step // 2] += 5.0  # behind the version counter and the samples
    try:
        assert model.layer_stamp(1) == stamp  # the cached float32 copy of w_o is now stale
        with pytest.raises(RuntimeError, match=r"layer 1 .*not decomposed exactly.*'attn'"):
            model.trace(PROMPT)
    finally:
        w.detach().numpy().reshape(-1)[step // 2] -= 5.0
    assert max(model.trace(PROMPT).check().values()) < 1e-4


def test_a_layer_input_is_its_predecessors_output_unless_written_in_between(llama):
    model = llama
    tr = model.trace(PROMPT)
    assert all(tr.layers[l].resid_pre is tr.layers[l - 1].resid_post for l in range(1, model.n_layers))
    layer = model.hf_model.model.layers[1]

    def shift(module, args, kwargs):  # a user's pre-hook writing the input in place
        (args[0] if args else kwargs["hidden_states"]).add_(0.25)

    handle = layer.register_forward_pre_hook(shift, with_kwargs=True)
    try:
        tr = model.trace(PROMPT)
    finally:
        handle.remove()
    np.testing.assert_allclose(tr.layers[1].resid_pre, tr.layers[0].resid_post + 0.25, rtol=1e-6, atol=1e-6)
    assert max(tr.check().values()) < 1e-4
