"""Short prompts, this tree against another checkout: trace + default graph, medians, alternating.

Each round runs one fresh process per tree (this one, then ``--tree``), each loading the
embedded model once, warming up, then timing ``model.trace(prompt)`` and ``trace.graph()``
``--repeats`` times; the rounds alternate so both trees see the same machine load. The prompt
is given as text (an older tree takes no token ids), cut to T tokens of the model's tokenizer.

    python benchmarks/bench_short.py --tree /path/to/old/checkout            # T = 64, 3 rounds
    python benchmarks/bench_short.py --tree OLD --lengths 64 256 --rounds 5

Target (issue 10): T=64 end to end within 10% of the previous version.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TEXT = "The quick brown fox jumps over the lazy dog while the cat watches " * 40


def child(T: int, repeats: int) -> None:
    import ltt

    model = ltt.load("smollm2-135m")
    prompt = model.tokenizer.decode(model.tokenizer(TEXT)["input_ids"][:T])
    for _ in range(3):
        model.trace(prompt).graph()
    trace_s, graph_s, cpu_s = [], [], []
    for _ in range(repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        trace = model.trace(prompt)
        t1 = time.perf_counter()
        trace.graph()
        trace_s.append(t1 - t0)
        graph_s.append(time.perf_counter() - t1)
        cpu_s.append(time.process_time() - c0)
    print(json.dumps({"trace": statistics.median(trace_s), "graph": statistics.median(graph_s),
                      "total": statistics.median(a + b for a, b in zip(trace_s, graph_s)),
                      "cpu": statistics.median(cpu_s)}))


def run(tree: str, T: int, repeats: int) -> dict:
    env = dict(os.environ, LTT_QUIET="1", PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(T), str(repeats)],
                         env=env, capture_output=True, text=True, timeout=1800, cwd=os.path.abspath(tree))
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", required=True, help="the other checkout (its directory, extension built in place)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[64])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--cpu", action="store_true",
                    help="compare CPU time (process_time) instead of wall time: on a loaded machine, "
                         "with OMP_NUM_THREADS=1, the wall times mostly measure the other work")
    args = ap.parse_args()
    what = "cpu" if args.cpu else "total"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"{'T':>6} {'round':>5} {'this (ms)':>10} {'other (ms)':>11} {'ratio':>6}")
    for T in args.lengths:
        ratios = []
        for r in range(args.rounds):
            a, b = run(here, T, args.repeats), run(args.tree, T, args.repeats)
            if what not in b:
                raise SystemExit(f"{args.tree}: its bench_short.py gives no {what!r} figure")
            ratios.append(a[what] / b[what])
            print(f"{T:>6} {r:>5} {a[what] * 1e3:>10.1f} {b[what] * 1e3:>11.1f} {ratios[-1]:>6.2f}", flush=True)
        print(f"{T:>6} median ratio this/other: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
