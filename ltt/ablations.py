"""What a removed part is replaced with in an intervened run, and what such a run records.

:mod:`ltt.interventions` removes attention edges and FFN blocks inside one batched forward pass;
a :class:`RunSpec` tells its handlers what a removed part becomes:

* ``"zero"``: nothing (the edge's probability is zeroed, the block's output is 0);
* ``"mean"``: the mean value vector per head / mean branch output, over the prompt's own
  positions in the full run (``means=None``) or over a reference set's positions
  (``means`` from :func:`reference_means`, the literature's dataset mean ablation);
* ``"patch"``: the part's term from a counterfactual run of the same token length. Batch row 1
  is then the counterfactual prompt run in full; a removed edge ``s -> t`` of layer ``l`` takes
  ``A_cf^h[t, s] v_cf,s W_O^h`` (every head) and a removed FFN block ``(l, t)`` the counterfactual
  block output at ``t``. The handlers add the difference
  ``(A_cf (1 - keep)) V_cf - (A (1 - keep)) V`` to the model's own attention output, two
  products of equal shape on equal inputs when the counterfactual is the prompt itself: the
  difference is then exactly zero and the run is bitwise the model's own.

A spec can also *collect* (``stats``: the reference means' sums) or *capture* (``capture``: each
layer's probabilities, values and branch outputs, plus zero tensors added to the attention
output before its projection and to the FFN branch output, whose gradients are the metric's
gradients at the edges' targets; :mod:`ltt.circuits.gradients` uses them for EAP and EAP-IG).

>>> RunSpec("patch", cf_ids=[1, 2, 3]).extra_rows
1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

MODES = ("zero", "mean", "patch")


@dataclass
class RunSpec:
    """One intervened run's replacement rule (module docstring). ``embeds``: ``[B, T, d]``
    input embeddings used instead of token ids (EAP-IG's interpolations); ``metric``: a function
    of the logits whose gradient w.r.t. the captured zero tensors is taken inside the run."""

    mode: str = "zero"
    cf_ids: list[int] | None = None
    means: dict | None = None
    stats: dict | None = None
    capture: dict | None = None
    embeds: Any = None
    metric: Callable | None = None
    grads: dict = field(default_factory=dict)
    cf_logits: Any = None

    @property
    def extra_rows(self) -> int:
        """Rows after row 0 that the run adds itself (the counterfactual's full run)."""
        return 1 if self.mode == "patch" else 0

    def inputs(self, ids: list[int], B: int, device: Any) -> dict:
        """The model's input keyword arguments for ``B`` rows: row 1 the counterfactual when
        patching, the prompt elsewhere (or ``embeds``)."""
        import torch

        if self.embeds is not None:
            return {"inputs_embeds": self.embeds}
        rows = [ids] * B
        if self.mode == "patch" and B > 1:
            rows[1] = self.cf_ids
        return {"input_ids": torch.tensor(rows, device=device)}

    def grad_mode(self):
        import torch

        return torch.enable_grad() if self.metric is not None else torch.no_grad()

    def after(self, logits: Any) -> None:
        """Differentiate ``metric(logits)`` w.r.t. the captured zero tensors (model parameters
        get no gradient: the model is left as found)."""
        if self.metric is None:
            return
        import torch

        keys = [k for k, v in self.capture.items() if "delta" in v]
        deltas = [self.capture[k]["delta"] for k in keys]
        grads = torch.autograd.grad(self.metric(logits), deltas, allow_unused=True)
        for k, g in zip(keys, grads):
            self.grads[k] = torch.zeros_like(self.capture[k]["delta"]) if g is None else g.detach()

    # -- handlers' side ------------------------------------------------------------------------

    def value_mean(self, layer: int, v: Any) -> Any:
        """``[H, d_h]``: the mean value per head that a mean-ablated edge reads."""
        if self.means is not None:
            return self.means[("v", layer)].to(device=v.device, dtype=v.dtype)
        return v[0].mean(dim=1)

    def branch_mean(self, layer: int, branch: int, x: Any) -> Any:
        """``[d]``: the mean branch output a mean-ablated FFN block becomes."""
        if self.means is not None:
            return self.means[("f", layer, branch)].to(device=x.device, dtype=x.dtype)
        return x[0].mean(dim=0)

    def observe(self, key: tuple, rows_sum: Any, count: int) -> None:
        """Add one prompt's sum over positions (row 0) to the reference means being collected."""
        if self.stats is None:
            return
        s, n = self.stats.get(key, (0.0, 0))
        self.stats[key] = (s + rows_sum.detach().double().cpu(), n + count)


def reference_means(model: Any, prompts: list[list[int]]) -> dict:
    """Dataset means for ``ablation="mean"`` with a reference set: per layer, the mean value
    vector per head ``[H, d_h]`` and the mean output of each FFN branch module ``[d]``, over
    every position of every prompt (token id lists), from the model's own full runs.

    >>> means = reference_means(model, [model.tokenizer.encode(p) for p in prompts])  # doctest: +SKIP
    """
    from ltt.interventions import _run

    if not prompts:
        raise ValueError("reference: give at least one prompt")
    spec = RunSpec("mean", stats={})
    for ids in prompts:
        _run(model, [int(i) for i in ids], [], [len(ids) - 1], "zero", spec)
    return {k: (s / n).float() for k, (s, n) in spec.stats.items()}


def counterfactual_ids(model: Any, ids: list[int], counterfactual: Any) -> list[int]:
    """The counterfactual's token ids (a prompt string, a trace or token ids), refused unless it
    has the prompt's token length (the error names both lengths and the first differing
    position).

    >>> counterfactual_ids(model, trace.token_ids, "When Anna and Paul went ...")  # doctest: +SKIP
    """
    if counterfactual is None:
        raise ValueError("counterfactual: patching needs a counterfactual prompt, trace or token ids, got None")
    if hasattr(counterfactual, "token_ids") and not isinstance(counterfactual, str):
        cf = [int(i) for i in counterfactual.token_ids]
    else:
        cf = model._encode(counterfactual, "counterfactual")
    ids = [int(i) for i in ids]
    if len(cf) != len(ids):
        first = next((i for i, (a, b) in enumerate(zip(ids, cf)) if a != b), min(len(ids), len(cf)))
        tok = model.tokenizer

        def piece(seq):
            return repr(tok.decode([seq[first]])) if first < len(seq) else "(end)"

        raise ValueError(
            f"counterfactual has {len(cf)} tokens, the prompt {len(ids)}: patching needs the same "
            f"token length (they first differ at position {first}: {piece(ids)} vs {piece(cf)}); "
            f"counterfactual={counterfactual if isinstance(counterfactual, str) else cf!r}"[:400])
    return cf


def reference_ids(model: Any, reference: Any) -> list[list[int]]:
    """The reference set of a dataset mean ablation as token id lists (prompt strings, traces
    or id sequences)."""
    if isinstance(reference, str) or not hasattr(reference, "__iter__"):
        raise TypeError(f"reference must be a list of prompts, got {type(reference).__name__}: {reference!r}"[:300])
    out = []
    for r in reference:
        if hasattr(r, "token_ids") and not isinstance(r, str):
            out.append([int(i) for i in r.token_ids])
        else:
            out.append(model._encode(r, "reference"))
    if not out:
        raise ValueError("reference is empty: give at least one prompt")
    return out


_MEANS: dict[tuple, dict] = {}  # (id(hf model), reference ids) -> means; the last few only


def spec_for(model: Any, ids: list[int], ablation: str, counterfactual: Any = None,
             reference: Any = None) -> RunSpec | None:
    """The :class:`RunSpec` of a faithfulness run (None for the plain zero / prompt-mean runs),
    with the arguments checked: ``counterfactual`` only with ``ablation="patch"`` (which needs
    it), ``reference`` only with ``ablation="mean"``."""
    if ablation not in MODES:
        raise ValueError(f"ablation must be one of {MODES}, got {ablation!r}")
    if ablation == "patch":
        return RunSpec("patch", cf_ids=counterfactual_ids(model, ids, counterfactual))
    if counterfactual is not None:
        raise ValueError(f"counterfactual is given but ablation={ablation!r}: a counterfactual is "
                         "patched from with ablation='patch'")
    if reference is None:
        return None
    if ablation != "mean":
        raise ValueError(f"reference is given but ablation={ablation!r}: a reference set is the "
                         "mean of ablation='mean'")
    refs = reference_ids(model, reference)
    key = (id(model.hf_model), tuple(tuple(r) for r in refs))
    if key not in _MEANS:
        if len(_MEANS) >= 4:
            _MEANS.pop(next(iter(_MEANS)))
        _MEANS[key] = reference_means(model, refs)
    return RunSpec("mean", means=_MEANS[key])
