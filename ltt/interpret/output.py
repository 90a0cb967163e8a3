"""The output head every interpret answer reads through: the final norm frozen at a trace's tokens, the model's unembedding, top-k and token decoding.

>>> head = output_head(trace)                            # doctest: +SKIP
>>> int(head.logits(trace.layers[-1].resid_post[-1]).argmax()) == int(trace.logits.argmax())  # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator

import numpy as np

from ltt.checks import ModelNeeded


#: rows per unembedding product for a batch of at least this many vectors, where that product
#: gives every row the same bits as :data:`ltt.models.unembedding.ROWS`-row products (checked
#: once per head on random rows; else the batch keeps ROWS-row products). 32-row products read
#: the whole unembedding matrix for few rows: 128 rows cost about half as much per row.
BIG_ROWS = 128
MAX_BLOCK_BYTES = 64 << 20  # a block's logits; a larger vocabulary keeps ROWS-row products


class OutputHead:
    """The final norm and unembedding of a trace's model, as used by every answer here.

    The final norm comes from :class:`ltt.models.Model` (``final_norm``, ``final_norm_scale``),
    frozen once at every token of the trace. The unembedding is the model's own
    (:meth:`ltt.models.Model.unembedding_head`: OPT's project_out, lm_head, its bias, any final
    softcap), asked for on each projection so it follows the model's cache rules: kept while the
    weights are float32 on the CPU, converted per use for half-precision models.

    >>> head = OutputHead(trace)                            # doctest: +SKIP
    >>> head.project(trace.layers[-1].resid_post[-1]).shape  # doctest: +SKIP
    """

    def __init__(self, trace: Any):
        model = trace.model
        if model is None:
            saved = "; reopen with ltt.load_trace(path, model=model)" if getattr(trace, "model_name", None) else ""
            raise ModelNeeded("this trace has no model attached (trace.model is None): interpretation "
                              f"needs the model's final norm and unembedding{saved}")
        self.model = model
        self.tokenizer = getattr(model, "tokenizer", None)
        self.frozen_norm = model.final_norm_scale(trace.layers[-1].resid_post)  # scale [T]
        self._decoded: dict[int, str] = {}
        self._big_rows_same: dict[int, bool] = {}  # ROWS -> BIG_ROWS-row products give the same bits

    @property
    def unembedding(self) -> Any:
        """The model's :class:`ltt.models.unembedding.Unembedding`."""
        return self.model.unembedding_head()

    @property
    def vocab_size(self) -> int:
        return int(self.model.vocab_size)

    @property
    def bias(self) -> np.ndarray:
        """lm_head's bias ``[V]`` float32 (zeros when it has none)."""
        b = self.unembedding.bias
        return np.zeros(self.vocab_size, np.float32) if b is None else b

    def project_chunks(self, z: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Unembed vectors ``z [N, d]`` without lm_head's bias or softcap, in fixed blocks of rows
        (:meth:`ltt.models.unembedding.Unembedding.project_chunks`): yields ``(start, logits
        [n, V] float32)``; a row's logits never depend on the other rows."""
        unembedding = self.unembedding
        return unembedding.project_chunks(z, self._rows(unembedding, len(z)))

    def _rows(self, unembedding: Any, n: int) -> int | None:
        """Rows per product for ``n`` vectors: :data:`BIG_ROWS` for a large batch where those
        products were found to give each row the bits of ``ROWS``-row ones, else None (ROWS)."""
        if n < BIG_ROWS or BIG_ROWS * self.vocab_size * 4 > MAX_BLOCK_BYTES:
            return None
        from ltt.models.unembedding import ROWS  # read now (tests change it)

        if ROWS not in self._big_rows_same:
            d = int((unembedding.pre if unembedding.pre is not None else unembedding.weight).shape[1])
            x = np.random.default_rng(0).standard_normal((BIG_ROWS, d)).astype(np.float32)
            big = np.concatenate([c for _, c in unembedding.project_chunks(x, BIG_ROWS)])
            small = np.concatenate([c for _, c in unembedding.project_chunks(x, ROWS)])
            self._big_rows_same[ROWS] = bool(np.array_equal(big, small))
        return BIG_ROWS if self._big_rows_same[ROWS] else None

    def project(self, z: np.ndarray) -> np.ndarray:
        """Unembed vectors ``z [..., d]`` without lm_head's bias or softcap: ``[..., V]`` float32."""
        return self.unembedding.project(z)

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
        """:meth:`logits` of states ``x [N, d]``, a block of rows at a time: yields ``(start,
        logits [n, V])`` (see :meth:`project_chunks`)."""
        z = self.model.final_norm(x) if normalize else np.asarray(x, dtype=np.float32)
        unembedding = self.unembedding
        for start, chunk in unembedding.project_chunks(z, self._rows(unembedding, len(z))):
            yield start, unembedding.finish(chunk, normalize)

    def finish(self, out: np.ndarray, normalize: bool) -> np.ndarray:
        """lm_head's bias, and with ``normalize`` any final softcap, on projected states."""
        return self.unembedding.finish(out, softcap=normalize)

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


def output_head(trace: Any) -> OutputHead:
    """The :class:`OutputHead` of a trace, built once and kept in the trace's ``output_head`` field.

    >>> head = output_head(trace)                            # doctest: +SKIP
    >>> int(head.logits(trace.layers[-1].resid_post[-1]).argmax()) == int(trace.logits.argmax())  # doctest: +SKIP
    True
    """
    head = trace.output_head
    if head is None:
        head = OutputHead(trace)
        trace.output_head = head
    return head


def _top(z: np.ndarray, k: int, largest: bool = True) -> np.ndarray:
    """Indices of the k largest (or smallest) entries of ``z [V]``, in order."""
    k = min(k, z.shape[-1])
    v = -z if largest else z
    idx = np.argpartition(v, k - 1)[:k] if k < z.shape[-1] else np.arange(z.shape[-1])
    return idx[np.argsort(v[idx], kind="stable")]
