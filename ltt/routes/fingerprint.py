"""The fingerprint of a routes run (model, weights, prompt list) and what differs between two runs.

A routes file's header holds its run's fingerprint (:mod:`ltt.routes.store`): the model (a hash
of its config, its dtype, a checksum of a fixed sample of every weight tensor, ltt's version),
the settings and the prompt list (a chained hash of every ``(index, prompt)``; each record also
stores the chain up to its own prompt). Resuming with another model, other settings or another
prompt list is refused with a message naming what differs (:func:`differences`), and so is
merging the shards of different runs.

The weights checksum reads :data:`WEIGHT_SAMPLE` evenly spaced elements of each parameter tensor
(all of a smaller one): any change of a whole tensor (new weights, fine-tuning steps, a different
checkpoint of the same name) changes it; an edit of a few elements between the sampled ones would
not.

>>> chain = PromptChain()
>>> chain.update(0, "The capital of France is")[:8]
'd6b89b83'
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

#: How many evenly spaced elements of each weight tensor the checksum reads.
WEIGHT_SAMPLE = 512

# Config entries that say how the model runs or where it came from, not what it computes.
_CONFIG_SKIP = frozenset({
    "_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash",
    "architectures", "output_attentions", "output_hidden_states", "use_cache", "return_dict",
    "_attn_implementation", "attn_implementation", "_attn_implementation_autoset",
    "id2label", "label2id",
})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def weights_checksum(module: Any, sample: int = WEIGHT_SAMPLE) -> str:
    """A checksum of ``module``'s parameters: names, shapes, dtypes and ``sample`` evenly spaced
    elements of each tensor (read exactly, as float64), in name order.

    >>> import torch                                                     # doctest: +SKIP
    >>> weights_checksum(torch.nn.Linear(2, 2)) != weights_checksum(torch.nn.Linear(2, 2))  # doctest: +SKIP
    True
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
            n = p.numel()
            if n == 0:
                continue
            if p.device.type == "meta":  # offloaded and not materialised: its shape is all we see
                h.update(b"meta")
                continue
            k = min(n, sample)
            idx = torch.div(torch.arange(k, dtype=torch.int64) * (n - 1), max(k - 1, 1), rounding_mode="floor")
            vals = torch.take(p.detach(), idx.to(p.device)).to(torch.float64).cpu()
            h.update(vals.numpy().tobytes())
    return h.hexdigest()[:16]


def config_hash(config: Any) -> str:
    """A hash of a transformers config's entries that define the computation."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {k: v for k, v in d.items() if k not in _CONFIG_SKIP}
    return _sha(json.dumps(kept, sort_keys=True, default=repr).encode())


def model_fingerprint(model: Any) -> dict[str, Any]:
    """The model part of a run's fingerprint: ``config`` (hash), ``dtype``, ``weights``
    (:func:`weights_checksum`) and ``ltt`` (the version that wrote the file)."""
    from ltt import __version__

    hf = getattr(model, "hf_model", None)
    if hf is None:
        return {"config": None, "dtype": None, "weights": None, "ltt": __version__}
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in hf.parameters()})
    return {"config": config_hash(hf.config), "dtype": ",".join(dtypes), "weights": weights_checksum(hf),
            "ltt": __version__}


class PromptChain:
    """The running hash of a prompt list: ``update(index, prompt)`` returns the hash of every
    ``(index, prompt)`` given so far (16 hex digits). Equal chains mean equal prompt lists up to
    there, whatever their length."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"ltt-prompts\n")
        self.count = 0

    def update(self, index: int, prompt: Any) -> str:
        text = prompt if isinstance(prompt, str) else f"<{type(prompt).__name__}> {prompt!r}"
        data = text.encode("utf-8", "surrogatepass")
        self._h.update(f"{int(index)}:{len(data)}:".encode())
        self._h.update(data)
        self.count += 1
        return self.hexdigest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:16]


def prompts_fingerprint(items: Iterable[tuple[int, Any]]) -> dict[str, Any]:
    """``{"count", "sha256"}`` of a whole prompt list given as ``(index, prompt)`` pairs."""
    chain = PromptChain()
    for i, p in items:
        chain.update(i, p)
    return {"count": chain.count, "sha256": chain.hexdigest()}


def short_repr(x: Any) -> str:
    s = repr(x)
    return s if len(s) <= 60 else s[:57] + "..."


def settings_of(header: dict[str, Any]) -> dict[str, Any]:
    """A header's settings as this ltt compares them: ``"weighting": "flow"``, which files
    written before flow became the only weighting carry, is the run's weighting and is dropped;
    any other weighting stays (such a file is refused where it is read, :mod:`ltt.routes.files`)."""
    settings = dict(header.get("settings") or {})
    if settings.get("weighting") == "flow":
        del settings["weighting"]
    return settings


def differences(old: dict[str, Any], new: dict[str, Any],
                where: tuple[str, str] = ("in the file", "now")) -> list[str]:
    """What differs between two headers' runs, one phrase each (empty when they are one run).
    ``where`` names the two sides in the phrases. Prompt lists are compared when both headers
    fingerprinted theirs whole."""
    a, b = where
    out: list[str] = []
    fo, fn = old.get("fingerprint") or {}, new.get("fingerprint") or {}
    mo, mn = fo.get("model") or {}, fn.get("model") or {}
    labels = {"config": "the model's config", "dtype": "the model's dtype",
              "weights": "the model's weights (checksum)", "ltt": "the ltt version"}
    for key, label in labels.items():
        if mo.get(key) != mn.get(key):
            out.append(f"{label}: {mo.get(key)!r} {a}, {mn.get(key)!r} {b}")
    for key in ("n_layers", "n_heads"):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} {a}, {new.get(key)!r} {b}")
    so, sn = settings_of(old), settings_of(new)
    for key in sorted(set(so) | set(sn)):
        if so.get(key) != sn.get(key):
            out.append(f"settings {key}: {short_repr(so.get(key))} {a}, {short_repr(sn.get(key))} {b}")
    po, pn = fo.get("prompts") or {}, fn.get("prompts") or {}
    if po.get("sha256") is not None and pn.get("sha256") is not None and po != pn:
        out.append(f"the prompt list: {po.get('count')} prompts (hash {po.get('sha256')}) {a}, "
                   f"{pn.get('count')} (hash {pn.get('sha256')}) {b}")
    return out
