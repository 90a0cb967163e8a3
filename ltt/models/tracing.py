"""From token ids to a Trace: estimate memory, record the forward pass, attribute each layer as
it finishes, check its exactness, keep only compact results.

Per layer the trace keeps (float32, or for a bfloat16/float16 model its own numbers in two bytes
each, :class:`ltt.buffers.Half`): the states entering and leaving it and after attention
(``~3 T d``; a layer's input is the previous layer's output array when equal), the values
``T G d_h``, the FFN activations ``T F`` and branch output ``T d``, the recorded queries and
keys ``T (H + G) d_h`` (model dtype) and the sparse contributions above
:data:`ltt.scores.CONTRIBUTION_FLOOR`. The probabilities ``[H, T, T]`` and per-head shares exist for one
layer at a time, inside its output hook. Nothing kept grows like ``L H T^2``.

>>> trace = model.trace("The capital of France is")     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import sys
import time
import weakref
from typing import Any, Sequence

import numpy as np

from ltt import scores as scores_module
from ltt.scores import TraceScores, LayerProbs, attribute_layer
from ltt.models import moe, record
from ltt.models.weights import stamp_scope
from ltt.buffers import LayerBuffers, PostNorm, probe_directions
from ltt.plan import TOLERANCE, TracePlan, make_plan  # noqa: F401  (TOLERANCE: its home is ltt.plan)
from ltt.trace import Trace

#: Bytes per element of each kept array, for the memory estimate.
_F32 = 4


def dtype_name(model: Any) -> str:
    p = next(iter(model.hf_model.parameters()), None)
    return "float32" if p is None else str(p.dtype).replace("torch.", "")


@functools.lru_cache(maxsize=64)
def _sample_rows(T: int, k: int = 8) -> np.ndarray:
    """Rows the running exactness check looks at: the first, the last and ``k`` spread between
    (int64, read-only: one array per length)."""
    rows = np.unique(np.linspace(0, T - 1, num=min(T, k + 2)).round().astype(np.int64))
    rows.setflags(write=False)
    return rows


#: Per model, each layer's weights along the running check's directions
#: (:meth:`ltt.buffers.LayerBuffers.probe_weights`), with what they were made from.
_PROBED: "weakref.WeakKeyDictionary[Any, dict[int, tuple]]" = weakref.WeakKeyDictionary()


def _probe_weights(model: Any, l: int, lb: LayerBuffers, stamp: tuple, fresh: bool = False) -> tuple[dict, bool]:
    """Layer ``l``'s weights along the probe directions and whether they came from the cache: kept
    while the layer's weight stamp, its post-norms and the very weight arrays the trace pinned
    (``lb.pinned``, the model's own cached float32 copies or views) are the same; ``fresh``
    recomputes them."""
    pinned = lb.pinned
    norms = tuple((None if n.col_scale is None else n.col_scale.tobytes(), n.center)
                  for n in (lb.attn_norm, lb.ffn_norm))
    per_model = _PROBED.setdefault(model, {})
    hit = per_model.get(l)
    if (not fresh and hit is not None and hit[0] == stamp and hit[1] == norms
            and hit[2]() is pinned["w_o"] and hit[3]() is pinned["w_down"]):
        return hit[4], True
    proj = lb.probe_weights(probe_directions(lb.resid_pre.shape[1]))
    try:
        per_model[l] = (stamp, norms, weakref.ref(pinned["w_o"]), weakref.ref(pinned["w_down"]), proj)
    except TypeError:  # not weak-referable (an array subclass): not cached
        per_model.pop(l, None)
    return proj, False


def _running_check(model: Any, l: int, lb: LayerBuffers, stamp: tuple, rows: np.ndarray,
                   probs: np.ndarray, tol: float) -> dict[str, float]:
    """The per-layer exactness check of a trace (:meth:`ltt.buffers.LayerBuffers.check_probes`
    at ``rows``). Weights whose projections came from the cache and fail are projected again
    before the errors are returned: an edit in place that the stamp's samples missed changes
    the weights under the same stamp."""
    z = probe_directions(lb.resid_pre.shape[1])
    proj, cached = _probe_weights(model, l, lb, stamp)
    try:
        errors = lb.check_probes(rows, probs, proj, z)
    except ValueError as exc:  # NaN or inf in what the layer recorded (kernels.probe_check)
        raise RuntimeError(
            f"layer {l} of {model.name!r} produced NaN or inf during the trace ({exc}): the "
            "model's own forward overflowed (a half-precision model on a long or unusual prompt) "
            "or a hook on it wrote non-finite values; nothing can be attributed"
        ) from exc
    if cached and not all(e <= tol for e in errors.values()):
        proj, _ = _probe_weights(model, l, lb, stamp, fresh=True)
        errors = lb.check_probes(rows, probs, proj, z)
    return errors


def plan_for(model: Any, T: int, memory: Any = None) -> TracePlan:
    """The :class:`ltt.plan.TracePlan` of a trace of ``T`` tokens through ``model``."""
    backend = getattr(model, "backend", None)
    budgets = scores_module.budgets()
    if backend is not None and backend.device.type == "cuda" and memory in (None, "auto"):
        # "stream" recomputes probabilities from queries and keys kept on the host: on a GPU the
        # model's own probabilities are taken once and the device scores heads in batches
        budgets = dict(budgets, stream=2**62)
    return make_plan(model.n_layers, model.n_heads, T, memory=memory, dtype=dtype_name(model),
                     backend="core" if backend is None else backend.name,
                     devices=() if backend is None else tuple(str(d) for d in backend.layer_devices),
                     budgets=budgets)


def estimate_bytes(model: Any, T: int, all_logits: bool = False, plan: TracePlan | None = None) -> dict[str, int]:
    """A trace's memory as a formula of L, H, G, d, d_h, F, T, V: ``kept`` (what the trace holds
    afterwards), ``layer_peak`` (one layer's transient probabilities, per-head shares and the
    model's own eager attention), ``logits`` and ``total``.

    >>> estimate_bytes(model, 2048)["total"] / 2**30        # doctest: +SKIP
    """
    L, H, G, d, dh, F = model.n_layers, model.n_heads, model.n_kv_heads, model.d_model, model.d_head, model.d_ffn
    esize = {"float16": 2, "bfloat16": 2, "float64": 8}.get(dtype_name(model), 4)
    kept_size = min(esize, _F32)  # half-precision models keep their own numbers (Half)
    per_layer = kept_size * T * (3 * d + G * dh + F) + esize * T * (H + G) * dh
    sparse = L * T * min(H * T, 64) * 10  # typical parts above the floor per state (bounded by 1/CONTRIBUTION_FLOOR)
    kept = L * per_layer + sparse + 6 * L * T * _F32
    # eager attention: scores and masked scores in the model dtype, the float32 softmax; ltt: the
    # per-head shares and the mask that sparsifies them, plus a float32 copy of the
    # probabilities for a half-precision model; edge weights, the mask [T, T]. A streamed layer
    # (the plan's "stream" mode) has all that for one kv group's heads only, one scored head by
    # head ("heads") no per-head shares.
    mode = (plan or plan_for(model, T)).mode(0)
    heads_at_once = H // max(G, 1) if mode == "stream" else H
    shares = 0 if mode in ("heads", "stream") else _F32 + 1
    layer_peak = heads_at_once * T * T * (2 * esize + 4 + shares + (0 if esize == 4 else _F32)) + 3 * T * T * _F32
    logits = (T if all_logits else 1) * model.vocab_size * _F32 * 2
    return {"kept": kept, "layer_peak": layer_peak, "logits": logits, "total": kept + layer_peak + logits}


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, capped by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        return None
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),):
        try:
            with open(limit_path) as fh:
                limit = fh.read().strip()
            with open(usage_path) as fh:
                usage = int(fh.read().strip())
            if limit != "max":
                left = int(limit) - usage
                avail = left if avail is None else min(avail, left)
        except (OSError, ValueError):
            pass
    return avail


def check_memory(model: Any, T: int, all_logits: bool, limit: int | None,
                 plan: TracePlan | None = None) -> dict[str, int]:
    """The trace's :func:`estimate_bytes`, after refusing one that does not fit ``limit`` (or
    the memory available)."""
    est = estimate_bytes(model, T, all_logits, plan)
    avail = available_bytes() if limit is None else int(limit)
    if avail is None or est["total"] <= avail:
        return est
    gib = 2**30
    raise MemoryError(
        f"tracing {T} tokens through {model.name!r} needs about {est['total'] / gib:.1f} GiB "
        f"(kept {est['kept'] / gib:.1f} GiB + one layer's peak {est['layer_peak'] / gib:.1f} GiB + "
        f"logits {est['logits'] / gib:.2f} GiB) but only {avail / gib:.1f} GiB is available: use a "
        "shorter prompt, all_logits=False, spill='DIR' to keep the per-layer arrays on disk, or "
        "memory_limit=... to override the limit"
    )


def _trim_heap() -> Any:
    """glibc's ``malloc_trim``, or None elsewhere. A layer frees arrays of a few MB between the
    ones the trace keeps; glibc keeps such freed holes resident (below its mmap threshold), so
    without a trim after each layer the process grows by about as much as the trace holds."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _trim_heap()
#: Prompts at least this long trim the heap (a trim costs ~1-3 ms) ...
TRIM_TOKENS = 256
#: ... once the layers since the last trim have freed about this many bytes (each layer's
#: transient peak, :func:`estimate_bytes`), and after the last layer: a short prompt's layers
#: free a few MB each, a long one's trims after every layer.
TRIM_BYTES = 32 * 2**20


def _trim_layers(n_layers: int, T: int, layer_peak: int) -> frozenset[int]:
    """The layers after which a trace of ``T`` tokens trims the heap."""
    if _TRIM is None or T < TRIM_TOKENS:
        return frozenset()
    every = max(1, TRIM_BYTES // max(int(layer_peak), 1))
    return frozenset(l for l in range(n_layers) if (l + 1) % every == 0 or l == n_layers - 1)


def _spill(arr: np.ndarray | None, path: str) -> np.ndarray | None:
    """``arr`` written to ``path`` and reopened read-only as a memory map."""
    if arr is None:
        return None
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype, shape=arr.shape)
    mm[...] = arr
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


def layer_buffers(model: Any, l: int, rec: dict[str, Any], T: int, stamp: tuple) -> LayerBuffers:
    """The :class:`LayerBuffers` of layer ``l`` from its recorded tensors."""
    if rec.get("moe_act") is not None:  # a MoE layer: assemble its wide activations
        moe.finish(model.spec, model.decoder_layers[l], rec, T)
    for key in ("x", "y", "attention", "values", "out_o", "act", "out_down"):
        if rec.get(key) is None:
            what = "attention probabilities" if key == "attention" else f"the {key!r} tensor"
            raise RuntimeError(
                f"layer {l} of {model.name!r} did not produce {what} during the trace; the "
                f"{model.family} adapter could not hook it"
            )
    w = model.branch_params(l)
    parallel = model.parallel[l]
    d = model.d_model

    def branch(raw: np.ndarray, bias: np.ndarray | None, norm: Any):
        # (row_scale, col_scale, center, bias [T, d]) of a branch, post-norm linearised.
        if norm is None:
            b = None if bias is None else np.ascontiguousarray(np.broadcast_to(bias, (T, d)), dtype=np.float32)
            return None, None, False, b
        r, _ = norm.scale(raw)
        center = norm.kind == "layer"
        b = np.zeros((T, d)) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), (T, d))
        if center:
            b = b - b.mean(axis=-1, keepdims=True)
        b = b * r[:, None]
        if norm.gamma is not None:
            b = b * norm.gamma
        if norm.beta is not None:
            b = b + norm.beta
        has_bias = bias is not None or norm.beta is not None
        gamma = None if norm.gamma is None else np.ascontiguousarray(norm.gamma, dtype=np.float32)
        return r.astype(np.float32), gamma, center, np.ascontiguousarray(b, dtype=np.float32) if has_bias else None

    from ltt.models.norms import BranchScale

    mult = w["branch_scale"]  # Granite: both branches times residual_multiplier before the add
    scaled = None if mult == 1.0 else BranchScale(mult)
    if scaled is not None and (w["attn_post_norm"] is not None or w["ffn_post_norm"] is not None):
        raise RuntimeError(f"layer {l}: a branch multiplier and post-branch norms together are not supported")
    b_down = rec["moe_bias"] if rec.get("moe_bias") is not None else w["b_down"]  # gpt-oss: per token
    a_row, a_col, a_center, a_bias = branch(rec["out_o"], w["b_o"], w["attn_post_norm"] or scaled)
    f_row, f_col, f_center, f_bias = branch(rec["out_down"], b_down, w["ffn_post_norm"] or scaled)
    ffn_out = rec["ffn"] if w["ffn_post_norm"] is not None else rec["out_down"]
    if scaled is not None:
        ffn_out = ffn_out * np.float32(mult)
    mid = None
    if not parallel:
        mid = rec.get("mid")
        if mid is None:
            raise RuntimeError(f"layer {l}: the state after attention was not captured")

    def weights() -> dict[str, Any]:
        if model.layer_stamp(l) != stamp:
            raise RuntimeError(
                f"the weights of layer {l} of {model.name!r} changed after this trace was recorded "
                "(load_state_dict, an optimiser step or an in-place edit): trace the prompt again"
            )
        return model.layer_weights(l)

    return LayerBuffers(
        layer=l, parallel=parallel, resid_pre=rec["x"], resid_mid=mid, resid_post=rec["y"],
        values=rec["values"], attn_bias=a_bias, attn_norm=PostNorm(a_row, a_col, a_center),
        ffn_out=np.ascontiguousarray(ffn_out, dtype=np.float32), act=rec["act"],
        ffn_bias=f_bias, ffn_norm=PostNorm(f_row, f_col, f_center),
        attention=rec["attention"], weights=weights, moe=rec.get("moe"),
    )  # fmt: skip


def run_trace(model: Any, ids: Sequence[int], prompt: str, *, all_logits: bool = False,
              verify: bool = True, spill: str | os.PathLike | None = None,
              memory_limit: int | None = None, progress: Any = None, memory: Any = None) -> Trace:
    """Record one forward pass of ``ids`` and attribute it layer by layer (see
    :meth:`ltt.models.Model.trace` for the options)."""
    import torch

    T = len(ids)
    plan = plan_for(model, T, memory)
    trims = _trim_layers(model.n_layers, T, check_memory(model, T, all_logits, memory_limit, plan)["layer_peak"])
    backend = getattr(model, "backend", None)
    if backend is not None:
        backend.check_device_memory(model, plan)
    if spill is not None:
        spill = os.fspath(spill)
        if not os.path.isdir(spill):
            raise ValueError(f"spill={spill!r} is not an existing directory")
    hf = model.hf_model
    kind = dtype_name(model)
    tol = plan.tolerance
    rows = _sample_rows(T)
    # a short trace keeps its dense shares; a streamed layer runs its attention one kv group at
    # a time and is scored head by head from probabilities recomputed per head: no [H, T, T]
    # array exists (ltt.models.attention). The plan decides (ltt.plan).
    stream = plan.stream
    layers: list[LayerBuffers | None] = [None] * model.n_layers
    scores: list[Any] = [None] * model.n_layers

    spent = [0.0]

    def on_layer(l: int, rec: dict[str, Any]) -> None:
        started = time.perf_counter()
        record.point(f"layer:{l}")
        shared = False
        if l > 0 and layers[l - 1] is not None:
            prev = layers[l - 1].resid_post
            if prev is rec["x"] or (prev.shape == rec["x"].shape and np.array_equal(prev, rec["x"])):
                rec["x"], shared = prev, True  # one array for the state between two layers
        streamed = stream and rec.get("probs") is None  # the attention ran one kv group at a time
        if rec.get("probs") is None and rec.get("attention") is not None and not streamed:
            rec["probs"] = rec["attention"].probs()
        stamp = model.layer_stamp(l)
        lb = layer_buffers(model, l, rec, T, stamp)
        lb.pinned = {"w_o": rec["w_o"], "w_down": rec["w_down"]}  # converted once, in the forward pass
        probs = lb.attn_heads if streamed else rec.pop("probs")
        # the decomposition must rebuild the model's own states: a foreign forward hook or an
        # unsupported variant that changes a branch shows here, on a few rows along a few
        # directions (cheap: the weights' projections are cached)
        errors = {}
        if verify:
            errors = _running_check(model, l, lb, stamp, rows, lb.attn_rows(rows) if streamed else probs[:, rows], tol)
        worst = max(errors.items(), key=lambda kv: kv[1]) if errors else ("", 0.0)
        if worst[1] > tol or not np.isfinite(worst[1]):
            raise RuntimeError(
                f"layer {l} of {model.name!r} is not decomposed exactly: the {worst[0]!r} parts "
                f"rebuild its state with a relative error of {worst[1]:.3g} (tolerance {tol:g} for "
                f"{dtype_name(model)}). Likely cause: a forward hook or patch on the model that changes a "
                "module's output, a weight edited in place through .data or a NumPy view (ltt's "
                "sampled weight check missed it: load the model again), or a variant of this family "
                "that ltt does not support. Pass "
                "verify=False to trace anyway (the graph is then not exact)."
            )
        rec.pop("probs", None)
        holder = LayerProbs(of_heads=probs) if streamed else LayerProbs(held=probs)
        del probs  # attribute_layer releases the probabilities as soon as the core has read them
        scores[l] = attribute_layer(lb, holder, plan.mode(l), norm=1, floor=plan.floor, backend=backend)
        lb.pinned = None
        if spill is not None:
            for name in ("resid_pre", "resid_mid", "resid_post", "values", "act", "ffn_out"):
                arr = getattr(lb, name)
                if isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap):
                    setattr(lb, name, _spill(arr, os.path.join(spill, f"layer{l:04d}_{name}.npy")))
        else:
            lb.pack(kind)  # a half-precision model's own numbers, two bytes each
            if shared:
                lb.resid_pre = layers[l - 1].stored("resid_post")
        layers[l] = lb
        if l in trims:
            _TRIM(0)
        if progress is not None:
            progress.update(1)
        spent[0] += time.perf_counter() - started

    emb = hf.get_input_embeddings()
    device = emb.weight.device if emb is not None and emb.weight.device.type != "meta" else None
    kwargs: dict[str, Any] = dict(use_cache=False)
    if not all_logits and _accepts(hf, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    started = time.perf_counter()
    # each weight's stamp taken once in this trace (hooks, branch parameters, layer stamps)
    with record.Recording(model, T, on_layer, stream_heads=stream) as recording, stamp_scope(recording.modules):
        record.point("forward")
        out = recording.forward(input_ids=torch.tensor([list(ids)], device=device), **kwargs)
        record.point("forward-done")
    total = time.perf_counter() - started
    missing = [l for l, lb in enumerate(layers) if lb is None]
    if missing:
        raise RuntimeError(f"layers {missing} of {model.name!r} did not run during the trace")
    logits_all = out.logits[0]
    trace = Trace(
        prompt=prompt,
        tokens=model.token_strings(list(ids), prompt),
        pieces=[str(p) for p in model.tokenizer.convert_ids_to_tokens(list(ids))],
        token_ids=np.asarray(ids, dtype=np.int64),
        logits=record._to_numpy(logits_all[-1]),
        layers=layers,
        model=model,
        all_logits=record._to_numpy(logits_all) if all_logits else None,
    )
    trace.full_graphs[1] = TraceScores(scores, 1, plan.floor, source=trace)
    trace.plan = plan
    trace.timings = {"forward": total - spent[0], "attribute": spent[0]}
    return trace


def _accepts(hf: Any, name: str) -> bool:
    fn = getattr(hf.forward, "__func__", hf.forward)
    try:
        names = _parameter_names(fn)
    except TypeError:  # not hashable: its signature read each time
        names = _parameter_names.__wrapped__(fn)
    return name in names


@functools.lru_cache(maxsize=64)
def _parameter_names(fn: Any) -> frozenset:
    """The parameter names of a forward function (its signature read once per function)."""
    import inspect

    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()
