"""Loading a causal LM for tracing: ``ltt.load`` and where a name resolves (embedded, local folder, hub).

A name is an embedded model (offline), a local directory (safetensors only) or a hub id; a name
that looks like a path and names no directory fails before any hub call, and with
``HF_HUB_OFFLINE`` set only cached files are read. A transformers model already in memory is
wrapped as it is.

>>> model = ltt.load("smollm2-135m")                          # doctest: +SKIP
>>> model = ltt.load("./my-model", dtype="bfloat16")          # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from ltt.models.embedded import EMBEDDED, is_embedded, load_embedded
from ltt.models.families import family_for
from ltt.models.model import Model


def load(
    name_or_path: Any,
    *,
    tokenizer: Any = None,
    dtype: Any = None,
    device: Any = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    max_tokens: int | None = None,
    attribution: str | None = None,
) -> Model:
    """Load a causal LM for tracing.

    * ``name_or_path``: a hub id, a local directory (safetensors weights only), an embedded
      model name (``"smollm2-135m"``, offline), or a transformers model already in memory
      (wrapped without copying; pass its ``tokenizer``). ``tokenizer``: a tokenizer object or
      a hub id / directory to load one from (default: the model's own).
    * ``dtype``: torch dtype or its name (default float32); ``device`` / ``device_map``: where the
      weights live (``device_map``, ``max_memory`` and ``offload_folder`` go to
      transformers/accelerate: a model larger than memory is traced with its layers offloaded
      to CPU or disk, paged in layer by layer as its own forward pages them); buffers always
      come back to the CPU as float32.
    * ``trust_remote_code``: off unless asked; ``max_tokens``: the longest prompt accepted (default
      the model's context).
    * ``attribution``: where layers are attributed (:mod:`ltt.backends`): None picks "core" (the
      C core) for CPU layers and "torch" for CUDA layers; "torch" on the CPU is allowed.

    >>> model = ltt.load("smollm2-135m")                          # doctest: +SKIP
    >>> model = ltt.load("gpt2", dtype="float32")                 # doctest: +SKIP
    >>> model = ltt.load(hf_model, tokenizer=tok)                 # doctest: +SKIP
    """
    from ltt import backends

    backends.check_requested_device(backends.check_attribution(attribution), device, device_map)
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tok_name = _local_or_hub(os.fspath(tokenizer), "tokenizer")
        tokenizer = _from_hub(AutoTokenizer.from_pretrained, tok_name, "tokenizer", "tokenizer",
                              revision=revision, trust_remote_code=trust_remote_code)
    if not isinstance(name_or_path, (str, os.PathLike)):
        return _with_backend(_wrap(name_or_path, tokenizer, max_tokens), attribution)
    torch_dtype = _dtype(dtype)
    name = os.fspath(name_or_path)
    if not is_embedded(name):
        name = _local_or_hub(name, "name_or_path")
        near_embedded(name, "name_or_path")
    if is_embedded(name) and not os.path.isdir(name):
        if device_map is not None:
            raise ValueError(f"device_map is not supported for the embedded model {name!r}; use device")
        hf_model, tok = load_embedded(name, dtype=torch_dtype, device=device)
        return _with_backend(Model(hf_model, tokenizer if tokenizer is not None else tok, name=name.lower(),
                                   max_tokens=max_tokens), attribution)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = _from_hub(AutoConfig.from_pretrained, name, "name_or_path", "config",
                       revision=revision, trust_remote_code=trust_remote_code)
    family_for(config)  # refuse unsupported or post-LN models before downloading weights
    kwargs: dict[str, Any] = dict(
        revision=revision,
        trust_remote_code=trust_remote_code,
        dtype=torch_dtype,
        attn_implementation="eager",
        use_safetensors=True,
    )
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        kwargs["offload_folder"] = os.fspath(offload_folder)
    hf_model = _from_hub(AutoModelForCausalLM.from_pretrained, name, "name_or_path", "weights", **kwargs)
    if device is not None and device_map is None:
        hf_model = hf_model.to(device)
    hf_model.eval()
    if tokenizer is None:
        tokenizer = _from_hub(AutoTokenizer.from_pretrained, name, "name_or_path", "tokenizer",
                              revision=revision, trust_remote_code=trust_remote_code)
    return _with_backend(Model(hf_model, tokenizer, name=name, max_tokens=max_tokens), attribution)


def _with_backend(model: Model, attribution: str | None) -> Model:
    """``model`` with its attribution backend chosen (:func:`ltt.backends.resolve`)."""
    from ltt import backends

    model.backend = backends.resolve(attribution, model)
    return model


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now: read at each load,
    not only when huggingface_hub was imported (a notebook may set it later)."""
    from ltt import config

    return config.hub_offline()


def _local_or_hub(name: str, argname: str) -> str:
    """``name`` as a local directory (``~`` expanded) or a hub id; a name that looks like a path
    (starts with /, ./, ../ or ~, has more than one /, or its first folder exists here) and names
    no directory raises FileNotFoundError saying so, before any hub call (issue 11: the hub's
    repo-id format error was all a mistyped path got)."""
    if not name:
        raise ValueError(f"{argname} is empty: give a hub id, a local directory or 'smollm2-135m'")
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{argname}={name!r} is a file, not a directory: give the folder that "
                                 "holds config.json and the weights")
    head = name.replace(os.sep, "/").split("/")[0]
    looks_like_path = (name.startswith(("/", "./", "../", "~")) or name in (".", "..")
                       or name.replace(os.sep, "/").count("/") > 1 or ("/" in name and os.path.isdir(head)))
    if not looks_like_path:
        return name
    raise FileNotFoundError(f"{argname}={name!r}: no such directory ({missing_folder(path)}); a local "
                            "model is a folder holding config.json and the weights, a hub id looks like 'org/name'")


def missing_folder(path: str) -> str:
    """Where ``path``, which names no folder, went wrong: the nearest folder that exists and,
    when one of its folders is a near miss of the part not found, "did you mean" it.

    >>> missing_folder("/no-such-folder-here/model")
    "the nearest folder that exists is '/'"
    """
    path = os.path.abspath(os.path.expanduser(path))
    existing, child = os.path.dirname(path), os.path.basename(path)
    while existing and not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing, child = os.path.dirname(existing), os.path.basename(existing)
    text = f"the nearest folder that exists is {existing!r}"
    try:
        entries = [e for e in os.listdir(existing) if os.path.isdir(os.path.join(existing, e))]
    except OSError:
        entries = []
    near = difflib.get_close_matches(child, entries, n=3, cutoff=0.6)
    if near:
        text += "; did you mean " + " or ".join(repr(os.path.join(existing, e)) for e in near) + "?"
    return text


def near_embedded(name: str, argname: str) -> None:
    """Refuse a bare name (no folder, no ``org/``) that is a near miss of an embedded model's name,
    before any hub call: ``smollm-135m`` is a typo, not a hub id worth 26 s of retries.

    >>> near_embedded("gpt2", "name_or_path")          # a real hub id: fine
    >>> near_embedded("smollm-135m", "name_or_path")   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: name_or_path='smollm-135m' is not a model ltt knows: did you mean 'smollm2-135m'? ...
    """
    if "/" in name or os.sep in name or is_embedded(name) or os.path.exists(os.path.expanduser(name)):
        return
    near = difflib.get_close_matches(name.lower(), list(EMBEDDED), n=1, cutoff=0.8)
    if near:
        raise ValueError(f"{argname}={name!r} is not a model ltt knows: did you mean {near[0]!r}? (the "
                         f"embedded models are {', '.join(map(repr, EMBEDDED))}; a hub id looks like "
                         "'org/name')")


def _from_hub(load_fn: Any, name: str, argname: str, what: str, **kwargs: Any) -> Any:
    """``load_fn(name, **kwargs)`` (a transformers ``from_pretrained``) with cached files only when
    ``HF_HUB_OFFLINE`` is set, and a hub failure that says which model, what, and how to fail fast."""
    local = os.path.isdir(name)
    offline = _hub_offline()
    if offline and not local:
        kwargs["local_files_only"] = True
    try:
        return load_fn(name, **kwargs)
    except OSError as exc:
        if local:
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        if offline:
            raise OSError(
                f"{argname}={name!r}: not a local directory, not an embedded model "
                f"({', '.join(EMBEDDED)}), and its {what} is not in the Hugging Face cache; HF_HUB_OFFLINE "
                f"is set, so the hub was not asked (unset HF_HUB_OFFLINE to download it). ({first})") from exc
        raise OSError(
            f"{argname}={name!r}: loading its {what} from the Hugging Face hub failed: {first} Without "
            "network, set HF_HUB_OFFLINE=1 (export HF_HUB_OFFLINE=1, or os.environ['HF_HUB_OFFLINE'] = '1' "
            "before ltt.load) to fail at once and use cached models only.") from exc


def _dtype(dtype: Any):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(value, torch.dtype) and value.is_floating_point:
            return value
    raise ValueError(f"dtype must be a floating torch dtype or its name (e.g. 'float32', 'bfloat16'), got {dtype!r}")


def _wrap(hf_model: Any, tokenizer: Any, max_tokens: int | None) -> Model:
    import torch

    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise TypeError(
            "name_or_path must be a hub id, a local directory, an embedded model name "
            f"({', '.join(EMBEDDED)}) or a transformers model, got {type(hf_model).__name__}: {hf_model!r}"[:400]
        )
    if tokenizer is None:
        raise ValueError(
            f"ltt.load({type(hf_model).__name__}) needs its tokenizer: ltt.load(model, tokenizer=tok)"
        )
    return Model(hf_model, tokenizer, name=getattr(hf_model.config, "name_or_path", None) or None,
                 max_tokens=max_tokens)


def check_model_name(name: str) -> None:
    """Refuse a path-like ``--model`` that names no directory before transformers reads it as a
    hub id (its own message is about repo-id syntax).

    >>> check_model_name("smollm2-135m")           # the embedded model, a directory or a hub id: fine
    >>> check_model_name("./no/such/dir")          # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: --model './no/such/dir': no such model directory ...
    """
    if is_embedded(name) or os.path.isdir(os.path.expanduser(name)):
        return
    if os.path.exists(os.path.expanduser(name)):
        raise ValueError(f"--model {name!r} is a file, not a model directory (give the folder that holds "
                         "config.json and the weights, a hub id such as 'gpt2', or 'smollm2-135m')")
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    if looks_like_path:
        raise ValueError(
            f"--model {name!r}: no such model directory ({missing_folder(name)}; give a local directory "
            "holding config.json, a hub id such as 'gpt2', or 'smollm2-135m')")
    near_embedded(name, "--model")
