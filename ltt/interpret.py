"""Read what flows through a trace: logit lens of states, promoted tokens of updates, head and neuron views.

Every answer here is one click of the explorer and stays small and fast: a vocabulary projection
is one matrix product, top-k uses ``argpartition``, and the final norm's frozen scales are
computed once per trace. The ``*_many`` functions answer many clicks at once (the HTML report
embeds every panel of a graph): their vectors are stacked into a few ``[N, d] x [d, V]``
products of ``_ROWS`` rows each, and each answer equals the single function's bit for bit (the
single functions are the batched ones over one item).

Conventions (DESIGN.md, "Interpretation conventions"):

* **Top tokens of a residual state** (``X0_t``, ``A{l}_t``, ``I{l}_t``): the model's own output
  head applied to the state, ``unembed(final_norm(state))`` (``normalize=False``: no norm), with
  each token's rank change against the predecessor state (``A{l}`` follows ``I{l-1}`` or
  ``X0``; ``I{l}`` follows ``A{l}``, or ``I{l-1}`` in a parallel layer).
* **Promoted and suppressed tokens of an update** (attention block, one head, FFN block, one
  neuron ``a_{t,i} * w_i`` so the activation's sign counts): the update's direct effect on the
  final logits with the final norm's scale frozen from the last layer's state at that token
  (centering included for LayerNorm). Under that linearisation the effects of the embedding and
  of every update, plus the norm's and the unembedding's biases, add up to the model's logits
  exactly (before any final logit softcapping, as in Gemma 2). ``raw=True`` gives the plain
  projection through the unembedding instead.

>>> import ltt                                            # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("The capital of France is")   # doctest: +SKIP
>>> top_tokens(trace, "I29_5", k=3)                       # doctest: +SKIP
>>> promoted(trace, 20, 5, block="attn", head=3)           # doctest: +SKIP
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, Sequence

import numpy as np

from ltt import attribution
from ltt.scores import attribute

__all__ = [
    "TokenScore",
    "TokenEffect",
    "TopTokens",
    "Promoted",
    "HeadShare",
    "EdgeHeads",
    "HeadView",
    "NeuronScore",
    "TopNeurons",
    "OutputHead",
    "output_head",
    "state",
    "top_tokens",
    "top_tokens_many",
    "update_vector",
    "direct_effect",
    "promoted",
    "promoted_many",
    "head_output",
    "head_shares",
    "edge_heads",
    "head_view",
    "head_view_many",
    "neuron_shares",
    "top_neurons",
    "top_neurons_many",
]

_NODE = re.compile(r"^([A-Za-z])(-?\d+)_(-?\d+)$")

# Rows per unembedding product. Every product has exactly this many rows (the last chunk is
# padded with zeros): MKL's GEMM rounds a row's logits differently for different row counts
# (one row, a few, sixteen or more), so a fixed shape is what makes a vector's logits, and every
# answer built on them, independent of what it is batched with. It also bounds the memory of a
# batch to ``_ROWS x V`` logits at a time. 32 rows: one click pays for a 32-row product (a few
# times a one-row one), and a report's thousands of rows run at most of the GEMM's full speed.
_ROWS = 32


# --------------------------------------------------------------------------------------------
# Result objects: small dataclasses with a plain dict, a DataFrame and a notebook repr.


def _plain(value: Any) -> Any:
    if isinstance(value, _Result):
        return value.to_dict()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        return ", ".join(repr(v.token) if hasattr(v, "token") else str(v) for v in value)
    return str(value)


def _cell(key: str, value: Any) -> str:
    if key == "rank_change" and isinstance(value, int):
        return f"{value:+d}"
    if key in ("token", "source_token") or (isinstance(value, list) and value and hasattr(value[0], "token")):
        shown = repr(value) if isinstance(value, str) else _fmt(value)
        return html.escape(shown)
    return html.escape(_fmt(value))


class _Result:
    """Shared behaviour of every result: ``to_dict``, ``to_pandas``, ``__repr__``, ``_repr_html_``."""

    def to_dict(self) -> dict[str, Any]:
        """The result as plain Python data (lists, floats, ints, strings), JSON-ready."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per table row (what :meth:`to_pandas` shows)."""
        return [self.to_dict()]

    def to_pandas(self):
        """The result's table as a ``pandas.DataFrame`` (needs pandas: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{type(self).__name__}.to_pandas needs pandas: pip install pandas"
            ) from exc
        return pd.DataFrame([{k: _plain(v) for k, v in r.items()} for r in self.rows()])

    def title(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        rows = self.rows()
        lines = [self.title()]
        if rows:
            keys = list(rows[0])
            cells = [[_fmt(k) for k in keys]] + [
                [repr(r[k]) if k in ("token", "source_token") else _fmt(r[k]) for k in keys] for r in rows
            ]
            widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
            for c in cells:
                lines.append("  " + "  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = self.rows()
        out = [f"<div class='ltt-result'><b>{html.escape(self.title())}</b>"]
        if rows:
            keys = list(rows[0])
            out.append("<table><thead><tr>")
            out.extend(f"<th>{html.escape(k)}</th>" for k in keys)
            out.append("</tr></thead><tbody>")
            for r in rows:
                out.append("<tr>" + "".join(
                    f"<td style='white-space:pre'>{_cell(k, r[k])}</td>" for k in keys) + "</tr>")
            out.append("</tbody></table>")
        out.append("</div>")
        return "".join(out)


@dataclass(repr=False)
class TokenScore(_Result):
    """A vocabulary token read from a state: its logit, probability and 0-based rank there, and its
    rank in the predecessor state (``rank_change = prev_rank - rank``: positive means it rose)."""

    token: str
    token_id: int
    logit: float
    prob: float
    rank: int
    prev_rank: int | None = None
    rank_change: int | None = None


@dataclass(repr=False)
class TokenEffect(_Result):
    """A vocabulary token and an update's direct effect on its final logit."""

    token: str
    token_id: int
    effect: float


@dataclass(repr=False)
class TopTokens(_Result):
    """The logit lens of one residual state node: its top-k tokens (see :func:`top_tokens`)."""

    node: str
    layer: int
    position: int
    position_token: str
    normalize: bool
    predecessor: str | None
    tokens: list[TokenScore] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.tokens]

    @property
    def ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]

    def title(self) -> str:
        norm = "final norm" if self.normalize else "no norm"
        prev = f", rank change vs {self.predecessor}" if self.predecessor else ""
        return f"top tokens of {self.node} (token {self.position} {self.position_token!r}, {norm}{prev})"


@dataclass(repr=False)
class Promoted(_Result):
    """Tokens an update pushes up (``promoted``) and down (``suppressed``), by direct logit effect."""

    layer: int
    position: int
    position_token: str
    block: str
    head: int | None
    neuron: int | None
    raw: bool
    promoted: list[TokenEffect] = field(default_factory=list)
    suppressed: list[TokenEffect] = field(default_factory=list)

    @property
    def what(self) -> str:
        if self.head is not None:
            return f"head {self.head} of layer {self.layer}"
        if self.neuron is not None:
            return f"neuron {self.neuron} of layer {self.layer}"
        return f"{'attention' if self.block == 'attn' else 'FFN'} block of layer {self.layer}"

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for i in range(max(len(self.promoted), len(self.suppressed))):
            p = self.promoted[i] if i < len(self.promoted) else None
            s = self.suppressed[i] if i < len(self.suppressed) else None
            out.append({
                "promoted": p.token if p else None, "effect+": p.effect if p else None,
                "suppressed": s.token if s else None, "effect-": s.effect if s else None,
            })
        return out

    def title(self) -> str:
        how = "raw unembedding" if self.raw else "direct effect on the final logits"
        return f"{self.what} at token {self.position} {self.position_token!r} ({how})"

    def __repr__(self) -> str:
        lines = [self.title()]
        for label, items in (("promoted", self.promoted), ("suppressed", self.suppressed)):
            lines.append(f"  {label}: " + ", ".join(f"{t.token!r} {t.effect:+.3g}" for t in items))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = f"<div class='ltt-result'><b>{html.escape(self.title())}</b><table><thead><tr>"
        head += "<th>promoted</th><th>effect</th><th>suppressed</th><th>effect</th></tr></thead><tbody>"
        body = []
        for r in self.rows():
            body.append("<tr>" + "".join(
                f"<td style='white-space:pre'>{html.escape(repr(r[k]) if isinstance(r[k], str) else _fmt(r[k]))}</td>"
                for k in ("promoted", "effect+", "suppressed", "effect-")) + "</tr>")
        return head + "".join(body) + "</tbody></table></div>"


@dataclass(repr=False)
class HeadShare(_Result):
    """One head's share of an attention edge."""

    head: int
    share: float


@dataclass(repr=False)
class EdgeHeads(_Result):
    """Every head's share of the attention edge ``source -> target`` in ``layer``, largest first;
    the shares sum to the edge's weight (its share of the target state before any threshold)."""

    layer: int
    target: int
    source: int
    target_token: str
    source_token: str
    weight: float
    heads: list[HeadShare] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [h.to_dict() for h in self.heads]

    @property
    def shares(self) -> np.ndarray:
        """The shares in head order, ``[H]``."""
        out = np.zeros(len(self.heads), np.float32)
        for h in self.heads:
            out[h.head] = h.share
        return out

    def title(self) -> str:
        return (f"heads of the layer {self.layer} edge {self.source} {self.source_token!r} -> "
                f"{self.target} {self.target_token!r} (edge weight {self.weight:.4g})")


@dataclass(repr=False)
class HeadView(_Result):
    """One attention head: its contribution map and attention pattern ``[T, T]`` (target row,
    source column), its output vector at ``target`` (in the residual space, after any
    post-branch norm) and the tokens that output promotes and suppresses."""

    layer: int
    head: int
    target: int
    target_token: str
    tokens: list[str]
    contribution: np.ndarray
    pattern: np.ndarray
    output: np.ndarray
    promoted: Promoted

    def rows(self) -> list[dict[str, Any]]:
        t = self.target
        return [
            {"source": s, "source_token": self.tokens[s], "attention": float(self.pattern[t, s]),
             "contribution": float(self.contribution[t, s])}
            for s in range(t + 1)
        ]

    def title(self) -> str:
        return (f"head {self.head} of layer {self.layer} at target {self.target} "
                f"{self.target_token!r} (share of the state: {float(self.contribution[self.target].sum()):.4g})")

    def __repr__(self) -> str:
        rows = sorted(self.rows(), key=lambda r: -r["contribution"])[:8]
        lines = [self.title(), "  top sources: " + ", ".join(
            f"{r['source']} {r['source_token']!r} c={r['contribution']:.3g} a={r['attention']:.3g}" for r in rows)]
        lines += ["  " + line for line in repr(self.promoted).splitlines()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        base = _Result._repr_html_(self)
        return base[: -len("</div>")] + self.promoted._repr_html_() + "</div>"


@dataclass(repr=False)
class NeuronScore(_Result):
    """One FFN neuron at one token: activation, share of the FFN output state, direct effects."""

    neuron: int
    activation: float
    share: float
    promoted: list[TokenEffect] = field(default_factory=list)
    suppressed: list[TokenEffect] = field(default_factory=list)


@dataclass(repr=False)
class TopNeurons(_Result):
    """The top-k neurons of an FFN node by contribution share, with the state's other shares."""

    layer: int
    position: int
    position_token: str
    resid_share: float
    bias_share: float
    neurons: list[NeuronScore] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [{"neuron": n.neuron, "activation": n.activation, "share": n.share,
                 "promoted": n.promoted, "suppressed": n.suppressed} for n in self.neurons]

    def to_pandas(self):
        frame = super().to_pandas()
        for col in ("promoted", "suppressed"):
            frame[col] = [[t["token"] for t in items] for items in frame[col]]
        return frame

    def title(self) -> str:
        return (f"top neurons of M{self.layer}_{self.position} (token {self.position_token!r}; "
                f"residual share {self.resid_share:.4g}, bias share {self.bias_share:.4g})")


# --------------------------------------------------------------------------------------------
# The model's output head (final norm, unembedding), through the Model's own NumPy methods.


class OutputHead:
    """The final norm and unembedding of a trace's model, as used by every answer here.

    The final norm comes from :class:`ltt.models.Model` (``final_norm``, ``final_norm_scale``),
    frozen once at every token of the trace. The unembedding (lm_head, with OPT's project_out
    before it) runs in torch on the model's own float32 weights: one ``linear`` over one vector
    or a few, which stays fast for a batch of vectors where a small NumPy GEMM does not.
    """

    def __init__(self, trace: Any):
        model = trace.model
        if model is None:
            raise ValueError("this trace has no model attached (trace.model is None): interpretation "
                             "needs the model's final norm and unembedding")
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self._pre, self._w_u, bias, self.softcap = _unembed_weights(model)
        self.bias = np.zeros(int(self._w_u.shape[0]), np.float32) if bias is None else bias
        self.frozen_norm = model.final_norm_scale(trace.layers[-1].resid_post)  # scale [T]
        self._decoded: dict[int, str] = {}

    @property
    def vocab_size(self) -> int:
        return int(self.bias.shape[0])

    def project_chunks(self, z: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Unembed vectors ``z [N, d]`` without lm_head's bias or softcap, ``_ROWS`` of them per
        product: yields ``(start, logits [n, V] float32)`` for rows ``start .. start + n``. Each
        product has exactly ``_ROWS`` rows (zeros pad the last), so a row's logits never depend
        on the other rows."""
        import torch
        from torch.nn.functional import linear

        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2:
            raise ValueError(f"z must be [N, d], got shape {z.shape}")
        with torch.no_grad():
            for start in range(0, z.shape[0], _ROWS):
                n = min(_ROWS, z.shape[0] - start)
                x = torch.zeros((_ROWS, z.shape[1]), dtype=torch.float32)
                x[:n] = torch.from_numpy(z[start : start + n])
                if self._pre is not None:
                    x = linear(x, self._pre)
                yield start, linear(x, self._w_u)[:n].numpy()

    def project(self, z: np.ndarray) -> np.ndarray:
        """Unembed vectors ``z [..., d]`` without lm_head's bias or softcap: ``[..., V]`` float32."""
        z = np.asarray(z, dtype=np.float32)
        flat = z.reshape(-1, z.shape[-1])
        out = np.empty((flat.shape[0], self.vocab_size), np.float32)
        for start, chunk in self.project_chunks(flat):
            out[start : start + chunk.shape[0]] = chunk
        return out.reshape(z.shape[:-1] + (self.vocab_size,))

    def frozen(self, v: np.ndarray, token: int) -> np.ndarray:
        """The final norm's linear part on update vectors ``v [..., d]``, its scale frozen at the
        last layer's state of ``token``: ``gamma * r_t * center(v)`` float32."""
        fz = self.frozen_norm
        if fz.kind == "none":
            return np.asarray(v, dtype=np.float32)
        return replace(fz, scale=fz.scale[token], mean=None).linear(v)

    def constant(self) -> np.ndarray:
        """The logits no update carries: the final norm's beta through the unembedding, plus
        lm_head's bias (``[V]``; zero for a bias-free RMSNorm model)."""
        beta = self.frozen_norm.beta
        out = self.bias.copy()
        if beta is not None:
            out += self.project(beta)
        return out

    def logits(self, x: np.ndarray, normalize: bool = True) -> np.ndarray:
        """The output head on states ``x [..., d]``: with ``normalize`` the model's own head
        (final norm, unembedding with its bias, any final softcap); without, the unembedding and
        its bias on the raw state."""
        z = self.model.final_norm(x) if normalize else np.asarray(x, dtype=np.float32)
        return self.finish(self.project(z), normalize)

    def logits_chunks(self, x: np.ndarray, normalize: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`logits` of states ``x [N, d]``, ``_ROWS`` at a time: yields ``(start, logits
        [n, V])`` (see :meth:`project_chunks`)."""
        z = self.model.final_norm(x) if normalize else np.asarray(x, dtype=np.float32)
        for start, chunk in self.project_chunks(z):
            yield start, self.finish(chunk, normalize)

    def finish(self, out: np.ndarray, normalize: bool) -> np.ndarray:
        """lm_head's bias, and with ``normalize`` any final softcap, on projected states."""
        out = out + self.bias
        if normalize and self.softcap:
            out = np.tanh(out / self.softcap) * self.softcap
        return out

    def decode(self, token_id: int) -> str:
        token_id = int(token_id)
        text = self._decoded.get(token_id)
        if text is None:
            if self.tokenizer is None:
                text = f"<{token_id}>"
            else:
                text = str(self.tokenizer.decode([token_id]))
                if not text or "\ufffd" in text:  # a partial UTF-8 sequence: the tokenizer's piece
                    piece = self.tokenizer.convert_ids_to_tokens(token_id)
                    # ids past the tokenizer's vocabulary (a padded embedding) have no piece
                    text = f"<{token_id}>" if piece is None else str(piece)
            self._decoded[token_id] = text
        return text


def _unembed_weights(model: Any):
    """``(pre, w_u, bias, softcap)`` of a model, cached on it: torch float32 CPU tensors
    ``pre [d', d]`` (OPT's project_out, or None) and ``w_u [V, d']`` (views of the weights when
    they already are float32 on the CPU), lm_head's bias as NumPy ``[V]`` or None, and the final
    logit softcap or None."""
    cached = getattr(model, "__dict__", {}).get("_ltt_unembed")
    if cached is not None:
        return cached
    import torch

    from ltt.models.families import family_for, get_module

    hf = model.hf_model

    def cpu32(p):
        if p.device.type == "meta":
            raise ValueError("the unembedding weights are offloaded (meta device): load the model "
                             "without disk offload")
        return p.detach().to(device="cpu", dtype=torch.float32)

    lm_head = hf.get_output_embeddings()
    fam = family_for(hf.config)
    pre = get_module(hf, fam.unembed_pre)
    b = getattr(lm_head, "bias", None)
    scale = float(fam.logit_scale(hf.config))  # Cohere, Granite: folded into the weights (a copy)
    cached = (
        None if pre is None else cpu32(pre.weight),
        cpu32(lm_head.weight) * scale if scale != 1.0 else cpu32(lm_head.weight),
        None if b is None else cpu32(b).numpy() * np.float32(scale),
        getattr(hf.config, "final_logit_softcapping", None) or None,
    )
    try:
        model.__dict__["_ltt_unembed"] = cached
    except (AttributeError, TypeError):  # pragma: no cover - a model object without __dict__
        pass
    return cached


def output_head(trace: Any) -> OutputHead:
    """The :class:`OutputHead` of a trace (built once and cached on the trace).

    >>> head = output_head(trace)                            # doctest: +SKIP
    >>> int(head.logits(trace.layers[-1].resid_post[-1]).argmax()) == int(trace.logits.argmax())  # doctest: +SKIP
    True
    """
    head = trace.__dict__.get("_ltt_output_head")
    if head is None:
        head = OutputHead(trace)
        trace.__dict__["_ltt_output_head"] = head
    return head


# --------------------------------------------------------------------------------------------
# Argument checks: every message names the argument and its value.


def _index(name: str, value: Any, n: int, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    p = v + n if v < 0 else v
    if not 0 <= p < n:
        raise ValueError(f"{name}={value!r} is out of range: the trace has {n} {what} (0..{n - 1})")
    return p


def _layer(trace: Any, layer: Any) -> int:
    return _index("layer", layer, len(trace.layers), "layers")


def _token(trace: Any, token: Any, name: str = "token") -> int:
    return _index(name, token, len(trace.token_ids), "tokens")


def _k(k: Any, name: str = "k") -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _n_heads(trace: Any) -> int:
    return int(trace.layers[0].w_o.shape[0])


def _probs_row(lb: Any, target: int) -> np.ndarray:
    """``[H, T]`` every head's probabilities at one target row (recomputed, not kept)."""
    if hasattr(lb, "attn_rows"):
        return lb.attn_rows([target])[:, 0]
    return np.asarray(lb.attn[:, target])


def _probs_head(lb: Any, head: int) -> np.ndarray:
    """``[T, T]`` one head's probabilities (recomputed, not kept)."""
    if hasattr(lb, "attn_head"):
        return lb.attn_head(head)
    return np.asarray(lb.attn[head])


def _whole(lb: Any) -> np.ndarray:
    return lb.resid_post if lb.parallel else lb.resid_mid


def edge_head_shares(trace: Any, layer: int, target: int, source: int, norm: int = 1,
                     dense: bool | None = None) -> np.ndarray:
    """Every head's share ``[H]`` of one attention edge (checked indices), by the C core on the
    one- or two-token sub-problem (source, target) with the layer's true normalisers: the same
    arithmetic as the full layer, without any ``[T, T]`` array. ``dense=None`` reads the dense
    per-head array instead when the trace fits the dense budget (``True``: always).

    >>> edge_head_shares(trace, 5, trace.n_tokens - 1, 0).shape   # doctest: +SKIP
    (9,)
    """
    full = attribute(trace, norm)
    if dense or (dense is None and full.dense_fits()):
        return np.array(full.layer_dense(layer)[0][:, target, source], dtype=np.float32)
    lb = trace.layers[layer]
    idx = [target] if source == target else [source, target]
    n = len(idx)
    a = np.zeros((_n_heads(trace), n, n), np.float32)
    a[:, n - 1, 0] = _probs_row(lb, target)[:, source]
    rs = None if lb.attn_row_scale is None else lb.attn_row_scale[idx]
    return attribution.attn_edge_heads(
        n - 1, 0, _whole(lb)[idx], a, lb.values[idx], lb.w_o, full.attn_total[layer][idx],
        row_scale=rs, col_scale=lb.attn_col_scale, center=bool(lb.attn_center), norm=full.norm,
    )


def _head_contribution(trace: Any, layer: int, head: int) -> np.ndarray:
    """One head's share map ``[T, T]``: the kept dense array when the trace fits the dense
    budget, else the C core on the head alone (its probabilities, values group and output
    projection slice) with the layer's true normalisers."""
    full = attribute(trace)
    if full.dense_fits():
        return np.array(full.layer_dense(layer)[0][head])
    return _head_map(trace, full, layer, head)


def _head_map(trace: Any, full: Any, layer: int, head: int) -> np.ndarray:
    lb = trace.layers[layer]
    G = lb.values.shape[1]
    g = head // (_n_heads(trace) // G)
    return attribution.attn_head_map(
        0, _whole(lb), _probs_head(lb, head)[None], np.ascontiguousarray(lb.values[:, g : g + 1]),
        lb.w_o[head : head + 1], full.attn_total[layer], row_scale=lb.attn_row_scale,
        col_scale=lb.attn_col_scale, center=bool(lb.attn_center), norm=full.norm,
    )


def _parallel_error(layer: int) -> ValueError:
    return ValueError(f"layer {layer} is a parallel block: it has no after-attention state")


def _parse_node(trace: Any, node: Any) -> tuple[str, int, int]:
    """``(kind, layer, token)`` of a residual state node name; layer is -1 for ``X0_t``."""
    if not isinstance(node, str):
        raise TypeError(f"node must be a node name such as 'I3_5', got {node!r}")
    m = _NODE.match(node.strip())
    if m is None:
        raise ValueError(
            f"node={node!r} is not a node name: expected 'X0_t' (embedding), 'A{{l}}_t' (after "
            "attention) or 'I{l}_t' (layer output), e.g. 'I3_5'"
        )
    kind, layer_s, token_s = m.group(1), int(m.group(2)), int(m.group(3))
    T, L = len(trace.token_ids), len(trace.layers)
    if token_s < 0 or token_s >= T:
        raise ValueError(f"node={node!r}: token {token_s} is out of range, the trace has {T} tokens (0..{T - 1})")
    if kind == "X":
        if layer_s != 0:
            raise ValueError(f"node={node!r}: the embedding state is named X0_t (X takes no layer)")
        return "X", -1, token_s
    if kind == "M":
        raise ValueError(
            f"node={node!r} is an FFN block, not a residual state: read its update with "
            f"trace.promoted({layer_s}, {token_s}, block='ffn') or its neurons with "
            f"trace.top_neurons({layer_s}, {token_s})"
        )
    if kind not in ("A", "I"):
        raise ValueError(f"node={node!r}: unknown node kind {kind!r}; residual states are X0_t, A{{l}}_t, I{{l}}_t")
    if layer_s < 0 or layer_s >= L:
        raise ValueError(f"node={node!r}: layer {layer_s} is out of range, the trace has {L} layers (0..{L - 1})")
    if kind == "A" and trace.layers[layer_s].parallel:
        raise _parallel_error(layer_s)
    return kind, layer_s, token_s


def _node_name(kind: str, layer: int, token: int) -> str:
    return f"X0_{token}" if kind == "X" else f"{kind}{layer}_{token}"


def _predecessor(trace: Any, kind: str, layer: int) -> tuple[str, int] | None:
    if kind == "X":
        return None
    if kind == "I" and not trace.layers[layer].parallel:
        return "A", layer
    return ("X", -1) if layer == 0 else ("I", layer - 1)


def _state_vector(trace: Any, kind: str, layer: int, token: int) -> np.ndarray:
    if kind == "X":
        return trace.layers[0].resid_pre[token]
    lb = trace.layers[layer]
    return (lb.resid_mid if kind == "A" else lb.resid_post)[token]


def state(trace: Any, node: str) -> np.ndarray:
    """The residual state vector ``[d]`` of a node ``X0_t``, ``A{l}_t`` or ``I{l}_t``.

    >>> state(trace, "X0_0").shape                           # doctest: +SKIP
    (576,)
    """
    kind, layer, token = _parse_node(trace, node)
    return _state_vector(trace, kind, layer, token)


# --------------------------------------------------------------------------------------------
# Logit lens of states.


def _softmax_at(z: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The probabilities of tokens ``ids`` under logits ``z [V]`` (softmax in float64)."""
    z = z.astype(np.float64)
    e = np.exp(z - z.max())
    return e[ids] / e.sum()


def _top(z: np.ndarray, k: int, largest: bool = True) -> np.ndarray:
    """Indices of the k largest (or smallest) entries of ``z [V]``, in order."""
    k = min(k, z.shape[-1])
    v = -z if largest else z
    idx = np.argpartition(v, k - 1)[:k] if k < z.shape[-1] else np.arange(z.shape[-1])
    return idx[np.argsort(v[idx], kind="stable")]


def _ranks(z: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """0-based rank of each id in logits ``z``: how many tokens score strictly higher."""
    return np.array([np.count_nonzero(z > v) for v in z[ids]], dtype=np.int64)


def _depth(kind: str, layer: int) -> int:
    """Order of a residual state along the stream: X0 < A0 < I0 < A1 < ..."""
    return 0 if kind == "X" else 2 * layer + (1 if kind == "A" else 2)


def _names(value: Any, what: str) -> list:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{what} must be a list, got {value!r}")
    return list(value)


def top_tokens(trace: Any, node: str, k: int = 10, normalize: bool = True) -> TopTokens:
    """The logit lens of a residual state: its top-k tokens with logit, probability and rank
    change against the predecessor state.

    ``normalize=True`` applies the model's final norm before the unembedding (and any final
    logit softcap), as the model does for its last state; ``normalize=False`` unembeds the raw
    state. ``rank_change`` is ``prev_rank - rank``: positive when the token rose in this step.

    >>> tt = top_tokens(trace, "I29_5", k=5)                 # doctest: +SKIP
    >>> tt.tokens[0].token, tt.tokens[0].prob                # doctest: +SKIP
    (' Paris', 0.41)
    """
    return top_tokens_many(trace, [node], k=k, normalize=normalize)[0]


def top_tokens_many(trace: Any, nodes: Sequence[str], k: int = 10, normalize: bool = True) -> list[TopTokens]:
    """:func:`top_tokens` of many nodes at once, in their order: the states and their
    predecessors are unembedded together, ``_ROWS`` per matrix product. Each result equals
    ``top_tokens(trace, node, k, normalize)``.

    >>> lens = top_tokens_many(trace, ["I28_5", "I29_5"], k=5)   # doctest: +SKIP
    >>> [t.node for t in lens]                               # doctest: +SKIP
    ['I28_5', 'I29_5']
    """
    k = _k(k)
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    parsed = [_parse_node(trace, node) for node in _names(nodes, "nodes")]
    if not parsed:
        return []
    head = output_head(trace)
    preds = {}  # state -> its predecessor state at the same token, or None
    for kind, layer, token in parsed:
        pred = _predecessor(trace, kind, layer)
        preds[(kind, layer, token)] = None if pred is None else (pred[0], pred[1], token)
    wanted = set(preds) | {p for p in preds.values() if p is not None}
    # Later states first: a node's row comes before its predecessor's, so the predecessor's
    # ranks are read as soon as its logits are there and no logits are kept across chunks.
    order = sorted(wanted, key=lambda s: (-_depth(s[0], s[1]), s[2]))
    waiting: dict[tuple, list] = {}  # predecessor -> the nodes that need ranks in it
    lens: dict[tuple, tuple] = {}  # node -> (ids, logits, probs, ranks)
    prev: dict[tuple, np.ndarray] = {}  # node -> the ranks of its ids in its predecessor
    rows = np.stack([_state_vector(trace, *s) for s in order])
    for start, z_chunk in head.logits_chunks(rows, bool(normalize)):
        for i, z in enumerate(z_chunk):
            s = order[start + i]
            if s in preds:
                ids = _top(z, k)
                lens[s] = (ids, z[ids], _softmax_at(z, ids), _ranks(z, ids))
                if preds[s] is not None:
                    waiting.setdefault(preds[s], []).append(s)
            for node in waiting.pop(s, ()):
                prev[node] = _ranks(z, lens[node][0])
    out = []
    for kind, layer, token in parsed:
        s = (kind, layer, token)
        ids, logits, probs, ranks = lens[s]
        before = prev.get(s)
        items = []
        for i, tok in enumerate(ids.tolist()):
            pr = None if before is None else int(before[i])
            rank = int(ranks[i])
            items.append(TokenScore(head.decode(tok), tok, float(logits[i]), float(probs[i]), rank,
                                    pr, None if pr is None else pr - rank))
        pred = preds[s]
        out.append(TopTokens(
            node=_node_name(kind, layer, token), layer=layer, position=token,
            position_token=str(trace.tokens[token]), normalize=bool(normalize),
            predecessor=_node_name(*pred) if pred else None, tokens=items,
        ))
    return out


# --------------------------------------------------------------------------------------------
# Updates and their direct effects.


def _transform(v: np.ndarray, center: bool, col_scale: np.ndarray | None) -> np.ndarray:
    """A post-branch norm's linear part (centering, then ``col_scale``) on vectors ``[..., d]``."""
    if center:
        v = v - v.mean(axis=-1, keepdims=True)
    if col_scale is not None:
        v = v * col_scale
    return v


def head_output(trace: Any, layer: int, head: int, target: int) -> np.ndarray:
    """Head ``head``'s output at ``target`` in the residual space ``[d]`` float32:
    ``row_scale[t] * T(sum_s A[h,t,s] * values[s, g(h)] @ W_O^h)``, with T the post-branch norm's
    linear part (identity in most models). The heads' outputs and the attention bias sum to the
    attention update.

    >>> head_output(trace, 3, 0, -1).shape                   # doctest: +SKIP
    (576,)
    """
    layer = _layer(trace, layer)
    H = _n_heads(trace)
    head = _index("head", head, H, "heads per layer")
    target = _token(trace, target, "target")
    lb = trace.layers[layer]
    G = lb.values.shape[1]
    g = head // (H // G)
    a = np.asarray(_probs_row(lb, target)[head, : target + 1], dtype=np.float64)
    mixed = a @ np.asarray(lb.values[: target + 1, g, :], dtype=np.float64)  # [d_h]
    out = mixed @ np.asarray(lb.w_o[head], dtype=np.float64)  # [d]
    out = _transform(out, bool(lb.attn_center), lb.attn_col_scale)
    if lb.attn_row_scale is not None:
        out = out * float(lb.attn_row_scale[target])
    return out.astype(np.float32)


def _neuron_vectors(lb: Any, token: int, neurons: np.ndarray) -> np.ndarray:
    """``a_{t,i} * T(w_i)`` for the given neurons: ``[n, d]`` float32."""
    w = np.asarray(lb.w_down[neurons], dtype=np.float32)
    w = _transform(w, bool(lb.ffn_center), lb.ffn_col_scale)
    a = np.asarray(lb.act[token, neurons], dtype=np.float32)
    if lb.ffn_row_scale is not None:
        a = a * np.float32(lb.ffn_row_scale[token])
    return a[:, None] * w


def _check_block(block: Any, head: Any, neuron: Any) -> str:
    if block not in ("attn", "ffn"):
        raise ValueError(f"block must be 'attn' or 'ffn', got {block!r}")
    if head is not None and block != "attn":
        raise ValueError(f"head={head!r} is given with block={block!r}: a head belongs to block='attn'")
    if neuron is not None and block != "ffn":
        raise ValueError(f"neuron={neuron!r} is given with block={block!r}: a neuron belongs to block='ffn'")
    return block


def update_vector(
    trace: Any, layer: int, token: int, block: str = "attn", head: int | None = None,
    neuron: int | None = None,
) -> np.ndarray:
    """An update of the residual stream at ``token`` in ``layer``, ``[d]`` float32: the attention
    block's (heads and bias), one head's, the FFN block's, or one neuron's ``a_{t,i} * w_i``.

    >>> v = update_vector(trace, 3, -1, block="ffn", neuron=17)   # doctest: +SKIP
    """
    block = _check_block(block, head, neuron)
    layer = _layer(trace, layer)
    token = _token(trace, token)
    lb = trace.layers[layer]
    if block == "attn":
        if head is not None:
            return head_output(trace, layer, head, token)
        end = lb.resid_post[token] - lb.ffn_out[token] if lb.parallel else lb.resid_mid[token]
        return (np.asarray(end, np.float64) - lb.resid_pre[token]).astype(np.float32)
    if neuron is not None:
        neuron = _index("neuron", neuron, lb.act.shape[1], "FFN neurons per layer")
        return _neuron_vectors(lb, token, np.array([neuron]))[0]
    return np.asarray(lb.ffn_out[token], dtype=np.float32)


def direct_effect(trace: Any, vectors: np.ndarray, token: int, raw: bool = False) -> np.ndarray:
    """The direct effect on the final logits at ``token`` of update vectors ``[..., d]``:
    ``unembed(gamma * r_t * center(v))`` with the final norm's scale ``r_t`` frozen from the last
    layer's state at ``token`` (``raw=True``: ``unembed(v)``, no norm). ``[..., V]`` float32.

    >>> effect = direct_effect(trace, update_vector(trace, 3, -1), -1)   # doctest: +SKIP
    """
    token = _token(trace, token)
    head = output_head(trace)
    v = np.asarray(vectors, dtype=np.float32)
    return head.project(v if raw else head.frozen(v, token))


def _effects(head: OutputHead, z: np.ndarray, k: int) -> tuple[list[TokenEffect], list[TokenEffect]]:
    up = [TokenEffect(head.decode(i), int(i), float(z[i])) for i in _top(z, k).tolist()]
    down = [TokenEffect(head.decode(i), int(i), float(z[i])) for i in _top(z, k, largest=False).tolist()]
    return up, down


def _effects_many(
    trace: Any, vectors: Sequence[np.ndarray], tokens: Sequence[int], k: int, raw: bool = False,
) -> list[tuple[list[TokenEffect], list[TokenEffect]]]:
    """The k most promoted and suppressed tokens of each update vector ``[d]`` at its token (the
    vectors' :func:`direct_effect`), unembedded ``_ROWS`` per matrix product."""
    if not len(vectors):
        return []
    head = output_head(trace)
    rows = np.stack([np.asarray(v, dtype=np.float32) if raw else head.frozen(v, t)
                     for v, t in zip(vectors, tokens)])
    out = []
    for _, z_chunk in head.project_chunks(rows):
        out.extend(_effects(head, z, k) for z in z_chunk)
    return out


_UPDATE_KEYS = ("layer", "token", "block", "head", "neuron")


def _update_spec(trace: Any, spec: Any) -> tuple[int, int, str, int | None, int | None]:
    """``(layer, token, block, head, neuron)`` of one update of :func:`promoted_many`, checked."""
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(_UPDATE_KEYS))
        if unknown or "layer" not in spec or "token" not in spec:
            raise ValueError(f"an update must have the keys layer, token and optionally block, head, "
                             f"neuron, got {spec!r}")
        args = [spec["layer"], spec["token"], spec.get("block", "attn"), spec.get("head"), spec.get("neuron")]
    elif isinstance(spec, (tuple, list)) and 2 <= len(spec) <= 5:
        args = list(spec) + ["attn", None, None][len(spec) - 2:]
    else:
        raise TypeError(f"an update must be (layer, token[, block[, head[, neuron]]]) or a dict of "
                        f"those, got {spec!r}")
    layer, token, block, head, neuron = args
    block = _check_block(block, head, neuron)
    layer, token = _layer(trace, layer), _token(trace, token)
    if head is not None:
        head = _index("head", head, _n_heads(trace), "heads per layer")
    if neuron is not None:
        neuron = _index("neuron", neuron, trace.layers[layer].act.shape[1], "FFN neurons per layer")
    return layer, token, block, head, neuron


def promoted(
    trace: Any, layer: int, token: int, block: str = "attn", head: int | None = None,
    neuron: int | None = None, k: int = 10, raw: bool = False,
) -> Promoted:
    """The tokens an update promotes and suppresses most at ``token``: the attention block
    (``block="attn"``), one of its heads (``head=h``), the FFN block (``block="ffn"``) or one
    neuron (``neuron=i``, its output ``a_{t,i} * w_i`` so a negative activation flips it).

    Scores are direct effects on the final logits (:func:`direct_effect`); ``raw=True`` projects
    the update through the unembedding without the final norm.

    >>> p = promoted(trace, 20, -1, block="attn", head=3, k=5)   # doctest: +SKIP
    >>> [t.token for t in p.promoted]                        # doctest: +SKIP
    """
    return promoted_many(trace, [(layer, token, block, head, neuron)], k=k, raw=raw)[0]


def promoted_many(trace: Any, updates: Sequence[Any], k: int = 10, raw: bool = False) -> list[Promoted]:
    """:func:`promoted` of many updates at once, in their order, unembedded ``_ROWS`` per matrix
    product. Each update is ``(layer, token[, block[, head[, neuron]]])`` (promoted's arguments
    in order) or a dict with those keys; each result equals the :func:`promoted` call.

    >>> ps = promoted_many(trace, [(20, -1), (20, -1, "attn", 3), {"layer": 5, "token": -1, "block": "ffn"}])  # doctest: +SKIP
    >>> [p.what for p in ps]                                 # doctest: +SKIP
    ['attention block of layer 20', 'head 3 of layer 20', 'FFN block of layer 5']
    """
    k = _k(k)
    specs = [_update_spec(trace, u) for u in _names(updates, "updates")]
    vectors = [update_vector(trace, *spec) for spec in specs]
    found = _effects_many(trace, vectors, [spec[1] for spec in specs], k, raw=bool(raw))
    return [
        Promoted(layer=layer, position=token, position_token=str(trace.tokens[token]), block=block,
                 head=head, neuron=neuron, raw=bool(raw), promoted=up, suppressed=down)
        for (layer, token, block, head, neuron), (up, down) in zip(specs, found)
    ]


# --------------------------------------------------------------------------------------------
# Heads.


def _edge(trace: Any, layer: Any, target: Any, source: Any) -> tuple[int, int, int]:
    layer = _layer(trace, layer)
    target = _token(trace, target, "target")
    source = _token(trace, source, "source")
    if source > target:
        raise ValueError(
            f"source={source} comes after target={target}: attention only reads earlier tokens "
            "(source <= target)"
        )
    return layer, target, source


def head_shares(trace: Any, layer: int, target: int, source: int) -> np.ndarray:
    """Each head's share ``[H]`` (head order) of the attention edge ``source -> target`` of
    ``layer``; the shares sum to the edge's weight before any threshold.

    >>> trace.head_shares(5, -1, 0).argmax()                 # doctest: +SKIP
    """
    layer, target, source = _edge(trace, layer, target, source)
    return edge_head_shares(trace, layer, target, source)


def edge_heads(trace: Any, layer: int, target: int, source: int) -> EdgeHeads:
    """Every head's share of the attention edge ``source -> target`` of ``layer``, largest first.

    >>> eh = edge_heads(trace, 5, -1, 0)                     # doctest: +SKIP
    >>> eh.heads[0].head, eh.heads[0].share                  # doctest: +SKIP
    """
    layer, target, source = _edge(trace, layer, target, source)
    full = attribute(trace)
    shares = edge_head_shares(trace, layer, target, source)
    order = np.argsort(-shares, kind="stable")
    weight = (full.layer_dense(layer)[1][target, source] if full.dense_fits()
              else full.edges[layer].lookup([target], [source])[0])
    if not full.dense_fits() and weight == 0:  # below the floor: the heads' shares are exact
        weight = shares.astype(np.float64).sum()
    return EdgeHeads(
        layer=layer, target=target, source=source, target_token=str(trace.tokens[target]),
        source_token=str(trace.tokens[source]), weight=float(weight),
        heads=[HeadShare(int(h), float(shares[h])) for h in order],
    )


def head_view(trace: Any, layer: int, head: int, target: int | None = None, k: int = 10) -> HeadView:
    """One head of ``layer``: its contribution map and attention pattern ``[T, T]``, its output
    vector at ``target`` (default: the last token) and the k tokens it promotes and suppresses
    there.

    >>> hv = head_view(trace, 5, 2)                          # doctest: +SKIP
    >>> hv.contribution.shape, hv.promoted.promoted[0].token # doctest: +SKIP
    """
    return head_view_many(trace, [(layer, head, target)], k=k)[0]


def head_view_many(trace: Any, heads: Sequence[Any], k: int = 10) -> list[HeadView]:
    """:func:`head_view` of many heads at once, in their order: each is ``(layer, head)`` or
    ``(layer, head, target)``; their outputs are unembedded ``_ROWS`` per matrix product. Each
    result equals the :func:`head_view` call.

    >>> hvs = head_view_many(trace, [(5, 2), (5, 3, 4)])     # doctest: +SKIP
    """
    k = _k(k)
    specs = []
    for item in _names(heads, "heads"):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"a head must be (layer, head) or (layer, head, target), got {item!r}")
        layer, head, target = (list(item) + [None])[:3]
        layer = _layer(trace, layer)
        head = _index("head", head, _n_heads(trace), "heads per layer")
        target = len(trace.token_ids) - 1 if target is None else _token(trace, target, "target")
        specs.append((layer, head, target))
    outs = [head_output(trace, layer, head, target) for layer, head, target in specs]
    found = _effects_many(trace, outs, [spec[2] for spec in specs], k)
    views = []
    for (layer, head, target), out, (up, down) in zip(specs, outs, found):
        lb = trace.layers[layer]
        prom = Promoted(layer, target, str(trace.tokens[target]), "attn", head, None, False, up, down)
        views.append(HeadView(
            layer=layer, head=head, target=target, target_token=str(trace.tokens[target]),
            tokens=[str(t) for t in trace.tokens], contribution=_head_contribution(trace, layer, head),
            pattern=np.tril(np.asarray(_probs_head(lb, head), dtype=np.float32)), output=out, promoted=prom,
        ))
    return views


def head_map(trace: Any, layer: int, head: int) -> np.ndarray:
    """One head's contribution map ``[T, T]`` recomputed in the C core from the kept normalisers
    (equal to ``attribute(trace).heads[layer, head]``).

    >>> head_map(trace, 5, 2).shape                          # doctest: +SKIP
    """
    layer = _layer(trace, layer)
    head = _index("head", head, _n_heads(trace), "heads per layer")
    return _head_map(trace, attribute(trace), layer, head)


# --------------------------------------------------------------------------------------------
# Neurons.


def _neuron_contrib(trace: Any, layer: int, token: int) -> dict[str, np.ndarray]:
    """The C core's neuron decomposition of the FFN output state at one token. In a parallel
    layer the FFN output is one part of the layer output; the other parts (input, attention,
    biases) are lumped into the residual."""
    lb = trace.layers[layer]
    whole = lb.resid_post[token : token + 1]
    if lb.parallel:
        resid = (np.asarray(whole, np.float64) - lb.ffn_out[token : token + 1]).astype(np.float32)
    else:
        resid = lb.resid_mid[token : token + 1]
    bias = lb.ffn_bias
    if bias is not None and np.ndim(bias) == 2:
        bias = bias[token : token + 1]
    rs = lb.ffn_row_scale[token : token + 1] if lb.ffn_row_scale is not None else None
    return attribution.ffn_neuron_contrib(
        lb.act[token : token + 1], lb.w_down, resid, whole, bias=bias, row_scale=rs,
        col_scale=lb.ffn_col_scale, center=bool(lb.ffn_center),
    )


def neuron_shares(trace: Any, layer: int, token: int) -> np.ndarray:
    """Each neuron's share ``[F]`` of the FFN output state ``I{layer}_token``; with the residual's
    and the bias's shares they sum to 1.

    >>> trace.neuron_shares(5, -1).argmax()                  # doctest: +SKIP
    """
    layer, token = _layer(trace, layer), _token(trace, token)
    return _neuron_contrib(trace, layer, token)["neurons"][0]


def top_neurons(trace: Any, layer: int, token: int, k: int = 10, k_tokens: int = 5) -> TopNeurons:
    """The k neurons with the largest shares in the FFN node ``M{layer}_token``, each with its
    activation, share and the ``k_tokens`` tokens its output promotes and suppresses.

    >>> tn = top_neurons(trace, 5, -1, k=5)                  # doctest: +SKIP
    >>> tn.neurons[0].neuron, tn.neurons[0].share            # doctest: +SKIP
    """
    return top_neurons_many(trace, [(layer, token)], k=k, k_tokens=k_tokens)[0]


def top_neurons_many(trace: Any, nodes: Sequence[Any], k: int = 10, k_tokens: int = 5) -> list[TopNeurons]:
    """:func:`top_neurons` of many FFN nodes ``(layer, token)`` at once, in their order: every
    chosen neuron's output is unembedded together, ``_ROWS`` per matrix product. Each result
    equals the :func:`top_neurons` call.

    >>> tns = top_neurons_many(trace, [(5, -1), (6, -1)], k=5)   # doctest: +SKIP
    """
    k, k_tokens = _k(k), _k(k_tokens, "k_tokens")
    found = []  # (layer, token, decomposition, chosen neurons)
    vectors, tokens = [], []
    for item in _names(nodes, "nodes"):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"an FFN node must be (layer, token), got {item!r}")
        layer, token = _layer(trace, item[0]), _token(trace, item[1])
        out = _neuron_contrib(trace, layer, token)
        idx = _top(out["neurons"][0], k)
        found.append((layer, token, out, idx))
        vectors.extend(_neuron_vectors(trace.layers[layer], token, idx))
        tokens.extend([token] * len(idx))
    effects = iter(_effects_many(trace, vectors, tokens, k_tokens))
    results = []
    for layer, token, out, idx in found:
        lb, shares = trace.layers[layer], out["neurons"][0]
        neurons = []
        for i in idx.tolist():
            up, down = next(effects)
            neurons.append(NeuronScore(int(i), float(lb.act[token, i]), float(shares[i]), up, down))
        results.append(TopNeurons(
            layer=layer, position=token, position_token=str(trace.tokens[token]),
            resid_share=float(out["resid"][0]), bias_share=float(out["bias"][0]), neurons=neurons,
        ))
    return results
