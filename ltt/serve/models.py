"""The models ``ltt serve`` may load: the allowed-model registry and the LRU cache of loaded ones.

The page names a model only by the id the server gave it; an id maps to a source fixed at
startup (the embedded model, a ``--model`` id or directory, a directory found under
``--models-dir``). Nothing the page sends is ever used as a path or a hub id, and
``trust_remote_code`` is always off.

>>> reg = ModelRegistry(models=[], models_dirs=[], embedded=False)      # doctest: +SKIP
>>> reg.get("/etc")                                                     # doctest: +SKIP
Traceback (most recent call last):
KeyError: "model '/etc' is not one of the models this server offers: ..."
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ltt.checks import is_int

__all__ = ["ModelEntry", "ModelRegistry", "ModelCache", "machine_choices", "clip"]


def clip(value: Any, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters: a value from the page, quoted in a message.

    >>> clip("x" * 100, 10)
    "'xxxxxxxx…"
    """
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass(frozen=True)
class ModelEntry:
    """One model the server offers: ``id`` (what the page sends), ``source`` (what ``ltt.load``
    gets) and a ``label`` for the picker."""

    id: str
    source: str
    label: str


def check_family(path: str, what: str) -> str | None:
    """Why the model directory ``path`` cannot be traced (its ``config.json``'s ``model_type`` is
    not a supported family, the list of supported ones included), or None."""
    import json

    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError):  # no config or a broken one: the load says why, later
        return None
    from ltt.models.families import FAMILIES, REFUSED, supported

    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type in FAMILIES:
        return None
    if model_type in REFUSED:
        return f"{what} {path!r}: cannot trace model_type={model_type!r}: {REFUSED[model_type]}"
    return (f"{what} {path!r}: unsupported architecture model_type={model_type!r}; ltt supports the model "
            f"types: {', '.join(supported())}")


def _embedded_available(name: str) -> bool:
    from ltt.models.embedded import locate

    try:
        locate(name)
        return True
    except (ImportError, FileNotFoundError):
        return False


class ModelRegistry:
    """The allowed models, in picker order: the ``--model`` entries, the model directories under
    each ``--models-dir`` (subdirectories holding a ``config.json``), then the embedded model
    when it is installed.

    >>> reg = ModelRegistry(["gpt2"], [], embedded=False)
    >>> [e.id for e in reg.entries]
    ['gpt2']
    """

    def __init__(self, models: list[str], models_dirs: list[str], embedded: bool = True):
        self._by_id: dict[str, ModelEntry] = {}
        self.skipped: list[str] = []  # --models-dir entries of unsupported families
        for m in models:
            if not isinstance(m, str) or not m.strip():
                raise ValueError(f"--model must name a model, got {m!r}")
            if os.path.isdir(m):
                path = os.path.abspath(m)
                why = check_family(path, "--model")
                if why:
                    raise ValueError(why)
                name = os.path.basename(path.rstrip(os.sep)) or path
                self._add(name, path, f"{name} (--model directory)")
            else:
                from ltt.models.loading import check_model_name

                try:
                    check_model_name(m)  # a path-like name that is no directory: refused now
                except ValueError as exc:
                    raise ValueError(str(exc)) from None
                self._add(m, m, m)
        for d in models_dirs:
            if not os.path.isdir(d):
                raise ValueError(f"--models-dir {d!r}: no such directory")
            for sub in sorted(os.listdir(d)):
                path = os.path.abspath(os.path.join(d, sub))
                if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
                    why = check_family(path, "--models-dir entry")
                    if why:  # not offered; said at startup
                        self.skipped.append(why)
                        continue
                    self._add(sub, path, f"{sub} ({os.path.basename(os.path.abspath(d))}/)")
        if embedded:
            from ltt.models.embedded import EMBEDDED

            for name, entry in EMBEDDED.items():
                if name not in self._by_id and _embedded_available(name):
                    self._add(name, name, f"{name} (embedded)")
        if not self._by_id:
            raise ValueError(
                "no model to serve: give --model (a hub id or a directory) or --models-dir (a folder "
                "of model directories), or install the embedded model"
            )

    def _add(self, wanted: str, source: str, label: str) -> None:
        mid, n = wanted, 2
        while mid in self._by_id:  # two directories with the same name: id-2, id-3, ...
            if self._by_id[mid].source == source:
                return
            mid, n = f"{wanted}-{n}", n + 1
        self._by_id[mid] = ModelEntry(mid, source, label)

    @property
    def entries(self) -> list[ModelEntry]:
        return list(self._by_id.values())

    def get(self, model_id: Any) -> ModelEntry:
        """The entry of an id the page sent; anything else is a ``KeyError`` naming the value."""
        if isinstance(model_id, str) and model_id in self._by_id:
            return self._by_id[model_id]
        raise KeyError(
            f"model {clip(model_id, 200)} is not one of the models this server offers: "
            f"{', '.join(self._by_id)}"
        )


def machine_choices() -> tuple[list[str], list[str]]:
    """(devices, dtypes) this machine offers: the CPU, plus CUDA / MPS when torch sees them;
    float32 first, then the half-precision types."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices, ["float32", "bfloat16", "float16"]


class ModelCache:
    """Loaded models keyed by (id, device, dtype), least recently used evicted beyond
    ``max_models``. Used from the worker thread only (one load at a time).

    >>> cache = ModelCache(reg, max_models=2, max_tokens=512)     # doctest: +SKIP
    >>> model = cache.get("gpt2", "cpu", "float32")               # doctest: +SKIP
    """

    def __init__(self, registry: ModelRegistry, max_models: int, max_tokens: int):
        if not is_int(max_models) or max_models < 1:
            raise ValueError(f"--max-models must be a positive integer, got {max_models!r}")
        self.registry = registry
        self.max_models = max_models
        self.max_tokens = max_tokens
        self._models: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self.devices, self.dtypes = machine_choices()

    def key(self, model_id: Any, device: Any, dtype: Any) -> tuple[str, str, str]:
        """The validated cache key; bad values raise naming them."""
        entry = self.registry.get(model_id)
        if device not in self.devices:
            raise ValueError(f"device must be one of {self.devices}, got {clip(device, 80)}")
        if dtype not in self.dtypes:
            raise ValueError(f"dtype must be one of {self.dtypes}, got {clip(dtype, 80)}")
        return entry.id, device, dtype

    def cached(self, key: tuple[str, str, str]) -> bool:
        return key in self._models

    def loaded(self) -> list[tuple[str, str, str]]:
        """Keys of the loaded models, least recently used first."""
        return list(self._models)

    def get(self, model_id: Any, device: Any = "cpu", dtype: Any = "float32") -> Any:
        """The loaded model (loading it, and evicting the least recently used, when needed)."""
        key = self.key(model_id, device, dtype)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        entry = self.registry.get(key[0])
        import ltt

        model = ltt.load(entry.source, device=None if device == "cpu" else device, dtype=dtype,
                         max_tokens=self.max_tokens, trust_remote_code=False)
        self._models[key] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model
