"""The model's unembedding as one object: OPT's project_out, lm_head (logit scale folded in), its bias and the final logit softcap.

:meth:`ltt.models.Model.unembedding_head` builds it from the model's own modules and caches it
while the weights stay float32 on the CPU (the rules of ``Model._cached``); ``Model.unembed``,
``Model.unembedding`` and the interpret layer's output head all project through it, so logits
are computed one way only.

>>> unembed = model.unembedding_head()                    # doctest: +SKIP
>>> logits = unembed(model.final_norm(trace.layers[-1].resid_post[-1]))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

__all__ = ["ROWS", "Unembedding"]

# Rows per unembedding product. Every product has exactly this many rows (the last chunk is
# padded with zeros): MKL's GEMM rounds a row's logits differently for different row counts
# (one row, a few, sixteen or more), so a fixed shape is what makes a vector's logits, and every
# answer built on them, independent of what it is batched with. It also bounds the memory of a
# batch to ``ROWS x V`` logits at a time. 32 rows: one click pays for a 32-row product (a few
# times a one-row one), and a report's thousands of rows run at most of the GEMM's full speed.
ROWS = 32


def _cpu32(p: Any) -> Any:
    """A parameter as a float32 CPU torch tensor (the parameter's own storage when it already is)."""
    import torch

    if p.device.type == "meta":
        raise ValueError("the unembedding weights are offloaded (meta device): load the model "
                         "without disk offload")
    return p.detach().to(device="cpu", dtype=torch.float32)


@dataclass(frozen=True, eq=False)
class Unembedding:
    """The map from (normalised) residual states to logits, in torch on float32 CPU weights:
    ``pre [d', d]`` (OPT's project_out, or None), ``weight [V, d']`` (lm_head times the family's
    logit scale), ``bias [V]`` NumPy float32 or None (also scaled), ``softcap`` (the final logit
    softcapping, or None). One ``linear`` over a block of :data:`ROWS` vectors stays fast for a
    batch where a small NumPy GEMM does not.

    >>> u = model.unembedding_head()                       # doctest: +SKIP
    >>> u(np.zeros((2, model.d_model), np.float32)).shape  # doctest: +SKIP
    (2, 49152)
    """

    pre: Any
    weight: Any
    bias: np.ndarray | None
    softcap: float | None

    @classmethod
    def of(cls, lm_head: Any, pre: Any = None, logit_scale: float = 1.0,
           softcap: float | None = None) -> "Unembedding":
        """The unembedding of an ``lm_head`` module (``pre``: a linear module applied first, OPT's
        project_out). ``logit_scale`` (Cohere, Granite) is folded into a copy of the weight and bias.

        >>> u = Unembedding.of(hf.get_output_embeddings())    # doctest: +SKIP
        """
        scale = float(logit_scale)
        w = _cpu32(lm_head.weight)
        b = getattr(lm_head, "bias", None)
        b = None if b is None else _cpu32(b).numpy()
        if scale != 1.0:
            w = w * scale
            b = None if b is None else b * np.float32(scale)
        return cls(None if pre is None else _cpu32(pre.weight), w, b, softcap or None)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def matrix(self) -> np.ndarray:
        """``[d', V]`` float32: lm_head as a map from states (after ``pre``) to logits, before the
        bias and softcap; a view of the weight when it is float32 on the CPU."""
        return self.weight.numpy().T

    def project_chunks(self, z: np.ndarray, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Unembed vectors ``z [N, d]`` without the bias or softcap, :data:`ROWS` of them per
        product: yields ``(start, logits [n, V] float32)`` for rows ``start .. start + n``. Each
        product has exactly ``ROWS`` rows (zeros pad the last), so a row's logits never depend
        on the other rows. ``rows`` asks for another fixed block (:class:`ltt.interpret.OutputHead`
        uses a larger one for large batches where it checked that rows come out the same).

        >>> for start, logits in u.project_chunks(states): ...   # doctest: +SKIP
        """
        import torch
        from torch.nn.functional import linear

        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2:
            raise ValueError(f"z must be [N, d], got shape {z.shape}")
        rows = ROWS if rows is None else int(rows)
        with torch.no_grad():
            for start in range(0, z.shape[0], rows):
                n = min(rows, z.shape[0] - start)
                x = torch.zeros((rows, z.shape[1]), dtype=torch.float32)
                x[:n] = torch.from_numpy(z[start : start + n])
                if self.pre is not None:
                    x = linear(x, self.pre)
                yield start, linear(x, self.weight)[:n].numpy()

    def project(self, z: np.ndarray) -> np.ndarray:
        """Unembed vectors ``z [..., d]`` without the bias or softcap: ``[..., V]`` float32.

        >>> u.project(update).shape                           # doctest: +SKIP
        """
        z = np.asarray(z, dtype=np.float32)
        flat = z.reshape(-1, z.shape[-1])
        out = np.empty((flat.shape[0], self.vocab_size), np.float32)
        for start, chunk in self.project_chunks(flat):
            out[start : start + chunk.shape[0]] = chunk
        return out.reshape(z.shape[:-1] + (self.vocab_size,))

    def finish(self, logits: np.ndarray, softcap: bool = True) -> np.ndarray:
        """lm_head's bias, and with ``softcap`` any final softcap, on projected states.

        >>> u.finish(u.project(x)).shape == u(x).shape        # doctest: +SKIP
        True
        """
        out = logits if self.bias is None else logits + self.bias
        if softcap and self.softcap:
            out = np.tanh(out / self.softcap) * self.softcap
        return out

    def __call__(self, x: np.ndarray, softcap: bool = True) -> np.ndarray:
        """Logits ``[..., V]`` float32 of states ``x [..., d]``: projection, bias, softcap."""
        return self.finish(self.project(x), softcap).astype(np.float32, copy=False)
