"""Faithfulness curves over edge budgets, with MIB's CPR and CMD.

For one example (a prompt, its counterfactual of the same token length, and the logit
difference ``LD = logit(answer) - logit(counterfactual answer)`` at the last position) and a
ranking of its parts (:mod:`ltt.circuits.rankings`), the circuit of budget ``k`` keeps the ``k``
best-ranked parts and removes every other attention edge and FFN block under the ablation
(patched from the counterfactual by default). Its normalised faithfulness is

    f(k) = (LD(circuit_k) - LD(empty)) / (LD(full) - LD(empty))

with ``empty`` the run where every part is removed under the same ablation (for patching: the
counterfactual's own run). Over several examples, ``f(k)`` is taken on the mean logit
differences (MIB's definition; ``per_example`` keeps each example's own ratio too).

Budgets are counts of parts (ints) or fractions of all of them (floats in (0, 1]; the part
space is ``L (T (T + 1) / 2 + T)``, attention edges plus FFN blocks); MIB's fractions are the
default. Every budget of an example runs in one batched forward pass (:mod:`ltt.interventions`).

MIB (Mueller et al. 2025) summarises a curve by two areas over the fraction axis, by the
trapezoidal rule at the budgets measured:

* **CPR** (circuit performance ratio): the area under ``f``; higher is better;
* **CMD** (circuit-model distance): the area between ``f`` and 1, ``integral |1 - f|``; 0 is best.

>>> c = curve(traces, "eap-ig", counterfactual=cfs, tokens=pairs)   # doctest: +SKIP
>>> c.cpr, c.cmd, c.budget_for(0.8)                                   # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ltt.circuits.gradients import DEFAULT_STEPS
from ltt.circuits.rankings import check_ranking, n_parts, part_order, parts_of, score_parts

__all__ = ["MIB_FRACTIONS", "Curve", "curve", "Example", "example", "measure", "areas"]

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass
class Example:
    """One clean/counterfactual pair, resolved: the clean ``trace``, the counterfactual's
    ``cf_ids`` (and its trace when made), and the logit difference's token ids."""

    trace: Any
    cf_ids: list[int] | None
    answer: int
    cf_answer: int
    ablation: str = "patch"
    reference: Any = None
    cf_trace: Any = None


def _token_id(model: Any, tok: Any, name: str) -> int:
    from ltt.faithfulness import _watched_ids

    try:
        return _watched_ids(model, [tok])[0]
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{name}: {exc}") from None


def example(trace: Any, counterfactual: Any = None, tokens: Any = None, ablation: str | None = None,
            reference: Any = None) -> Example:
    """Resolve one example: ``counterfactual`` (prompt, trace or ids; refused at another token
    length), ``tokens`` ``[answer, counterfactual answer]`` (None: the prompt's and the
    counterfactual's own top predictions), ``ablation`` (None: ``"patch"`` with a
    counterfactual, else ``"mean"``). Bad values raise naming the argument."""
    from ltt.ablations import counterfactual_ids

    model = getattr(trace, "model", None)
    if model is None or not hasattr(model, "hf_model"):
        raise ValueError("trace has no model to rerun (trace.model is None)")
    ablation = ablation if ablation is not None else ("patch" if counterfactual is not None else "mean")
    ids = [int(i) for i in trace.token_ids]
    cf_ids = counterfactual_ids(model, ids, counterfactual) if counterfactual is not None else None
    if ablation == "patch" and cf_ids is None:
        raise ValueError("counterfactual: ablation='patch' needs a counterfactual prompt, trace or ids, got None")
    cf_trace = counterfactual if hasattr(counterfactual, "layers") else None
    if tokens is None:
        answer = int(np.argmax(trace.logits))
        if cf_ids is None:
            raise ValueError("tokens: without a counterfactual, name the logit difference's two tokens "
                             "[answer, other answer]")
        cf_trace = cf_trace or model.trace(cf_ids)
        order = np.argsort(-cf_trace.logits)
        cf_answer = int(order[0] if order[0] != answer else order[1])
    else:
        if isinstance(tokens, (str, int, np.integer)) or len(tokens) != 2:
            raise ValueError(f"tokens: a logit difference needs two tokens [answer, counterfactual answer], "
                             f"got {tokens!r}")
        answer, cf_answer = (_token_id(model, t, "tokens") for t in tokens)
        if answer == cf_answer:
            raise ValueError(f"tokens: the answer and the counterfactual answer are the same token ({tokens!r})")
    return Example(trace, cf_ids, answer, cf_answer, ablation, reference, cf_trace)


def _spec(ex: Example):
    from ltt.ablations import RunSpec, spec_for

    model = ex.trace.model
    if ex.ablation == "patch":
        return RunSpec("patch", cf_ids=list(ex.cf_ids))
    return spec_for(model, [int(i) for i in ex.trace.token_ids], ex.ablation, None, ex.reference)


def measure(ex: Example, kept: Sequence[np.ndarray], max_batch_bytes: int = 1 << 30) -> tuple[np.ndarray, float, float]:
    """Logit differences of the circuits keeping each part-key array in ``kept`` (only those
    parts act), with the full and empty runs: ``(LD [len(kept)], LD(full), LD(empty))``, in
    as few batched passes as memory allows."""
    from ltt.interventions import PartSet, run_batched

    model = ex.trace.model
    ids = [int(i) for i in ex.trace.token_ids]
    rows = [PartSet(*parts_of(k), only=True) for k in kept] + [PartSet({}, {}, only=True)]
    logits = run_batched(model, ids, rows, [len(ids) - 1], ex.ablation, max_batch_bytes, _spec(ex))
    if not np.all(np.isfinite(logits)):
        raise RuntimeError("the intervened model produced NaN or inf logits")
    ld = logits[:, 0, ex.answer] - logits[:, 0, ex.cf_answer]
    return ld[1:-1], float(ld[0]), float(ld[-1])


def areas(fractions: Sequence[float], f: Sequence[float]) -> tuple[float, float]:
    """``(CPR, CMD)`` of a curve: the trapezoid areas of ``f`` and of ``|1 - f|`` over the
    fraction axis at the measured points (module docstring)."""
    x = np.asarray(fractions, np.float64)
    y = np.asarray(f, np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    return float(np.trapezoid(y, x)), float(np.trapezoid(np.abs(1.0 - y), x))


@dataclass
class Curve:
    """A faithfulness curve: ``fractions [K]`` of the part space, ``counts [n, K]`` per example,
    ``faithfulness [K]`` (on the mean logit differences), ``per_example [n, K]``, the mean
    ``ld_full`` / ``ld_empty``, ``cpr`` and ``cmd``, and ``seconds`` (``ranking``: scoring the
    parts per example; ``measure``: the intervened runs per example)."""

    ranking: str
    ablation: str
    fractions: np.ndarray
    counts: np.ndarray
    faithfulness: np.ndarray
    per_example: np.ndarray
    ld_full: float
    ld_empty: float
    cpr: float
    cmd: float
    seconds: dict = field(default_factory=dict)

    def budget_for(self, level: float) -> float | None:
        """The smallest measured fraction whose faithfulness reaches ``level`` (None if none)."""
        hit = np.nonzero(self.faithfulness >= level)[0]
        return float(self.fractions[hit[0]]) if hit.size else None

    def to_dict(self) -> dict:
        return {"ranking": self.ranking, "ablation": self.ablation, "fractions": self.fractions.tolist(),
                "counts": self.counts.tolist(), "faithfulness": self.faithfulness.tolist(),
                "per_example": self.per_example.tolist(), "ld_full": self.ld_full, "ld_empty": self.ld_empty,
                "cpr": self.cpr, "cmd": self.cmd, "seconds": dict(self.seconds)}

    def __repr__(self) -> str:
        pts = ", ".join(f"{x:g}: {y:.2f}" for x, y in zip(self.fractions, self.faithfulness))
        return (f"Curve(ranking={self.ranking!r}, ablation={self.ablation!r}, examples={len(self.per_example)}, "
                f"CPR={self.cpr:.3f}, CMD={self.cmd:.3f}, faithfulness at fractions {{{pts}}})")


def _counts(budgets: Sequence[Any], N: int) -> tuple[np.ndarray, np.ndarray]:
    counts, fracs = [], []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)):
            raise TypeError(f"budgets: each budget is a count (int) or a fraction (float in (0, 1]), got {b!r}")
        if isinstance(b, (int, np.integer)):
            if not 0 <= b <= N:
                raise ValueError(f"budgets: count {b} is outside [0, {N}] (the prompt's parts)")
            counts.append(int(b))
        else:
            if not 0.0 < b <= 1.0:
                raise ValueError(f"budgets: fraction {b!r} is outside (0, 1]")
            counts.append(max(1, int(round(b * N))))
        fracs.append(counts[-1] / N)
    return np.array(counts), np.array(fracs)


def _listed(value: Any, n: int, name: str, many: bool = True) -> list:
    if not many:
        return [value]
    if value is None:
        return [None] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"{name}: with {n} traces give a list of {n}, got {value!r}"[:300])
    return list(value)


def curve(traces: Any, ranking: str, budgets: Sequence[Any] = MIB_FRACTIONS, *, ablation: str | None = None,
          counterfactual: Any = None, tokens: Any = None, reference: Any = None, steps: int = DEFAULT_STEPS,
          seed: int = 0, max_batch_bytes: int = 1 << 30) -> Curve:
    """The normalised faithfulness of ``ranking``'s circuits at each of ``budgets`` (module
    docstring) over one trace or a list of traces; ``counterfactual`` and ``tokens`` are one
    per trace (a list for several). ``ablation``: ``"patch"`` (the default with a
    counterfactual), ``"mean"`` (with ``reference`` prompts: dataset means) or ``"zero"``.
    ``steps``: EAP-IG's; ``seed``: the random ranking's.

    >>> ltt.circuits.curve(trace, "routes", [0.01, 0.1, 1.0], counterfactual=cf, tokens=[" Mary", " John"])  # doctest: +SKIP
    """
    check_ranking(ranking, True)
    many = isinstance(traces, (list, tuple))
    traces = list(traces) if many else [traces]
    if not traces:
        raise ValueError("traces: give at least one trace")
    n = len(traces)
    cfs = _listed(counterfactual, n, "counterfactual", many)
    toks = _listed(tokens, n, "tokens", many)
    exs = [example(tr, cf, tk, ablation, reference) for tr, cf, tk in zip(traces, cfs, toks)]
    lds, fulls, empties, counts, fracs = [], [], [], [], None
    t_rank = t_meas = 0.0
    for i, ex in enumerate(exs):
        model = ex.trace.model
        N = n_parts(model.n_layers, ex.trace.n_tokens)
        c, fr = _counts(budgets, N)
        fracs = fr if fracs is None else fracs
        t0 = time.perf_counter()
        sc = score_parts(ex.trace, ranking, ex.cf_ids, ex.answer, ex.cf_answer, steps, seed + i, ex.cf_trace)
        order = part_order(sc)
        t1 = time.perf_counter()
        ld, full, empty = measure(ex, [order[:k] for k in c], max_batch_bytes)
        t_meas += time.perf_counter() - t1
        t_rank += t1 - t0
        lds.append(ld)
        fulls.append(full)
        empties.append(empty)
        counts.append(c)
    lds_a, fulls_a, empties_a = np.array(lds), np.array(fulls), np.array(empties)
    span = fulls_a.mean() - empties_a.mean()
    f = (lds_a.mean(0) - empties_a.mean()) / span if span != 0 else np.full(len(fracs), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = (lds_a - empties_a[:, None]) / (fulls_a - empties_a)[:, None]
    cpr, cmd = areas(fracs, f)
    return Curve(check_ranking(ranking, exs[0].cf_ids is not None), exs[0].ablation, fracs, np.array(counts), f, per,
                 float(fulls_a.mean()), float(empties_a.mean()), cpr, cmd,
                 {"ranking": t_rank / n, "measure": t_meas / n})
