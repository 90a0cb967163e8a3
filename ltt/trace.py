"""One recorded forward pass: per-layer float32 NumPy buffers that decompose every residual update.

A :class:`Trace` holds the prompt's tokens, the next-token logits and one :class:`LayerBuffers`
per layer. The buffers are the contract between the model adapters (:mod:`ltt.models`) and the
attribution code (:mod:`ltt.graph`): everything needed to split each layer's update of the
residual stream into exact parts, and nothing per (token, token, head, width).

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


@dataclass
class LayerBuffers:
    """The buffers of one layer (T tokens, H heads, G kv groups, d_h head width, d model width,
    F FFN width), float32 and C-contiguous except ``w_down`` (any strides).

    Sequential block: ``resid_mid = resid_pre + sum_{h,s} row_scale[t] A[h,t,s] T(u[h,s]) +
    attn_bias`` with ``u[h,s] = values[s, g(h)] @ w_o[h]`` and ``T`` = optional centering then
    ``× col_scale``; ``resid_post = resid_mid + ffn_out``; ``ffn_out = ffn_row_scale[t] *
    act @ T(w_down) + ffn_bias``. Parallel block: ``resid_post = resid_pre + attention parts +
    attn_bias + ffn_out`` and ``resid_mid`` is None. Absent scales/biases are None.
    """

    parallel: bool
    resid_pre: np.ndarray  # [T, d] layer input x (layer 0: embeddings after any scale)
    resid_mid: np.ndarray | None  # [T, d] after attention (None for parallel blocks)
    resid_post: np.ndarray  # [T, d] layer output
    attn: np.ndarray  # [H, T, T] attention probabilities A[h, t, s]
    values: np.ndarray  # [T, G, d_h] values, v-projection bias included
    w_o: np.ndarray  # [H, d_h, d] output projection per head (cached per model)
    attn_bias: np.ndarray | None  # [T, d] non-head attention terms in the residual space
    attn_row_scale: np.ndarray | None  # [T] post-branch norm 1/rms (or 1/std)
    attn_col_scale: np.ndarray | None  # [d] post-branch norm gamma
    attn_center: bool  # post-branch LayerNorm: centre each part
    ffn_out: np.ndarray  # [T, d] the FFN branch's contribution (post-norm applied)
    act: np.ndarray  # [T, F] activations entering the down projection
    w_down: np.ndarray  # [F, d] row i = neuron i's output vector (may be a transposed view)
    ffn_bias: np.ndarray | None  # [T, d]
    ffn_row_scale: np.ndarray | None  # [T]
    ffn_col_scale: np.ndarray | None  # [d]
    ffn_center: bool
    moe: Any = None  # a MoE layer: the router's choices and the experts' neuron ranges (ltt.models.moe)

    @property
    def n_tokens(self) -> int:
        return int(self.resid_pre.shape[0])

    def head_vectors(self) -> np.ndarray:
        """``[H, T, d]`` float64: ``T(u[h, s])``, each head's value-to-output vector per source
        (centred and scaled by a post-branch norm where there is one)."""
        v = self.values.astype(np.float64)
        wo = self.w_o.astype(np.float64)
        per_group = wo.shape[0] // v.shape[1]
        u = np.stack([v[:, h // per_group, :] @ wo[h] for h in range(wo.shape[0])])
        if self.attn_center:
            u -= u.mean(axis=-1, keepdims=True)
        if self.attn_col_scale is not None:
            u *= self.attn_col_scale.astype(np.float64)
        return u

    def attn_update(self) -> np.ndarray:
        """``[T, d]`` float64: the attention branch rebuilt from its parts (heads and bias)."""
        a = self.attn.astype(np.float64)
        if self.attn_row_scale is not None:
            a = a * self.attn_row_scale.astype(np.float64)[None, :, None]
        out = np.einsum("hts,hsd->td", a, self.head_vectors())
        if self.attn_bias is not None:
            out += self.attn_bias
        return out

    def ffn_update(self) -> np.ndarray:
        """``[T, d]`` float64: the FFN branch rebuilt from its neurons and bias."""
        wd = self.w_down.astype(np.float64)
        if self.ffn_center:
            wd = wd - wd.mean(axis=-1, keepdims=True)
        if self.ffn_col_scale is not None:
            wd = wd * self.ffn_col_scale.astype(np.float64)
        out = self.act.astype(np.float64) @ wd
        if self.ffn_row_scale is not None:
            out *= self.ffn_row_scale.astype(np.float64)[:, None]
        if self.ffn_bias is not None:
            out += self.ffn_bias
        return out

    def check(self) -> dict[str, float]:
        """Relative errors of the exact decomposition (max over tokens of ``|lhs - rhs|_inf /
        |state|_inf``); all should be ~1e-6 in float32.

        Keys: ``attn`` (heads + bias + residual vs the state after attention, or for a parallel
        block the whole layer), ``ffn`` (resid_mid + ffn_out vs resid_post, sequential only),
        ``neurons`` (neurons + bias vs ffn_out).
        """
        def rel(lhs: np.ndarray, rhs: np.ndarray) -> float:
            scale = np.abs(rhs).max(axis=-1) + 1e-12
            return float((np.abs(lhs - rhs).max(axis=-1) / scale).max())

        x = self.resid_pre.astype(np.float64)
        out: dict[str, float] = {}
        if self.parallel:
            rebuilt = x + self.attn_update() + self.ffn_out
            out["attn"] = rel(rebuilt, self.resid_post.astype(np.float64))
        else:
            out["attn"] = rel(x + self.attn_update(), self.resid_mid.astype(np.float64))
            out["ffn"] = rel(
                self.resid_mid.astype(np.float64) + self.ffn_out, self.resid_post.astype(np.float64)
            )
        out["neurons"] = rel(self.ffn_update(), self.ffn_out.astype(np.float64))
        return out


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

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_tokens(self) -> int:
        return int(len(self.token_ids))

    def top_prediction(self, k: int = 1) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens as ``(readable string, logit)``.

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
        threshold: float = 0.04,
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

    def top_tokens(self, node: str, k: int = 10, normalize: bool = True):
        """Logit lens of a state node (``X0_t``, ``A{l}_t``, ``I{l}_t``): its top-k tokens with
        logits, probabilities and rank changes (:func:`ltt.interpret.top_tokens`).

        >>> trace.top_tokens("I29_5", k=5).tokens[0].token   # doctest: +SKIP
        ' Paris'
        """
        from ltt import interpret

        return interpret.top_tokens(self, node, k=k, normalize=normalize)

    def promoted(self, layer: int, token: int, block: str = "attn", head: int | None = None,
                 neuron: int | None = None, k: int = 10, raw: bool = False):
        """Tokens an update (attention block, one head, FFN block, one neuron) promotes and
        suppresses at ``token`` (:func:`ltt.interpret.promoted`).

        >>> trace.promoted(20, -1, block="attn", head=3, k=5)   # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.promoted(self, layer, token, block=block, head=head, neuron=neuron, k=k, raw=raw)

    def head_shares(self, layer: int, target: int, source: int) -> np.ndarray:
        """Each head's share ``[H]`` of the attention edge ``source -> target`` of ``layer``
        (:func:`ltt.interpret.head_shares`).

        >>> trace.head_shares(5, -1, 0).argmax()             # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.head_shares(self, layer, target, source)

    def edge_heads(self, layer: int, target: int, source: int):
        """Every head's share of an attention edge, largest first (:func:`ltt.interpret.edge_heads`).

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

    def neuron_shares(self, layer: int, token: int) -> np.ndarray:
        """Each neuron's share ``[F]`` of the FFN output state at ``token``
        (:func:`ltt.interpret.neuron_shares`).

        >>> trace.neuron_shares(5, -1).argmax()              # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.neuron_shares(self, layer, token)

    def top_neurons(self, layer: int, token: int, k: int = 10):
        """The FFN node's top-k neurons with activation, share and promoted tokens
        (:func:`ltt.interpret.top_neurons`).

        >>> trace.top_neurons(5, -1, k=5).neurons[0].neuron  # doctest: +SKIP
        """
        from ltt import interpret

        return interpret.top_neurons(self, layer, token, k=k)

    def show(self, **kw):
        """The Jupyter widget of this trace (:class:`ltt.widget.GraphWidget`; ``kw``: threshold,
        renormalize, targets, normalize, k, model).

        >>> trace.show(threshold=0.05)                     # doctest: +SKIP
        """
        from ltt.widget import GraphWidget

        return GraphWidget(self, **kw)

    def to_html(self, path, **kw):
        """Write the standalone offline HTML report of this trace (:func:`ltt.export.to_html`).

        >>> trace.to_html("report.html", threshold=0.04)   # doctest: +SKIP
        """
        from ltt.export import to_html

        return to_html(self, path, **kw)

    def __repr__(self) -> str:
        name = getattr(self.model, "name", "?")
        shown = "".join(self.tokens)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"Trace(model={name!r}, tokens={self.n_tokens}, layers={self.n_layers}, text={shown!r})"
