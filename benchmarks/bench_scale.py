"""Long prompts end to end: time by stage and peak memory against T, in fresh processes.

Every (model, T) point runs in its own process: load the model, reset the kernel's peak-RSS
counter (VmHWM), then trace, build the default graph and answer two clicks (an edge's heads, a
head's maps). It reports the stage times, the peak memory above the loaded model and what the
trace holds, and fits ``peak = a + b T + c T^2`` per model.

Models:
* ``demo``: the embedded SmolLM2-135M (float32, 30 layers, 9 heads, d=576);
* ``tinyllama``: a randomly initialised TinyLlama-1.1B-shaped model in bfloat16 (22 layers,
  d=2048, 32 heads, 4 kv heads, F=5632);
* ``llama7b-4``: a 4-layer slice of the Llama-2-7B shape in bfloat16 (32 heads, d=4096,
  F=11008): per-layer figures, extrapolated to 32 layers.

    python benchmarks/bench_scale.py demo 64 512 2048 8192
    python benchmarks/bench_scale.py tinyllama 512 2048
    python benchmarks/bench_scale.py llama7b-4 2048 4096
    python benchmarks/bench_scale.py demo 64 2048 --tree /path/to/old/checkout   # the same, another tree

Targets (issue 10): demo at 8,192 tokens within 12 GB peak; TinyLlama shape at 2,048 within
6 GB above the weights; a 7B bf16 model at 4,096 within 24 GB with its weights; T=64 within 10%
of the previous tree; the demo's peak above the model at T=2,048 under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_many import reset_peak, rss_mb  # noqa: E402

SHAPES = {
    "tinyllama": dict(num_hidden_layers=22, hidden_size=2048, num_attention_heads=32,
                      num_key_value_heads=4, intermediate_size=5632, vocab_size=32000),
    "llama7b-4": dict(num_hidden_layers=4, hidden_size=4096, num_attention_heads=32,
                      num_key_value_heads=32, intermediate_size=11008, vocab_size=32000),
}
TEXT = ("the history of science shows how ideas travel between people places and centuries while "
        "instruments and journals carry results from one laboratory to the next ")


def _byte_tokenizer():
    """A tokenizer with one token per byte (no merges): a prompt of T ASCII characters is T tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tk.train_from_iterator(["ab"], trainers.BpeTrainer(vocab_size=len(alphabet) + 1, special_tokens=["<s>"],
                                                       initial_alphabet=alphabet, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="<s>")


def _load(name: str):
    import ltt

    if name == "demo":
        model = ltt.load("smollm2-135m")
        ids = model.tokenizer(TEXT * 2000)["input_ids"]
        return model, lambda T: model.tokenizer.decode(ids[:T])
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(max_position_embeddings=8192, **SHAPES[name])
    torch.manual_seed(0)
    with torch.device("meta"):
        hf = LlamaForCausalLM(cfg)
    hf = hf.to_empty(device="cpu").to(torch.bfloat16)
    # to_empty leaves buffers uninitialised: the rotary frequencies are made again (garbage there
    # once gave NaN states, which the trace's running check refused)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.02) if p.ndim > 1 else p.fill_(1.0)
    hf.config._attn_implementation = "eager"
    hf.eval()
    model = ltt.load(hf, tokenizer=_byte_tokenizer())
    return model, lambda T: (TEXT * (T // len(TEXT) + 1))[:T]


def child(name: str, T: int) -> None:
    model, prompt_of = _load(name)
    prompt = prompt_of(T)
    model.trace(prompt_of(16))  # warm-up
    base = rss_mb()
    exact = reset_peak()
    t0 = time.perf_counter()
    trace = model.trace(prompt)
    t1 = time.perf_counter()
    g = trace.graph()
    t2 = time.perf_counter()
    trace.edge_heads(trace.n_layers // 2, -1, 0)
    t3 = time.perf_counter()
    trace.head_view(trace.n_layers // 2, 1)
    t4 = time.perf_counter()
    peak = rss_mb("VmHWM")
    held = trace.nbytes() if hasattr(trace, "nbytes") else {}
    timings = getattr(trace, "timings", {}) or {}
    print(json.dumps({
        "model": name, "T": trace.n_tokens, "trace_s": t1 - t0, "forward_s": timings.get("forward"),
        "attribute_s": timings.get("attribute"), "graph_s": t2 - t1, "edge_heads_s": t3 - t2,
        "head_view_s": t4 - t3, "edges": len(g.edges), "rss_model_mb": base,
        "peak_above_mb": peak - base if exact else float("nan"), "peak_mb": peak,
        "held_mb": {k: v / 2**20 for k, v in held.items()},
    }))


def run(name: str, T: int, tree: str | None, timeout: int) -> dict:
    env = dict(os.environ, LTT_QUIET="1")
    if tree:
        env["PYTHONPATH"] = os.path.abspath(tree)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, str(T)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "T": T, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        why = "killed (out of memory?)" if out.returncode in (-9, 137) else (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"model": name, "T": T, "error": why}
    return json.loads(lines[-1])


def fit(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r and np.isfinite(r["peak_above_mb"])]
    if len(ok) < 3:
        return "memory model: needs three or more points"
    T = np.array([r["T"] for r in ok], float)
    y = np.array([r["peak_above_mb"] for r in ok]) * 2**20
    a, b, c = np.linalg.lstsq(np.stack([np.ones_like(T), T, T * T], 1), y, rcond=None)[0]
    return f"memory model: peak above the model ~ {a / 2**20:.0f} MB + {b / 1024:.1f} KB x T + {c:.1f} B x T^2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["demo", *SHAPES])
    ap.add_argument("T", type=int, nargs="+")
    ap.add_argument("--tree", help="run another checkout of ltt (its directory) instead of this one")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.T[0])
        return
    rows = []
    print(f"{'T':>6} {'trace':>8} {'forward':>8} {'attrib':>8} {'graph':>7} {'heads':>7} {'view':>7} "
          f"{'peak above':>11} {'held':>9}  ({args.model}{', tree ' + args.tree if args.tree else ''})")
    for T in args.T:
        r = run(args.model, T, args.tree, args.timeout)
        rows.append(r)
        if "error" in r:
            print(f"{T:>6}  {r['error']}")
            continue
        held = sum(r["held_mb"].values()) if r["held_mb"] else float("nan")
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{r['T']:>6} {r['trace_s']:>8.2f} {f(r['forward_s']):>8} {f(r['attribute_s']):>8} "
              f"{r['graph_s']:>7.3f} {r['edge_heads_s']:>7.3f} {r['head_view_s']:>7.3f} "
              f"{r['peak_above_mb']:>8.0f} MB {held:>6.0f} MB", flush=True)
    print(fit(rows))
    if args.model == "llama7b-4":
        ok = [r for r in rows if "error" not in r]
        for r in ok:
            per_layer = sum(r["held_mb"].values()) / 4 if r["held_mb"] else float("nan")
            print(f"T={r['T']}: held per layer {per_layer:.0f} MB -> 32 layers {32 * per_layer / 1024:.1f} GB kept "
                  f"+ one layer's peak; weights of a 7B bf16 model 12.6 GB")


if __name__ == "__main__":
    main()
