"""Routes at scale on the embedded model: prompts per second and peak memory of ``trace_many``, on CPU.

Two parts, in one run:

* **throughput**: ``model.trace_many`` over distinct prompts of about T tokens (T = 32 and 128),
  writing JSON lines as it goes; prompts per second after a warm-up prompt, next to the time of
  ``trace -> graph`` alone per prompt and of the summary step (``ltt.routes.summarize``);
* **memory**: peak RSS of a fresh subprocess running ``trace_many`` over N prompts (100 and
  1,000), each in its own process so the peaks do not mix; the growth above the RSS after the
  first prompt should stay flat as N grows (only the small per-prompt summaries accumulate).

    python benchmarks/bench_many.py            # T=32: 50 prompts, T=128: 20; memory at N=100, 1000
    python benchmarks/bench_many.py --quick    # T=32: 10, T=128: 4; memory at N=20, 100
    python benchmarks/bench_many.py --quick --threads 1   # steadier figures on a shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("LTT_QUIET", "1")
if "--threads" in sys.argv[:-1]:  # before torch and the C core start their thread pools
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n

WORDS = (
    "the history of science shows how ideas travel between people places and centuries "
    "while instruments and journals carry results from one laboratory to the next as "
    "students learn to question old answers and build better tools for the future"
).split()


def prompts_of(model, n_tokens: int, count: int) -> list[str]:
    """``count`` distinct prompts of ``n_tokens`` tokens where the words allow (BOS included when
    the tokenizer adds one): ``"<i>: "`` and words from a different start each."""
    stream = WORDS * (4 * n_tokens // len(WORDS) + 2)

    def length(words: list[str]) -> int:
        return len(model.tokenizer(" ".join(words))["input_ids"])

    out = []
    for i in range(count):
        start = i % len(WORDS)
        words = [f"{i}:"]
        j = start
        while length(words) < n_tokens:
            words.append(stream[j])
            j += 1
        while len(words) > 2 and length(words) > n_tokens:
            words.pop()
        out.append(" ".join(words))
    return out


def rss_mb(key: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset the kernel's peak RSS of this process (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child_memory(n: int, n_tokens: int) -> None:
    """One process: load, one warm-up prompt, reset the peak RSS, then trace_many over n prompts;
    print JSON. The peak is the kernel's VmHWM since the reset (the model load's transient peak,
    from de-quantising the GGUF file, would hide everything else)."""
    import ltt

    model = ltt.load("smollm2-135m")
    prompts = prompts_of(model, n_tokens, n + 1)
    with tempfile.TemporaryDirectory() as tmp:
        model.trace_many(prompts[:1], progress=False)
        after_first = rss_mb()
        exact = reset_peak()
        t0 = time.perf_counter()
        routes = model.trace_many(prompts[1:], out=os.path.join(tmp, "r.jsonl"), progress=False)
        seconds = time.perf_counter() - t0
        size = os.path.getsize(os.path.join(tmp, "r.jsonl"))
    peak = rss_mb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "prompts": len(routes), "peak_mb": peak, "rss_after_first_mb": after_first,
                      "rss_end_mb": rss_mb(), "seconds": seconds, "file_kb": size / 1024,
                      "peak_since_reset": exact}))


def throughput(model, n_tokens: int, n: int) -> dict:
    import numpy as np

    from ltt.routes import summarize

    prompts = prompts_of(model, n_tokens, n + 1)
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
    model.trace_many(prompts[:1], progress=False)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model.trace_many(prompts[1:], out=os.path.join(tmp, "r.jsonl"), progress=False)
        total = time.perf_counter() - t0
    graph_times, summary_times = [], []
    for p in prompts[1: 1 + min(n, 5)]:
        t0 = time.perf_counter()
        tr = model.trace(p)
        g = tr.graph()
        t1 = time.perf_counter()
        summarize(tr, graph=g)
        t2 = time.perf_counter()
        graph_times.append(t1 - t0)
        summary_times.append(t2 - t1)
    return {"T": n_tokens, "mean_tokens": float(np.mean(lengths[1:])), "n": n, "seconds": total,
            "prompts_per_s": n / total, "trace_graph_s": float(np.median(graph_times)),
            "summary_s": float(np.median(summary_times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts (T=32: 10, T=128: 4; memory N=20, 100)")
    parser.add_argument("--memory-tokens", type=int, default=16, help="prompt length of the memory runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch, OpenMP and BLAS (default: their own defaults)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--child-memory", type=int, nargs=2, metavar=("N", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.child_memory:
        child_memory(*args.child_memory)
        return
    runs = [(32, 10), (128, 4)] if args.quick else [(32, 50), (128, 20)]
    sizes = [20, 100] if args.quick else [100, 1000]

    import torch

    import ltt

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}, "
          f"core: {ltt._core.build_info()}")
    if not args.skip_throughput:
        t0 = time.perf_counter()
        model = ltt.load("smollm2-135m")
        print(f"loaded {model.name} in {time.perf_counter() - t0:.1f} s")
        print(f"{'T':>5} {'tokens':>7} {'prompts':>8} {'seconds':>8} {'prompts/s':>10} "
              f"{'trace+graph s':>14} {'summary s':>10}")
        for T, n in runs:
            r = throughput(model, T, n)
            print(f"{r['T']:>5} {r['mean_tokens']:>7.1f} {r['n']:>8} {r['seconds']:>8.2f} "
                  f"{r['prompts_per_s']:>10.2f} {r['trace_graph_s']:>14.3f} {r['summary_s']:>10.4f}")
        del model
    if not args.skip_memory:
        print(f"peak RSS of trace_many in a fresh process per N (T about {args.memory_tokens}):")
        print(f"{'N':>6} {'seconds':>8} {'file KB':>8} {'RSS after 1st MB':>17} {'peak MB':>8} "
              f"{'growth MB':>10} {'RSS end MB':>11}")
        for n in sizes:
            proc = subprocess.run(
                [sys.executable, __file__, "--child-memory", str(n), str(args.memory_tokens)]
                + ([] if args.threads is None else ["--threads", str(args.threads)]),
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                print(f"N={n}: the child failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{n:>6} {r['seconds']:>8.1f} {r['file_kb']:>8.0f} {r['rss_after_first_mb']:>17.0f} "
                  f"{r['peak_mb']:>8.0f} {r['peak_mb'] - r['rss_after_first_mb']:>10.1f} {r['rss_end_mb']:>11.0f}"
                  + ("" if r["peak_since_reset"] else "  (peak includes the load: VmHWM reset unavailable)"))


if __name__ == "__main__":
    main()
