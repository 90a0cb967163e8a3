"""The families table: every supported model_type is tested on a tiny model, `ltt models` and the
README list them from the same table, and the quirks of the newer families (clipped values,
logit scales, refusals) are handled exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ltt
from ltt.models import families

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_every_supported_type_has_a_tiny_model():
    from conftest import tiny_configs

    tested = {cfg.model_type for cfg, _ in tiny_configs().values()}
    assert set(families.supported()) <= tested, set(families.supported()) - tested
    assert len(families.supported()) >= 32


def test_readme_table_is_generated():
    text = open(README, encoding="utf-8").read()
    start = text.index("| family | `model_type` | decomposition |")
    end = text.index("<!-- end of families table -->")
    assert text[start:end].strip() == families.markdown()


def test_ltt_models_lists_every_type(capsys):
    from ltt.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0] for line in lines[1:-1]}
    assert listed == set(families.supported())
    assert any(line.startswith("cohere ") and "parallel" in line for line in lines)
    assert main(["models", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == families.markdown()


@pytest.mark.parametrize("key, clip", [("olmo", 0.3), ("mpt", 0.5)])
def test_clipped_values(tiny_model, key, clip):
    """OLMo and MPT clamp q, k, v after the projection ltt hooks: the values are clamped too,
    and the decomposition holds (it would not with the raw projection)."""
    model = tiny_model(key)
    trace = model.trace(PROMPT)
    v = np.concatenate([lb.values.ravel() for lb in trace.layers])
    assert np.abs(v).max() <= clip + 1e-7
    assert (np.abs(v) >= clip - 1e-7).mean() > 0.05  # the clamp really bites in this model
    assert max(trace.check().values()) < 1e-4


@pytest.mark.parametrize("key, scale", [("cohere", 0.5), ("cohere2", 0.5), ("granite", 0.25),
                                        ("granitemoe", 0.25)])
def test_logit_scale(tiny_model, key, scale):
    """Cohere multiplies the logits by ``logit_scale``, Granite divides them by
    ``logits_scaling``: the unembedding and the interpret layer's output head both carry it."""
    from ltt.interpret import output_head

    model = tiny_model(key)
    assert model._logit_scale == scale
    trace = model.trace(PROMPT)
    last = trace.layers[-1].resid_post[-1]
    np.testing.assert_allclose(output_head(trace).logits(last[None])[0], trace.logits, atol=1e-5)
    np.testing.assert_allclose(model.unembed(model.final_norm(last)), trace.logits, atol=1e-5)


def test_bloom_post_layernorm_residual_refused(tmp_path):
    import transformers as tf

    cfg = tf.BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2,
                         apply_residual_connection_post_layernorm=True)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="apply_residual_connection_post_layernorm=True") as info:
        ltt.load(str(tmp_path))
    assert "model_type='bloom'" in str(info.value) and "no exact additive" in str(info.value)
    cfg = tf.BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2, pretraining_tp=2,
                         slow_but_exact=True)
    with pytest.raises(ValueError, match="slow_but_exact=False"):
        families.family_for(cfg)


def test_multi_query_values(tiny_model):
    """GPT-BigCode multi-query: one kv head shared by every query head."""
    model = tiny_model("gpt_bigcode")
    assert model.n_kv_heads == 1 and model.n_heads == 4
    assert model.trace("Mary went").layers[0].values.shape[1] == 1
    assert tiny_model("gpt_bigcode_mha").n_kv_heads == 4


@pytest.mark.parametrize("make", [
    lambda tf: tf.MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1),
    lambda tf: tf.DiffLlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32),
])
def test_known_architectures_refused_with_reason(make, tmp_path):
    """A known architecture ltt cannot decompose exactly is refused with the reason, before any
    weights are read, not traced approximately."""
    import transformers as tf

    cfg = make(tf)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as info:
        ltt.load(str(tmp_path))
    msg = str(info.value)
    assert f"cannot trace model_type={cfg.model_type!r}" in msg
    assert msg.endswith(families.REFUSED[cfg.model_type])
