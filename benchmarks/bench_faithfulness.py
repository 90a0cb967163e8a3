"""Faithfulness by intervention on the embedded model: its cost, and whether graphs beat random ones.

Two parts, both on SmolLM2-135M (CPU, float32):

* **cost**: for prompt lengths T, the median time of ``trace.faithfulness(graph, baselines=B)``
  (one batched forward of 3 + B rows: full, kept, removed, B random graphs) against the median
  of one plain eager forward pass of one row, as a multiple of it;
* **evidence**: over a few demo prompts and thresholds 0.01-0.1 (renormalize mode, last token),
  the share of the predicted token's probability the graph alone keeps, against random graphs
  of the same size (``random="uniform"``, the default, and the harder ``"rewire"``: the same
  number of edges into each state), and the share left when the graph is removed.

    python benchmarks/bench_faithfulness.py                 # T = 64, 256; 16 random graphs
    python benchmarks/bench_faithfulness.py --quick         # T = 64, fewer prompts and thresholds
    python benchmarks/bench_faithfulness.py --skip-cost --ablation mean   # the table, mean ablation

Target (issue 15): at most 1 + baselines forward passes, batched where possible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("LTT_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ltt  # noqa: E402
from bench_trace import prompt_of, timed  # noqa: E402

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "One, two, three, four,",
    "She opened the door and saw that the cat had eaten the",
]
THRESHOLDS = [0.01, 0.02, 0.04, 0.06, 0.1]


def cost(model, lengths: list[int], baselines: int, repeats: int) -> None:
    hf = model.hf_model
    print(f"cost: {baselines} random graphs -> {3 + baselines} rows in one batch; medians of {repeats}")
    print(f"{'T':>5} {'forward':>9} {'faithfulness':>13} {'ratio':>7} {'per row':>8}")
    for T in lengths:
        text = prompt_of(model, T)
        trace = model.trace(text)
        g = trace.graph(threshold=0.04)
        ids = torch.tensor([[int(i) for i in trace.token_ids]])

        def forward():
            with torch.no_grad():
                return hf(input_ids=ids, use_cache=False).logits

        forward()
        trace.faithfulness(g, baselines=baselines)  # warm up both
        t_fwd, _ = timed(forward, repeats)
        t_f, _ = timed(lambda: trace.faithfulness(g, baselines=baselines), repeats)
        ratio = t_f / t_fwd
        print(f"{trace.n_tokens:5d} {t_fwd * 1e3:7.0f}ms {t_f * 1e3:11.0f}ms {ratio:6.1f}x "
              f"{ratio / (3 + baselines):7.2f}x")


def evidence(model, prompts: list[str], thresholds: list[float], baselines: int, ablation: str) -> None:
    print(f"\nevidence: last token, renormalize mode, ablation {ablation!r}, {baselines} random graphs "
          "per mode, seed 0")
    print(f"{'prompt':<28} {'tau':>5} {'edges':>6} {'ffn':>4} {'p_full':>7} {'kept':>6} {'removed':>8} "
          f"{'uniform':>13} {'rewire':>13} {'KL kept':>8} {'KL unif':>8} {'KL rew':>8}")
    rows = []
    for prompt in prompts:
        trace = model.trace(prompt)
        for tau in thresholds:
            g = trace.graph(threshold=tau)
            f = trace.faithfulness(g, baselines=baselines, seed=0, ablation=ablation)
            r = trace.faithfulness(g, baselines=baselines, seed=0, ablation=ablation, random="rewire")
            t, tr = f.targets[0], r.targets[0]
            u, w = t.random_fractions, tr.random_fractions
            rows.append((tau, t.kept_fraction, u.mean(), w.mean(), t.removed_fraction, t.kept.kl,
                         np.mean([s.kl for s in t.random]), np.mean([s.kl for s in tr.random])))
            short = (prompt if len(prompt) <= 26 else prompt[:23] + "...")
            print(f"{short!r:<28} {tau:5.2f} {sum(f.attention_edges):6d} {sum(f.ffn_blocks):4d} "
                  f"{t.full.prob[0]:7.3f} {t.kept_fraction:6.2f} {t.removed_fraction:8.2f} "
                  f"{u.mean():6.2f} ± {u.std():4.2f} {w.mean():6.2f} ± {w.std():4.2f} {t.kept.kl:8.3f} "
                  f"{np.mean([s.kl for s in t.random]):8.3f} {np.mean([s.kl for s in tr.random]):8.3f}")
    print("\nmeans over prompts (fractions of the predicted token's full-model probability):")
    print(f"{'tau':>5} {'kept':>6} {'uniform':>8} {'rewire':>8} {'removed':>8} {'KL kept':>8} {'KL unif':>8} {'KL rew':>8}")
    for tau in thresholds:
        m = np.array([x[1:] for x in rows if x[0] == tau]).mean(axis=0)
        print(f"{tau:5.2f} {m[0]:6.2f} {m[1]:8.2f} {m[2]:8.2f} {m[3]:8.2f} {m[4]:8.2f} {m[5]:8.2f} {m[6]:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--baselines", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ablation", choices=["zero", "mean"], default="zero")
    parser.add_argument("--skip-cost", action="store_true", help="only the evidence table")
    parser.add_argument("--quick", action="store_true", help="T=64, two prompts, three thresholds")
    args = parser.parse_args()
    prompts, thresholds = PROMPTS, THRESHOLDS
    if args.quick:
        args.lengths, prompts, thresholds = [64], PROMPTS[:2], [0.01, 0.04, 0.1]
    t0 = time.perf_counter()
    model = ltt.load(args.model)
    print(f"loaded {model.name} in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    if not args.skip_cost:
        cost(model, args.lengths, args.baselines, args.repeats)
    evidence(model, prompts, thresholds, args.baselines, args.ablation)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
