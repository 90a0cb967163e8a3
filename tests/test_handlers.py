"""The keep masks of ltt/models/handlers.py: which parts act in each batch row of an
intervened run (row 0 the full model, then one row per PartSet)."""

import numpy as np

from ltt.interventions import PartSet
from ltt.models.handlers import _keep


def test_keep_masks_of_kept_and_removed_part_sets():
    T = 4
    only = PartSet({1: (np.array([3, 2]), np.array([0, 2]))}, {1: np.array([3])}, only=True)
    removed = PartSet({1: (np.array([3]), np.array([1]))}, {0: np.array([0, 2])}, only=False)
    empty = PartSet({}, {}, only=True)
    rows = [only, removed, empty]
    attn = _keep(rows, lambda r: r.edges.get(1), (T, T))
    assert attn.shape == (4, T, T) and attn.dtype == np.float32
    assert (attn[0] == 1).all()  # row 0: the full model
    want = np.zeros((T, T), np.float32)
    want[3, 0] = want[2, 2] = 1  # exactly the listed edges act
    assert np.array_equal(attn[1], want)
    want = np.ones((T, T), np.float32)
    want[3, 1] = 0  # every edge but the listed one acts
    assert np.array_equal(attn[2], want)
    assert (attn[3] == 0).all()  # only=True with nothing listed: every edge removed
    ffn0 = _keep(rows, lambda r: r.ffn.get(0), (T,))
    ffn1 = _keep(rows, lambda r: r.ffn.get(1), (T,))
    assert np.array_equal(ffn0, [[1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    assert np.array_equal(ffn1, [[1, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
