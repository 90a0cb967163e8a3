"""Device memory of one layer traced with the torch backend, and the refusal before the forward
pass when a CUDA device cannot hold it (docs/gpu.md has the formula at 7B and 4,096 tokens).

Per layer, with n heads scored at once (n = H in the "dense" and "layer" modes, else
``BATCH_BYTES / (25 T^2)``), model dtype size e:

* the model's own eager attention: scores and masked scores ``2 e H T^2`` and the float32
  softmax ``4 H T^2`` (one kv group's heads in the "stream" mode);
* the probabilities handed to the backend, float32: ``4 H T^2`` (``4 n T^2`` when streamed);
* raws and shares: ``21 n T^2`` (float64 raws and shares, float32 shares, the floor mask);
* the head vectors ``4 n T d``, the edges ``12 T^2``, one distance chunk (CHUNK_BYTES).
"""

from __future__ import annotations

from typing import Any

from ltt.backends import torch as tb


def layer_bytes(H: int, G: int, T: int, d: int, esize: int, mode: str) -> dict[str, int]:
    """The device bytes of one layer's transient, by item (see the module docstring)."""
    n = H if mode in ("dense", "layer") else max(1, min(H, tb.BATCH_BYTES // tb.batch_bytes_per_head(T)))
    model_heads = H // max(G, 1) if mode == "stream" else H
    out = {
        "model attention": (2 * esize + 4) * model_heads * T * T,
        "probabilities": 4 * (n if mode == "stream" else H) * T * T,
        "raws and shares": 21 * n * T * T,
        "head vectors": 4 * n * T * d,
        "edges": 12 * T * T,
        "chunk": tb.CHUNK_BYTES,
    }
    out["total"] = sum(out.values())
    return out


def check_device_memory(model: Any, plan: Any, devices: Any) -> None:
    """Raise MemoryError when a CUDA device's free memory (``torch.cuda.mem_get_info``) is below
    one layer's transient, with the estimate and what to do."""
    import torch

    cuda = sorted({d for d in devices if d.type == "cuda"}, key=str)
    if not cuda:
        return
    from ltt.models.tracing import dtype_name

    esize = {"float16": 2, "bfloat16": 2, "float64": 8}.get(dtype_name(model), 4)
    T = plan.n_tokens
    need = layer_bytes(model.n_heads, model.n_kv_heads, T, model.d_model, esize, plan.mode(0))
    for dev in cuda:
        free, _ = torch.cuda.mem_get_info(dev)
        if need["total"] > free:
            gib = 2**30
            items = ", ".join(f"{k} {v / gib:.2f}" for k, v in need.items() if k != "total")
            raise MemoryError(
                f"tracing {T} tokens through {model.name!r} needs about {need['total'] / gib:.1f} GiB of "
                f"device memory per layer on {dev} ({items} GiB; memory mode {plan.mode(0)!r}) but only "
                f"{free / gib:.1f} GiB is free there: use a shorter prompt, memory='stream', free the "
                "device (other tensors, torch.cuda.empty_cache()), or attribution='core' to attribute "
                "on the host"
            )
