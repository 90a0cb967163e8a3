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

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in torch's thread pool when torch is loaded (as while a model is traced):
    NumPy's BLAS threads would spin between the model's own operations and slow them down."""
    torch = sys.modules.get("torch")
    if torch is None:
        return a @ b
    return (torch.from_numpy(np.ascontiguousarray(a)) @ torch.from_numpy(np.ascontiguousarray(b))).numpy()


class Half:
    """A float32 array whose every value is exactly a bfloat16 (or float16) number, kept in two
    bytes per value: a half-precision model's own states, activations and values, read back as
    the identical float32 numbers (no rounding anywhere)."""

    __slots__ = ("bits", "kind")

    def __init__(self, bits: np.ndarray, kind: str):
        self.bits, self.kind = bits, kind

    @classmethod
    def pack(cls, arr: Any, kind: str) -> Any:
        """``arr`` in two bytes per value when that is exact for ``kind`` ("bfloat16" or
        "float16"), else ``arr`` itself (for example a branch scaled in float32)."""
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or isinstance(arr, np.memmap):
            return arr
        if kind == "bfloat16":
            bits = (np.ascontiguousarray(arr).view(np.uint32) >> 16).astype(np.uint16)
        elif kind == "float16":
            bits = arr.astype(np.float16)
        else:
            return arr
        packed = cls(bits, kind)
        return packed if np.array_equal(packed.unpack(), arr) else arr

    def unpack(self) -> np.ndarray:
        """The float32 array (a new array on each call)."""
        if self.kind == "bfloat16":
            return (self.bits.astype(np.uint32) << 16).view(np.float32)
        return self.bits.astype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape


def _stored(name: str, doc: str) -> property:
    """A LayerBuffers array kept as given or packed (:class:`Half`), read as float32."""

    def get(self: "LayerBuffers") -> Any:
        value = self._store[name]
        return value.unpack() if isinstance(value, Half) else value

    def put(self: "LayerBuffers", value: Any) -> None:
        self._store[name] = value

    return property(get, put, doc=doc)


class LayerBuffers:
    """The compact buffers of one layer (T tokens, H heads, G kv groups, d_h head width, d model
    width, F FFN width), float32 and C-contiguous.

    Sequential block: ``resid_mid = resid_pre + sum_{h,s} row_scale[t] A[h,t,s] T(u[h,s]) +
    attn_bias`` with ``u[h,s] = values[s, g(h)] @ w_o[h]`` and ``T`` = optional centering then
    ``× col_scale``; ``resid_post = resid_mid + ffn_out``; ``ffn_out = ffn_row_scale[t] *
    act @ T(w_down) + ffn_bias``. Parallel block: ``resid_post = resid_pre + attention parts +
    attn_bias + ffn_out`` and ``resid_mid`` is None. Absent scales/biases are None.

    The attention probabilities ``attn [H, T, T]`` are not kept: :attr:`attn`,
    :meth:`attn_rows` and :meth:`attn_head` recompute them exactly from the layer's recorded
    queries and keys (:mod:`ltt.models.attention`). ``w_o`` and ``w_down`` come from the model
    (:meth:`ltt.models.Model.layer_weights`), checked against the weights the trace saw.
    """

    def __init__(self, *, layer: int, parallel: bool, resid_pre: np.ndarray, resid_mid: np.ndarray | None,
                 resid_post: np.ndarray, values: np.ndarray, attn_bias: np.ndarray | None,
                 attn_row_scale: np.ndarray | None, attn_col_scale: np.ndarray | None, attn_center: bool,
                 ffn_out: np.ndarray, act: np.ndarray, ffn_bias: np.ndarray | None,
                 ffn_row_scale: np.ndarray | None, ffn_col_scale: np.ndarray | None, ffn_center: bool,
                 attention: Any = None, weights: Any = None, moe: Any = None):
        self.layer = layer
        self.parallel = parallel
        self._store: dict[str, Any] = {}  # the arrays below, float32 or packed (Half)
        self.resid_pre = resid_pre
        self.resid_mid = resid_mid
        self.resid_post = resid_post
        self.values = values
        self.attn_bias = attn_bias  # [T, d] non-head attention terms in the residual space
        self.attn_row_scale = attn_row_scale  # [T] post-branch norm 1/rms (or 1/std)
        self.attn_col_scale = attn_col_scale  # [d] post-branch norm gamma
        self.attn_center = attn_center  # post-branch LayerNorm: centre each part
        self.ffn_out = ffn_out
        self.act = act
        self.ffn_bias = ffn_bias  # [T, d]
        self.ffn_row_scale = ffn_row_scale  # [T]
        self.ffn_col_scale = ffn_col_scale  # [d]
        self.ffn_center = ffn_center
        self._attention = attention  # recomputes probabilities (ltt.models.attention)
        self._weights = weights  # () -> {"w_o": [H, d_h, d], "w_down": [F, d]} float32
        self.moe = moe  # a MoE layer: the router's choices and the experts' neuron ranges (ltt.models.moe)
        self.pinned: dict[str, np.ndarray] | None = None  # the weights, while the trace attributes the layer

    resid_pre = _stored("resid_pre", "[T, d] layer input x (layer 0: embeddings after any scale)")
    resid_mid = _stored("resid_mid", "[T, d] after attention (None for parallel blocks)")
    resid_post = _stored("resid_post", "[T, d] layer output")
    values = _stored("values", "[T, G, d_h] values, v-projection bias included")
    ffn_out = _stored("ffn_out", "[T, d] the FFN branch's contribution (post-norm applied)")
    act = _stored("act", "[T, F] activations entering the down projection")
    #: The arrays a half-precision model's trace keeps in two bytes per value.
    PACKED = ("resid_pre", "resid_mid", "resid_post", "values", "ffn_out", "act")

    def pack(self, kind: str) -> None:
        """Keep this layer's states, values and activations in two bytes per value where that is
        exact (``kind``: the model's dtype, "bfloat16" or "float16"; anything else keeps float32)."""
        for name in self.PACKED:
            self._store[name] = Half.pack(self._store[name], kind)

    def stored(self, name: str) -> Any:
        """The object kept for array ``name`` (a float32 array, a :class:`Half` or None), not copied."""
        return self._store[name]

    @property
    def n_tokens(self) -> int:
        return int(self._store["resid_pre"].shape[0])

    @property
    def w_o(self) -> np.ndarray:
        """``[H, d_h, d]`` float32: the output projection per head."""
        return (self.pinned or self._weights())["w_o"]

    @property
    def w_down(self) -> np.ndarray:
        """``[F, d]`` float32: row i = neuron i's output vector (may be a transposed view)."""
        return (self.pinned or self._weights())["w_down"]

    @property
    def attn(self) -> np.ndarray:
        """``[H, T, T]`` float32 attention probabilities ``A[h, t, s]``, recomputed (not kept)."""
        return self._attention.probs()

    def attn_rows(self, rows: Sequence[int]) -> np.ndarray:
        """``[H, len(rows), T]`` float32: every head's probabilities at the target rows."""
        return self._attention.probs(rows=rows)

    def attn_head(self, head: int) -> np.ndarray:
        """``[T, T]`` float32: one head's probabilities."""
        return self._attention.probs(heads=[head])[0]

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

    def attn_update(self, probs: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """``[T, d]`` float64 (or ``[len(rows), d]``): the attention branch rebuilt from its
        parts (heads and bias), from ``probs [H, len(rows), T]`` when given."""
        if probs is None:
            probs = self.attn if rows is None else self.attn_rows(rows)
        idx = np.arange(self.n_tokens) if rows is None else np.asarray(rows)
        # the running check of a few rows sums in float32 (its tolerance is >= 1e-3); the full
        # rebuild in float64
        dt = np.float64 if rows is None else np.float32
        v = self.values.astype(dt, copy=False)
        wo = self.w_o.astype(dt, copy=False)
        H, per_group = wo.shape[0], wo.shape[0] // v.shape[1]
        v_heads = np.ascontiguousarray(v[:, np.arange(H) // per_group, :].transpose(1, 0, 2))  # [H, T, d_h]
        wo_flat = wo.reshape(H * wo.shape[1], wo.shape[2])
        out = np.zeros((len(idx), wo.shape[2]))
        for lo in range(0, len(idx), 512):  # row blocks: [H, rows, T] float64 stays small
            mixed = _mm(probs[:, lo : lo + 512].astype(dt, copy=False), v_heads)  # [H, rows, d_h]
            if self.attn_row_scale is not None:
                mixed *= self.attn_row_scale.astype(dt)[idx[lo : lo + 512]][None, :, None]
            out[lo : lo + 512] = _mm(mixed.transpose(1, 0, 2).reshape(mixed.shape[1], -1), wo_flat)
        if self.attn_center:
            out -= out.mean(axis=-1, keepdims=True)
        if self.attn_col_scale is not None:
            out *= self.attn_col_scale.astype(np.float64)
        if self.attn_bias is not None:
            out += self.attn_bias[idx]
        return out

    def ffn_update(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``[T, d]`` float64 (or ``[len(rows), d]``): the FFN branch rebuilt from its neurons
        and bias (for ``rows`` the neuron sum runs in float32, a cheap check)."""
        idx = slice(None) if rows is None else np.asarray(rows)
        if rows is None:
            out = _mm(self.act.astype(np.float64), self.w_down.astype(np.float64))
        else:
            # w_down is usually the transposed view of a torch weight: multiply in its own layout
            out = _mm(self.w_down.T, self.act[idx].T).T.astype(np.float64)
        if self.ffn_center:  # centring each neuron's vector = centring their sum
            out -= out.mean(axis=-1, keepdims=True)
        if self.ffn_col_scale is not None:
            out *= self.ffn_col_scale.astype(np.float64)
        if self.ffn_row_scale is not None:
            out *= self.ffn_row_scale.astype(np.float64)[idx][:, None]
        if self.ffn_bias is not None:
            out += self.ffn_bias[idx]
        return out

    def check(self, rows: np.ndarray | None = None, probs: np.ndarray | None = None) -> dict[str, float]:
        """Relative errors of the exact decomposition (max over tokens of ``|lhs - rhs|_inf /
        |state|_inf``); all should be ~1e-6 in float32. ``rows`` restricts the check to some
        target tokens (``probs [H, len(rows), T]`` may be given for them).

        Keys: ``attn`` (heads + bias + residual vs the state after attention, or for a parallel
        block the whole layer), ``ffn`` (resid_mid + ffn_out vs resid_post, sequential only),
        ``neurons`` (neurons + bias vs ffn_out).
        """
        def rel(lhs: np.ndarray, rhs: np.ndarray) -> float:
            scale = np.abs(rhs).max(axis=-1) + 1e-12
            return float((np.abs(lhs - rhs).max(axis=-1) / scale).max())

        idx = slice(None) if rows is None else np.asarray(rows)
        x = self.resid_pre[idx].astype(np.float64)
        out: dict[str, float] = {}
        attn = self.attn_update(probs, rows)
        if self.parallel:
            rebuilt = x + attn + self.ffn_out[idx]
            out["attn"] = rel(rebuilt, self.resid_post[idx].astype(np.float64))
        else:
            mid = self.resid_mid[idx].astype(np.float64)
            out["attn"] = rel(x + attn, mid)
            out["ffn"] = rel(mid + self.ffn_out[idx], self.resid_post[idx].astype(np.float64))
        out["neurons"] = rel(self.ffn_update(rows), self.ffn_out[idx].astype(np.float64))
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
    #: norm -> :class:`ltt.scores.FullGraph`; norm 1 is attributed during the forward pass
    full_graphs: dict = field(repr=False, default_factory=dict)
    #: seconds spent in the model's forward pass and in ltt's per-layer attribution
    timings: dict = field(repr=False, default_factory=dict)
    #: :class:`ltt.interpret.OutputHead` (the final norm frozen at these tokens), built on first use
    output_head: Any = field(repr=False, default=None, compare=False)

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

    def faithfulness(self, graph, **kw):
        """Rerun the model with only ``graph``'s parts, without them, and with random graphs of
        the same size (:func:`ltt.faithfulness.faithfulness`; ``kw``: ablation, baselines, seed,
        tokens, random).

        >>> trace.faithfulness(trace.graph(), baselines=16).summary()["kept"]   # doctest: +SKIP
        """
        from ltt.faithfulness import faithfulness

        return faithfulness(self, graph, **kw)

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
