"""Attribution backends: where a layer's contributions are computed.

* ``"core"``: the C core (:mod:`ltt.kernels`), on the host; the CPU engine.
* ``"torch"``: the same math in PyTorch on the device holding the layer
  (:mod:`ltt.backends.torch`), streaming per layer, with only compact results copied back.

``ltt.load(..., attribution=None|"core"|"torch")``: None picks "torch" when some layer lives on
a CUDA device and "core" otherwise; "torch" on CPU layers is allowed (that is how it is tested
against the core). The NumPy twins (:mod:`ltt._reference`) stay the one definition of the math.

>>> check_attribution("cuda")
Traceback (most recent call last):
...
ValueError: attribution must be None, 'core' or 'torch', got 'cuda' (a CUDA model is attributed on its device by attribution='torch', the default for CUDA layers)
"""

from __future__ import annotations

from typing import Any

NAMES = ("core", "torch")


def check_attribution(attribution: Any) -> str | None:
    """``attribution`` checked: None, "core" or "torch"."""
    if attribution is None or (isinstance(attribution, str) and attribution in NAMES):
        return attribution
    hint = ""
    if isinstance(attribution, str) and attribution.lower().startswith(("cuda", "gpu")):
        hint = " (a CUDA model is attributed on its device by attribution='torch', the default for CUDA layers)"
    raise ValueError(f"attribution must be None, 'core' or 'torch', got {attribution!r}{hint}")


def check_requested_device(attribution: str | None, device: Any, device_map: Any) -> None:
    """Before loading: ``attribution="torch"`` with a CUDA ``device``/``device_map`` where torch
    has no CUDA is refused, naming both arguments."""
    if attribution != "torch":
        return
    wanted = [device] + (list(device_map.values()) if isinstance(device_map, dict) else [device_map])
    cuda = [w for w in wanted if w is not None and _is_cuda(w)]
    if not cuda:
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"attribution='torch' on device {cuda[0]!r}, but torch has no CUDA device here "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False): load on the CPU "
            "(device=None) with attribution='torch' or 'core', or run on a machine with a GPU"
        )


def _is_cuda(where: Any) -> bool:
    if isinstance(where, int) and not isinstance(where, bool):
        return True  # accelerate's device_map: an int is a GPU index
    return str(where).startswith("cuda")


def layer_devices(model: Any) -> list[Any]:
    """The torch device each layer of ``model`` computes on: its parameters' device, or for a
    layer offloaded by accelerate (parameters on "meta") its hook's execution device."""
    import torch

    out = []
    for layer in model._layers:
        dev = None
        for p in layer.parameters():
            dev = p.device
            break
        hook = getattr(layer, "_hf_hook", None)
        if (dev is None or dev.type == "meta") and hook is not None:
            ex = getattr(hook, "execution_device", None)
            dev = torch.device(ex if not isinstance(ex, int) else f"cuda:{ex}") if ex is not None else None
        out.append(torch.device("cpu") if dev is None or dev.type == "meta" else dev)
    return out


def resolve(attribution: Any, model: Any) -> Any:
    """The backend object for ``model`` (None: the C core), from ``attribution``."""
    attribution = check_attribution(attribution)
    devices = layer_devices(model)
    if attribution is None:
        attribution = "torch" if any(d.type == "cuda" for d in devices) else "core"
    if attribution == "core":
        return None
    from ltt.backends.torch import TorchBackend

    return TorchBackend(devices)


def of(trace_or_model: Any) -> Any:
    """The kernels a trace (or model) is attributed with: the torch backend, or the C core's
    wrappers (:mod:`ltt.kernels`); both have the same functions and signatures."""
    model = getattr(trace_or_model, "model", trace_or_model)
    backend = getattr(model, "backend", None)
    if backend is not None:
        return backend
    from ltt import kernels

    return kernels
