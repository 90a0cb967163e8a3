"""Load a Hugging Face causal LM and record traces of it: ``ltt.load`` and :class:`Model`.

``load`` accepts a hub id, a local directory (safetensors only), an embedded model name
(``"smollm2-135m"``) or a transformers model already in memory. :meth:`Model.trace` runs one
forward pass with hooks on every layer (the module paths come from :mod:`ltt.models.families`)
and returns a :class:`ltt.trace.Trace` of float32 NumPy buffers on the CPU.

>>> import ltt                                                       # doctest: +SKIP
>>> model = ltt.load("smollm2-135m")                                 # doctest: +SKIP
>>> trace = model.trace("The capital of France is")                  # doctest: +SKIP
>>> trace.top_prediction()[0][0]                                     # doctest: +SKIP
' Paris'
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ltt.models.embedded import EMBEDDED, is_embedded, load_embedded
from ltt.models import moe
from ltt.models.families import Family, _heads, family_for, get_module, split_values, supported
from ltt.models.unembedding import Unembedding
from ltt.trace import LayerBuffers, Trace

__all__ = ["load", "Model", "FrozenNorm", "supported", "EMBEDDED"]


# --------------------------------------------------------------------------------------------
# small helpers


def _param_numpy(p: Any) -> np.ndarray:
    """A parameter as float32 NumPy: a view when it already is float32 on the CPU."""
    import torch

    if p.device.type == "meta":
        raise ValueError(
            "a weight is offloaded (on the meta device); ltt needs every weight in memory: "
            "load without disk offload"
        )
    t = p.detach()
    if t.dtype == torch.float32 and t.device.type == "cpu":
        return t.numpy()
    return t.to(device="cpu", dtype=torch.float32).numpy()


def _is_conv1d(module: Any) -> bool:
    # transformers' Conv1D (GPT-2) keeps its weight as [in, out], the transpose of nn.Linear.
    return type(module).__name__ == "Conv1D"


def _linear_in_out(module: Any) -> np.ndarray:
    """The weight of a linear map as ``[in, out]`` (a view where possible)."""
    w = _param_numpy(module.weight)
    return w if _is_conv1d(module) else w.T


def _in_out_shape(module: Any) -> tuple[int, int]:
    """``(in, out)`` sizes of a linear map, read from its weight's shape (no copy, works offloaded)."""
    shape = tuple(module.weight.shape)
    return (shape[0], shape[1]) if _is_conv1d(module) else (shape[1], shape[0])


def _bias(module: Any) -> np.ndarray | None:
    b = getattr(module, "bias", None)
    return None if b is None else _param_numpy(b)


def _float32():
    import torch

    return torch.float32


def weights_stamp(params: Sequence[Any]) -> tuple:
    """What identifies the current values of ``params``: version counter, storage, dtype,
    device and shape of each (changes with ``load_state_dict``, optimiser steps, in-place edits)."""
    return tuple((p._version, p.data_ptr(), str(p.dtype), str(p.device), tuple(p.shape)) for p in params)


def _offloaded(module: Any) -> bool:
    """Whether accelerate offloads ``module``'s own weights (to CPU or disk, paged in per forward)."""
    hook = getattr(module, "_hf_hook", None)
    return bool(getattr(hook, "offload", False))


def _on_device(module: Any):
    """A context where the weights of ``module``'s offloaded submodules (accelerate's CPU/disk
    offload) are paged in, as the model's own forward pages them."""
    from contextlib import ExitStack, nullcontext

    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:
        return nullcontext()
    stack = ExitStack()
    for m in module.modules():
        if has_offloaded_params(m):
            stack.enter_context(align_module_device(m))
    return stack


def _quiet() -> bool:
    if os.environ.get("LTT_QUIET") or "pytest" in sys.modules:
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


# --------------------------------------------------------------------------------------------
# norms


@dataclass
class NormParams:
    """A LayerNorm (``kind="layer"``) or RMSNorm (``kind="rms"``): effective gamma, beta, eps."""

    kind: str
    gamma: np.ndarray | None
    beta: np.ndarray | None
    eps: float

    @classmethod
    def of(cls, module: Any, offset: float = 0.0, kind: str | None = None,
           eps: float | None = None) -> "NormParams":
        """The parameters of a norm module; ``kind`` ("layer"/"rms") and ``eps`` override what
        its type and attributes say (a family's own LayerNorm class, a hard-coded epsilon)."""
        import torch

        if kind is None:
            kind = "layer" if isinstance(module, torch.nn.LayerNorm) else "rms"
        for key in ("eps", "variance_epsilon", "epsilon"):
            if getattr(module, key, None) is not None:
                eps = float(getattr(module, key))
                break
        if eps is None:
            raise ValueError(f"cannot find the epsilon of norm module {type(module).__name__}")
        w = getattr(module, "weight", None)
        gamma = None if w is None else _param_numpy(w).astype(np.float32) + np.float32(offset)
        beta = _bias(module) if kind == "layer" else None
        return cls(kind, gamma, beta, eps)

    def scale(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-row ``(1/rms or 1/std, mean or None)`` of ``x [..., d]``, in float64."""
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "layer":
            mean = x.mean(axis=-1)
            var = ((x - mean[..., None]) ** 2).mean(axis=-1)
            return 1.0 / np.sqrt(var + self.eps), mean
        return 1.0 / np.sqrt((x * x).mean(axis=-1) + self.eps), None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        r, mean = self.scale(x)
        y = np.asarray(x, dtype=np.float64)
        if mean is not None:
            y = y - mean[..., None]
        y = y * r[..., None]
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y.astype(np.float32)


@dataclass
class BranchScale:
    """A constant multiplier on a branch before the residual add (Granite's
    ``residual_multiplier``), in :class:`NormParams`' interface: each part of the branch is
    scaled by it, as a post-branch norm's frozen scale would be."""

    value: float
    kind: str = "scale"
    gamma: None = None
    beta: None = None

    def scale(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return np.full(np.shape(x)[:-1], self.value, dtype=np.float64), None


@dataclass
class FrozenNorm:
    """A norm linearised at given states: ``norm(x) ~ gamma * scale * (x - center?) + beta``
    with ``scale`` (and ``mean``) frozen per state, so the direct effect of an update ``u`` is
    :meth:`linear` ``(u)`` (centred for a LayerNorm).

    >>> fz = model.final_norm_scale(trace.layers[-1].resid_post)      # doctest: +SKIP
    >>> fz.linear(update).shape                                        # doctest: +SKIP
    """

    kind: str  # "rms" or "layer"
    scale: np.ndarray  # [...] 1/rms (RMSNorm) or 1/std (LayerNorm) per state
    mean: np.ndarray | None  # [...] per-state mean (LayerNorm)
    gamma: np.ndarray | None  # [d] effective weight (Gemma: 1 + weight)
    beta: np.ndarray | None  # [d]
    center: bool

    def linear(self, update: np.ndarray) -> np.ndarray:
        """The frozen norm's linear part applied to ``update [..., d]`` (no beta), float32."""
        u = np.asarray(update, dtype=np.float64)
        if self.center:
            u = u - u.mean(axis=-1, keepdims=True)
        u = u * np.asarray(self.scale)[..., None]
        if self.gamma is not None:
            u = u * self.gamma
        return u.astype(np.float32)


# --------------------------------------------------------------------------------------------
# the model


class Model:
    """A traceable causal LM: a transformers model, its tokenizer and its family's hook points.

    Attributes: ``name``, ``family`` (name), ``n_layers``, ``n_heads``, ``n_kv_heads``,
    ``d_model``, ``d_head``, ``d_ffn``, ``vocab_size``, ``parallel`` (per layer), ``hf_model``,
    ``tokenizer``, ``max_tokens`` (the longest prompt :meth:`trace` accepts, or None).

    >>> model = ltt.load("smollm2-135m")                  # doctest: +SKIP
    >>> model.n_layers, model.n_heads, model.n_kv_heads    # doctest: +SKIP
    (30, 9, 3)
    """

    def __init__(self, hf_model: Any, tokenizer: Any, name: str | None = None,
                 max_tokens: int | None = None):
        config = hf_model.config
        fam = family_for(config)
        self._family: Family = fam
        self.family: str = fam.name
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.name = name or getattr(config, "name_or_path", None) or type(hf_model).__name__
        self._layers = get_module(hf_model, fam.layers)
        if self._layers is None:
            raise ValueError(
                f"{type(hf_model).__name__} (model_type={config.model_type!r}) has no layer list at "
                f"{fam.layers!r}; ltt expects the causal-LM class (e.g. AutoModelForCausalLM)"
            )
        self.n_layers = len(self._layers)
        self.n_heads = _heads(config)
        self.n_kv_heads = fam.n_kv_heads(config)
        layer0 = self._layers[0]
        o_in, o_out = _in_out_shape(self._sub(layer0, fam.o_proj))  # [H*d_h, d]
        self.d_head = o_in // self.n_heads
        self.d_model = o_out
        self.d_ffn = (moe.ffn_width(fam, layer0) if moe.experts_module(fam, layer0) is not None
                      else _in_out_shape(self._sub(layer0, fam.down))[0])
        self.parallel = [bool(fam.parallel(config))] * self.n_layers
        head = hf_model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(hf_model).__name__} has no output embeddings (lm_head)")
        self._lm_head = head
        self.vocab_size = int(head.weight.shape[0])
        self._final_norm_module = get_module(hf_model, fam.final_norm)
        pre = get_module(hf_model, fam.unembed_pre)
        self._unembed_pre = None if pre is None else _linear_in_out(pre)
        self._softcap = getattr(config, "final_logit_softcapping", None)
        self._logit_scale = float(fam.logit_scale(config))  # Cohere, Granite: logits times a constant
        self.max_tokens = self._context_limit(max_tokens)
        self._weights: dict[Any, tuple[tuple, Any]] = {}  # key -> (parameter versions, value)

    # -- structure ---------------------------------------------------------------------------

    def _sub(self, layer: Any, path: str) -> Any:
        mod = get_module(layer, path)
        if mod is None:
            raise ValueError(
                f"{type(layer).__name__} has no module {path!r}; the {self.family} adapter does not "
                "match this model's layout"
            )
        return mod

    def _context_limit(self, max_tokens: int | None) -> int | None:
        cfg = self.hf_model.config
        ctx = None
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                ctx = value
                break
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
                raise TypeError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
            if max_tokens < 1:
                raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
            return int(max_tokens) if ctx is None else min(int(max_tokens), ctx)
        return ctx

    def _cached(self, key: Any, modules: Sequence[Any], make: Any) -> Any:
        """``make()`` cached under ``key`` until a parameter of ``modules`` changes (its version
        counter, storage or dtype: ``load_state_dict``, an optimiser step, an in-place edit).
        Only float32 CPU weights are cached; others are converted on each use (no float32 copy
        of a half-precision model is kept)."""
        params = [p for m in modules if m is not None for p in m.parameters(recurse=False)]
        stamp = weights_stamp(params)
        hit = self._weights.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = make()
        if all(p.dtype == _float32() and p.device.type == "cpu" for p in params) and not any(
                _offloaded(m) for m in modules if m is not None):
            self._weights[key] = (stamp, value)
        else:
            self._weights.pop(key, None)
        return value

    def _layer_modules(self, layer: int) -> tuple[Any, Any, Any, Any]:
        fam = self._family
        mod = self._layers[layer]
        experts = moe.experts_module(fam, mod)  # a MoE layer: the experts stand for the down projection
        return (self._sub(mod, fam.o_proj), self._sub(mod, fam.down) if experts is None else experts,
                get_module(mod, fam.attn_post_norm), get_module(mod, fam.ffn_post_norm))

    def layer_stamp(self, layer: int) -> tuple:
        """The versions of the parameters a layer's decomposition reads (see :meth:`_cached`)."""
        params = [p for m in self._layer_modules(layer) if m is not None for p in m.parameters(recurse=False)]
        return weights_stamp(params)

    def _module_weight(self, layer: int, key: str, module: Any) -> np.ndarray:
        """``w_o [H, d_h, d]`` or ``w_down [F, d]`` float32 of a module, read while the module's
        forward has its weights in place (accelerate offload pages them in for the forward)."""
        if key == "w_o":
            def make():
                return np.ascontiguousarray(
                    _linear_in_out(module).reshape(self.n_heads, self.d_head, self.d_model), dtype=np.float32)
        elif moe.experts_module(self._family, self._layers[layer]) is module:
            def make():  # every expert's down rows (and the shared experts'), stacked
                return moe.down_weights(self._family, self._layers[layer], _param_numpy)[0]
        else:
            def make():
                return _linear_in_out(module)
        with _on_device(module):
            return self._cached((layer, key), [module], make)

    def layer_weights(self, layer: int) -> dict[str, Any]:
        """The float32 weights of a layer: ``w_o [H, d_h, d]`` (C-contiguous), ``b_o``,
        ``w_down [F, d]`` (a view of the weight where possible), ``b_down``, and the post-branch
        norms (:class:`NormParams` or None). Cached for float32 CPU weights until they change;
        converted on each call for other dtypes, and paged in for offloaded layers."""
        o, down, _, _ = self._layer_modules(layer)
        with _on_device(self._layers[layer]):
            out = {"w_o": self._module_weight(layer, "w_o", o), "w_down": self._module_weight(layer, "w_down", down)}
        out.update(self.branch_params(layer))
        return out

    @property
    def _final_norm(self) -> "NormParams | None":
        m = self._final_norm_module
        if m is None:
            return None
        fam = self._family
        return self._cached("final_norm", [m], lambda: NormParams.of(m, fam.norm_offset, fam.norm_kind, fam.norm_eps))

    # -- the final norm and unembedding ----------------------------------------------------

    def final_norm(self, x: np.ndarray) -> np.ndarray:
        """The model's final norm applied to states ``x [..., d]`` (float32 NumPy).

        >>> model.final_norm(trace.layers[-1].resid_post).shape          # doctest: +SKIP
        """
        x = np.asarray(x, dtype=np.float32)
        return x.copy() if self._final_norm is None else self._final_norm(x)

    def final_norm_scale(self, x: np.ndarray) -> FrozenNorm:
        """The final norm frozen at states ``x [..., d]``: per-state 1/rms (RMSNorm) or 1/std
        and mean (LayerNorm), gamma and beta, for the direct-effect linearisation.

        >>> model.final_norm_scale(trace.layers[-1].resid_post).scale.shape   # doctest: +SKIP
        """
        if self._final_norm is None:
            shape = np.shape(x)[:-1]
            return FrozenNorm("none", np.ones(shape), None, None, None, False)
        p = self._final_norm
        r, mean = p.scale(x)
        return FrozenNorm(p.kind, r, mean, p.gamma, p.beta, p.kind == "layer")

    @property
    def unembedding(self) -> np.ndarray:
        """``[d, V]`` float32: the lm_head weight as a map from normalised states to logits
        (before its bias and any softcapping, times the family's logit scale; OPT's project_out
        is applied first by :meth:`unembed`). A view of the weight when it is float32 on the CPU, else a copy."""
        return self.unembedding_head().matrix

    def unembedding_head(self) -> Unembedding:
        """The model's :class:`ltt.models.unembedding.Unembedding` (project_out, lm_head with the
        logit scale folded in, its bias, the final softcap), cached until the weights change and
        only while they are float32 on the CPU (see :meth:`_cached`).

        >>> model.unembedding_head().project(trace.layers[-1].resid_post).shape   # doctest: +SKIP
        """
        head, pre = self._lm_head, get_module(self.hf_model, self._family.unembed_pre)
        return self._cached("unembedding", [pre, head], lambda: Unembedding.of(
            head, pre, self._logit_scale, self._softcap))

    def unembed(self, x: np.ndarray, softcap: bool = True) -> np.ndarray:
        """Logits ``[..., V]`` of normalised states ``x [..., d]``: lm_head (with its bias where
        it has one) and the family's final logit softcapping.

        >>> logits = model.unembed(model.final_norm(trace.layers[-1].resid_post[-1]))  # doctest: +SKIP
        """
        return self.unembedding_head()(x, softcap=softcap)

    # -- tokens ------------------------------------------------------------------------------

    def _encode(self, prompt: Any, argname: str = "prompt", prepend_bos: bool | None = None) -> list[int]:
        """The token ids to trace for ``prompt``: a string (tokenised) or a 1-D sequence of ids
        (taken as given). ``prepend_bos``: None follows the tokenizer (strings) or the ids as
        given; True puts the tokenizer's BOS first unless it already is; False removes a BOS
        the tokenizer (or the ids) put first."""
        if prepend_bos is not None and not isinstance(prepend_bos, (bool, np.bool_)):
            raise TypeError(f"prepend_bos must be None, True or False, got {prepend_bos!r}")
        ids = self._token_ids(prompt, argname) if not isinstance(prompt, str) else None
        if ids is None:
            if prompt == "":
                raise ValueError(f"{argname} is empty (''): give at least one character of text")
            ids = [int(i) for i in self.tokenizer(prompt)["input_ids"]]
            if not ids:
                raise ValueError(f"{argname} {prompt!r} produced no tokens")
        ids = self._apply_bos(ids, prompt, prepend_bos, argname)
        if self.max_tokens is not None and len(ids) > self.max_tokens:
            shown = prompt[:80] if isinstance(prompt, str) else ids[:20]
            raise ValueError(
                f"{argname} is {len(ids)} tokens long, more than the limit of {self.max_tokens} "
                f"tokens (the model's context or max_tokens); {argname}={shown!r}..."
            )
        return ids

    def _token_ids(self, prompt: Any, argname: str) -> list[int]:
        """A prompt given as token ids (list, tuple, 1-D NumPy array or tensor), checked against
        the embedding table; a TypeError for anything else that is not a string."""
        what = ("a string or a 1-D sequence of token ids (list, NumPy array or tensor)")
        if type(prompt).__module__.startswith("torch"):
            prompt = prompt.detach().cpu().numpy() if hasattr(prompt, "detach") else prompt
        if isinstance(prompt, np.ndarray):
            if prompt.dtype.kind not in "iu":
                raise TypeError(f"{argname} must be {what}; got an array of dtype {prompt.dtype}: "
                                f"{prompt!r}"[:300])
            if prompt.ndim != 1:
                raise ValueError(f"{argname}: token ids must be 1-D, got shape {prompt.shape} (pass a "
                                 "list of 1-D sequences to trace several prompts)")
            ids = [int(i) for i in prompt]
        elif isinstance(prompt, (list, tuple)):
            bad = [i for i in prompt if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))]
            if bad:
                raise TypeError(f"{argname} must be {what}; element {bad[0]!r} "
                                f"({type(bad[0]).__name__}) is not a token id"[:300])
            ids = [int(i) for i in prompt]
        else:
            raise TypeError(f"{argname} must be {what} (or a list of them), got "
                            f"{type(prompt).__name__}: {prompt!r}"[:300])
        if not ids:
            raise ValueError(f"{argname} is an empty sequence of token ids: give at least one id")
        emb = self.hf_model.get_input_embeddings()
        n = int(getattr(emb, "num_embeddings", 0) or self.vocab_size)
        out = [i for i in ids if not 0 <= i < n]
        if out:
            raise ValueError(f"{argname}: token id {out[0]} is outside the embedding table [0, {n})")
        return ids

    def _apply_bos(self, ids: list[int], prompt: Any, prepend_bos: bool | None, argname: str) -> list[int]:
        if prepend_bos is None:
            return ids
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None:
            if prepend_bos:
                raise ValueError(f"prepend_bos=True for {argname}, but the tokenizer of {self.name!r} "
                                 "has no BOS token (bos_token_id is None)")
            return ids
        if prepend_bos:
            return ids if ids[0] == bos else [int(bos)] + ids
        if ids[0] != bos or len(ids) == 1:
            if len(ids) == 1 and ids[0] == bos:
                raise ValueError(f"prepend_bos=False for {argname}, but its only token is the BOS")
            return ids
        if isinstance(prompt, str):
            # a BOS typed as text in the prompt stays; only one the tokenizer added is removed
            plain = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if plain and int(plain[0]) == bos:
                return ids
        return ids[1:]

    def _prompt_text(self, prompt: Any, ids: list[int]) -> str:
        """``prompt`` itself for a string, else the decoded text of the traced ids."""
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    def _batch(self, prompt: Any) -> list[Any] | None:
        """The prompts of a batch (a list/tuple of strings or of id sequences, or a 2-D array of
        ids), or None when ``prompt`` is one prompt (a string or one 1-D sequence of ids)."""
        if type(prompt).__module__.startswith("torch") and hasattr(prompt, "ndim") and prompt.ndim == 2:
            return [row for row in prompt]
        if isinstance(prompt, np.ndarray) and prompt.ndim == 2:
            return [row for row in prompt]
        if isinstance(prompt, (list, tuple)):
            if not prompt:
                raise ValueError("prompt is an empty list: give at least one string (or token ids)")
            ints = [isinstance(p, (int, np.integer)) and not isinstance(p, (bool, np.bool_)) for p in prompt]
            return None if all(ints) else list(prompt)
        return None

    def token_strings(self, ids: Sequence[int], prompt: str | None = None) -> list[str]:
        """Readable strings of token ids: each token's text as it appears in the decoded prompt
        (leading spaces kept; BOS and other specials as their names). A token holding part of
        a multi-byte character shows that character (from the tokenizer's offsets into
        ``prompt`` when given), or else its raw piece.

        >>> model.token_strings([504, 3575])                # doctest: +SKIP
        ['The', ' capital']
        """
        tok = self.tokenizer
        ids = [int(i) for i in ids]
        pieces = tok.convert_ids_to_tokens(ids)
        spans = None
        if prompt is not None:
            try:
                enc = tok(prompt, return_offsets_mapping=True)
                got = [int(i) for i in enc["input_ids"]]
                offsets = [tuple(o) for o in enc["offset_mapping"]]
                if got == ids:
                    spans = offsets
                elif got[1:] == ids:  # the tokenizer's BOS removed (prepend_bos=False)
                    spans = offsets[1:]
                elif got == ids[1:]:  # a BOS put first (prepend_bos=True)
                    spans = [(0, 0)] + offsets
            except (NotImplementedError, TypeError, ValueError, KeyError):
                spans = None  # a slow tokenizer: no offsets
        out = []
        for i in range(len(ids)):
            lo = max(0, i - 4)
            before = tok.decode(ids[lo:i], clean_up_tokenization_spaces=False) if i > lo else ""
            full = tok.decode(ids[lo: i + 1], clean_up_tokenization_spaces=False)
            text = full[len(before):] if full.startswith(before) else ""
            if text and "\ufffd" not in text:
                out.append(text)
            elif spans is not None and spans[i][1] > spans[i][0]:
                out.append(prompt[spans[i][0]: spans[i][1]])  # part of a multi-byte character
            else:
                out.append(str(pieces[i]))
        return out

    # -- tracing -------------------------------------------------------------------------------

    def trace(self, prompt: Any, all_logits: bool = False, *, prepend_bos: bool | None = None,
              verify: bool = True, spill: str | os.PathLike | None = None,
              memory_limit: int | None = None) -> Trace | list[Trace]:
        """Record one forward pass of ``prompt``: a :class:`ltt.trace.Trace` (a list of them for a
        list of prompts, each traced on its own). Each layer is attributed as soon as it has run
        (:mod:`ltt.models.tracing`); the trace keeps no per-head ``[T, T]`` array.

        * ``prompt``: a string, or token ids traced as given (a list of ints, a 1-D NumPy array
          or tensor; a list of such sequences or a 2-D array is a batch).
        * ``prepend_bos``: None follows the tokenizer (a string) or the ids as given; True puts
          the tokenizer's BOS first (as the original LM Transparency Tool always does) unless it
          already is; False traces without it.
        * ``all_logits``: keep the next-token logits of every position (``[T, V]``), not only the
          last; the model computes only the last position's otherwise.
        * ``verify``: check each layer's decomposition against the model's own states as it
          goes (a few rows, cheap) and raise when it is not exact, e.g. because a forward hook
          changes a module's output; ``verify=False`` skips the check.
        * ``spill``: a directory where each layer's arrays go as memory-mapped ``.npy`` files as
          soon as the layer is attributed, for prompts whose kept arrays exceed memory.
        * ``memory_limit``: bytes the trace may take (default: the memory available now); a
          trace whose estimate (:func:`ltt.models.tracing.estimate_bytes`) exceeds it is refused
          before the forward pass.

        Thread-safe: traces of one model run one at a time (a second thread waits). Whatever
        happens (an exception, Ctrl-C), the model is left as found.

        >>> trace = model.trace("The capital of France is")  # doctest: +SKIP
        >>> traces = model.trace(["Hello", "World"])          # doctest: +SKIP
        >>> trace = model.trace([504, 3575], prepend_bos=True)  # doctest: +SKIP
        """
        if not isinstance(verify, (bool, np.bool_)):
            raise TypeError(f"verify must be True or False, got {verify!r}")
        if not isinstance(all_logits, (bool, np.bool_)):
            raise TypeError(f"all_logits must be True or False, got {all_logits!r}")
        if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, np.integer))
                                         or memory_limit <= 0):
            raise ValueError(f"memory_limit must be a positive number of bytes or None, got {memory_limit!r}")
        opts = dict(all_logits=bool(all_logits), verify=bool(verify), spill=spill, memory_limit=memory_limit)
        batch = self._batch(prompt)
        if batch is not None:
            for i, p in enumerate(batch):
                self._encode(p, argname=f"prompt[{i}]", prepend_bos=prepend_bos)
            return [self._trace_one(p, prepend_bos=prepend_bos, **opts) for p in batch]
        return self._trace_one(prompt, prepend_bos=prepend_bos, **opts)

    def trace_many(self, prompts: Any, **kwargs: Any):
        """Trace many prompts, keeping only each one's component importance: a
        :class:`ltt.routes.RouteSet` (see :func:`ltt.routes.trace_many` for the options).

        >>> routes = model.trace_many(["Hello", "World"], out="routes.jsonl")   # doctest: +SKIP
        """
        from ltt.routes import trace_many

        return trace_many(self, prompts, **kwargs)

    def _trace_one(self, prompt: Any, prepend_bos: bool | None = None, **opts: Any) -> Trace:
        from ltt.models.tracing import run_trace

        ids = self._encode(prompt, prepend_bos=prepend_bos)
        prompt = self._prompt_text(prompt, ids)
        bar = None
        try:
            if not _quiet() and self.n_layers * len(ids) >= 2048:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.n_layers, desc=f"tracing {len(ids)} tokens", unit="layer", leave=False)
            return run_trace(self, ids, prompt, progress=bar, **opts)
        finally:
            if bar is not None:
                bar.close()

    def branch_params(self, layer: int) -> dict[str, Any]:
        """The small per-layer parameters of the decomposition: ``b_o``, ``b_down`` and the
        post-branch norms (see :meth:`layer_weights`)."""
        o, down, post_a, post_f = self._layer_modules(layer)
        fam = self._family
        with _on_device(self._layers[layer]):
            return {
                "b_o": self._cached((layer, "b_o"), [o], lambda: _bias(o)),
                "b_down": self._cached((layer, "b_down"), [down], lambda: _bias(down)),
                "attn_post_norm": self._cached((layer, "post_a"), [post_a], lambda: None if post_a is None
                                               else NormParams.of(post_a, fam.norm_offset, fam.norm_kind,
                                                                  fam.norm_eps)),
                "ffn_post_norm": self._cached((layer, "post_f"), [post_f], lambda: None if post_f is None
                                              else NormParams.of(post_f, fam.norm_offset, fam.norm_kind,
                                                                 fam.norm_eps)),
                "branch_scale": float(fam.branch_scale(self.hf_model.config)),
            }

    def __repr__(self) -> str:
        kind = "parallel" if all(self.parallel) else "sequential"
        return (
            f"Model({self.name!r}, family={self.family}, layers={self.n_layers}, heads={self.n_heads}"
            f"/{self.n_kv_heads} kv, d={self.d_model}, d_head={self.d_head}, ffn={self.d_ffn}, "
            f"vocab={self.vocab_size}, {kind})"
        )


# --------------------------------------------------------------------------------------------
# loading


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

    >>> model = ltt.load("smollm2-135m")                          # doctest: +SKIP
    >>> model = ltt.load("gpt2", dtype="float32")                 # doctest: +SKIP
    >>> model = ltt.load(hf_model, tokenizer=tok)                 # doctest: +SKIP
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tok_name = _local_or_hub(os.fspath(tokenizer), "tokenizer")
        tokenizer = _from_hub(AutoTokenizer.from_pretrained, tok_name, "tokenizer", "tokenizer",
                              revision=revision, trust_remote_code=trust_remote_code)
    if not isinstance(name_or_path, (str, os.PathLike)):
        return _wrap(name_or_path, tokenizer, max_tokens)
    import torch

    torch_dtype = _dtype(dtype)
    name = os.fspath(name_or_path)
    if not is_embedded(name):
        name = _local_or_hub(name, "name_or_path")
    if is_embedded(name) and not os.path.isdir(name):
        if device_map is not None:
            raise ValueError(f"device_map is not supported for the embedded model {name!r}; use device")
        hf_model, tok = load_embedded(name, dtype=torch_dtype, device=device)
        return Model(hf_model, tokenizer if tokenizer is not None else tok, name=name.lower(),
                     max_tokens=max_tokens)
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
    return Model(hf_model, tokenizer, name=name, max_tokens=max_tokens)


_TRUE = ("1", "ON", "YES", "TRUE")


def _hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now: read at each load,
    not only when huggingface_hub was imported (a notebook may set it later)."""
    return any(os.environ.get(k, "").strip().upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


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
    existing = os.path.dirname(os.path.abspath(path))
    while existing and not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    raise FileNotFoundError(
        f"{argname}={name!r}: no such directory (the nearest folder that exists is {existing!r}); a local "
        "model is a folder holding config.json and the weights, a hub id looks like 'org/name'")


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
