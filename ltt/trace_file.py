"""A Trace on disk: :meth:`ltt.trace.Trace.save` and :func:`load_trace`, one safetensors file
with its JSON description in the header (no pickle anywhere).

The file keeps what a trace's graphs are built from, and nothing per (token, token, head):

* the prompt, token strings and ids, the next-token ``logits [V]`` (and ``all_logits [T, V]``
  when the trace has them), the model's name and shape (JSON header);
* the norm-1 contributions (:class:`ltt.scores.TraceScores`): the per-state shares ``[L, T]``
  (attention residual and bias, FFN and its residual, the normalisers) and, per layer, the
  attention edges and per-head parts at or above the floor as sparse rows.

Size: ``4 V + 20 L T`` bytes plus ``~18`` bytes per kept sparse entry (``L T`` times the parts
per state above the floor, at most ``1 / floor`` each).

**Without the model** (``ltt.load_trace(path)``) everything that reads only those arrays works:
``trace.graph(threshold >= floor, renormalize=..., targets=...)`` (equal to the original trace's
graph of its sparse rows), the Graph's exports, :func:`ltt.routes.summarize` with
``renormalize=True``, ``ltt.diff`` with ``renormalize=True``, ``trace.tokens``, ``token_ids``,
``logits`` and ``top_prediction`` (token ids as strings: there is no tokenizer). Everything that
needs the recorded layer buffers or the model's weights (``top_tokens``, ``promoted``, head and
neuron views, ``faithfulness``, ``check``, thresholds below the floor, ``norm=2``, the widget's
and report's panels) raises :class:`ltt.checks.ModelNeeded`, a ValueError naming what was asked for.

**With the model** (``ltt.load_trace(path, model=model)``) the prompt is traced again and the
new trace is checked against the file (token ids, logits and every saved contribution array
bitwise equal): it is then a full trace, on-demand detail included; a different model or
weights raise a ValueError saying which array differs.

>>> trace.save("mary.ltt")                                  # doctest: +SKIP
>>> ltt.load_trace("mary.ltt").graph(threshold=0.04)        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ltt.checks import ModelNeeded
from ltt.scores import TraceScores, LayerScores, SparseRows, attribute

__all__ = ["save_trace", "load_trace", "ModelNeeded", "FORMAT"]

#: The format tag in every file's header; a file without it is not read.
FORMAT = "ltt-trace/1"
_PER_STATE = ("attn_resid", "attn_bias", "ffn", "ffn_resid", "attn_total")


def _arrays(trace: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    full = attribute(trace, 1)
    out: dict[str, np.ndarray] = {
        "token_ids": np.asarray(trace.token_ids, np.int64),
        "logits": np.asarray(trace.logits, np.float32),
        "parallel": np.asarray(full.parallel, np.uint8),
    }
    if trace.all_logits is not None:
        out["all_logits"] = np.asarray(trace.all_logits, np.float32)
    for name in _PER_STATE:
        out[name] = np.ascontiguousarray(getattr(full, name))
    for l, (e, p) in enumerate(zip(full.edges, full.parts)):
        out[f"edges.{l}.indptr"], out[f"edges.{l}.sources"], out[f"edges.{l}.values"] = e.indptr, e.sources, e.values
        out[f"parts.{l}.indptr"], out[f"parts.{l}.sources"] = p.indptr, p.sources
        out[f"parts.{l}.values"], out[f"parts.{l}.heads"] = p.values, p.heads
    model = getattr(trace, "model", None)
    meta = {
        "format": FORMAT,
        "prompt": trace.prompt,
        "tokens": list(trace.tokens),
        "pieces": list(trace.pieces),
        "model": str(getattr(model, "name", None) or getattr(trace, "model_name", None) or "model"),
        "n_layers": int(full.n_layers),
        "n_heads": int(full.n_heads),
        "norm": int(full.norm),
        "floor": float(full.floor),
    }
    return out, meta


def save_trace(trace: Any, path: str | os.PathLike) -> str:
    """Write ``trace`` to ``path`` (see the module docstring); returns the path. The file is
    written beside its target and renamed into place, so a failure leaves no half file.

    >>> save_trace(trace, "mary.ltt")                       # doctest: +SKIP
    'mary.ltt'
    """
    from safetensors.numpy import save_file

    if not (hasattr(trace, "layers") and hasattr(trace, "token_ids")):
        raise TypeError(f"trace must be a Trace (model.trace(prompt)), got {type(trace).__name__}")
    from ltt.output import check_output_path

    path = check_output_path(path, "path")  # before any work: an error naming path
    arrays, meta = _arrays(trace)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        save_file(arrays, tmp, metadata={"ltt": json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class SavedLayer:
    """A layer of a trace reopened without its model: whether it is a parallel block, and a
    :class:`ModelNeeded` error for anything else (its buffers were not saved)."""

    def __init__(self, layer: int, parallel: bool, path: str):
        self.layer, self.parallel, self._path = layer, parallel, path

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModelNeeded(
            f"layer {self.layer}'s {name!r} is not in a saved trace ({self._path}): on-demand detail (top "
            "tokens, promoted tokens, head and neuron views, faithfulness, thresholds below the floor) needs "
            f"the model; reopen with ltt.load_trace({self._path!r}, model=model)")


def _read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as fh:
            meta = fh.metadata() or {}
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"path={path!r} is not a saved ltt trace: {exc}") from exc
    try:
        info = json.loads(meta["ltt"])
        assert info["format"] == FORMAT
    except Exception as exc:
        raise ValueError(f"path={path!r} is a safetensors file but not a saved ltt trace ({FORMAT})") from exc
    return arrays, info


def load_trace(path: str | os.PathLike, model: Any = None):
    """The :class:`ltt.trace.Trace` saved at ``path``; without ``model`` its graphs work and
    on-demand detail raises :class:`ModelNeeded`, with ``model`` it is traced again and checked
    against the file (module docstring).

    >>> ltt.load_trace("mary.ltt").graph().edges[0]            # doctest: +SKIP
    """
    from ltt.trace import Trace

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path={path!r}: no such file (a trace written by trace.save)")
    arrays, info = _read(path)
    if model is not None:
        return _retrace(path, arrays, info, model)
    L = int(info["n_layers"])
    parallel = arrays["parallel"].astype(bool)
    scores = []
    for l in range(L):
        edges = SparseRows(arrays[f"edges.{l}.indptr"], arrays[f"edges.{l}.sources"], arrays[f"edges.{l}.values"])
        parts = SparseRows(arrays[f"parts.{l}.indptr"], arrays[f"parts.{l}.sources"], arrays[f"parts.{l}.values"],
                           arrays[f"parts.{l}.heads"])
        scores.append(LayerScores(
            attn_resid=arrays["attn_resid"][l], attn_bias=arrays["attn_bias"][l], ffn=arrays["ffn"][l],
            ffn_resid=arrays["ffn_resid"][l], total=arrays["attn_total"][l], parallel=bool(parallel[l]),
            edges=edges, parts=parts, n_heads=int(info["n_heads"])))
    trace = Trace(prompt=str(info["prompt"]), tokens=list(info["tokens"]), pieces=list(info["pieces"]),
                  token_ids=arrays["token_ids"], logits=arrays["logits"],
                  layers=[SavedLayer(l, bool(parallel[l]), path) for l in range(L)],
                  all_logits=arrays.get("all_logits"), model_name=str(info["model"]))
    full = TraceScores(scores, int(info["norm"]), float(info["floor"]), source=trace)
    trace.full_graphs[int(info["norm"])] = full
    return trace


def _retrace(path: str, arrays: dict[str, np.ndarray], info: dict[str, Any], model: Any):
    if not hasattr(model, "trace"):
        raise TypeError(f"model must be an ltt Model (ltt.load(...)), got {type(model).__name__}")
    # the saved token ids, traced as given (the tokenizer's BOS choice is already in them)
    trace = model.trace(np.asarray(arrays["token_ids"], np.int64), all_logits="all_logits" in arrays)
    got, _ = _arrays(trace)
    for name, want in arrays.items():
        have = got.get(name)
        if have is None or have.shape != want.shape or not np.array_equal(have, want):
            raise ValueError(
                f"model={getattr(model, 'name', model)!r} does not reproduce the trace saved at {path!r} "
                f"(model {info['model']!r}): its {name!r} differs; load it without model= for the saved graphs")
    trace.prompt = str(info["prompt"])
    return trace
