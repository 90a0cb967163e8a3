"""Slow NumPy twins of every ``ltt._core`` entry point: the test oracle and the documented semantics.

Each function here has the same name and signature as its C counterpart and is written for
clarity, in float64, with no attempt at speed. The tests compare the C core against these
functions over a seeded zoo of inputs; when the two disagree, this file says what is meant.

Conventions shared by every function:

* ``norm`` is 1 (L1, the method's default) or 2 (L2).
* ``EPS`` is the floor of a raw contribution: ``raw = max(||w|| - ||w - p||, EPS)``.
* Shares are ``raw / Z`` where ``Z`` is the sum of the raws of every part of the same whole.
  Masked (future, ``s > t``) attention positions are not parts: no raw, no EPS share.
* Outputs are float32 shares; normalisers ``Z`` are float64.

The twins live in two modules, :mod:`ltt._reference.dense` and :mod:`ltt._reference.sparse`;
every name is re-exported here (``from ltt import _reference; _reference.prune``).
``KERNELS`` names the twins of the C entry points, in one place: the tests derive their kernel
lists from it.
"""

from __future__ import annotations

from ltt._reference import dense, sparse
from ltt._reference.dense import (
    EPS,
    attn_contrib,
    attn_edge_heads,
    attn_head_map,
    contributions,
    ffn_neuron_contrib,
    head_vectors,
    probe_check,
    prune,
    renormalize,
)
from ltt._reference.sparse import densify, prune_sparse, renormalize_sparse, sparsify

# The twins of the C entry points of ltt._core (and of ltt.kernels): dense ones take dense
# arrays, sparse ones sparse rows (indptr, sources, ...).
DENSE_KERNELS = dense.KERNELS
SPARSE_KERNELS = sparse.KERNELS
KERNELS = DENSE_KERNELS + SPARSE_KERNELS

__all__ = [*KERNELS, "EPS", "head_vectors", "sparsify", "densify", "KERNELS", "DENSE_KERNELS", "SPARSE_KERNELS"]
