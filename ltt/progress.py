"""ltt's own progress bars and the one rule for when they stay quiet (``LTT_QUIET``, or no terminal).

A bar shows on stderr when it is a terminal; setting ``LTT_QUIET`` (any non-empty value) keeps
every ltt bar and notice off, whatever stderr is. Callers that take a ``progress`` option pass
it as ``show`` (True or False decides; None follows the rule). Depends on nothing else of ltt.

>>> import os; os.environ["LTT_QUIET"] = "1"
>>> quiet(), bar(10, "tracing prompts", "prompt") is None
(True, True)
"""

from __future__ import annotations

import sys
from typing import Any


def quiet_requested() -> bool:
    """Whether ``LTT_QUIET`` is set (to anything but the empty string), read now.

    >>> quiet_requested()                  # doctest: +SKIP
    False
    """
    from ltt import config

    return config.quiet()


def _in_notebook() -> bool:
    """Whether this process is a running Jupyter kernel (an IPython shell over ZMQ)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def quiet() -> bool:
    """Whether ltt's progress bars stay off: ``LTT_QUIET`` is set, or stderr is not a terminal
    (a log file, a pipe, a captured stream) outside a Jupyter kernel.

    >>> quiet()                            # doctest: +SKIP
    True
    """
    if quiet_requested():
        return True
    if _in_notebook():  # tqdm.auto draws its bars as widgets there
        return False
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced by an object without isatty, or closed
        return True


def bar(total: int | None, desc: str, unit: str, *, leave: bool = True, show: Any = None) -> Any:
    """A tqdm bar of ``total`` steps on stderr, or None when it stays off: ``show`` decides when
    given (any true value shows it), else :func:`quiet` does. The caller closes it.

    >>> b = bar(30, "tracing 4096 tokens", "layer", leave=False)   # doctest: +SKIP
    >>> b.update(1); b.close()                                    # doctest: +SKIP
    """
    if not (show if show is not None else not quiet()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave)
