"""Edge attribution patching (EAP) and its integrated-gradients form (EAP-IG), at ltt's granularity.

Both estimate, for every attention edge ``s -> t`` of layer ``l`` (all heads together) and every
FFN block ``(l, t)``, how much patching that part from the counterfactual changes the metric
``M = logit(answer) - logit(counterfactual answer)`` at the target, to first order:

* **EAP** (Syed et al. 2023): ``score(e) = (e_cf - e_clean) . dM/d(input of e's target)``, the
  gradient taken once, on the clean run. An attention edge's term is
  ``e = sum_h A^h[t, s] v_s^h W_O^h``; its target is the state after attention at ``t``, so the
  gradient is the one at the attention output of ``t`` before the output projection,
  ``g_t^h = dM/dz_t^h``, and ``score = sum_h A_cf^h[t,s] <v_cf,s^h, g_t^h> - A^h[t,s] <v_s^h, g_t^h>``.
  An FFN block's term is its branch output ``f_t`` (after any post-FFN norm): ``score =
  (f_cf,t - f_t) . dM/df_t``.
* **EAP-IG** (Hanna et al. 2024, "Have Faith in Faithfulness"): the same difference of terms, the
  gradient averaged over ``steps`` points of the straight line between the counterfactual's and
  the clean input embeddings, ``x_k = x_cf + (k / steps) (x_clean - x_cf)``, ``k = 1..steps``
  (their Riemann sum; the paper uses 5 steps). All points run as one batch.

The gradients are taken with :func:`torch.autograd.grad` with respect to zero tensors the
intervention handlers add where the parts join (:mod:`ltt.ablations`), so the model's
parameters get no ``.grad`` and the model is left as found. Scores are signed (the estimated
change of ``M`` when the part is patched: negative for parts the prediction needs); rankings
order parts by their absolute value, as both papers do.

>>> scores = eap(model, ids, cf_ids, target=len(ids) - 1, answer=a, cf_answer=b)   # doctest: +SKIP
>>> scores.attn.shape, scores.ffn.shape                               # doctest: +SKIP
((30, 15, 15), (30, 15))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PartScores", "eap", "eap_ig", "DEFAULT_STEPS"]

DEFAULT_STEPS = 5


@dataclass
class PartScores:
    """A score per part: ``attn [L, T, T]`` (target t, source s; 0 above the diagonal) and
    ``ffn [L, T]``, float64, with the ``method`` that made them."""

    attn: np.ndarray
    ffn: np.ndarray
    method: str
    #: ``[L, H]`` per-head scores (the head's edge scores summed over targets and sources), where
    #: the ranking has them: MIB's component level (:func:`ltt.circuits.rankings.component_scores`)
    heads: np.ndarray | None = None


def _metric(answer: int, cf_answer: int, rows: slice):
    def metric(logits):
        lg = logits[rows, -1]
        return (lg[:, answer] - lg[:, cf_answer]).sum()

    return metric


def _z_grad(cap: dict, g: Any) -> Any:
    """The gradient at the attention output before the output projection, ``[B, H, T, d_h]``."""
    B, H = cap["probs"].shape[:2]
    if cap["at"] == "z":  # [B, T, H, d_h]
        return g.transpose(1, 2)
    w = cap["o_proj"].weight  # the subtraction path: g is after the projection, [B, T, d]
    dz = g @ w.T if type(cap["o_proj"]).__name__ == "Conv1D" else g @ w
    return dz.reshape(B, g.shape[1], H, -1).transpose(1, 2)


def _edge_terms(probs: Any, v: Any, gz: Any) -> Any:
    """``[H, T, T]``: ``A^h[t, s] <v_s^h, g_t^h>`` for one row's probabilities and values."""
    import torch

    dots = torch.einsum("hsd,htd->hts", v.double(), gz.double())
    return probs.double() * dots


def _capture_run(model: Any, ids: list[int], rows: int, spec: Any, target: int) -> None:
    from ltt.interventions import PartSet, _run

    _run(model, ids, [PartSet({}, {}, only=False)] * (rows - 1), [target], "zero", spec)


def _scores(model: Any, spec: Any, clean: int, cf: int, grad_rows: list[int], method: str,
            T: int) -> PartScores:
    import torch

    L = model.n_layers
    attn = np.zeros((L, T, T))
    ffn = np.zeros((L, T))
    heads = np.zeros((L, model.n_heads))
    for key, cap in spec.capture.items():
        g = spec.grads[key]
        if key[0] == "attn":
            gz = _z_grad(cap, g)[grad_rows].mean(0)  # [H, T, d_h]
            p, v = cap["probs"], cap["v"]
            d = _edge_terms(p[cf], v[cf], gz) - _edge_terms(p[clean], v[clean], gz)
            d = torch.tril(d)
            attn[key[1]] = d.sum(0).cpu().numpy()
            heads[key[1]] = d.sum((1, 2)).cpu().numpy()
        else:
            x = cap["x"].double()
            gf = g[grad_rows].double().mean(0)
            ffn[key[1]] += ((x[cf] - x[clean]) * gf).sum(-1).cpu().numpy()
    return PartScores(attn, ffn, method, heads)


def eap(model: Any, ids: list[int], cf_ids: list[int], target: int, answer: int, cf_answer: int) -> PartScores:
    """EAP scores of every attention edge and FFN block (module docstring): one forward pass of
    the clean and counterfactual prompts as two rows, one backward pass.

    >>> eap(model, ids, cf_ids, len(ids) - 1, answer, cf_answer).attn[5, -1, 2]   # doctest: +SKIP
    """
    from ltt.ablations import RunSpec

    spec = RunSpec("patch", cf_ids=list(cf_ids), capture={}, metric=_metric(answer, cf_answer, slice(0, 1)))
    _capture_run(model, list(ids), 2, spec, target)
    return _scores(model, spec, 0, 1, [0], "eap", len(ids))


def eap_ig(model: Any, ids: list[int], cf_ids: list[int], target: int, answer: int, cf_answer: int,
           steps: int = DEFAULT_STEPS) -> PartScores:
    """EAP-IG scores (module docstring): gradients averaged over ``steps`` interpolations of the
    input embeddings from the counterfactual to the clean prompt, all in one batch with the two
    endpoints (rows: clean, counterfactual, then ``k = 1..steps``).

    >>> eap_ig(model, ids, cf_ids, len(ids) - 1, answer, cf_answer, steps=5)   # doctest: +SKIP
    """
    import torch

    from ltt.ablations import RunSpec

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    emb = model.hf_model.get_input_embeddings()
    device = emb.weight.device
    with torch.no_grad():
        x = emb(torch.tensor([list(ids)], device=device))[0]
        x_cf = emb(torch.tensor([list(cf_ids)], device=device))[0]
        alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        path = x_cf[None] + alphas[:, None, None].to(x.dtype) * (x - x_cf)[None]
        embeds = torch.cat([x[None], x_cf[None], path])
    spec = RunSpec("patch", cf_ids=list(cf_ids), capture={}, embeds=embeds,
                   metric=_metric(answer, cf_answer, slice(2, 2 + steps)))
    _capture_run(model, list(ids), 2 + steps, spec, target)
    return _scores(model, spec, 0, 1, list(range(2, 2 + steps)), f"eap-ig ({steps} steps)", len(ids))
