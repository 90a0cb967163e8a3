"""One trace plan: how a trace of T tokens is attributed, decided once before the forward pass.

:func:`make_plan` turns the explicit arguments (``memory=`` of ``model.trace``, the model's
``attribution=`` backend) and the budgets of :mod:`ltt.config` into a :class:`TracePlan`:

* a memory mode per layer (:data:`MODES`):

  - ``"dense"``: the layer's per-head shares ``[H, T, T]`` are kept (graphs at any threshold
    are pruned from them; a short trace, ``4 L (H + 1) T^2 <= LTT_DENSE_BUDGET``);
  - ``"layer"``: the probabilities and the per-head shares of one layer exist while it is
    attributed, only the parts above the floor are kept;
  - ``"heads"``: the probabilities ``[H, T, T]`` exist, the shares are scored head by head
    (``4 H T^2 > LTT_HEAD_CHUNK_BYTES``);
  - ``"stream"``: no ``[H, T, T]`` array at all: the model's attention runs one kv group at a
    time and each head's probabilities are recomputed on demand
    (``4 H T^2 > LTT_STREAM_BYTES``);

* the floor of the kept sparse rows, the exactness tolerance of the model's dtype and the
  attribution backend (``"core"`` or ``"torch"``) with its device.

``memory="auto"`` (the default) picks per the budgets above; a named mode is used for every
layer. The plan is the one place the policy is decided: :mod:`ltt.models.tracing` and
:mod:`ltt.scores` read it.

>>> plan = make_plan(n_layers=2, n_heads=4, n_tokens=8)
>>> plan.modes, plan.floor, plan.backend
(('dense', 'dense'), 0.001, 'core')
"""

from __future__ import annotations

from dataclasses import dataclass

from ltt import config

#: The memory modes, from most kept to least.
MODES = ("dense", "layer", "heads", "stream")
#: Contributions below this floor are not kept by a trace (sparse storage).
CONTRIBUTION_FLOOR = 1e-3
#: Relative error above which a layer's decomposition is called inexact, by model dtype. The
#: parts are computed in float32 from the model's tensors; a half-precision model rounds its
#: own sums, so the tolerance follows its precision.
TOLERANCE = {"float32": 1e-3, "float64": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}


def dense_nbytes(L: int, H: int, T: int) -> int:
    """Bytes of a trace's dense per-head shares and edges, ``4 L (H + 1) T^2``."""
    return 4 * L * (H + 1) * T * T


@dataclass(frozen=True)
class TracePlan:
    """How one trace is attributed (see the module docstring)."""

    n_layers: int
    n_heads: int
    n_tokens: int
    modes: tuple[str, ...]
    floor: float = CONTRIBUTION_FLOOR
    tolerance: float = 1e-3
    backend: str = "core"
    devices: tuple[str, ...] = ()  # per layer, where the torch backend computes ("cpu", "cuda:0")

    @property
    def keep_dense(self) -> bool:
        return all(m == "dense" for m in self.modes)

    @property
    def stream(self) -> bool:
        """Whether any layer streams its heads (the recording then runs attention per kv group)."""
        return any(m == "stream" for m in self.modes)

    def mode(self, layer: int) -> str:
        return self.modes[layer]


def check_memory_mode(memory: object) -> str:
    """``memory`` checked: None or "auto", or one of :data:`MODES`."""
    if memory is None:
        return "auto"
    if not isinstance(memory, str) or memory not in ("auto",) + MODES:
        raise ValueError(f"memory must be 'auto' or one of {', '.join(map(repr, MODES))}, got {memory!r}")
    return memory


def auto_mode(n_layers: int, n_heads: int, n_tokens: int, budgets: dict[str, int] | None = None) -> str:
    """The mode ``memory="auto"`` picks from ``budgets`` (``dense``, ``head_chunk``, ``stream``
    bytes; default: those of :mod:`ltt.config`, read now)."""
    if budgets is None:
        budgets = {"dense": config.dense_budget(), "head_chunk": config.head_chunk_bytes(),
                   "stream": config.stream_bytes()}
    H, T = n_heads, n_tokens
    if dense_nbytes(n_layers, H, T) <= budgets["dense"]:
        return "dense"
    if 4 * H * T * T > budgets["stream"]:
        return "stream"
    if 4 * H * T * T > budgets["head_chunk"]:
        return "heads"
    return "layer"


def make_plan(n_layers: int, n_heads: int, n_tokens: int, *, memory: object = None, dtype: str = "float32",
              backend: str = "core", devices: tuple[str, ...] = (),
              budgets: dict[str, int] | None = None) -> TracePlan:
    """The :class:`TracePlan` of a trace (see the module docstring for ``memory``)."""
    mode = check_memory_mode(memory)
    if mode == "auto":
        mode = auto_mode(n_layers, n_heads, n_tokens, budgets)
    return TracePlan(n_layers=n_layers, n_heads=n_heads, n_tokens=n_tokens, modes=(mode,) * n_layers,
                     floor=CONTRIBUTION_FLOOR, tolerance=TOLERANCE.get(dtype, 1e-3), backend=backend,
                     devices=tuple(devices) or ("cpu",) * n_layers)
