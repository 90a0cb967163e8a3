"""End to end on the embedded model: prompt -> trace -> attribution -> pruned graph, on CPU.

For each prompt length T it reports medians over repeats, side by side in one run:

* ``forward``: a plain eager forward pass of the same model (``use_cache=False``), the floor;
* ``trace``: the forward pass with ltt's hooks, the copies of every buffer to NumPy and the C
  core scoring each layer inside its hook; ``attribute`` is the part of it spent scoring
  (``trace.timings["attribute"]``);
* ``prune``: threshold mode and pruning to the last token (``trace.graph()`` on a scored trace);
* ``total``: trace + prune, and ``(trace - attribute) / forward``, the extraction overhead.

    python benchmarks/bench_trace.py             # T = 16, 64, 256, 5 repeats
    python benchmarks/bench_trace.py --quick     # T = 16, 2 repeats

Targets (issue 3): T=64 end to end within 0.5 s after loading; extraction at most 1.5x a plain
eager forward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("LTT_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ltt  # noqa: E402

WORDS = (
    "the history of science shows how ideas travel between people places and centuries "
    "while instruments and journals carry results from one laboratory to the next"
).split()


def prompt_of(model, n_tokens: int) -> str:
    """A prompt of exactly ``n_tokens`` tokens (BOS included when the tokenizer adds one)."""
    words: list[str] = []
    i = 0
    while True:
        words.append(WORDS[i % len(WORDS)])
        i += 1
        n = len(model.tokenizer(" ".join(words))["input_ids"])
        if n >= n_tokens:
            break
    text = " ".join(words)
    ids = model.tokenizer(text)["input_ids"]
    while len(ids) > n_tokens:  # trim one word at a time if the last word was several tokens
        words.pop()
        text = " ".join(words)
        ids = model.tokenizer(text)["input_ids"]
    return text


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="T=16 only, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.repeats = [16], 2

    t0 = time.perf_counter()
    model = ltt.load(args.model)
    print(f"loaded {model.name} in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    print(f"core: {ltt._core.build_info()}")
    hf = model.hf_model
    hf.config._attn_implementation_internal = "eager"

    header = f"{'T':>5} {'forward':>9} {'trace':>9} {'attribute':>10} {'prune':>8} {'total':>8} {'extract/fwd':>12}"
    print(header)
    for T in args.lengths:
        text = prompt_of(model, T)
        ids = torch.tensor([model.tokenizer(text)["input_ids"]])
        n = ids.shape[1]

        def forward():
            with torch.no_grad():
                return hf(input_ids=ids, use_cache=False).logits

        forward()  # warm up both paths once
        model.trace(text)
        t_fwd, _ = timed(forward, args.repeats)
        traces = [model.trace(text) for _ in range(args.repeats)]
        t_trace = statistics.median([sum(tr.timings.values()) for tr in traces])
        t_attr = statistics.median([tr.timings["attribute"] for tr in traces])
        tr = traces[0]
        t_prune, g = timed(lambda: tr.graph(threshold=0.04, renormalize=True), args.repeats)
        total = t_trace + t_prune
        print(
            f"{n:5d} {t_fwd * 1e3:7.1f}ms {t_trace * 1e3:7.1f}ms {t_attr * 1e3:8.1f}ms "
            f"{t_prune * 1e3:6.1f}ms {total * 1e3:6.0f}ms {(t_trace - t_attr) / t_fwd:9.2f}x"
        )
        sums = g.flow()
        assert np.isfinite(list(sums.values())).all()
    print("targets: T=64 total <= 500 ms; trace/forward <= 1.5x")


if __name__ == "__main__":
    main()
