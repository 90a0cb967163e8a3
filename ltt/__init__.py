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

from ltt.kernels import contributions, get_num_threads, set_num_threads

__version__ = "0.1.0"

# Public names imported on first use (torch, transformers, anywidget load only when asked for),
# by the module that holds them; "report" is the module ltt.report itself (ltt.report.to_html).
_LAZY_FROM = {
    "ltt.models": ("load",),
    "ltt.models.model": ("Model",),
    "ltt.trace": ("Trace",),
    "ltt.trace_file": ("load_trace",),
    "ltt.graph": ("Graph", "GraphSettings"),
    "ltt.nodes": ("Node", "Edge"),
    "ltt.checks": ("DEFAULT_THRESHOLD",),
    "ltt.contrast": ("diff", "TraceDiff"),  # ltt.diff(trace_a, trace_b): contrastive graphs
    "ltt.faithfulness": ("Faithfulness",),
    "ltt.routes": ("RouteSet",),
    "ltt.widget": ("GraphWidget",),  # anywidget is imported only when asked for
    "ltt.widget.diff": ("DiffWidget",),  # two traces' graphs side by side
}
#: name -> (module, attribute); the attribute None means the module itself.
_LAZY = {name: (module, name) for module, names in _LAZY_FROM.items() for name in names}
_LAZY["report"] = ("ltt.report", None)

__all__ = ["contributions", "set_num_threads", "get_num_threads", "__version__", *_LAZY]


def __getattr__(name: str):
    # Heavy modules (torch, transformers) load only when a model is asked for.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'ltt' has no attribute {name!r}")


def __dir__() -> list[str]:
    # completion shows the lazily imported names too (load, Trace, ...)
    return sorted(set(globals()) | set(__all__))
