"""The interpret layer's result objects: small dataclasses with a plain dict, a DataFrame and a notebook repr.

Every answer of :mod:`ltt.interpret` is one of these (``TopTokens``, ``Promoted``, ``EdgeHeads``,
``HeadView``, ``TopNeurons`` and their rows ``TokenScore``, ``TokenEffect``, ``HeadShare``,
``NeuronScore``): ``to_dict()`` gives JSON-ready data, ``to_pandas()`` a table, and the repr a
readable one in a terminal or a notebook.

>>> trace.top_tokens("I29_5", k=3).to_dict()["tokens"][0]["token"]   # doctest: +SKIP
' Paris'
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from ltt.checks import is_int


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
    if is_int(value):
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


class _Table(_Result):
    """A result that is a header (its other fields, in :meth:`title`) over one table row per
    item of its list field named by ``_items``: each row the item's fields as they are."""

    _items: ClassVar[str]

    def rows(self) -> list[dict[str, Any]]:
        return [{f.name: getattr(item, f.name) for f in fields(item)} for item in getattr(self, self._items)]


@dataclass(repr=False)
class HeadShare(_Result):
    """One head's share of an attention edge."""

    head: int
    share: float


@dataclass(repr=False)
class EdgeHeads(_Table):
    """Every head's share of the attention edge ``source -> target`` in ``layer``, largest first;
    the shares sum to the edge's weight (its share of the target state before any threshold)."""

    _items = "heads"
    layer: int
    target: int
    source: int
    target_token: str
    source_token: str
    weight: float
    heads: list[HeadShare] = field(default_factory=list)

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
class TopNeurons(_Table):
    """The top-k neurons of an FFN node by contribution share, with the state's other shares."""

    _items = "neurons"
    layer: int
    position: int
    position_token: str
    resid_share: float
    bias_share: float
    neurons: list[NeuronScore] = field(default_factory=list)

    def to_pandas(self):
        frame = super().to_pandas()
        for col in ("promoted", "suppressed"):
            frame[col] = [[t["token"] for t in items] for items in frame[col]]
        return frame

    def title(self) -> str:
        return (f"top neurons of M{self.layer}_{self.position} (token {self.position_token!r}; "
                f"residual share {self.resid_share:.4g}, bias share {self.bias_share:.4g})")
