"""Exact removals inside a transformers forward pass: per batch row, which attention edges and FFN blocks act.

:func:`run_batched` runs a prompt as one batch (chunked when memory asks for it): row 0 is the
full model, every other row a :class:`PartSet` saying which attention edges and FFN blocks act.
Each pass is one :class:`ltt.models.instrument.Run` (lock, modes, configs, hooks, clean-up;
only its own forward is changed, another thread's forward of the model is the model's own) with
the handlers of :mod:`ltt.models.handlers`, whose docstring says exactly what a removed edge or
block becomes for ``ablation="zero"``, ``"mean"`` and ``"patch"`` (an
:class:`ltt.ablations.RunSpec`: a counterfactual, dataset means, recorded values and gradients).

>>> from ltt.interventions import PartSet, run_batched             # doctest: +SKIP
>>> logits = run_batched(model, ids, [PartSet({}, {}, only=True)], [len(ids) - 1], "zero")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ltt.ablations import RunSpec
from ltt.models.handlers import install, uses_interface
from ltt.models.instrument import Run
from ltt.models.record import point

__all__ = ["PartSet", "run_batched", "uses_interface"]


@dataclass
class PartSet:
    """The parts acting in one batch row. ``edges``: layer -> ``(targets, sources)`` token
    arrays; ``ffn``: layer -> token array. ``only=True``: exactly these parts act (every other
    edge and FFN block is removed); ``only=False``: these parts are removed, all others act."""

    edges: dict[int, tuple[np.ndarray, np.ndarray]]
    ffn: dict[int, np.ndarray]
    only: bool


def _run(model: Any, ids: list[int], rows: Sequence[PartSet], targets: list[int], ablation: str,
         spec: Any = None) -> np.ndarray:
    """One batched forward: ``[1 + len(rows), len(targets), V]`` float64 logits, row 0 full.
    ``spec``: an :class:`ltt.ablations.RunSpec` (patching: ``rows[0]`` is the counterfactual's
    full row, batch row 1; dataset means; recording and gradients)."""
    import torch

    B, T = 1 + len(rows), len(ids)
    spec = RunSpec() if spec is None else spec  # a plain removal: zeros, or the prompt's own means
    emb = model.hf_model.get_input_embeddings()
    device = emb.weight.device if emb is not None and emb.weight.device.type != "meta" else None
    with Run(model, point=point) as run:
        run.switch_attention(install(run, model, rows, T, ablation == "mean", spec))
        # on the CPU: it indexes the last layer's states, wherever device_map put them
        out = run.forward(grad=spec.metric is not None, **spec.inputs(ids, B, device), use_cache=False,
                          logits_to_keep=torch.tensor(targets))
        spec.after(out.logits)
        logits = out.logits.detach().to(device="cpu", dtype=torch.float64).numpy()
    if logits.shape[:2] != (B, len(targets)):
        raise RuntimeError(f"the model returned logits of shape {tuple(logits.shape)}, expected "
                           f"({B}, {len(targets)}, vocab)")
    return logits


def row_bytes(model: Any, T: int, n_targets: int) -> int:
    """A rough working-memory estimate of one batch row of :func:`run_batched`, in bytes.

    >>> row_bytes(model, T=256, n_targets=1) / 2**20                # doctest: +SKIP
    """
    attn = 6 * model.n_heads * T * T * 4
    acts = 10 * T * max(model.d_model, model.d_ffn) * 4
    return int(attn + acts + 12 * n_targets * model.vocab_size)


def run_batched(model: Any, ids: list[int], rows: Sequence[PartSet], targets: list[int], ablation: str,
                max_batch_bytes: int = 1 << 30, spec: Any = None) -> np.ndarray:
    """Logits ``[1 + len(rows), len(targets), V]`` (float64) of the full model (row 0) and of each
    row's parts, in as few forward passes as ``max_batch_bytes`` allows (each repeats row 0).
    ``spec`` (:class:`ltt.ablations.RunSpec`): what removed parts become; when patching, every
    pass also runs the counterfactual in full (its logits are left in ``spec.cf_logits``).

    >>> run_batched(model, ids, [PartSet({}, {}, only=True)], [len(ids) - 1], "zero").shape  # doctest: +SKIP
    """
    extra = 0 if spec is None else spec.extra_rows
    per_batch = max(1, int(max_batch_bytes) // max(1, row_bytes(model, len(ids), len(targets))) - 1 - extra)
    rows = list(rows)
    head = [PartSet({}, {}, only=False)] * extra  # the counterfactual's full run: nothing removed

    def run(chunk):
        logits = _run(model, ids, head + chunk, targets, ablation, spec)
        if extra:
            spec.cf_logits = logits[1]
            logits = np.concatenate([logits[:1], logits[1 + extra:]])
        return logits

    if not rows:
        return run([])
    pieces = []
    for i in range(0, len(rows), per_batch):
        logits = run(rows[i: i + per_batch])
        pieces.append(logits if i == 0 else logits[1:])
    return np.concatenate(pieces)
