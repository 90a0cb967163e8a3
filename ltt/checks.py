"""Argument checks of the graph settings: each returns the clean value or raises naming the argument and its value.

One function per argument, shared by :class:`ltt.graph.GraphSettings` (which validates a
graph's settings once), the C core's wrappers, the widget and the command line, so that a bad
``threshold``, ``renormalize``, ``targets`` or ``norm`` is refused with the same words wherever
it is given.

>>> check_threshold(0.04), check_norm(2), check_targets([-1, 3]), resolve_targets([-1], 5)
(0.04, 2, (-1, 3), [4])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Sequence

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "ModelNeeded", "is_int", "check_threshold", "check_renormalize", "check_norm", "check_targets",
           "resolve_targets"]

#: The default pruning threshold tau of every graph (the method's choice, DESIGN.md): the one
#: value behind ``trace.graph``, the widget, the report, ``ltt.diff``, the routes and the CLI.
DEFAULT_THRESHOLD = 0.04

#: What ``targets=`` may be in every graph signature: token positions (one or a list), ``"all"``,
#: or None for the last position (:func:`check_targets` reads it).
Targets = Sequence[int] | str | int | None


class ModelNeeded(ValueError):
    """An operation that needs the model (its weights, or the layer buffers recorded with it)
    asked of a trace that has none, such as one reopened by :func:`ltt.load_trace` without
    ``model=``."""


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python's or NumPy's) and not a bool: ``True`` is an int
    to Python, never a count or a position to ltt.

    >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(np.True_), is_int(3.0)
    (True, True, False, False, False)
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a float in ``[0, 1)``, or a TypeError/ValueError naming it.

    >>> check_threshold(1)
    Traceback (most recent call last):
    ValueError: threshold must be in [0, 1), got 1
    """
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(
        threshold, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"threshold must be a number in [0, 1), got {type(threshold).__name__} {threshold!r}")
    t = float(threshold)
    if not 0.0 <= t < 1.0:  # NaN fails this too
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    return t


def check_renormalize(renormalize: Any) -> bool:
    """``renormalize`` as a bool: only True or False (NumPy's included) are accepted.

    >>> check_renormalize(np.True_)
    True
    """
    if not isinstance(renormalize, (bool, np.bool_)):
        raise TypeError(f"renormalize must be True or False, got {renormalize!r}")
    return bool(renormalize)


def check_norm(norm: Any) -> int:
    """``norm`` as the int 1 or 2: a float or bool (equal to 1, and a cache key of 1) is a TypeError.

    >>> check_norm(1.0)
    Traceback (most recent call last):
    TypeError: norm must be the int 1 or 2, got float 1.0
    """
    if not is_int(norm):
        raise TypeError(f"norm must be the int 1 or 2, got {type(norm).__name__} {norm!r}")
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm!r}")
    return int(norm)


def check_targets(targets: Any) -> tuple[int, ...] | str | None:
    """``targets`` checked without a prompt: None (the last token), ``"all"``, or a non-empty
    tuple of int positions as given (negative counts from the end); :func:`resolve_targets`
    checks them against a prompt's length.

    >>> check_targets(3), check_targets("all"), check_targets(None)
    ((3,), 'all', None)
    """
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets must be a list of token positions or 'all', got {targets!r}")
        return "all"
    if isinstance(targets, (bool, np.bool_, Mapping)) or not (is_int(targets) or isinstance(targets, Iterable)):
        # issue 11: a dict passed its keys as positions, True passed as token 1
        raise TypeError(f"targets must be an int, a list of int token positions or 'all', got "
                        f"{type(targets).__name__} {targets!r}"[:300])
    if is_int(targets):
        targets = [targets]
    out: list[int] = []
    for t in targets:
        if not is_int(t):
            raise TypeError(f"targets must hold integer token positions, got {t!r}")
        out.append(int(t))
    if not out:
        raise ValueError("targets is empty: give at least one token position")
    return tuple(out)


def resolve_targets(targets: Targets, n_tokens: int) -> list[int]:
    """Token positions from ``targets`` (as :func:`check_targets` takes them) in a prompt of
    ``n_tokens``: sorted, without repeats; out-of-range positions raise a ValueError naming them.

    >>> resolve_targets(None, 4), resolve_targets([-1, 0, 3], 4), resolve_targets("all", 2)
    ([3], [0, 3], [0, 1])
    """
    given = check_targets(targets)
    if given is None:
        return [n_tokens - 1]
    if given == "all":
        return list(range(n_tokens))
    out: list[int] = []
    for t in given:
        p = t + n_tokens if t < 0 else t
        if not 0 <= p < n_tokens:
            raise ValueError(f"targets holds {t}, outside the {n_tokens} tokens of the prompt")
        if p not in out:
            out.append(p)
    return sorted(out)
