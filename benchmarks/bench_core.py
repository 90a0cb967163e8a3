"""Benchmark of the C attribution core against a PyTorch re-statement of the original method.

The baseline is written here from the method's math, the way the original tool computes it:
materialise every (target, source, head) part vector as one ``[T, T, H, d]`` tensor, take the
L1 distances of the whole to each part with torch, turn them into contributions, renormalise,
build the graph edge by edge in Python with networkx, and prune it by a reverse breadth-first
search from the target. The C side runs the same steps through ``ltt.kernels``
(``attn_contrib``, ``contributions``, ``renormalize``, ``prune``) without ever forming that tensor.

Both sides read the very same inputs (generated once here, saved as ``.npy``) and each side runs
in a fresh subprocess. Time: median wall time over the repeats (``time.perf_counter``; a side
stops repeating once it has spent 20 s). Memory: the worker's peak resident set
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus its resident set just before the timed
calls (inputs loaded, libraries imported, one small warm-up call done): the memory the
computation itself adds. A baseline whose ``[T, T, H, d]`` tensor would not fit in the free
memory is skipped, saying how much it would need.

    python benchmarks/bench_core.py --quick      # smoke run, small shapes, ~30 s
    python benchmarks/bench_core.py              # SmolLM2-135M graph, 7B layer at T=128/512/2048, prune

Targets (reported, not asserted): whole graph at SmolLM2 shapes, T=128, >= 50x faster than the
baseline; L1 kernel >= 15 G elements/s at 7B shapes, T=512; one 7B layer at T=2048 within 4 GB
peak; pruning a 32-layer, 2048-token graph from one target < 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

EPS = 1e-5
TAU = 0.04
MAX_SIDE_SECONDS = 20.0

SMOLLM2 = dict(L=30, H=9, G=3, d=576, d_h=64, F=1536)
LLAMA7B = dict(H=32, G=8, d=4096, d_h=128, F=11008)


# --------------------------------------------------------------------------------------------
# inputs (one seeded generator for both sides)


def _causal_softmax(rng: np.random.Generator, H: int, T: int) -> np.ndarray:
    out = np.empty((H, T, T), np.float32)
    upper = np.triu(np.ones((T, T), bool), 1)
    for h in range(H):  # one head at a time: float64 temporaries stay O(T^2)
        s = rng.standard_normal((T, T)) * 2.0
        s[upper] = -np.inf
        s = np.exp(s - s.max(axis=1, keepdims=True))
        out[h] = s / s.sum(axis=1, keepdims=True)
    return out


def make_layer(seed: int, T: int, H: int, G: int, d: int, d_h: int, **_: int) -> dict:
    """One sequential pre-norm layer's attribution inputs, float32: ``x`` (entering), ``attn``,
    ``values``, ``w_o``, ``m`` = x + attention output (computed from those parts), ``f`` the FFN
    output and ``y = m + f``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, d), np.float32)
    attn = _causal_softmax(rng, H, T)
    values = rng.standard_normal((T, G, d_h), np.float32)
    w_o = (rng.standard_normal((H, d_h, d), np.float32) / np.float32(np.sqrt(d_h)))
    v = np.repeat(values, H // G, axis=1)  # [T, H, d_h]
    ctx = np.einsum("hts,shk->thk", attn, v, optimize=True).reshape(T, H * d_h)
    m = (x + ctx @ w_o.reshape(H * d_h, d)).astype(np.float32)
    f = (rng.standard_normal((T, d), np.float32) * np.float32(0.7))
    y = (m + f).astype(np.float32)
    return dict(x=x, attn=attn, values=values, w_o=w_o, m=m, f=f, y=y)


def save_layers(folder: str, layers: list[dict]) -> None:
    os.makedirs(folder, exist_ok=True)
    for l, lay in enumerate(layers):
        for k, v in lay.items():
            np.save(os.path.join(folder, f"{l}_{k}.npy"), v)
    with open(os.path.join(folder, "meta.json"), "w") as fh:
        json.dump({"L": len(layers)}, fh)


def load_layers(folder: str) -> list[dict]:
    with open(os.path.join(folder, "meta.json")) as fh:
        L = json.load(fh)["L"]
    keys = ("x", "attn", "values", "w_o", "m", "f", "y")
    return [{k: np.load(os.path.join(folder, f"{l}_{k}.npy")) for k in keys} for l in range(L)]


def make_prune_graph(seed: int, L: int, T: int) -> dict:
    """Renormalised-looking edge weights: per state a little noise everywhere, three strong
    sources, the residual taking the rest; FFN shares 0.1..0.5."""
    rng = np.random.default_rng(seed)
    attn = np.zeros((L, T, T), np.float32)
    attn_resid = np.zeros((L, T), np.float32)
    rows = np.arange(T)
    for l in range(L):
        a = np.tril(rng.random((T, T), np.float32)) * (np.float32(0.25) / (rows[:, None] + 1))
        spikes = np.floor(rng.random((T, 3)) * (rows[:, None] + 1)).astype(np.int64)
        a[rows[:, None], spikes] += rng.uniform(0.04, 0.25, (T, 3)).astype(np.float32)
        a /= np.maximum(a.sum(axis=1, keepdims=True), 1.0)
        attn[l] = a
        attn_resid[l] = np.clip(1.0 - a.sum(axis=1), 0.0, 1.0)
    ffn = rng.uniform(0.1, 0.5, (L, T)).astype(np.float32)
    return dict(attn=attn, attn_resid=attn_resid, ffn=ffn, ffn_resid=(1 - ffn).astype(np.float32),
                parallel=np.zeros(L, bool))


# --------------------------------------------------------------------------------------------
# the C side: ltt.kernels


def c_layer(lay: dict, keep_heads: bool = True) -> tuple[dict, np.ndarray, float, float]:
    """One layer's contributions; also the attention call's wall and process CPU seconds."""
    from ltt import kernels as A

    t0, c0 = time.perf_counter(), time.process_time()
    out = A.attn_contrib(lay["x"], lay["m"], lay["attn"], lay["values"], lay["w_o"],
                         keep_heads=keep_heads)
    t_attn, c_attn = time.perf_counter() - t0, time.process_time() - c0
    block = A.contributions(np.stack([lay["m"], lay["f"]]), lay["y"])
    return out, block, t_attn, c_attn


def c_graph(layers: list[dict], target: int) -> tuple[dict, float, float]:
    """Whole graph: every layer's contributions, the renormalize threshold mode, pruning."""
    from ltt import kernels as A

    L = len(layers)
    T = layers[0]["x"].shape[0]
    attn = np.empty((L, T, T), np.float32)
    attn_resid = np.empty((L, T), np.float32)
    ffn = np.empty((L, T), np.float32)
    ffn_resid = np.empty((L, T), np.float32)
    t_attn = c_attn = 0.0
    for l, lay in enumerate(layers):
        out, block, ta, ca = c_layer(lay)
        t_attn += ta
        c_attn += ca
        r = A.renormalize(out["heads"], out["resid"][None], TAU)
        attn[l], attn_resid[l] = r["edges"], r["single"][0]
        b = A.renormalize(block[1][None, :, None], block[0][None], TAU)
        ffn[l], ffn_resid[l] = b["edges"][:, 0], b["single"][0]
    kept = A.prune(attn, attn_resid, ffn, ffn_resid, np.zeros(L, bool), np.array([target]), TAU)
    return dict(kept_attn_edges=int(len(kept["attn_edges"])), edges0=attn[0]), t_attn, c_attn


# --------------------------------------------------------------------------------------------
# the baseline: PyTorch + networkx, as the original method computes it


def torch_attn_contrib(x, whole, attn, values, w_o):
    """L1 contributions of one attention layer, materialising every (t, s, h) part vector."""
    import torch

    H, T, _ = attn.shape
    G = values.shape[1]
    u = torch.einsum("shk,hkd->hsd", values.repeat_interleave(H // G, dim=1), w_o)  # [H, T, d]
    parts = attn.permute(1, 2, 0)[..., None] * u.permute(1, 0, 2)[None]  # [T, S, H, d]
    parts.neg_().add_(whole[:, None, None, :])  # whole - part, in place
    dist = parts.abs_().sum(dim=-1)  # [T, S, H]: pairwise L1 distances
    del parts
    wn = whole.abs().sum(dim=-1)  # [T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    raw = (wn[:, None, None] - dist).clamp_min(EPS) * causal[..., None]
    raw_res = (wn - (whole - x).abs().sum(dim=-1)).clamp_min(EPS)
    total = raw.sum(dim=(1, 2)) + raw_res
    heads = (raw / total[:, None, None]).permute(2, 0, 1)  # [H, T, S]
    return heads, raw_res / total


def torch_block(m, f, y):
    import torch

    yn = y.abs().sum(dim=-1)
    raw = torch.stack([(yn - (y - p).abs().sum(dim=-1)).clamp_min(EPS) for p in (m, f)])
    return raw / raw.sum(dim=0)


def torch_renormalize(heads, single, tau):
    """Per target: drop parts below tau (keep the largest if none passes), rescale to 1."""
    import torch

    K, T, S = heads.shape
    parts = torch.cat([heads.permute(1, 0, 2).reshape(T, K * S), single.T], dim=1)  # [T, K*S+E]
    keep = parts >= tau
    none = ~keep.any(dim=1)
    keep[none, parts[none].argmax(dim=1)] = True
    kept = parts * keep
    kept = kept / kept.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return kept[:, : K * S].reshape(T, K, S).sum(dim=1), kept[:, K * S:].T


def torch_layer(lay: dict) -> tuple:
    t0 = time.perf_counter()
    heads, resid = torch_attn_contrib(lay["x"], lay["m"], lay["attn"], lay["values"], lay["w_o"])
    t_attn = time.perf_counter() - t0
    return heads, resid, torch_block(lay["m"], lay["f"], lay["y"]), t_attn


def nx_prune(G, target: str, tau: float) -> set:
    """Reverse BFS from the target keeping every incoming edge >= tau (else the largest)."""
    from collections import deque

    kept = set()
    seen = {target}
    queue = deque([target])
    while queue:
        node = queue.popleft()
        inc = list(G.in_edges(node, data="weight", keys=True))
        if not inc:
            continue
        chosen = [e for e in inc if e[3] >= tau] or [max(inc, key=lambda e: e[3])]
        for src, dst, key, _w in chosen:
            kept.add((src, dst, key))
            if src not in seen:
                seen.add(src)
                queue.append(src)
    return kept


def torch_graph(layers: list[dict], target: int) -> tuple[dict, float]:
    import networkx as nx
    import torch

    L = len(layers)
    T = layers[0]["x"].shape[0]
    G = nx.MultiDiGraph()
    edges0 = None
    t_attn = 0.0
    for l, lay in enumerate(layers):
        heads, resid, block, ta = torch_layer(lay)
        t_attn += ta
        edges, single = torch_renormalize(heads, resid[None], TAU)
        f_edges, f_single = torch_renormalize(block[1][None, :, None], block[0][None], TAU)
        if l == 0:
            edges0 = edges.numpy().copy()
        e, r = edges.tolist(), single[0].tolist()
        fw, fr = f_edges[:, 0].tolist(), f_single[0].tolist()
        for t in range(T):  # edge by edge, as the original builds its graph
            a_node, m_node, i_node = f"A{l}_{t}", f"M{l}_{t}", f"I{l}_{t}"
            prev = f"I{l - 1}_{t}" if l else f"X0_{t}"
            for s in range(t + 1):
                src = f"I{l - 1}_{s}" if l else f"X0_{s}"
                G.add_edge(src, a_node, key="attention", weight=e[t][s])
            G.add_edge(prev, a_node, key="residual", weight=r[t])
            G.add_edge(a_node, m_node, key="ffn", weight=fw[t])
            G.add_edge(m_node, i_node, key="ffn", weight=fw[t])
            G.add_edge(a_node, i_node, key="residual", weight=fr[t])
    kept = nx_prune(G, f"I{L - 1}_{target}", TAU)
    n_attn = sum(1 for e in kept if e[2] == "attention")
    return dict(kept_attn_edges=n_attn, edges0=edges0), t_attn


# --------------------------------------------------------------------------------------------
# workers (one fresh process per side and case)


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(side: str, case: str, folder: str, repeats: int, out_path: str) -> None:
    result: dict = {"side": side, "case": case, "times": [], "attn_times": [], "attn_cpu": []}
    if side == "torch":
        import networkx  # noqa: F401  (imported before the baseline RSS is read)
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    else:
        import ltt._core
        from ltt import kernels as A

        result["build_info"] = ltt._core.build_info()
    if case == "prune":
        from ltt import kernels as A

        with open(os.path.join(folder, "meta.json")) as fh:
            meta = json.load(fh)
        g = make_prune_graph(1, meta["L"], meta["T"])
        A.prune(**{k: v[:, :8, :8] if v.ndim == 3 else (v[:, :8] if v.ndim == 2 else v)
                   for k, v in g.items()}, targets=np.array([7]), threshold=TAU)
        base = _rss()
        for _ in range(repeats):
            t0 = time.perf_counter()
            kept = A.prune(**g, targets=np.array([meta["T"] - 1]), threshold=TAU)
            result["times"].append(time.perf_counter() - t0)
        result["kept_attn_edges"] = int(len(kept["attn_edges"]))
    else:
        layers = load_layers(folder)
        T = layers[0]["x"].shape[0]
        if side == "torch":
            import torch

            layers = [{k: torch.from_numpy(v) for k, v in lay.items()} for lay in layers]
        small = make_layer(0, 4, *(layers[0]["attn"].shape[:1]), layers[0]["values"].shape[1],
                           layers[0]["x"].shape[1], layers[0]["values"].shape[2])
        if side == "torch":
            small = {k: torch.from_numpy(v) for k, v in small.items()}
            torch_layer(small)
        else:
            c_layer(small)
        base = _rss()
        spent = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            c_attn = None
            if case == "graph":
                if side == "torch":
                    info, t_attn = torch_graph(layers, T - 1)
                else:
                    info, t_attn, c_attn = c_graph(layers, T - 1)
            else:  # one layer: attention contributions + the FFN block's
                if side == "torch":
                    *_, t_attn = torch_layer(layers[0])
                    info = {}
                else:
                    _, _, t_attn, c_attn = c_layer(layers[0])
                    info = {}
            dt = time.perf_counter() - t0
            result["times"].append(dt)
            result["attn_times"].append(t_attn)
            if c_attn is not None:
                result["attn_cpu"].append(c_attn)
            spent += dt
            if spent > MAX_SIDE_SECONDS:
                break
        if case == "graph":
            result["kept_attn_edges"] = info["kept_attn_edges"]
            np.save(out_path + ".edges0.npy", np.asarray(info["edges0"], np.float32))
    result["rss_before"] = base
    result["peak"] = _peak()
    with open(out_path, "w") as fh:
        json.dump(result, fh)


def run_worker(side: str, case: str, folder: str, repeats: int) -> dict | None:
    out = os.path.join(folder, f"result_{side}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, case, folder,
           "--repeats", str(repeats), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  [{side} {case}] worker failed (rc={proc.returncode}):\n{proc.stderr[-2000:]}")
        return None
    with open(out) as fh:
        res = json.load(fh)
    if os.path.exists(out + ".edges0.npy"):
        res["edges0"] = np.load(out + ".edges0.npy")
    return res


# --------------------------------------------------------------------------------------------
# driver


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def med_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes: a smoke run of every path")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per side (median)")
    ap.add_argument("--skip-baseline", action="store_true", help="time the C core only")
    ap.add_argument("--only", choices=["graph", "layer", "prune"], action="append",
                    help="run only these parts (repeatable)")
    ap.add_argument("--layer-T", type=int, action="append", dest="layer_T",
                    help="token counts of the one-layer case (repeatable; default 128, 512, 2048)")
    ap.add_argument("--worker", nargs=3, metavar=("SIDE", "CASE", "FOLDER"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.repeats, args.out)
        return 0

    only = set(args.only or ["graph", "layer", "prune"])
    if args.quick:
        graph_shape = dict(SMOLLM2, L=4, T=32)
        layer_Ts = [32]
        prune_shape = (32, 256)
    else:
        graph_shape = dict(SMOLLM2, T=128)
        layer_Ts = [128, 512, 2048]
    if args.layer_T:
        layer_Ts = args.layer_T
        prune_shape = (32, 2048)
    root = tempfile.mkdtemp(prefix="ltt_bench_")
    rows = []
    notes = []
    try:
        import ltt._core

        print(f"ltt._core.build_info(): {ltt._core.build_info()}")
        load0 = os.getloadavg()[0]
        print(f"cpus: {os.cpu_count()}, load average (1 min): {load0:.2f}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
              f"MemAvailable: {gib(mem_available())}, "
              f"repeats: {args.repeats} (a side stops after {MAX_SIDE_SECONDS:.0f} s)")
        print("memory: peak RSS (ru_maxrss) of a fresh worker process minus its RSS just before "
              "the timed calls\n")

        def compare(label, case, folder, shape, T, need):
            c = run_worker("c", case, folder, args.repeats)
            tb = None
            budget = mem_available() - 3 * 2**30
            if args.skip_baseline:
                notes.append(f"{label}: baseline not run (--skip-baseline)")
            elif need > budget:
                notes.append(f"{label}: baseline SKIPPED: its [T,T,H,d] float32 tensor alone needs "
                             f"{gib(need)} (T*T*H*d*4 = {T}*{T}*{shape['H']}*{shape['d']}*4), "
                             f"more than the {gib(max(budget, 0))} free after a 3 GiB margin")
            else:
                tb = run_worker("torch", case, folder, args.repeats)
            n_layers = shape.get("L", 1)
            el = T * (T + 1) // 2 * shape["H"] * shape["d"] * n_layers
            row = dict(label=label, c=c, t=tb, elements=el)
            if c and tb and "edges0" in c and "edges0" in tb:
                row["max_diff"] = float(np.abs(c["edges0"] - tb["edges0"]).max())
            rows.append(row)

        if "graph" in only:
            T = graph_shape["T"]
            folder = os.path.join(root, "graph")
            save_layers(folder, [make_layer(100 + l, **graph_shape) for l in range(graph_shape["L"])])
            label = f"SmolLM2 graph L={graph_shape['L']} T={T}"
            compare(label, "graph", folder, graph_shape, T, T * T * graph_shape["H"] * graph_shape["d"] * 4)
            shutil.rmtree(folder)
        if "layer" in only:
            for T in layer_Ts:
                folder = os.path.join(root, f"layer{T}")
                save_layers(folder, [make_layer(7, T=T, **LLAMA7B)])
                compare(f"7B layer T={T}", "layer", folder, LLAMA7B, T, T * T * LLAMA7B["H"] * LLAMA7B["d"] * 4)
                shutil.rmtree(folder)
        if "prune" in only:
            L, T = prune_shape
            folder = os.path.join(root, "prune")
            os.makedirs(folder)
            with open(os.path.join(folder, "meta.json"), "w") as fh:
                json.dump({"L": L, "T": T}, fh)
            c = run_worker("c", "prune", folder, max(args.repeats, 5))
            rows.append(dict(label=f"prune L={L} T={T}, 1 target", c=c, t=None, elements=0))
            notes.append(f"prune: no networkx baseline: the full graph has {L * T * (T + 1) // 2:,} "
                         "attention edges, far beyond what networkx can build edge by edge here")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    hdr = (f"{'case':<28} {'C ms':>10} {'base ms':>10} {'ratio':>7} {'C G el/s':>9} "
           f"{'C G/cpu-s':>9} {'base G el/s':>11} {'C peak+':>10} {'base peak+':>11} {'|dEdges|':>9} "
           f"{'kept C/base':>12}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        c, tb = r["c"], r["t"]
        cm = med_ms(c["times"]) if c else float("nan")
        tm = med_ms(tb["times"]) if tb else float("nan")
        ratio = f"{tm / cm:7.1f}" if c and tb else f"{'-':>7}"
        cg = (f"{r['elements'] / (med_ms(c['attn_times']) / 1e3) / 1e9:9.2f}"
              if c and c.get("attn_times") else f"{'-':>9}")
        cc = (f"{r['elements'] / (med_ms(c['attn_cpu']) / 1e3) / 1e9:9.2f}"
              if c and c.get("attn_cpu") else f"{'-':>9}")
        tg = (f"{r['elements'] / (med_ms(tb['attn_times']) / 1e3) / 1e9:11.3f}"
              if tb and tb.get("attn_times") else f"{'-':>11}")
        cp = gib(c["peak"] - c["rss_before"]) if c else "-"
        tp = gib(tb["peak"] - tb["rss_before"]) if tb else "-"
        md = f"{r['max_diff']:9.1e}" if "max_diff" in r else f"{'-':>9}"
        kept = (f"{c.get('kept_attn_edges', '-')}/{tb.get('kept_attn_edges', '-') if tb else '-'}"
                if c and "kept_attn_edges" in c else "-")
        print(f"{r['label']:<28} {cm:10.2f} {tm:10.1f} {ratio} {cg} {cc} {tg} {cp:>10} {tp:>11} {md} "
              f"{kept:>12}")
    print()
    for n in notes:
        print("note:", n)
    print("\nG el/s: attention L1 elements T(T+1)/2*H*d per layer (one coordinate of one (t,s,h) "
          "distance) over the attention-contribution time only; C G/cpu-s: the same over the "
          "process CPU time of those calls (all threads; spinning threads count).")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus; "
          "other processes on a shared machine slow both sides and distort ratios.")
    print("Targets (not asserted): SmolLM2 graph T=128 >= 50x; 7B T=512 >= 15 G el/s; "
          "7B T=2048 C peak <= 4 GB; prune 32x2048 < 50 ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
