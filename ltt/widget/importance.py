"""The importance heatmap of a prompt set: layers x heads (and an FFN strip) across a RouteSet.

``ImportanceWidget(routes)`` (or ``routes.show()``) shows one aggregate of
:class:`ltt.routes.RouteSet` per head and per FFN block: how often it is on the route
(``"frequency"``), its mean share when it is (``"mean_share"``) or its mean share over all prompts
(``"mean"``). Clicking a cell lists the prompts where that component carried the most; clicking a
prompt re-traces it in the kernel and shows its graph (a :class:`ltt.widget.GraphWidget`) in the
output area below the heatmap. The front
end is one plain ES module, ``ltt/widget/static/importance.js``; the heatmaps travel as float32
bytes with their shape.

>>> routes = model.trace_many(prompts)                         # doctest: +SKIP
>>> w = ImportanceWidget(routes, model=model, metric="mean")   # doctest: +SKIP
>>> w.selection = {"layer": 3, "head": 1}; w.top[0]["prompt"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import anywidget
import numpy as np
import traitlets as tl

from ltt.checks import is_int
from ltt.widget import STATIC, GraphWidget

METRICS = ("frequency", "mean_share", "mean")

__all__ = ["ImportanceWidget", "with_graph_output", "METRICS"]


class ImportanceWidget(anywidget.AnyWidget):
    """Heatmap of component importance over a :class:`ltt.routes.RouteSet`.

    Synced state: ``metric`` (one of :data:`METRICS`); ``heads`` (float32 bytes ``[L, H]``) with
    ``heads_shape``, ``ffn`` (float32 bytes ``[L]``): the metric's values; ``selection``
    (``{"layer": l, "head": h}``, ``"head": None`` for the FFN block, or ``{}``); ``top``: the
    selected component's top prompts (``index``, ``prompt``, ``share``, ``prediction``);
    ``info``: model name, prompt count, settings; ``status`` / ``error``: messages for the page.

    The page asks for a prompt's graph with the message ``{"type": "open", "index": i}``;
    :meth:`open_prompt` does the same from Python. Bad values raise ``traitlets.TraitError`` naming the
    trait and the value.
    """

    _esm = STATIC / "importance.js"

    metric = tl.Unicode("frequency").tag(sync=True)
    heads = tl.Bytes(b"").tag(sync=True)
    heads_shape = tl.List(tl.Int()).tag(sync=True)
    ffn = tl.Bytes(b"").tag(sync=True)
    selection = tl.Dict().tag(sync=True)
    top = tl.List(tl.Dict()).tag(sync=True)
    info = tl.Dict().tag(sync=True)
    status = tl.Unicode("").tag(sync=True)
    error = tl.Unicode("").tag(sync=True)

    def __init__(self, routes: Any, *, model: Any = None, metric: str = "frequency", k: int = 10, **kwargs: Any):
        if not (hasattr(routes, "head_frequency") and hasattr(routes, "top_prompts")):
            raise TypeError(f"routes must be a ltt.routes.RouteSet, got {type(routes).__name__}")
        if not is_int(k) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self._routes = routes
        self._model = model if model is not None else getattr(routes, "model", None)
        self._k = int(k)
        self.output = None  # an ipywidgets.Output for opened graphs (see with_graph_output)
        self.opened: Any = None  # the last opened graph widget
        super().__init__(**kwargs)
        self.info = {"model": routes.model_name, "prompts": len(routes), "errors": len(routes.errors),
                     "layers": routes.n_layers, "heads": routes.n_heads, "settings": dict(routes.settings),
                     "can_open": self._model is not None}
        self.metric = metric
        self._refresh()
        self.on_msg(self._on_msg)

    @tl.validate("metric")
    def _valid_metric(self, proposal):
        value = proposal["value"]
        if value not in METRICS:
            raise tl.TraitError(f"metric must be one of {METRICS}, got {value!r}")
        return value

    @tl.validate("selection")
    def _valid_selection(self, proposal):
        return self._layer_head(dict(proposal["value"])) if proposal["value"] else {}

    def _layer_head(self, sel: dict) -> dict:
        """``{"layer": l, "head": h or None}`` checked against the routes' layers and heads."""
        L, H = self._routes.n_layers, self._routes.n_heads
        layer, head = sel.get("layer"), sel.get("head")
        if set(sel) - {"layer", "head"} or not is_int(layer) or not 0 <= layer < L:
            raise tl.TraitError(f"selection must be {{'layer': 0..{L - 1}, 'head': 0..{H - 1} or None}}, got {sel!r}")
        if head is not None and (not is_int(head) or not 0 <= head < H):
            raise tl.TraitError(f"selection head must be in 0..{H - 1} or None (the FFN), got {sel!r}")
        return {"layer": layer, "head": head}

    @tl.observe("metric")
    def _on_metric(self, change) -> None:
        self._refresh()

    @tl.observe("selection")
    def _on_selection(self, change) -> None:
        sel = change["new"]
        self.top = [] if not sel else self._routes.top_prompts(sel["layer"], sel["head"], k=self._k)

    def _refresh(self) -> None:
        r = self._routes
        heads = {"frequency": r.head_frequency, "mean_share": r.head_mean_share, "mean": r.head_mean}[self.metric]
        ffn = {"frequency": r.ffn_frequency, "mean_share": r.ffn_mean_share, "mean": r.ffn_mean}[self.metric]
        heads = np.ascontiguousarray(heads, dtype=np.float32)
        ffn = np.ascontiguousarray(ffn, dtype=np.float32)
        if not (np.isfinite(heads).all() and np.isfinite(ffn).all()):
            raise ValueError("importance values must be finite")
        self.heads_shape = [int(heads.shape[0]), int(heads.shape[1])]
        self.heads = heads.tobytes()
        self.ffn = ffn.tobytes()

    def _on_msg(self, widget: Any, content: Any, buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "open":
            try:
                self.open_prompt(content.get("index"))
            except Exception as exc:  # shown on the page; the kernel keeps running
                self.error = f"{type(exc).__name__}: {exc}"

    def open_prompt(self, index: int) -> Any:
        """Re-trace the prompt with input index ``index`` and show its graph in :attr:`output`
        (when attached). Returns the graph widget.

        >>> w.open_prompt(w.top[0]["index"])                              # doctest: +SKIP
        """
        rec = next((r for r in self._routes.records if r.index == index), None)
        if rec is None:
            raise ValueError(f"index {index!r} is not a prompt of this set")
        if self._model is None:
            raise ValueError("no model to re-trace the prompt with: ImportanceWidget(routes, model=model)")
        self.error = ""
        self.status = f"tracing prompt {index}..."
        s = self._routes.settings
        trace = self._model.trace(rec.prompt)
        shown = GraphWidget(trace, threshold=s["threshold"], renormalize=s["renormalize"], targets=s["targets"])
        self.opened = shown
        if self.output is not None:
            self.output.clear_output()
            with self.output:
                from IPython.display import display

                display(shown)
        self.status = f"prompt {index} opened"
        return shown


def with_graph_output(widget: ImportanceWidget):
    """The heatmap above an output area where clicked prompts' graphs appear (an ipywidgets
    VBox); the widget alone when ipywidgets is missing."""
    try:
        import ipywidgets
    except ImportError:
        return widget
    widget.output = ipywidgets.Output()
    return ipywidgets.VBox([widget, widget.output])
