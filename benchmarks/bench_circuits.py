"""Faithfulness curves of ltt's routes against EAP, EAP-IG and random, under counterfactual patching.

For each embedded model and task set (ltt.tasks; --pairs N of each), every ranking's circuits
are measured at MIB's edge fractions plus a few more: normalised faithfulness on the pairs'
mean logit differences, CPR and CMD over MIB's fractions (trapezoid rule), the smallest
measured fraction (and part count, mean over pairs) reaching 0.8 and 0.9, and seconds per
prompt for scoring and for measuring; then trace.circuit(0.8) per prompt (parts and seconds).

    .venv/bin/python benchmarks/bench_circuits.py --pairs 50                   # the full run
    .venv/bin/python benchmarks/bench_circuits.py --pairs 5 --models smollm2-135m --json out.json

Prints one markdown table per model (what docs/circuits.md holds).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("LTT_QUIET", "1")

EXTRA = (0.003, 0.03, 0.3)


def run(model_name: str, tasks: list[str], rankings: list[str], pairs: int, circuit_ranking: str | None,
        steps: int, circuit_pairs: int | None = None, sink=None) -> list[dict]:
    import ltt
    import ltt.circuits as C
    import ltt.tasks as T
    from ltt.circuits.curves import MIB_FRACTIONS, areas

    model = ltt.load(model_name)
    budgets = sorted(set(MIB_FRACTIONS) | set(EXTRA))
    mib = [budgets.index(f) for f in MIB_FRACTIONS]
    rows = []
    for task in tasks:
        ts = T.task(task, model, n=pairs)
        traces = [model.trace(p.prompt) for p in ts.pairs]
        cfs = [p.counterfactual if isinstance(p.counterfactual, list) else model._encode(p.counterfactual)
               for p in ts.pairs]
        toks = [p.tokens for p in ts.pairs]
        for ranking in rankings:
            t0 = time.perf_counter()
            c = C.curve(traces, ranking, budgets, counterfactual=cfs, tokens=toks, steps=steps)
            wall = time.perf_counter() - t0
            f = c.faithfulness
            cpr, cmd = areas(c.fractions[mib], f[mib])
            row = {"model": model_name, "task": task, "pairs": len(ts.pairs), "skipped": ts.skipped,
                   "ranking": c.ranking, "cpr": cpr, "cmd": cmd, "curve": dict(zip(map(float, c.fractions), map(float, f))),
                   "s_rank": c.seconds["ranking"], "s_measure": c.seconds["measure"], "wall": wall}
            for level in (0.8, 0.9):
                hit = np.nonzero(f >= level)[0]
                row[f"frac_{level}"] = float(c.fractions[hit[0]]) if hit.size else None
                row[f"parts_{level}"] = float(c.counts[:, hit[0]].mean()) if hit.size else None
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
            if sink:
                sink(row)
        if circuit_ranking:
            secs, parts, got = [], [], []
            n_c = len(traces) if circuit_pairs is None else min(circuit_pairs, len(traces))
            for tr, cf, tk in list(zip(traces, cfs, toks))[:n_c]:
                t0 = time.perf_counter()
                try:
                    g = tr.circuit(0.8, counterfactual=cf, tokens=tk, ranking=circuit_ranking, baselines=0)
                    parts.append(g.circuit["parts"])
                    got.append(g.faithfulness.normalized)
                except ValueError:
                    parts.append(np.nan)
                secs.append(time.perf_counter() - t0)
            row = {"model": model_name, "task": task, "ranking": f"circuit() {circuit_ranking}", "pairs": n_c,
                   "tokens_mean": float(np.mean([len(tr.token_ids) for tr in traces[:n_c]])),
                   "circuit_reached": int(np.sum(np.isfinite(parts))),
                   "circuit_seconds": [float(x) for x in secs],
                   "circuit_parts_mean": float(np.nanmean(parts)), "circuit_seconds_median": float(np.median(secs)),
                   "circuit_faithfulness_mean": float(np.mean(got)) if got else None}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "circuit_seconds"}), flush=True)
            if sink:
                sink(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | task (pairs) | ranking | parts for 0.8 (fraction) | parts for 0.9 (fraction) | CPR | CMD | "
           "s/prompt score + measure |", "|---|---|---|---|---|---|---|---|"]

    def cell(r, level):
        p, f = r.get(f"parts_{level}"), r.get(f"frac_{level}")
        return "not reached" if p is None else f"{p:.0f} ({f:.4f})"

    for r in rows:
        if "cpr" in r:
            out.append(f"| {r['model']} | {r['task']} ({r['pairs']}) | {r['ranking']} | {cell(r, 0.8)} | {cell(r, 0.9)} "
                       f"| {r['cpr']:.3f} | {r['cmd']:.3f} | {r['s_rank']:.2f} + {r['s_measure']:.2f} |")
        else:
            out.append(f"| {r['model']} | {r['task']} | {r['ranking']} | {r['circuit_parts_mean']:.0f} parts "
                       f"(re-measured {r['circuit_faithfulness_mean']:.2f}) | | | | {r['circuit_seconds_median']:.2f} s median |")
    return "\n".join(out)


def curves_table(rows: list[dict]) -> str:
    """The curves themselves: normalised faithfulness at each budget, by its nominal fraction
    (MIB's and EXTRA; the counts are rounded per prompt, so a short prompt's actual fractions
    differ a little, and two nominal budgets of the same count show once)."""
    from ltt.circuits.curves import MIB_FRACTIONS

    rows = [r for r in rows if "curve" in r]
    if not rows:
        return ""
    fr = sorted(set(MIB_FRACTIONS) | set(EXTRA))
    out = ["| task | ranking | " + " | ".join(f"{f:g}" for f in fr) + " |", "|---|---|" + "---|" * len(fr)]
    for r in rows:
        cell = {}  # each measured fraction under its nearest nominal one (a short prompt's
        for f, v in r["curve"].items():  # smallest budgets can round to the same count: blank)
            cell[min(fr, key=lambda x: abs(np.log(float(f) / x)))] = v
        out.append(f"| {r['task']} | {r['ranking']} | " + " | ".join(
            f"{cell[f]:.2f}" if f in cell else "" for f in fr) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--tasks", nargs="+", default=["ioi", "greater-than", "induction", "factual"])
    ap.add_argument("--rankings", nargs="+",
                    default=["routes-paths", "routes-contrast", "eap", "eap-ig", "refined", "random"])
    ap.add_argument("--pairs", type=int, default=50, help="pairs per task set (>= 50 for the full benchmark)")
    ap.add_argument("--steps", type=int, default=5, help="EAP-IG's interpolation steps")
    ap.add_argument("--circuit", default="routes", help="the ranking trace.circuit(0.8) is timed with ('' for none)")
    ap.add_argument("--circuit-pairs", type=int, default=None,
                    help="time trace.circuit(0.8) on the first N pairs of each task only (default: all)")
    ap.add_argument("--json", default=None, help="write every row here (rewritten after each row)")
    ap.add_argument("--tables", nargs="+", default=None, metavar="JSON",
                    help="print the tables of earlier --json files (merged, one table per model) and exit")
    args = ap.parse_args()
    rows: list[dict] = []
    if args.tables:
        for path in args.tables:
            with open(path) as fh:
                rows += json.load(fh)
        order = {t: i for i, t in enumerate(["ioi", "greater-than", "induction", "factual"])}
        for m in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == m]
            mine.sort(key=lambda r: (order.get(r["task"], 9), "circuit()" in r["ranking"]))
            print(f"\n**{m}**\n\n" + table(mine) + "\n\n" + curves_table(mine))
        return

    def sink(row):
        rows.append(row)
        if args.json:
            with open(args.json + ".tmp", "w") as fh:
                json.dump(rows, fh, indent=1)
            os.replace(args.json + ".tmp", args.json)

    for m in args.models:
        run(m, args.tasks, args.rankings, args.pairs, args.circuit or None, args.steps, args.circuit_pairs, sink)
    print(table(rows))


if __name__ == "__main__":
    main()
