"""The one byte budget of the traces ``ltt serve`` keeps for all its pages (``--max-memory``).

Every view of every page keeps its traced prompts (its picker); together they may hold at most
``max_bytes``. Before a trace runs, its kept size is estimated
(:func:`ltt.models.tracing.estimate_bytes`: a formula of L, H, G, d, d_h, F and T) and a trace
that cannot fit even alone is refused with both figures; otherwise the least recently used
traces of any page are dropped until it fits, and each page that lost one hears it (an
``evicted`` message). An evicted prompt stays in its picker: picking it again traces it again,
under the same budget. Once a trace exists, its measured size (:meth:`ltt.trace.Trace.nbytes`)
replaces the estimate.

Used from the server's single worker thread only (every trace is made there).

>>> b = TraceBudget(100 << 20)
>>> b.max_bytes >> 20
100
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

__all__ = ["TraceBudget", "default_max_memory", "trace_bytes", "mib"]


def mib(n: float) -> str:
    """Bytes as MiB text.

    >>> mib(3 << 20)
    '3.0 MiB'
    """
    return f"{n / 2**20:.1f} MiB"


def default_max_memory() -> int:
    """Half the memory available now (MemAvailable, within a cgroup limit), at least 256 MiB;
    2 GiB when it cannot be read."""
    from ltt.models.tracing import available_bytes

    avail = available_bytes()
    if avail is None:
        return 2 << 30
    return max(256 << 20, int(avail) // 2)


def trace_bytes(trace: Any) -> int:
    """What a trace holds in memory (its layers, kept contributions and logits)."""
    return int(sum(trace.nbytes().values()))


class TraceBudget:
    """Kept traces keyed by ``(widget, index)``, least recently used first."""

    def __init__(self, max_bytes: int):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"--max-memory must be a positive number of bytes, got {max_bytes!r}")
        self.max_bytes = max_bytes
        # (id(widget), index) -> [nbytes, widget, index, owner, evict(widget, index, why)]
        self._held: OrderedDict[tuple[int, int], list] = OrderedDict()
        self.evictions = 0
        self.refusals = 0
        self.peak = 0

    @property
    def used(self) -> int:
        return sum(item[0] for item in self._held.values())

    def held(self, owner: Any = None) -> int:
        """Number of traces held (by ``owner``, or by everyone)."""
        return sum(1 for item in self._held.values() if owner is None or item[3] is owner)

    def reserve(self, nbytes: int, what: str, keep: frozenset = frozenset()) -> None:
        """Make room for a trace of about ``nbytes`` (evicting the least recently used, never a
        key in ``keep``), or raise ValueError when it cannot fit."""
        if nbytes > self.max_bytes:
            self.refusals += 1
            raise ValueError(f"{what} needs about {mib(nbytes)} of kept arrays, more than this server's "
                             f"trace budget of {mib(self.max_bytes)} (--max-memory): try a shorter prompt")
        self._evict_until(self.max_bytes - nbytes, keep, f"to make room for {what}")

    def hold(self, widget: Any, index: int, trace: Any, owner: Any, evict: Callable[[Any, int, str], None]) -> None:
        """Count ``trace`` (the widget's ``index``-th) as kept, most recently used; then evict
        others if the measured size went over the budget."""
        key = (id(widget), index)
        if key in self._held:
            self._held.move_to_end(key)
            return
        self._held[key] = [trace_bytes(trace), widget, index, owner, evict]
        self._evict_until(self.max_bytes, frozenset({key}), "to stay within --max-memory")
        self.peak = max(self.peak, self.used)

    def touch(self, widget: Any, index: int) -> None:
        key = (id(widget), index)
        if key in self._held:
            self._held.move_to_end(key)

    def holds(self, widget: Any, index: int) -> bool:
        return (id(widget), index) in self._held

    def release_widget(self, widget: Any) -> None:
        """Forget every trace of ``widget`` (it was closed)."""
        for key in [k for k, item in self._held.items() if item[1] is widget]:
            del self._held[key]

    def _evict_until(self, limit: int, keep: frozenset, why: str) -> None:
        for key in list(self._held):
            if self.used <= limit:
                return
            if key in keep:
                continue
            nbytes, widget, index, owner, evict = self._held.pop(key)
            self.evictions += 1
            evict(widget, index, f"{why} ({mib(nbytes)} freed; the budget is {mib(self.max_bytes)}, --max-memory)")
