"""Benchmark of the embedded model's start and of the offline report's size.

Each measurement runs in a fresh process (``python -c``), so imports and file caches count as
a user sees them:

* ``load``: ``ltt.load("smollm2-135m")`` with an empty cache folder (the GGUF file is
  dequantised and stored), then the median of three loads from the cache (``LTT_CACHE_DIR`` is
  a temporary folder, removed afterwards). Times are the load call alone and the whole process
  (imports included);
* ``report``: ``to_html`` of a 294-token prompt (tests/test_report.py's ``LONG_PROMPT`` with
  :data:`REPORT_EXTRA` before its last sentence) on the demo model,
  every target carried and precomputed (what ``ltt trace --out x.html`` writes): the file's
  size and the time to write it (the trace itself not counted), wall and CPU seconds (on a
  shared machine the CPU seconds say more about the work than the wall clock).

* ``faithfulness``: the report's faithfulness rerun alone on that prompt (the shown graph, 8
  random graphs), the plain batched rerun (``ltt.models.handlers.COMPACT = False``) and the
  shortcuts alternately, 2 runs each, in one process; prints both times and the largest
  difference between their numbers.

    python benchmarks/bench_report.py            # load and report, a few minutes on two shared cores
    python benchmarks/bench_report.py --only report
    python benchmarks/bench_report.py --only faithfulness

Targets (reported, not asserted): a load from the cache within 3 s; the report within 30 s
and 6 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# 294 tokens for the demo model's tokenizer: tests/test_report.py's long prompt with one more
# paragraph before its last sentence
REPORT_EXTRA = (
    "In the nineteenth century the railway reached the valley, and the harbour lost much of its trade to "
    "the new station on the hill. Factories for cloth and paper were built along the river, and workers "
    "came from the mountains to live in long rows of brick houses near the water. The old walls were torn "
    "down to make room for wide streets, a school, a hospital and a public library, which opened its doors "
    "in 1887 with a gift of two thousand books from a retired sea captain. Today the library holds more "
    "than forty thousand volumes, and its reading room on the top floor looks out over the harbour and the "
    "grey roofs of the old town below. "
)

LOAD = """
import time, json
t0 = time.perf_counter()
import ltt
t1 = time.perf_counter()
m = ltt.load("smollm2-135m")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "cache": m.hf_model.ltt_cache}))
"""

REPORT = """
import json, os, sys, time
sys.path.insert(0, os.path.join(%r, "tests"))
import ltt
from ltt.report import to_html
from test_report import LONG_PROMPT
head, tail = LONG_PROMPT.split(" When Mary")
trace = ltt.load("smollm2-135m").trace(head + " " + %r + "When Mary" + tail)
t0, c0 = time.perf_counter(), time.process_time()
to_html(trace, %r)
print(json.dumps({"tokens": trace.n_tokens, "layers": trace.n_layers, "write_s": time.perf_counter() - t0,
                  "cpu_s": time.process_time() - c0, "bytes": os.path.getsize(%r)}))
"""


FAITHFULNESS = """
import json, os, sys, time
import numpy as np
sys.path.insert(0, os.path.join(%r, "tests"))
import ltt
from ltt.models import handlers
from test_report import LONG_PROMPT
head, tail = LONG_PROMPT.split(" When Mary")
trace = ltt.load("smollm2-135m").trace(head + " " + %r + "When Mary" + tail)
g = trace.graph()

def numbers(f):
    return np.array([x for t in f.targets for s in [t.full, t.kept, t.removed, *t.random]
                     for x in (*s.prob, *s.logit, s.kl)])

times = {"plain": [], "shortcuts": []}
got = {}
for name in ["plain", "shortcuts"] * 2:
    handlers.COMPACT = name == "shortcuts"
    t0 = time.perf_counter()
    got[name] = numbers(trace.faithfulness(g, baselines=8, seed=0))
    times[name].append(round(time.perf_counter() - t0, 2))
diff = np.abs(got["plain"] - got["shortcuts"])
print(json.dumps({"tokens": trace.n_tokens, "plain_s": times["plain"], "shortcuts_s": times["shortcuts"],
                  "max_abs_diff": float(diff.max()), "differing": int((diff > 0).sum()), "of": int(diff.size)}))
"""


def _run(code: str, env: dict[str, str]) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def bench_load(env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(env, LTT_CACHE_DIR=cache)
        first = _run(LOAD, env)
        warm = [_run(LOAD, env) for _ in range(3)]
    assert first["cache"] == "stored" and all(w["cache"] == "hit" for w in warm), (first, warm)
    return {
        "first_load_s": round(first["load_s"], 2), "first_process_s": round(first["process_s"], 2),
        "cached_load_s_median": round(statistics.median(w["load_s"] for w in warm), 2),
        "cached_process_s_median": round(statistics.median(w["process_s"] for w in warm), 2),
    }


def bench_report(env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.html")
        r = _run(REPORT % (ROOT, REPORT_EXTRA, path, path), env)
    return {"tokens": r["tokens"], "layers": r["layers"], "megabytes": round(r["bytes"] / 1e6, 2),
            "write_s": round(r["write_s"], 1), "cpu_s": round(r["cpu_s"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["load", "report", "faithfulness"])
    args = ap.parse_args()
    env = dict(os.environ, LTT_QUIET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = {}
    if args.only in (None, "load"):
        results["load"] = bench_load(env)
        print("load", results["load"], flush=True)
    if args.only in (None, "report"):
        results["report"] = bench_report(env)
        print("report", results["report"], flush=True)
    if args.only == "faithfulness":
        results["faithfulness"] = _run(FAITHFULNESS % (ROOT, REPORT_EXTRA), env)
        print("faithfulness", results["faithfulness"], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
