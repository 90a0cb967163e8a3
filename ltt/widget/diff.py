"""Contrastive graphs in the notebook: two traces' graphs side by side, the changes marked.

``DiffWidget(trace_a, trace_b)`` (``ltt.DiffWidget``) puts one :class:`GraphWidget` per trace in
a row (the same explorer: zoom, tooltips, panels) and marks on both the edges of
:func:`ltt.diff` whose flow rose, fell, appeared or vanished from a to b, each status in its own
colour (legend under each graph); an edge that one side's pruned graph does not keep is drawn
dashed where it would be. The two views share their threshold and threshold mode (and their
targets when the prompts have the same length): a change in either re-prunes both and re-diffs
in the kernel. Under the views, the top changes by ``|flow b - a|``: picking one selects that edge
in both views (highlighted, with each side's panel); clicking a changed edge in one view selects
its counterpart in the other. Running a new prompt in either view diffs it against the other.

>>> w = ltt.DiffWidget(model.trace("When Mary and John went"), model.trace("When John and Mary went"))  # doctest: +SKIP
>>> w.diff.top_edges(3), w.a.marks, w.b.marks                                                           # doctest: +SKIP
>>> w.threshold = 0.08   # both views re-prune, the marks follow                                        # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as W

from ltt.checks import DEFAULT_THRESHOLD, is_int
from ltt.contrast import EdgeChange, TraceDiff, diff
from ltt.nodes import Stage, edge_key, endpoint_names
from ltt.widget import GraphWidget

__all__ = ["DiffWidget", "change_status", "diff_marks"]


def change_status(e: EdgeChange, min_change: float = 0.0) -> str | None:
    """How an edge of a :class:`TraceDiff` changed from a to b: ``"appeared"`` (kept only in b's
    pruned graph), ``"vanished"`` (only in a's), ``"rose"`` / ``"fell"`` (kept in both, flow up or
    down by at least ``min_change`` and not 0), or None."""
    in_a, in_b = e.flow_a > 0, e.flow_b > 0
    if in_b and not in_a:
        return "appeared"
    if in_a and not in_b:
        return "vanished"
    if e.flow_delta == 0 or abs(e.flow_delta) < min_change:
        return None
    return "rose" if e.flow_delta > 0 else "fell"


def _keys(e: EdgeChange) -> tuple[str, str]:
    """The view keys of a change's edge in a's and in b's positions."""
    return edge_key(e.source, e.target, e.kind), edge_key(e.source_b, e.target_b, e.kind)


def _ffn_input(layer: int, token: int, parallel: Sequence[bool]) -> str:
    """The key of the first half (input -> M) of the FFN route of ``layer`` at ``token``."""
    src, mid = endpoint_names(Stage.FFN_IN, layer, token, token, bool(parallel[layer]))
    return edge_key(src, mid, "ffn")


def diff_marks(d: TraceDiff, parallel_a: Sequence[bool], parallel_b: Sequence[bool],
               min_change: float = 0.0) -> tuple[dict[str, str], dict[str, str]]:
    """The ``marks`` of each side's view: edge key (in that side's positions) -> status, for every
    edge of ``d`` with a :func:`change_status`; an FFN route is marked on both its halves."""
    ma: dict[str, str] = {}
    mb: dict[str, str] = {}
    for e in d.edges:
        status = change_status(e, min_change)
        if status is None:
            continue
        ka, kb = _keys(e)
        ma[ka], mb[kb] = status, status
        if e.stage is Stage.FFN_OUT:
            ma[_ffn_input(e.layer, e.target_token, parallel_a)] = status
            mb[_ffn_input(e.layer, e.target_token_b, parallel_b)] = status
    return ma, mb


def _shared(name: str) -> property:
    """A setting of both linked views, read from and written to view ``a``."""
    return property(lambda self: getattr(self.a, name), lambda self, value: setattr(self.a, name, value),
                    doc=f"``{name}`` of both views (they are linked).")


class DiffWidget(W.VBox):
    """Two traces' graphs side by side with the changes of :func:`ltt.diff` marked (module
    docstring). ``a``, ``b``: the two :class:`GraphWidget` views; ``diff``: the current
    :class:`TraceDiff`; ``changes``: the list of the top ``k`` changes; ``threshold``,
    ``renormalize``: the shared settings. ``min_change``: the least ``|flow b - a|`` an edge kept
    by both sides needs to be marked (edges kept by one side only are always marked).

    Bad input raises the error of :func:`ltt.diff` (naming ``trace_a``, ``trace_b`` or ``align``)
    or a ValueError naming ``k`` or ``min_change``.
    """

    def __init__(
        self,
        trace_a: Any,
        trace_b: Any,
        *,
        align: Sequence[int | None] | Mapping[int, int] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        renormalize: bool = True,
        targets: Sequence[int] | int | str | None = None,
        k: int = 12,
        min_change: float = 0.01,
        background: Callable[[str, Callable[[], None]], None] | None = None,
        **kwargs: Any,
    ):
        if not is_int(k) or k < 1:
            raise ValueError(f"k must be a positive integer (how many changes to list), got {k!r}")
        if isinstance(min_change, bool) or not isinstance(min_change, (int, float)) \
                or not math.isfinite(min_change) or min_change < 0:
            raise ValueError(f"min_change must be a finite number >= 0, got {min_change!r}")
        self._align, self._targets, self._k, self.min_change = align, targets, k, float(min_change)
        # the diff first: its errors name the argument before any view is built
        self.diff = diff(trace_a, trace_b, align=align, threshold=threshold, renormalize=renormalize,
                         targets=targets)
        same = align is None  # same length, token by token: targets are shared as well
        # background: where each view's faithfulness check runs (GraphWidget's; ltt serve queues a job)
        self.a = GraphWidget(trace_a, threshold=threshold, renormalize=renormalize, targets=targets, background=background)
        self.b = GraphWidget(trace_b, threshold=threshold, renormalize=renormalize, targets=targets, background=background)
        self._busy = 0
        self._pairs: dict[str, str] = {}  # a key -> b key of the diff's edges, and back
        self._top: list[EdgeChange] = []
        self.label_a = W.Label()
        self.label_b = W.Label()
        self.summary = W.Label()
        self.changes = W.Select(options=[], rows=min(k, 12), layout=W.Layout(width="100%"))
        self.changes.add_class("ltt-diff-changes")
        sides = []
        for name, gw, label in (("a", self.a, self.label_a), ("b", self.b, self.label_b)):
            gw.add_class("ltt-diff-side")
            gw.add_class(f"ltt-diff-{name}")
            sides.append(W.VBox([label, gw], layout=W.Layout(width="50%", min_width="0")))
        names = ["threshold", "renormalize"] + (["targets"] if same else [])
        self._links = [W.link((self.a, n), (self.b, n)) for n in names]
        super().__init__(
            [W.HBox(sides, layout=W.Layout(width="100%")), self.summary,
             W.Label("top changes, flow b − a (pick one to select it in both views):"), self.changes],
            **kwargs,
        )
        self._show()
        self.a.observe(self._on_settings, names=names)
        self.b.observe(self._on_settings, names=["prompt_index"])
        self.a.observe(self._on_settings, names=["prompt_index"])
        self.changes.observe(self._on_pick, names="index")
        self.a.observe(self._on_select, names="selection")
        self.b.observe(self._on_select, names="selection")

    # -- shared settings (both views are linked; setting them here sets both)

    threshold = _shared("threshold")
    renormalize = _shared("renormalize")

    # -- reactions

    def _on_settings(self, change) -> None:
        if not self._busy:
            self.a._guard(self._rediff)

    def _rediff(self) -> None:
        try:
            targets = list(self.a.targets) if self._align is None else self._targets
            self.diff = diff(self.a.trace, self.b.trace, align=self._align, threshold=self.a.threshold,
                             renormalize=self.a.renormalize, targets=targets)
        except Exception:
            self.a.marks, self.b.marks = {}, {}
            self.changes.options = []
            raise
        self._show()

    def _compared(self) -> str:
        """How the two prompts' positions meet: token by token, or the pairs ``align`` gives."""
        if self._align is None:
            return "compared token by token"
        a = self._align
        pairs = sorted(a.items()) if isinstance(a, Mapping) else [(i, j) for i, j in enumerate(a) if j is not None]
        if len(pairs) > 3:
            return f"compared at {len(pairs)} aligned positions"
        return "compared at " + ", ".join(f"a's token {i} ↔ b's token {j}" for i, j in pairs)

    def _show(self) -> None:
        d = self.diff
        ma, mb = diff_marks(d, self.a.graph["parallel"], self.b.graph["parallel"], self.min_change)
        self._pairs = {}
        for e in d.edges:
            ka, kb = _keys(e)
            self._pairs[f"a:{ka}"], self._pairs[f"b:{kb}"] = kb, ka
        self._top = d.top_edges(self._k)
        rows = []
        for i, e in enumerate(self._top):
            status = change_status(e, self.min_change) or "small change"
            rows.append((f"{e.flow_delta:+.4f}  {status:<9}  L{e.layer} {e.kind:<9}  "
                         f"{e.source} {d.tokens_a[e.source_token]!r} → {e.target} {d.tokens_a[e.target_token]!r}", i))
        counts = {s: 0 for s in ("rose", "fell", "appeared", "vanished")}
        for e in d.edges:
            s = change_status(e, self.min_change)
            if s:
                counts[s] += 1
        self._busy += 1
        try:
            self.a.marks, self.b.marks = ma, mb
            self.changes.options = rows
            self.changes.index = None
        finally:
            self._busy -= 1
        pa, pb = d.prediction_a, d.prediction_b
        self.label_a.value = f"a: {''.join(d.tokens_a)!r} → {pa.get('token')!r} ({pa.get('prob', 0.0):.3f})"
        self.label_b.value = f"b: {''.join(d.tokens_b)!r} → {pb.get('token')!r} ({pb.get('prob', 0.0):.3f})"
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        self.summary.value = (f"{len(d.edges)} edges in either graph at threshold {d.settings['threshold']:g}, "
                              f"{self._compared()}: {summary} (|flow b − a| ≥ {self.min_change:g})"
                              + (f"; {d.unmatched} without a counterpart" if d.unmatched else ""))

    def select(self, index: int) -> None:
        """Select the ``index``-th listed change in both views (what picking it in the list does)."""
        if not 0 <= index < len(self._top):
            raise ValueError(f"index must be in [0, {len(self._top)}), got {index!r}")
        e = self._top[index]
        self._busy += 1
        try:
            ka, kb = _keys(e)
            self.a.selection, self.b.selection = {"edge": ka}, {"edge": kb}
        finally:
            self._busy -= 1

    def _on_pick(self, change) -> None:
        if not self._busy and change["new"] is not None:
            self.select(change["new"])

    def _on_select(self, change) -> None:
        """An edge of the diff clicked in one view selects its counterpart in the other."""
        if self._busy:
            return
        side, other = ("a", self.b) if change["owner"] is self.a else ("b", self.a)
        sel = change["new"] or {}
        mate = self._pairs.get(f"{side}:{sel.get('edge')}")
        if mate is None or (other.selection or {}).get("edge") == mate:
            return
        self._busy += 1
        try:
            other.selection = {"edge": mate}
        finally:
            self._busy -= 1
