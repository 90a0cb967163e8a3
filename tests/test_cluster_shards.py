"""trace_many on a cluster: shard="auto" from torchrun (RANK/WORLD_SIZE) or a Slurm job array
(SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT), the shard's GPU (LOCAL_RANK), the merge; memory=."""

import os

import numpy as np
import pytest

import ltt.routes as R
from ltt import config
from ltt.routes import files

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The capital of France is",
           "One, two, three,", "Hello world", "The cat sat on the"]
CLUSTER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                "SLURM_ARRAY_TASK_MIN")


@pytest.fixture
def env(monkeypatch):
    for k in CLUSTER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_auto_shard_reads_torchrun_then_slurm(env):
    assert files.auto_shard() is None and files.check_shard("auto") is None
    env.setenv("SLURM_ARRAY_TASK_ID", "7")
    env.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    env.setenv("SLURM_ARRAY_TASK_MIN", "5")
    assert files.check_shard("auto") == (2, 4)
    assert files.check_shard(None) is None  # Slurm only when asked: the default stays torchrun's
    env.setenv("RANK", "1")
    env.setenv("WORLD_SIZE", "3")
    assert files.check_shard("auto") == (1, 3)  # torchrun first
    env.delenv("RANK")
    env.delenv("WORLD_SIZE")
    env.setenv("SLURM_ARRAY_TASK_ID", "9")
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID.*SLURM_ARRAY_TASK_COUNT=4"):
        files.check_shard("auto")
    env.setenv("SLURM_ARRAY_TASK_ID", "x")
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID='x'"):
        files.check_shard("auto")
    with pytest.raises(ValueError, match="shard must be"):
        files.check_shard("slurm")


def test_slurm_array_shards_merge_to_the_single_run(env, tiny_model, tmp_path):
    model = tiny_model("llama")
    whole = R.trace_many(model, PROMPTS)
    out = tmp_path / "r.jsonl"
    env.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for task in (0, 1):
        env.setenv("SLURM_ARRAY_TASK_ID", str(task))
        part = R.trace_many(model, PROMPTS, out=out, shard="auto", memory="stream")
        assert part.indices == list(range(task, len(PROMPTS), 2))
    assert sorted(os.listdir(tmp_path)) == ["r.shard0of2.jsonl", "r.shard1of2.jsonl"]
    merged = R.merge_shards(out)
    assert merged.indices == list(range(len(PROMPTS)))
    np.testing.assert_allclose(merged.patterns, whole.patterns, rtol=1e-5, atol=1e-6)


def test_torchrun_shard_device(env, tiny_model):
    import torch

    from ltt.backends.torch import TorchBackend

    env.setenv("RANK", "1")
    env.setenv("WORLD_SIZE", "2")
    env.setenv("LOCAL_RANK", "1")
    assert config.local_rank() == 1
    assert files.shard_device() == ("cuda:1" if torch.cuda.is_available() else "cpu")
    model = tiny_model("llama")
    files.check_shard_device(model)  # a CPU model: nothing to check
    saved = model.backend
    try:
        model.backend = TorchBackend([torch.device("cuda:0")] * model.n_layers)
        with pytest.raises(ValueError, match="LOCAL_RANK=1.*cuda:0"):
            R.trace_many(model, PROMPTS, shard="auto")
    finally:
        model.backend = saved
