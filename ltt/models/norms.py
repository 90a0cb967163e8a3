"""The norms of a decomposition as NumPy: a norm's parameters, a branch multiplier, a frozen final norm.

:class:`NormParams` applies a LayerNorm or RMSNorm and gives its per-state scale (a post-branch
norm's scale is frozen from the forward pass, which makes the norm linear in its input);
:class:`BranchScale` is a constant branch multiplier in the same interface; :class:`FrozenNorm`
is the final norm linearised at given states, for direct effects on the logits.

>>> p = NormParams("rms", None, None, 1e-6)
>>> p(np.ones((2, 4), dtype=np.float32)).shape
(2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ltt.models.weights import _bias, _param_numpy


@dataclass
class NormParams:
    """A LayerNorm (``kind="layer"``) or RMSNorm (``kind="rms"``): effective gamma, beta, eps."""

    kind: str
    gamma: np.ndarray | None
    beta: np.ndarray | None
    eps: float

    @classmethod
    def of(cls, module: Any, offset: float = 0.0, kind: str | None = None,
           eps: float | None = None) -> "NormParams":
        """The parameters of a norm module; ``kind`` ("layer"/"rms") and ``eps`` override what
        its type and attributes say (a family's own LayerNorm class, a hard-coded epsilon)."""
        import torch

        if kind is None:
            kind = "layer" if isinstance(module, torch.nn.LayerNorm) else "rms"
        for key in ("eps", "variance_epsilon", "epsilon"):
            if getattr(module, key, None) is not None:
                eps = float(getattr(module, key))
                break
        if eps is None:
            raise ValueError(f"cannot find the epsilon of norm module {type(module).__name__}")
        w = getattr(module, "weight", None)
        gamma = None if w is None else _param_numpy(w).astype(np.float32) + np.float32(offset)
        beta = _bias(module) if kind == "layer" else None
        return cls(kind, gamma, beta, eps)

    def scale(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-row ``(1/rms or 1/std, mean or None)`` of ``x [..., d]``, in float64."""
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "layer":
            mean = x.mean(axis=-1)
            var = ((x - mean[..., None]) ** 2).mean(axis=-1)
            return 1.0 / np.sqrt(var + self.eps), mean
        return 1.0 / np.sqrt((x * x).mean(axis=-1) + self.eps), None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        r, mean = self.scale(x)
        y = np.asarray(x, dtype=np.float64)
        if mean is not None:
            y = y - mean[..., None]
        y = y * r[..., None]
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y.astype(np.float32)


@dataclass
class BranchScale:
    """A constant multiplier on a branch before the residual add (Granite's
    ``residual_multiplier``), in :class:`NormParams`' interface: each part of the branch is
    scaled by it, as a post-branch norm's frozen scale would be."""

    value: float
    kind: str = "scale"
    gamma: None = None
    beta: None = None

    def scale(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return np.full(np.shape(x)[:-1], self.value, dtype=np.float64), None


@dataclass
class FrozenNorm:
    """A norm linearised at given states: ``norm(x) ~ gamma * scale * (x - center?) + beta``
    with ``scale`` (and ``mean``) frozen per state, so the direct effect of an update ``u`` is
    :meth:`linear` ``(u)`` (centred for a LayerNorm).

    >>> fz = model.final_norm_scale(trace.layers[-1].resid_post)      # doctest: +SKIP
    >>> fz.linear(update).shape                                        # doctest: +SKIP
    """

    kind: str  # "rms" or "layer"
    scale: np.ndarray  # [...] 1/rms (RMSNorm) or 1/std (LayerNorm) per state
    mean: np.ndarray | None  # [...] per-state mean (LayerNorm)
    gamma: np.ndarray | None  # [d] effective weight (Gemma: 1 + weight)
    beta: np.ndarray | None  # [d]
    center: bool

    def linear(self, update: np.ndarray) -> np.ndarray:
        """The frozen norm's linear part applied to ``update [..., d]`` (no beta), float32."""
        u = np.asarray(update, dtype=np.float64)
        if self.center:
            u = u - u.mean(axis=-1, keepdims=True)
        u = u * np.asarray(self.scale)[..., None]
        if self.gamma is not None:
            u = u * self.gamma
        return u.astype(np.float32)
