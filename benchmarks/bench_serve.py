"""``ltt serve`` round trips: what a page waits for, measured from a WebSocket client.

Starts the real ``ltt serve`` on a free loopback port, connects as a page would, and reports:

* ``first graph``: model load + trace + first graph, from the ``open`` message to the ``state``
  answer (the model is not cached yet);
* ``trace``: a second prompt on the cached model (``open`` -> ``update`` with the new graph);
* ``re-prune``: a threshold change -> the ``update`` carrying the new graph (median);
* ``heads panel``: selecting an attention edge -> the ``update`` carrying its panel (median);
* the size of the graph message the page receives.

Each in the server's own worker thread behind one queue, as the page sees it; ``overhead`` is the
round trip minus the job's own time in the worker (the JSON, the socket, the queue, the page's
messages), which is what serving adds to the widget's work.

    python benchmarks/bench_serve.py                        # the embedded SmolLM2-135M
    python benchmarks/bench_serve.py --model /path/to/dir --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

from websockets.sync.client import connect

PROMPT = "When Mary and John went to the store, John gave a drink to"
OTHER = "The capital of France is Paris, and the capital of Italy is"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(ws, pred):
    """Messages until one satisfies pred and the job behind it is done; returns (that message,
    bytes received, seconds until it came, the job's own seconds in the worker)."""
    size, found, t0 = 0, None, time.perf_counter()
    while True:
        text = ws.recv(timeout=600)
        size += len(text)
        msg = json.loads(text)
        if msg["method"] == "job" and msg["job"]["state"] == "failed":
            raise RuntimeError(msg["job"]["error"])
        if msg["method"] == "error":
            raise RuntimeError(msg["message"])
        if found is None and pred(msg):
            found, took = msg, time.perf_counter() - t0
        if found is not None and msg["method"] == "job" and msg["job"]["state"] == "done":
            return found, size, took, msg["job"]["elapsed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model directory or hub id (default: the embedded one)")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    port = _port()
    cmd = [os.path.join(os.path.dirname(sys.executable), "ltt"), "serve", "--port", str(port)]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, LTT_QUIET="1"))
    try:
        for line in proc.stdout:
            if line.startswith("ltt serve: open"):
                break
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            hello = json.loads(ws.recv(timeout=60))
            model = hello["models"][0]["id"]
            ws.send(json.dumps({"method": "open", "model": model, "prompt": PROMPT}))
            state, size, first, first_job = _until(ws, lambda m: m["method"] == "state")
            graph = state["views"]["main"]["graph"]
            ws.send(json.dumps({"method": "custom", "content": {"type": "run", "prompt": OTHER}}))
            _, _, trace, trace_job = _until(ws, lambda m: m["method"] == "update" and "graph" in m["state"])
            rows = {"re-prune": [], "heads panel": []}
            for i in range(args.repeats):
                ws.send(json.dumps({"method": "update", "state": {"threshold": 0.02 + 0.01 * (i % 5)}}))
                upd, _, took, job = _until(ws, lambda m: m["method"] == "update" and "graph" in m["state"])
                rows["re-prune"].append((took, job))
            edges = [e for e in upd["state"]["graph"]["edges"] if e["kind"] == "attention"]
            for i in range(args.repeats):
                e = edges[i % len(edges)]
                sel = {"edge": f"{e['source']}|{e['target']}|attention", "head": i % 2}
                ws.send(json.dumps({"method": "update", "state": {"selection": sel}}))
                _, _, took, job = _until(ws, lambda m: m["method"] == "update" and "panel" in m["state"])
                rows["heads panel"].append((took, job))
        print(f"model {model}: {graph['n_layers']} layers, {len(graph['tokens'])} tokens, "
              f"{len(graph['edges'])} edges in the first graph ({size / 1024:.0f} KiB of messages)")
        print(f"{'':34} {'round trip':>12} {'in worker':>12} {'overhead':>10}")
        print(f"{'first graph (load + trace)':34} {first:10.2f} s {first_job:10.2f} s {(first - first_job) * 1000:7.1f} ms")
        print(f"{'second prompt (trace)':34} {trace * 1000:9.1f} ms {trace_job * 1000:9.1f} ms "
              f"{(trace - trace_job) * 1000:7.1f} ms")
        for name, vals in rows.items():
            rt = statistics.median(v[0] for v in vals)
            wk = statistics.median(v[1] for v in vals)
            ov = statistics.median(v[0] - v[1] for v in vals)
            print(f"{name + f' (median of {len(vals)})':34} {rt * 1000:9.1f} ms {wk * 1000:9.1f} ms {ov * 1000:7.1f} ms")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
