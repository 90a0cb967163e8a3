"""One recorded forward pass: the prompt's tokens, its logits and one LayerBuffers per layer.

A :class:`Trace` holds the prompt's tokens, the next-token logits and one
:class:`ltt.buffers.LayerBuffers` per layer (the exact parts of each residual update), with
shortcuts to the graph (:mod:`ltt.graph`) and the interpret functions (:mod:`ltt.interpret`).

>>> import ltt                                                      # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("The capital of France is")   # doctest: +SKIP
>>> trace.tokens[-2:], trace.layers[0].attn.shape                   # doctest: +SKIP
(['ĠFrance', ' is'], (9, 5, 5))
>>> max(trace.check().values()) < 1e-4                              # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ltt.checks import DEFAULT_THRESHOLD
from ltt.buffers import Half, LayerBuffers

#: the keywords of :meth:`Trace.show` (GraphWidget's settings of one trace)
SHOW_OPTIONS = ("threshold", "renormalize", "targets", "normalize", "k", "slider")


@dataclass
class Trace:
    """A recorded forward pass of ``model`` on ``prompt``.

    * ``tokens``: readable token strings (BOS included where the tokenizer adds it);
    * ``pieces``: the tokenizer's own token strings (``convert_ids_to_tokens``);
    * ``token_ids [T]`` int64; ``logits [vocab]`` float32: next-token logits at the last position;
    * ``all_logits [T, vocab]`` when asked for, else None;
    * ``layers``: one :class:`LayerBuffers` per layer; ``model``: the :class:`ltt.models.Model`.

    >>> trace = model.trace("Hello world")                # doctest: +SKIP
    >>> g = trace.graph(threshold=0.04)                   # doctest: +SKIP
    """

    prompt: str
    tokens: list[str]
    pieces: list[str]
    token_ids: np.ndarray
    logits: np.ndarray
    layers: list[LayerBuffers]
    model: Any = field(repr=False, default=None)
    all_logits: np.ndarray | None = field(repr=False, default=None)
    #: norm -> :class:`ltt.scores.TraceScores`; norm 1 is attributed during the forward pass
    full_graphs: dict = field(repr=False, default_factory=dict)
    #: seconds spent in the model's forward pass and in ltt's per-layer attribution
    timings: dict = field(repr=False, default_factory=dict)
    #: :class:`ltt.interpret.OutputHead` (the final norm frozen at these tokens), built on first use
    output_head: Any = field(repr=False, default=None, compare=False)
    #: target position -> its top prediction (token string), filled by the widget on first use
    predictions: dict = field(repr=False, default_factory=dict, compare=False)
    #: the model's name for a trace reopened without its model (:func:`ltt.load_trace`)
    model_name: str | None = field(repr=False, default=None, compare=False)

    def nbytes(self) -> dict[str, int]:
        """Bytes this trace holds: ``layers`` (states, values, activations, recorded queries and
        keys), ``graph`` (the kept contributions), ``logits``.

        >>> trace.nbytes()["layers"] / 2**20               # doctest: +SKIP
        """
        seen: set[int] = set()
        layers = 0
        for lb in self.layers:
            for a in (*(lb.stored(name) for name in lb.PACKED), lb.attn_bias, lb.ffn_bias):
                if isinstance(a, (np.ndarray, Half)) and not isinstance(a, np.memmap) and id(a) not in seen:
                    seen.add(id(a))
                    layers += a.nbytes
            layers += lb._attention.nbytes() if lb._attention is not None else 0
        graph = sum(f.nbytes() for f in self.full_graphs.values())
        logits = self.logits.nbytes + (0 if self.all_logits is None else self.all_logits.nbytes)
        return {"layers": layers, "graph": graph, "logits": logits}

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_tokens(self) -> int:
        return int(len(self.token_ids))

    def top_prediction(self, k: int = 1) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens after the last prompt token, most likely first: a
        list of ``(text, logit)`` pairs, ``text`` the token decoded to a string (its id as a
        string when the trace has no tokenizer) and ``logit`` the model's raw next-token score
        (a float, not a probability; ``trace.logits`` holds all of them).

        >>> trace.top_prediction(1)                       # doctest: +SKIP
        [(' Paris', 17.37)]
        """
        order = np.argsort(-self.logits)[:k]
        tok = self.model.tokenizer if self.model is not None else None
        names = [tok.decode([int(i)]) if tok is not None else str(int(i)) for i in order]
        return [(n, float(self.logits[i])) for n, i in zip(names, order)]

    def check(self) -> dict[str, float]:
        """The worst relative error of each exactness invariant over all layers, plus ``logits``:
        the final norm and unembedding of the last state against the model's logits.

        >>> max(trace.check().values()) < 1e-4            # doctest: +SKIP
        True
        """
        worst: dict[str, float] = {}
        for lb in self.layers:
            for key, value in lb.check().items():
                worst[key] = max(worst.get(key, 0.0), value)
        if self.model is not None:
            last = self.layers[-1].resid_post[-1]
            rebuilt = self.model.unembed(self.model.final_norm(last))
            scale = float(np.abs(self.logits).max()) + 1e-12
            worst["logits"] = float(np.abs(rebuilt - self.logits).max()) / scale
        return worst

    def graph(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        renormalize: bool = True,
        targets: Sequence[int] | str | int | None = None,
        norm: int = 1,
    ):
        """The pruned contribution graph of this trace (see :func:`ltt.graph.build_graph`).

        >>> g = trace.graph(threshold=0.04, renormalize=True, targets=[-1])   # doctest: +SKIP
        """
        from ltt.graph import build_graph

        return build_graph(self, threshold=threshold, renormalize=renormalize, targets=targets, norm=norm)

    # -- interpretation (ltt.interpret) ---------------------------------------------------------

    def top_tokens(self, node: Any, k: int = 10, normalize: bool = True):
        """Logit lens of a state node (``X0_t``, ``A{l}_t``, ``I{l}_t``): its top-k tokens with
        logits, probabilities and rank changes (:func:`ltt.interpret.top_tokens`).

        >>> trace.top_tokens("I29_5", k=5).tokens[0].token   # doctest: +SKIP
        ' Paris'
        """
        from ltt import interpret

        return interpret.top_tokens(self, node, k=k, normalize=normalize)

    def promoted(self, layer: Any, token: int | None = None, block: str = "attn", head: int | None = None,
                 neuron: int | None = None, k: int = 10, raw: bool = False):
        """Tokens an update (attention block, one head, FFN block, one neuron) promotes and
        suppresses at ``token`` (:func:`ltt.interpret.promoted`).

        >>> trace.promoted(20, -1, block="attn", head=3, k=5)   # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.promoted(self, layer, token, block=block, head=head, neuron=neuron, k=k, raw=raw)

    def head_shares(self, layer: Any, target: int | None = None, source: int | None = None) -> np.ndarray:
        """Each head's share ``[H]`` of the attention edge ``source -> target`` of ``layer``
        (:func:`ltt.interpret.head_shares`).

        >>> trace.head_shares(5, -1, 0).argmax()             # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.head_shares(self, layer, target, source)

    def edge_heads(self, layer: Any, target: int | None = None, source: int | None = None):
        """Every head's share of an attention edge (``layer, target, source`` or an ``Edge`` of
        ``g.edges``), largest first (:func:`ltt.interpret.edge_heads`).

        >>> trace.edge_heads(5, -1, 0).heads[0]              # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.edge_heads(self, layer, target, source)

    def head_view(self, layer: int, head: int, target: int | None = None, k: int = 10):
        """One head: contribution map, attention pattern, output and promoted tokens at ``target``
        (:func:`ltt.interpret.head_view`).

        >>> trace.head_view(5, 2).contribution.shape         # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.head_view(self, layer, head, target=target, k=k)

    def neuron_shares(self, layer: Any, token: int | None = None) -> np.ndarray:
        """Each neuron's share ``[F]`` of the FFN output state at ``token``
        (:func:`ltt.interpret.neuron_shares`).

        >>> trace.neuron_shares(5, -1).argmax()              # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.neuron_shares(self, layer, token)

    def top_neurons(self, layer: Any, token: int | None = None, k: int = 10):
        """The FFN node's top-k neurons with activation, share and promoted tokens
        (:func:`ltt.interpret.top_neurons`).

        >>> trace.top_neurons(5, -1, k=5).neurons[0].neuron  # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.top_neurons(self, layer, token, k=k)

    def show(self, **options: Any):
        """The Jupyter widget of this trace (:class:`ltt.widget.GraphWidget`, same keywords:
        ``threshold``, ``renormalize``, ``targets``, ``normalize``, ``k``, ``slider``).

        >>> trace.show(threshold=0.05)                     # doctest: +SKIP
        """
        from ltt.widget import GraphWidget

        unknown = sorted(set(options) - set(SHOW_OPTIONS))
        if unknown:
            raise TypeError(f"show() got an unexpected keyword argument {unknown[0]!r} (it takes {', '.join(SHOW_OPTIONS)})")
        return GraphWidget(self, **options)

    def faithfulness(
        self,
        graph: Any,
        *,
        ablation: str | None = None,
        baselines: int = 16,
        seed: int = 0,
        tokens: Any = None,
        random: str = "uniform",
        max_batch_bytes: int = 1 << 30,
        counterfactual: Any = None,
        reference: Any = None,
    ):
        """Rerun the model with only ``graph``'s parts, without them, and with random graphs of
        the same size (:func:`ltt.faithfulness.faithfulness`, same keywords). With
        ``counterfactual=`` (a prompt, trace or ids of the same token length) removed parts are
        patched from it, and two ``tokens`` ``[answer, counterfactual answer]`` give the
        normalised faithfulness; ``ablation="mean", reference=[prompts]`` is dataset mean ablation.

        >>> trace.faithfulness(trace.graph(), baselines=16).summary()["kept"]   # doctest: +SKIP
        """
        from ltt.faithfulness import faithfulness

        return faithfulness(self, graph, ablation=ablation, baselines=baselines, seed=seed, tokens=tokens,
                            random=random, max_batch_bytes=max_batch_bytes, counterfactual=counterfactual,
                            reference=reference)

    def circuit(
        self,
        min_faithfulness: float = 0.8,
        counterfactual: Any = None,
        tokens: Any = None,
        ablation: str | None = None,
        ranking: str | None = None,
        *,
        steps: int | None = None,
        greedy: bool = True,
        max_parts: int | float | None = None,
        baselines: int = 8,
        seed: int = 0,
        max_batch_bytes: int = 1 << 30,
    ):
        """The smallest graph along ``ranking`` whose measured normalised faithfulness reaches
        ``min_faithfulness``, with ``graph.faithfulness`` attached (:func:`ltt.circuits.search.circuit`;
        ``ranking`` None: EAP-IG with a counterfactual, ltt's routes without; without a
        counterfactual: dataset mean ablation over a built-in reference set).

        >>> g = trace.circuit(0.8, counterfactual="When Mary and John went to the store, Mary gave a drink to")  # doctest: +SKIP
        >>> g.faithfulness.normalized >= 0.8                # doctest: +SKIP
        True
        """
        from ltt.circuits.search import DEFAULT_STEPS, circuit

        return circuit(self, min_faithfulness, counterfactual, tokens, ablation, ranking,
                       steps=DEFAULT_STEPS if steps is None else steps, greedy=greedy, max_parts=max_parts,
                       baselines=baselines, seed=seed, max_batch_bytes=max_batch_bytes)

    def to_html(self, path: Any = None, **options: Any) -> str:
        """Write the standalone offline HTML report of this trace (:func:`ltt.report.to_html`,
        same keywords: ``title`` and :func:`ltt.report.report_data`'s, such as ``threshold``,
        ``targets``, ``carry``; ``path=None`` returns the HTML text).

        >>> trace.to_html("report.html", threshold=0.04)   # doctest: +SKIP
        """
        from ltt.report import to_html

        return to_html(self, path, **options)

    def save(self, path: Any) -> str:
        """Write this trace to ``path`` (a directory: ``trace.json`` and ``arrays.safetensors``,
        no pickle) to reopen with :func:`ltt.load_trace`, with or without the model; what works
        without it is listed in :mod:`ltt.trace_file` (docs/api.md).

        >>> trace.save("mary.ltt"); ltt.load_trace("mary.ltt").graph()   # doctest: +SKIP
        """
        from ltt.trace_file import save_trace

        return save_trace(self, path)

    def __repr__(self) -> str:
        name = getattr(self.model, "name", "?")
        shown = "".join(self.tokens)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"Trace(model={name!r}, tokens={self.n_tokens}, layers={self.n_layers}, text={shown!r})"
