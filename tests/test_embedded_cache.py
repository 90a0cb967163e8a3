"""The embedded model's conversion cache: converted once, then read back in seconds, safely.

One conversion of the GGUF file (about 20-30 s on two shared cores) fills a temporary
LTT_CACHE_DIR; the second load must read the cache and give the same logits bit for bit. A
cache folder that cannot be created gives a warning and a load without the cache.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import ltt
from ltt.models import embedded

PROMPT = "The capital of France is"


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LTT_CACHE_DIR", str(tmp_path / "mine"))
    assert embedded.cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("LTT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == str(tmp_path / "xdg" / "ltt")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded.cache_dir() == str(tmp_path / "home" / ".cache" / "ltt")


def test_entry_named_by_the_file_checksum(monkeypatch, tmp_path):
    monkeypatch.setenv("LTT_CACHE_DIR", str(tmp_path))
    folder, name = embedded.locate("smollm2-135m")
    digest = embedded.file_checksum(os.path.join(folder, name))
    assert len(digest) == 64 and digest[:32] in os.path.basename(embedded.cache_entry("smollm2-135m"))
    other = tmp_path / "other.bin"
    other.write_bytes(b"not the model")
    assert embedded.file_checksum(str(other)) != digest


def test_unwritable_cache_dir_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    why = embedded._unwritable(str(blocker / "cache"))
    assert why is not None and "NotADirectoryError" in why
    assert embedded._unwritable(str(tmp_path / "fresh")) is None


def test_second_load_hits_the_cache_with_identical_logits(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # 1. a cache folder that cannot exist: a warning naming it, a load without the cache
    monkeypatch.setenv("LTT_CACHE_DIR", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="cannot cache the converted 'smollm2-135m' model") as rec:
        off = ltt.load("smollm2-135m")
    assert str(blocker / "cache") in str(rec[0].message) and "LTT_CACHE_DIR" in str(rec[0].message)
    assert off.hf_model.ltt_cache == "off"
    logits_off = off.trace(PROMPT).logits.copy()
    del off

    # 2. a writable folder: converted and stored (a complete entry, no temporary left over)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LTT_CACHE_DIR", str(cache))
    first = ltt.load("smollm2-135m")
    assert first.hf_model.ltt_cache == "stored"
    entry = embedded.cache_entry("smollm2-135m")
    assert sorted(os.listdir(cache)) == [os.path.basename(entry)]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(entry))
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in os.listdir(entry))  # no pickles
    logits_first = first.trace(PROMPT).logits.copy()
    del first

    # 3. the second load reads the cache and gives the same logits, bit for bit
    t0 = time.perf_counter()
    second = ltt.load("smollm2-135m")
    seconds = time.perf_counter() - t0
    assert second.hf_model.ltt_cache == "hit"
    trace = second.trace(PROMPT)
    np.testing.assert_array_equal(trace.logits, logits_first)
    np.testing.assert_array_equal(trace.logits, logits_off)
    assert trace.top_prediction(1)[0][0] == " Paris"
    print(f"\nsecond load of smollm2-135m from the cache: {seconds:.2f} s")


def test_conversion_bars_are_quiet_unless_asked_for(monkeypatch, capsys):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    real, bars = gguf_utils.tqdm, hf_logging.is_progress_bar_enabled()
    monkeypatch.delenv("LTT_PROGRESS", raising=False)
    with embedded._QuietGGUF():
        assert gguf_utils.tqdm is not real and not hf_logging.is_progress_bar_enabled()
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
    assert gguf_utils.tqdm is real and hf_logging.is_progress_bar_enabled() == bars  # restored
    assert "Converting" not in capsys.readouterr().err
    monkeypatch.setenv("LTT_PROGRESS", "1")
    with embedded._QuietGGUF():
        assert gguf_utils.tqdm is real  # asked for: the bars stay
