"""Faithfulness by intervention: rerun the model with exactly the graph's parts, or without them.

A contribution graph is an attribution; :func:`faithfulness` checks it causally. It runs the
model again, in one batched forward pass (:mod:`ltt.interventions` does the removals), with

* ``full``: nothing removed (batch row 0, the reference for every KL divergence);
* ``kept``: only the graph's attention edges and FFN blocks active: every attention edge
  ``s -> t`` of layer ``l`` and every FFN block ``(l, t)`` the graph does not hold is removed;
* ``removed``: the graph's attention edges and FFN blocks removed, all others active;
* ``random``: ``baselines`` random graphs of the same size, each run like ``kept``.

and reports, at each target token of the graph, the probability and logit of the full model's
predicted token (and of any token the caller names) and the KL divergence
``KL(p_full || p_run)`` of the next-token distribution. Residual connections and biases are
never removed. What "removed" means, per block shape and for ``ablation="mean"``, is written in
:mod:`ltt.interventions`.

Random graphs (``random=``):

* ``"uniform"`` (default): per layer, the same number of attention edges as the graph, drawn
  uniformly without replacement among all causal pairs ``s <= t`` of the prompt, and the same
  number of FFN blocks, at positions drawn uniformly without replacement;
* ``"rewire"``: a harder baseline; every state the graph sends attention edges into receives
  the same number of edges, from sources drawn uniformly among ``0..t``; FFN blocks as above.

Both are drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same graphs.
Sliding-window models: a drawn edge outside a layer's window carries no attention, so random
graphs of such models are effectively a little smaller.

>>> import ltt                                                       # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("When Mary and John went to the store, John gave a drink to")  # doctest: +SKIP
>>> f = trace.faithfulness(trace.graph(threshold=0.01), baselines=16, seed=0)  # doctest: +SKIP
>>> print(summary_line(f))                                           # doctest: +SKIP
the graph keeps 0.98 of the probability of ' Mary' (random graphs of the same size: 0.00 ± 0.00)
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ltt.checks import is_int
from ltt.graph import Graph
from ltt.graph_parts import graph_parts, random_parts  # noqa: F401  (their home; re-exported)

__all__ = ["faithfulness", "Faithfulness", "TargetFaithfulness", "Score", "summary_line", "report_line",
           "RANDOM_MODES"]

ABLATIONS = ("zero", "mean", "patch")
RANDOM_MODES = ("uniform", "rewire")
MAX_BASELINES = 4096


@dataclass(frozen=True)
class Score:
    """One run at one target: ``prob`` and ``logit`` of each watched token (the full model's
    prediction first) and ``kl``, ``KL(p_full || p_run)`` in nats over the whole vocabulary."""

    prob: tuple[float, ...]
    logit: tuple[float, ...]
    kl: float

    def to_dict(self) -> dict[str, Any]:
        return {"prob": list(self.prob), "logit": list(self.logit), "kl": self.kl}


@dataclass
class TargetFaithfulness:
    """The runs at one target token ``position``: ``full``, ``kept``, ``removed`` and one
    :class:`Score` per random graph in ``random``. ``tokens`` / ``token_ids``: the watched
    tokens, the full model's prediction first.

    ``kept_fraction`` is ``kept.prob[0] / full.prob[0]``, the share of the predicted token's
    probability the graph alone keeps (``removed_fraction`` and ``random_fractions`` alike)."""

    position: int
    tokens: list[str]
    token_ids: list[int]
    full: Score
    kept: Score
    removed: Score
    random: list[Score] = field(default_factory=list)
    #: with two ``tokens`` ``[answer, counterfactual answer]``: ``logit(answer) - logit(cf answer)``
    #: of each run, keys ``full``, ``kept``, ``removed``, ``empty`` (every edge and block removed
    #: under the same ablation) and ``random`` (a list); None otherwise
    logit_diff: dict | None = None

    def normalized(self, run: str = "kept") -> float:
        """Normalised faithfulness ``(LD(run) - LD(empty)) / (LD(full) - LD(empty))`` of ``run``
        (``"kept"``, ``"removed"`` or ``"random"``, the mean over random graphs); NaN without a
        logit difference or when the full and empty runs tie."""
        ld = self.logit_diff
        if ld is None:
            return float("nan")
        value = float(np.mean(ld["random"])) if run == "random" else ld[run]
        span = ld["full"] - ld["empty"]
        return (value - ld["empty"]) / span if span != 0 else float("nan")

    def _fraction(self, s: Score) -> float:
        p = self.full.prob[0]
        return s.prob[0] / p if p > 0 else float("nan")

    @property
    def kept_fraction(self) -> float:
        return self._fraction(self.kept)

    @property
    def removed_fraction(self) -> float:
        return self._fraction(self.removed)

    @property
    def random_fractions(self) -> np.ndarray:
        return np.array([self._fraction(s) for s in self.random], dtype=np.float64)

    def random_mean(self) -> Score:
        """The random graphs' runs averaged: mean probability, logit and KL per watched token."""
        p = np.array([s.prob for s in self.random]).mean(axis=0)
        lg = np.array([s.logit for s in self.random]).mean(axis=0)
        return Score(tuple(map(float, p)), tuple(map(float, lg)), float(np.mean([s.kl for s in self.random])))

    def to_dict(self) -> dict[str, Any]:
        r = self.random_fractions
        return {
            "position": self.position,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "full": self.full.to_dict(),
            "kept": self.kept.to_dict(),
            "removed": self.removed.to_dict(),
            "random": [s.to_dict() for s in self.random],
            "kept_fraction": self.kept_fraction,
            "removed_fraction": self.removed_fraction,
            "random_fraction_mean": float(r.mean()) if r.size else None,
            "random_fraction_std": float(r.std()) if r.size else None,
            "logit_diff": self.logit_diff,
            "normalized": None if self.logit_diff is None else {
                k: self.normalized(k) for k in ("kept", "removed") + (("random",) if self.random else ())},
        }


@dataclass
class Faithfulness:
    """The result of :func:`faithfulness`: one :class:`TargetFaithfulness` per target token, and
    the settings (``ablation``, ``baselines``, ``seed``, ``random``) and graph size
    (``attention_edges`` per layer, ``ffn_blocks`` per layer) it was measured with.

    >>> f = trace.faithfulness(g)                            # doctest: +SKIP
    >>> f.targets[0].kept.prob[0], f.summary()["kept"]       # doctest: +SKIP
    """

    model_name: str
    prompt_tokens: list[str]
    ablation: str
    baselines: int
    seed: int
    random_mode: str
    attention_edges: list[int]
    ffn_blocks: list[int]
    targets: list[TargetFaithfulness]
    #: the counterfactual's token ids (``ablation="patch"``); the reference set's size (dataset mean)
    counterfactual: list[int] | None = None
    reference: int | None = None

    @property
    def normalized(self) -> float:
        """The kept graph's normalised faithfulness, mean over targets (NaN without a logit
        difference): what :func:`ltt.circuits` measures and ``trace.circuit`` reaches."""
        return float(np.mean([t.normalized("kept") for t in self.targets]))

    def summary(self) -> dict[str, float | None]:
        """Means over the targets: ``full`` / ``kept`` / ``removed`` probability of the predicted
        token, the ``kept`` / ``removed`` / ``random`` fractions of it (``random_std``: the spread
        over the random graphs), and the KL divergences (``kl_random``: mean over random graphs)."""
        ts = self.targets
        rand = np.array([t.random_fractions for t in ts]) if self.baselines else None

        def mean(values):
            return float(np.mean(values))

        return {
            "full_prob": mean([t.full.prob[0] for t in ts]),
            "kept_prob": mean([t.kept.prob[0] for t in ts]),
            "removed_prob": mean([t.removed.prob[0] for t in ts]),
            "kept": mean([t.kept_fraction for t in ts]),
            "removed": mean([t.removed_fraction for t in ts]),
            "random": None if rand is None else mean(rand),
            "random_std": None if rand is None else float(rand.std(axis=1).mean()),
            "kl_kept": mean([t.kept.kl for t in ts]),
            "kl_removed": mean([t.removed.kl for t in ts]),
            "kl_random": None if rand is None else mean([[s.kl for s in t.random] for t in ts]),
            **({} if ts[0].logit_diff is None else {
                "normalized": mean([t.normalized("kept") for t in ts]),
                "normalized_removed": mean([t.normalized("removed") for t in ts]),
                "normalized_random": None if rand is None else mean([t.normalized("random") for t in ts]),
                "logit_diff_full": mean([t.logit_diff["full"] for t in ts]),
                "logit_diff_kept": mean([t.logit_diff["kept"] for t in ts]),
                "logit_diff_empty": mean([t.logit_diff["empty"] for t in ts]),
            }),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: settings, graph size, per-target runs and :meth:`summary`."""
        return {
            "model": self.model_name,
            "tokens": list(self.prompt_tokens),
            "ablation": self.ablation,
            "baselines": self.baselines,
            "seed": self.seed,
            "random": self.random_mode,
            "attention_edges": list(self.attention_edges),
            "ffn_blocks": list(self.ffn_blocks),
            "targets": [t.to_dict() for t in self.targets],
            "counterfactual": self.counterfactual,
            "reference": self.reference,
            "summary": self.summary(),
        }

    def __repr__(self) -> str:
        lines = [f"Faithfulness(model={self.model_name!r}, ablation={self.ablation!r}, baselines="
                 f"{self.baselines}, seed={self.seed}, random={self.random_mode!r}, attention edges="
                 f"{sum(self.attention_edges)}, FFN blocks={sum(self.ffn_blocks)})"]
        for t in self.targets:
            lines.append(f"  target [{t.position}] {self.prompt_tokens[t.position]!r}: predicts {t.tokens[0]!r}")
            extra = "".join(f" {'p(' + repr(tok) + ')':>14}" for tok in t.tokens[1:])
            lines.append(f"    {'run':<8} {'prob':>8} {'logit':>9} {'KL':>8}{extra}")
            rows = [("full", t.full), ("kept", t.kept), ("removed", t.removed)]
            if t.random:
                rows.append(("random", t.random_mean()))
            for name, s in rows:
                cells = "".join(f" {p:14.4f}" for p in s.prob[1:])
                lines.append(f"    {name:<8} {s.prob[0]:8.4f} {s.logit[0]:9.3f} {s.kl:8.4f}{cells}")
            if t.random:
                lines.append(f"    (random: means over {len(t.random)} graphs; kept fraction "
                             f"{t.random_fractions.mean():.4f} ± {t.random_fractions.std():.4f})")
        lines.append("  " + summary_line(self))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        out = [f"<div><b>faithfulness</b> of a graph of {sum(self.attention_edges)} attention edges "
               f"and {sum(self.ffn_blocks)} FFN blocks ({esc(self.model_name)}, ablation "
               f"{esc(self.ablation)}, {self.baselines} random graphs, seed {self.seed})</div>"]
        for t in self.targets:
            head = "".join(f"<th>p({esc(repr(tok))})</th><th>logit</th>" for tok in t.tokens)
            out.append(f"<div>target [{t.position}] {esc(repr(self.prompt_tokens[t.position]))}</div>")
            out.append(f"<table><tr><th>run</th>{head}<th>KL</th></tr>")
            rows = [("full", t.full), ("kept", t.kept), ("removed", t.removed)]
            if t.random:
                rows.append((f"random (mean of {len(t.random)})", t.random_mean()))
            for name, s in rows:
                cells = "".join(f"<td>{p:.4f}</td><td>{lg:.3f}</td>" for p, lg in zip(s.prob, s.logit))
                out.append(f"<tr><td>{esc(name)}</td>{cells}<td>{s.kl:.4f}</td></tr>")
            out.append("</table>")
        out.append(f"<div>{esc(summary_line(self))}</div>")
        return "".join(out)


def summary_line(result: Faithfulness) -> str:
    """One line per result for the CLI, the widget and the report, e.g. ``the graph keeps 0.98 of
    the probability of ' Mary' (random graphs of the same size: 0.00 ± 0.00)``; several targets
    are joined with ``; `` and each names its position.

    >>> print(summary_line(trace.faithfulness(trace.graph())))  # doctest: +SKIP
    """
    parts = []
    for t in result.targets:
        text = f"the graph keeps {t.kept_fraction:.2f} of the probability of {t.tokens[0]!r}"
        r = t.random_fractions
        if r.size:
            text += f" (random graphs of the same size: {r.mean():.2f} ± {r.std():.2f})"
        if t.logit_diff is not None and (result.counterfactual is not None or result.reference):
            text = _normalized_text(result, t) + "; " + text
        if len(result.targets) > 1:
            text = f"at [{t.position}] {text}"
        parts.append(text)
    return "; ".join(parts)


def _normalized_text(result: Faithfulness, t: TargetFaithfulness) -> str:
    how = "patched from the counterfactual" if result.counterfactual is not None else (
        f"mean-ablated over {result.reference} reference prompts")
    text = (f"normalised faithfulness {t.normalized('kept'):.2f} of the logit difference "
            f"{t.logit_diff['tokens'][0]!r} - {t.logit_diff['tokens'][1]!r} "
            f"({how})")
    if t.random:
        text += f", random graphs of the same size {t.normalized('random'):.2f}"
    return text


def report_line(trace: Any, graph: Graph, baselines: int = 8, seed: int = 0, result: Any = None) -> str:
    """The faithfulness line of ``graph`` as the HTML report carries it, naming its threshold
    (the report's page can move the threshold; the line stays true of the exported one); ""
    when the trace has no model to rerun. ``result``: ``graph``'s :class:`Faithfulness` when
    already measured (the CLI's), phrased instead of a rerun.

    >>> report_line(trace, trace.graph(threshold=0.04))     # doctest: +SKIP
    "at threshold 0.01: the graph keeps 0.98 of the probability of ' Mary' (...)"
    """
    if result is None:
        if getattr(trace, "model", None) is None:
            return ""
        result = faithfulness(trace, graph, baselines=baselines, seed=seed)
    return f"at threshold {graph.threshold:g}: {summary_line(result)}"


# --------------------------------------------------------------------------------------------
# the check


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if not is_int(value):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return int(value)


def _watched_ids(model: Any, tokens: Any) -> list[int]:
    if tokens is None:
        return []
    if isinstance(tokens, (str, int, np.integer)):
        tokens = [tokens]
    out = []
    for tok in tokens:
        if isinstance(tok, str):
            ids = model.tokenizer.encode(tok, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"tokens: {tok!r} is {len(ids)} tokens for this tokenizer, not one; "
                                 "name a single token (e.g. with its leading space) or give its id")
            out.append(int(ids[0]))
        elif is_int(tok):
            if not 0 <= int(tok) < model.vocab_size:
                raise ValueError(f"tokens: id {int(tok)} is outside the vocabulary [0, {model.vocab_size})")
            out.append(int(tok))
        else:
            raise TypeError(f"tokens must hold token strings or ids, got {type(tok).__name__}: {tok!r}")
    return out


def faithfulness(
    trace: Any,
    graph: Graph,
    *,
    ablation: str | None = None,
    baselines: int = 16,
    seed: int = 0,
    tokens: Sequence[str | int] | str | int | None = None,
    random: str = "uniform",
    max_batch_bytes: int = 1 << 30,
    counterfactual: Any = None,
    reference: Any = None,
) -> Faithfulness:
    """Measure how much of the prediction ``graph`` explains by rerunning the model (module
    docstring): the full model, the graph alone (``kept``), the model without the graph
    (``removed``) and ``baselines`` random graphs of the same size, at each of the graph's targets.

    * ``ablation``: ``"zero"`` (a removed part contributes nothing), ``"mean"`` (it is replaced
      by its mean over the prompt's positions in the full run, or over the positions of the
      ``reference`` prompts) or ``"patch"`` (it takes its term from the ``counterfactual`` run: a
      prompt, trace or token ids of the same token length); None: ``"patch"`` when a
      counterfactual is given, else ``"zero"`` (:mod:`ltt.interventions`, :mod:`ltt.ablations`);
    * ``baselines``: how many random graphs (0 for none); ``seed``: their generator's seed;
      ``random``: ``"uniform"`` or ``"rewire"`` (module docstring);
    * ``tokens``: token strings (one token each) or ids to report besides the prediction; two
      tokens ``[answer, counterfactual answer]`` also give each run's logit difference and the
      normalised faithfulness (``TargetFaithfulness.normalized``), against the run with every
      edge and block removed; patching asks for them (one token alone is refused);
    * ``max_batch_bytes``: rows are batched up to about this much working memory per forward
      pass (each batch repeats the full-model row).

    The model is left as found, whatever happens inside the runs.

    >>> g = trace.graph(threshold=0.04)                                   # doctest: +SKIP
    >>> f = faithfulness(trace, g, baselines=16, seed=0, tokens=[" John"])  # doctest: +SKIP
    >>> f.targets[0].kept_fraction, f.targets[0].random_fractions.mean()  # doctest: +SKIP
    """
    from ltt.ablations import spec_for
    from ltt.interventions import PartSet, run_batched

    model = getattr(trace, "model", None)
    if model is None or not hasattr(model, "hf_model"):
        raise ValueError("trace has no model to rerun (trace.model is None)")
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be an ltt Graph (trace.graph(...)), got {type(graph).__name__}")
    if list(graph.token_ids) != [int(i) for i in trace.token_ids]:
        raise ValueError("graph was built from another prompt than trace (its token ids differ)")
    if graph.n_layers != model.n_layers:
        raise ValueError(f"graph has {graph.n_layers} layers, the model {model.n_layers}")
    if ablation is None:
        ablation = "patch" if counterfactual is not None else "zero"
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if random not in RANDOM_MODES:
        raise ValueError(f"random must be one of {RANDOM_MODES}, got {random!r}")
    baselines = _check_int("baselines", baselines, 0, MAX_BASELINES)
    seed = _check_int("seed", seed, 0)
    _check_int("max_batch_bytes", max_batch_bytes, 1)
    watched = _watched_ids(model, tokens)
    ids_in = [int(i) for i in trace.token_ids]
    spec = spec_for(model, ids_in, ablation, counterfactual, reference)
    with_ld = len(watched) == 2
    if ablation == "patch" and tokens is not None and not with_ld:
        raise ValueError(f"tokens: patching measures the logit difference of two tokens [answer, "
                         f"counterfactual answer], got {tokens!r}")
    T = len(trace.token_ids)
    targets = [int(t) for t in graph.targets]
    edges, ffn = graph_parts(graph)
    rng = np.random.default_rng(seed)
    rows = [PartSet(edges, ffn, only=True), PartSet(edges, ffn, only=False)]
    for _ in range(baselines):
        rows.append(PartSet(*random_parts(edges, ffn, T, rng, random), only=True))
    if with_ld:
        rows.append(PartSet({}, {}, only=True))  # empty: every edge and block removed
    logits = run_batched(model, ids_in, rows, targets, ablation, max_batch_bytes, spec)
    # logits: [1 + len(rows), K, V] float64, row 0 the full model
    if not np.all(np.isfinite(logits)):
        raise RuntimeError("the intervened model produced NaN or inf logits")
    logp = logits - logits.max(axis=-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    results = []
    tok = model.tokenizer
    for k, pos in enumerate(targets):
        full = logp[0, k]
        pred = int(np.argmax(full))
        ids = [pred] + [i for i in watched if i != pred]
        p_full = np.exp(full)

        def score(r: int) -> Score:
            kl = float(np.sum(p_full * (full - logp[r, k])))
            return Score(tuple(float(np.exp(logp[r, k, i])) for i in ids),
                         tuple(float(logits[r, k, i]) for i in ids), max(kl, 0.0))

        ld = None
        if with_ld:
            a, b = watched

            def diff(r: int) -> float:
                return float(logits[r, k, a] - logits[r, k, b])

            ld = {"tokens": [tok.decode([a]), tok.decode([b])], "full": diff(0), "kept": diff(1),
                  "removed": diff(2), "empty": diff(len(rows)), "random": [diff(3 + i) for i in range(baselines)]}
        results.append(TargetFaithfulness(
            position=pos, tokens=[tok.decode([i]) for i in ids], token_ids=ids,
            full=score(0), kept=score(1), removed=score(2),
            random=[score(3 + b) for b in range(baselines)], logit_diff=ld,
        ))
    L = model.n_layers
    return Faithfulness(
        model_name=str(getattr(model, "name", "model")),
        prompt_tokens=[str(t) for t in trace.tokens],
        ablation=ablation, baselines=baselines, seed=seed, random_mode=random,
        attention_edges=[len(edges[l][0]) if l in edges else 0 for l in range(L)],
        ffn_blocks=[len(ffn[l]) if l in ffn else 0 for l in range(L)],
        targets=results,
        counterfactual=None if spec is None or spec.cf_ids is None else list(spec.cf_ids),
        reference=None if spec is None or spec.means is None else len(reference),
    )
