"""The Jupyter widget: a trace's contribution graph with its controls and panels, on anywidget.

``GraphWidget(trace)`` (or ``trace.show()``) shows the pruned graph as a token x layer grid.
Changing the threshold, the threshold mode or the target tokens re-prunes through the C core
(``trace.graph(...)``) and the view updates in place; clicking a state, an attention edge or an
FFN block fills the side panel (top tokens, heads, neurons) from :mod:`ltt.interpret`. The front
end is one plain ES module and a stylesheet shipped in ``ltt/widget/static/`` (no build step);
heatmaps travel as float32 bytes with their shape.

>>> import ltt                                               # doctest: +SKIP
>>> model = ltt.load("smollm2-135m")                         # doctest: +SKIP
>>> w = ltt.GraphWidget(model.trace("The capital of France is"), threshold=0.04)  # doctest: +SKIP
>>> w.threshold = 0.08; len(w.graph["edges"])                # doctest: +SKIP
>>> w.selection = {"node": "I29_5"}; w.panel["tokens"][0]   # doctest: +SKIP
>>> ltt.GraphWidget(["The cat", "The dog"], model=model)    # a prompt picker  # doctest: +SKIP
"""

from __future__ import annotations

import pathlib
import threading
from typing import Any, Callable, Sequence

import anywidget
import numpy as np
import traitlets as tl

from ltt.checks import DEFAULT_THRESHOLD, check_threshold, is_int, resolve_targets
from ltt.nodes import edge_key, node_name, parse_edge, parse_node
from ltt.widget import bundle, panels
from ltt.widget import state as widget_state

STATIC = pathlib.Path(__file__).parent / "static"

__all__ = ["GraphWidget", "STATIC", "MARK_STATUSES", "outputs"]

MARK_STATUSES = ("rose", "fell", "appeared", "vanished")


def outputs(trace: Any) -> list[dict]:
    """The model's top prediction after every token, ``[{"token": str, "id": int, "prob": float}]`` (the
    output markers' hover text); empty without a model or a vocabulary projection."""
    try:
        from ltt import interpret

        return panels.output_markers(interpret.predictions(trace))
    except Exception:  # a synthetic trace without a model: markers say the token only
        return []



class GraphWidget(anywidget.AnyWidget):
    """The explorer widget for one trace, or a list of traces / prompts (with a prompt picker).

    Synced state (set from Python or from the page):

    * ``threshold`` (float in [0, 1)), ``renormalize`` (bool), ``targets`` (token positions):
      the pruning settings; ``graph`` holds ``trace.graph(...).to_dict()`` for them (plus
      ``parallel`` per layer and the targets' ``predictions``);
    * ``normalize``: apply the final norm before unembedding in the top-token panels;
    * ``selection``: ``{"node": "I3_5"}``, ``{"edge": "I2_1|A3_5|attention", "head": 2}`` or
      ``{}``; ``panel`` holds the clicked thing's data, ``panel_maps`` (float32 bytes) and
      ``panel_maps_shape`` its heatmaps;
    * ``marks``: ``{edge key: "rose" | "fell" | "appeared" | "vanished"}``, change marks drawn over
      the graph (dashed where the graph does not keep the edge); ``ltt.DiffWidget`` sets them,
      empty by default;
    * ``prompts`` / ``prompt_index``: the prompt picker; the page's prompt box runs a new prompt
      through ``model.trace`` (``model=`` or the trace's own model).

    Bad values raise ``traitlets.TraitError`` naming the trait and the value.
    """

    _esm = bundle.script()  # static/page/*.js joined in memory (ltt/widget/bundle.py)
    _css = STATIC / "graph.css"

    # every synced field comes from the one schema, ltt/widget/state.py (the report's state, serve's
    # writable set and the page's STATE_FIELDS derive from it too)
    locals().update(widget_state.traits())
    # the faithfulness line of the shown graph (ltt.faithfulness.summary_line), recomputed with it in
    # a worker thread (one batched rerun of the model with faithfulness_baselines random graphs;
    # 0 turns the check off); faithfulness_state says whether the line is current
    faithfulness_baselines = 8
    # where the faithfulness check runs: None = a daemon thread; else background(label, fn) runs fn
    # off the UI thread (ltt serve queues it as a job)
    background: Callable[[str, Callable[[], None]], None] | None = None

    def __init__(
        self,
        source: Any,
        *,
        model: Any = None,
        threshold: float = DEFAULT_THRESHOLD,
        renormalize: bool = True,
        targets: Sequence[int] | int | str | None = None,
        normalize: bool = True,
        k: int = 10,
        slider: Sequence[float] = (0.01, 0.10),
        background: Callable[[str, Callable[[], None]], None] | None = None,
        **kwargs: Any,
    ):
        self.background = background
        items = list(source) if isinstance(source, (list, tuple)) else [source]
        if not items:
            raise ValueError("GraphWidget needs a trace, a prompt, or a non-empty list of them, got []")
        self._traces: list[Any] = []
        names: list[str] = []
        for i, it in enumerate(items):
            if isinstance(it, str):
                if model is None:
                    raise ValueError(f"source[{i}] is a prompt ({it!r}): pass model= to trace it")
                self._traces.append(None)
                names.append(it)
            elif hasattr(it, "layers") and hasattr(it, "tokens"):
                self._traces.append(it)
                names.append(str(getattr(it, "prompt", "")) or "".join(it.tokens))
            else:
                raise TypeError(f"source[{i}] must be a Trace or a prompt string, got {type(it).__name__}")
        self._model = model
        self._k = int(k)
        self._quiet = 0
        self._faith_lines: dict[tuple, tuple[str, bool]] = {}  # per (trace, settings): going back costs nothing
        self._faith_want: tuple | None = None  # the key of the figure the shown graph needs
        super().__init__(**kwargs)
        self._quiet += 1
        try:
            self.slider = [float(slider[0]), float(slider[1])]
            self.threshold = threshold
            self.renormalize = renormalize
            self.normalize = normalize
            self.prompts = names
            self.prompt_index = 0
            trace = self.trace
            self.targets = self._resolve(targets, trace)
        finally:
            self._quiet -= 1
        self._show_trace()
        self.on_msg(self._on_msg)

    # -- the current trace ---------------------------------------------------------------------

    @property
    def trace(self) -> Any:
        """The trace shown now (traced on first use when the widget was made from prompts)."""
        i = self.prompt_index
        if self._traces[i] is None:
            self._traces[i] = self._model.trace(self.prompts[i])
        return self._traces[i]

    @staticmethod
    def _resolve(targets: Any, trace: Any) -> list[int]:
        try:
            return resolve_targets(targets, len(trace.token_ids))
        except (TypeError, ValueError) as exc:
            raise tl.TraitError(f"targets: {exc}") from None

    def _show_trace(self) -> None:
        trace = self.trace
        with self.hold_sync():
            self._quiet += 1
            try:
                self.selection = {}
                self.panel = {}
                self.panel_maps = b""
                self.panel_maps_shape = []
            finally:
                self._quiet -= 1
            self._refresh_graph()
            self.model_info = panels.model_info(trace, self.graph)
            self.outputs = outputs(trace)

    # -- validation: every message names the trait and the value --------------------------------

    @tl.validate("threshold")
    def _valid_threshold(self, proposal):
        try:
            return check_threshold(proposal["value"])
        except (TypeError, ValueError) as exc:
            raise tl.TraitError(str(exc)) from None

    @tl.validate("slider")
    def _valid_slider(self, proposal):
        lo, hi = proposal["value"]
        if not (0.0 <= lo < hi < 1.0):
            raise tl.TraitError(f"slider must be [min, max] with 0 <= min < max < 1, got {proposal['value']!r}")
        return [float(lo), float(hi)]

    @tl.validate("targets")
    def _valid_targets(self, proposal):
        v = proposal["value"]
        if any(isinstance(t, bool) for t in v):
            raise tl.TraitError(f"targets must hold integer token positions, got {v!r}")
        if not self._traces:  # during construction
            return list(v)
        return self._resolve(list(v), self.trace)

    @tl.validate("marks")
    def _valid_marks(self, proposal):
        out = {}
        for key, status in dict(proposal["value"]).items():
            if status not in MARK_STATUSES:
                raise tl.TraitError(f"marks: {key!r} has status {status!r}, not one of {MARK_STATUSES}")
            try:
                parse_edge(key)
            except ValueError as exc:
                raise tl.TraitError(f"marks: {exc}") from None
            out[key] = status
        return out

    @tl.validate("prompt_index")
    def _valid_prompt_index(self, proposal):
        v = proposal["value"]
        n = len(self._traces)
        if not 0 <= v < n:
            raise tl.TraitError(f"prompt_index must be in [0, {n}), got {v!r}")
        return v

    @tl.validate("selection")
    def _valid_selection(self, proposal):
        sel = dict(proposal["value"])
        if not sel:
            return {}
        unknown = set(sel) - {"node", "edge", "head"}
        if unknown or ("node" in sel) == ("edge" in sel):
            raise tl.TraitError(
                f"selection must be {{}}, {{'node': name}} or {{'edge': 'source|target|kind', 'head': h}}, got {sel!r}"
            )
        T, L = len(self.trace.token_ids), len(self.trace.layers)
        try:
            names = [sel["node"]] if "node" in sel else list(parse_edge(sel["edge"])[:2])
            for name in names:
                kind, layer, token = parse_node(name)
                if token >= T or layer >= L:
                    raise ValueError(f"{name!r} is outside the trace ({T} tokens, {L} layers)")
        except ValueError as exc:
            raise tl.TraitError(f"selection: {exc}") from None
        if "head" in sel and sel["head"] is not None:
            H = panels.n_heads(self.trace)
            h = sel["head"]
            if not is_int(h) or not 0 <= h < H:
                raise tl.TraitError(f"selection: head must be an integer in [0, {H}), got {h!r}")
        return sel

    # -- reactions -------------------------------------------------------------------------------

    @tl.observe("threshold", "renormalize", "targets", "counterfactual")
    def _on_settings(self, change):
        if not self._quiet:
            self._guard(self._refresh_graph)

    @tl.observe("selection", "normalize")
    def _on_selection(self, change):
        if not self._quiet:
            self._guard(self._refresh_panel)

    @tl.observe("prompt_index")
    def _on_prompt(self, change):
        if not self._quiet:
            self._guard(self._switch)

    def _switch(self) -> None:
        trace = self.trace  # traces a prompt on first use
        self._quiet += 1
        try:
            self.targets = [len(trace.token_ids) - 1]
        finally:
            self._quiet -= 1
        self._show_trace()

    def _guard(self, fn) -> None:
        self.status = "working…"
        try:
            fn()
            self.error = ""
        except Exception as exc:  # shown in the page; the kernel keeps running
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.status = ""

    def _refresh_graph(self) -> None:
        trace = self.trace
        g = trace.graph(threshold=self.threshold, renormalize=self.renormalize, targets=list(self.targets))
        self.graph = panels.graph_payload(trace, g)
        self._resolve_selection()
        self._refresh_faithfulness(trace, g)

    def _resolve_selection(self) -> None:
        """After a re-prune: a selection the new graph no longer holds (nor marks) is cleared with
        its panel; one it still holds has its panel refilled (its weight may have changed)."""
        sel = self.selection
        if not sel:
            return
        names = {n["name"] for n in self.graph.get("nodes", ())}
        keys = {f"{e['source']}|{e['target']}|{e['kind']}" for e in self.graph.get("edges", ())}
        here = sel.get("node") in names if "node" in sel else (sel.get("edge") in keys or sel.get("edge") in self.marks)
        self._quiet += 1
        try:
            if not here:
                self.selection = {}
                self.panel, self.panel_maps, self.panel_maps_shape = {}, b"", []
        finally:
            self._quiet -= 1
        if here:
            self._refresh_panel()

    def _faith_key(self, trace: Any, g: Any) -> tuple:
        return (id(trace), g.threshold, g.renormalize, tuple(g.targets), self.faithfulness_baselines, self.counterfactual)

    def _refresh_faithfulness(self, trace: Any, g: Any) -> None:
        """Show the graph's faithfulness: at once when known, else computed off the UI thread
        (``background(label, fn)``, default a daemon thread; ``ltt serve`` queues a job) while the
        old line stays, marked stale (``faithfulness_state = "computing"``)."""
        if not self.faithfulness_baselines or getattr(trace, "model", None) is None:
            self.faithfulness, self.faithfulness_state, self.faithfulness_for = "", "", []
            return
        key = self._faith_key(trace, g)
        self._faith_want = key
        if key in self._faith_lines:
            line, ok = self._faith_lines[key]
            self.faithfulness, self.faithfulness_state, self.faithfulness_for = line, ("current" if ok else "failed"), list(g.targets)
            return
        self.faithfulness_state = "computing"
        cf = self.counterfactual

        def work() -> None:
            try:
                line, ok = self._faith_figure(trace, g, cf), True
            except Exception as exc:  # the graph stays usable without its check
                line, ok = f"faithfulness check failed: {type(exc).__name__}: {exc}", False
            self._faith_lines[key] = (line, ok)
            if self._faith_want == key:  # a figure of a graph no longer shown is never shown as current
                self.faithfulness, self.faithfulness_for = line, list(g.targets)
                self.faithfulness_state = "current" if ok else "failed"

        if self.background is not None:
            self.background("checking the graph's faithfulness", work)
        else:
            threading.Thread(target=work, name="ltt-faithfulness", daemon=True).start()

    def _faith_figure(self, trace: Any, g: Any, cf: str) -> str:
        from ltt.faithfulness import summary_line

        if not cf.strip():
            return summary_line(trace.faithfulness(g, baselines=self.faithfulness_baselines))
        model = self._model or trace.model
        other = model.trace(cf)
        t = list(g.targets)[-1]
        if len(other.token_ids) != len(trace.token_ids):
            raise ValueError(f"counterfactual has {len(other.token_ids)} tokens, the prompt {len(trace.token_ids)}: "
                             "patching needs the same length")
        answer, cf_answer = outputs(trace)[t], outputs(other)[t]
        # token ids, not their text: a byte-level token's text need not encode back to one token
        result = trace.faithfulness(g, ablation="patch", counterfactual=other, tokens=[answer["id"], cf_answer["id"]],
                                    baselines=self.faithfulness_baselines)
        answer, cf_answer = answer["token"], cf_answer["token"]
        return f"patched from {cf!r} ({answer!r} vs {cf_answer!r}): " + summary_line(result)

    def _edge_weight(self, key: str) -> float | None:
        src, dst, kind = parse_edge(key)
        for e in self.graph.get("edges", ()):
            if e["source"] == src and e["target"] == dst and e["kind"] == kind:
                return float(e["weight"])
        return None

    def _refresh_panel(self) -> None:
        trace = self.trace
        maps = None
        kind, what = panels.choose(self.selection)
        if kind == "none":
            panel: dict[str, Any] = {}
        elif kind == "ffn":
            layer, token = parse_node(what["node"])[1:]
            w = self._edge_weight(what.get("edge") or edge_key(what["node"], node_name("I", layer, token), "ffn"))
            panel = panels.ffn_panel(trace, what["node"], weight=w, k=self._k)
        elif kind == "state":
            panel = panels.state_panel(trace, what["node"], normalize=self.normalize, k=self._k)
        elif kind == "attention":
            panel, maps = panels.attention_panel(trace, what["edge"], self._edge_weight(what["edge"]),
                                                 what["head"], k=self._k)
        else:
            panel = panels.residual_panel(what["edge"], self._edge_weight(what["edge"]))
        with self.hold_sync():
            if maps is not None:
                maps = np.ascontiguousarray(maps, dtype=np.float32)
                if not np.all(np.isfinite(maps)):
                    raise ValueError("head maps hold NaN or inf")
                self.panel_maps = maps.tobytes()
                self.panel_maps_shape = list(maps.shape)
            else:
                self.panel_maps = b""
                self.panel_maps_shape = []
            self.panel = panel

    # -- messages from the page ------------------------------------------------------------------

    def _on_msg(self, widget, content, buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "run":
            bos = content.get("bos")
            self._guard(lambda: self.run(str(content.get("prompt", "")),
                                         prepend_bos=bos if isinstance(bos, bool) else None))

    def run(self, prompt: str, prepend_bos: bool | None = None) -> None:
        """Trace a new prompt with the widget's model and show it (the page's prompt box and its
        BOS checkbox: ``prepend_bos`` as in :meth:`ltt.models.Model.trace`)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
        model = self._model or getattr(self.trace, "model", None)
        if model is None:
            raise ValueError("this widget has no model to trace a new prompt: pass model=")
        trace = model.trace(prompt, prepend_bos=prepend_bos)
        self._traces.append(trace)
        self._quiet += 1
        try:
            self.prompts = self.prompts + [prompt]
        finally:
            self._quiet -= 1
        self.prompt_index = len(self._traces) - 1
