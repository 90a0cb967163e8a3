"""ltt: see how information flows through a Hugging Face causal LM, exactly, from a C core.

>>> import ltt
>>> float(ltt.contributions([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0]).sum())
1.0

Model loading (``ltt.load``) imports torch and transformers on first use only.
"""

from __future__ import annotations


def _load_core():
    try:
        from ltt import _core
    except ImportError as exc:
        if "scipy_openblas" not in str(exc):
            raise
        # The extension's run path finds OpenBLAS beside an installed wheel; an editable
        # install (extension in the source tree) loads it from the scipy_openblas32 package.
        import ctypes
        import os

        import scipy_openblas32

        lib = os.path.join(scipy_openblas32.get_lib_dir(), "lib" + scipy_openblas32.get_library() + ".so")
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        from ltt import _core
    return _core


try:
        _core = _load_core()
except ImportError as exc:  # pragma: no cover - exercised only on a broken build
    raise ImportError(
        "ltt's C extension (ltt._core) is not built or failed to load: "
        f"{exc}.\nBuild it from the source tree with `pip install -e .` "
        "(or `make test`, which creates a virtual environment and installs everything)."
    ) from exc

from ltt.attribution import contributions, get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["contributions", "set_num_threads", "get_num_threads", "load", "diff", "Graph", "GraphWidget", "DiffWidget", "RouteSet", "Trace", "__version__"]


def __getattr__(name: str):
    # Heavy modules (torch, transformers) load only when a model is asked for.
    if name == "load":
        from ltt.models import load

        return load
    if name == "Trace":
        from ltt.trace import Trace

        return Trace
    if name == "Graph":
        from ltt.graph import Graph

        return Graph
    if name == "GraphWidget":  # anywidget is imported only when the widget is asked for
        from ltt.widget import GraphWidget

        return GraphWidget
    if name == "DiffWidget":  # two traces' graphs side by side, the changes of ltt.diff marked
        from ltt.widget.diff import DiffWidget

        return DiffWidget
    if name == "diff":  # ltt.diff(trace_a, trace_b): contrastive graphs
        from ltt.contrast import diff

        return diff
    if name == "RouteSet":
        from ltt.routes import RouteSet

        return RouteSet
    if name == "export":
        import importlib

        return importlib.import_module("ltt.export")
    raise AttributeError(f"module 'ltt' has no attribute {name!r}")
