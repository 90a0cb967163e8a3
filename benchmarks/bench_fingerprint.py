"""Cost of a batch run's model fingerprint (ltt.routes.fingerprint.weights_checksum) on a model shaped
like the embedded SmolLM2-135M (random weights, built from its config: no download, no GGUF).

    python benchmarks/bench_fingerprint.py
"""

from __future__ import annotations

import statistics
import time

import torch
import transformers as tf

from ltt.routes.fingerprint import model_fingerprint, weights_checksum


def main(repeats: int = 7) -> None:
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        weights_checksum(model)
        times.append(time.perf_counter() - start)

    class Wrapped:  # what model_fingerprint reads of an ltt Model
        hf_model = model

    start = time.perf_counter()
    model_fingerprint(Wrapped())
    whole = time.perf_counter() - start
    print(f"{n / 1e6:.0f}M parameters in {len(list(model.parameters()))} tensors: weights_checksum median "
          f"{statistics.median(times) * 1e3:.1f} ms over {repeats} runs; whole fingerprint {whole * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
