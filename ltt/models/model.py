"""The traceable model: :class:`Model` holds a transformers model, its tokenizer and its family's hook points.

It reads the shapes a decomposition needs, encodes prompts (strings or token ids, the BOS rule,
batches), caches the float32 weights a trace reads until the parameters change, applies the
final norm and the unembedding, and runs :meth:`Model.trace` (the recording itself is
:mod:`ltt.models.tracing`). Build one with :func:`ltt.load`.

>>> model = ltt.load("smollm2-135m")                  # doctest: +SKIP
>>> trace = model.trace("The capital of France is")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ltt.checks import is_int
from ltt import progress
from ltt.models import moe
from ltt.models.families import Family, _heads, family_for, get_module
from ltt.models.norms import FrozenNorm, NormParams
from ltt.models.unembedding import Unembedding
from ltt.models.weights import (_bias, _float32, _in_out_shape, _linear_in_out, _offloaded, _on_device,
                                _param_numpy, weights_stamp)
from ltt.routes.run import trace_many as _trace_many
from ltt.trace import Trace


def _cpu_float32(p: Any) -> bool:
    return p.dtype == _float32() and p.device.type == "cpu"


def _own_params(modules: Sequence[Any]) -> list[Any]:
    """The parameters of ``modules`` themselves (``parameters(recurse=False)``, read directly)."""
    return [p for m in modules if m is not None for p in m._parameters.values() if p is not None]


class Model:
    """A traceable causal LM: a transformers model, its tokenizer and its family's hook points.

    Attributes: ``name``, ``family`` (name), ``spec`` (its :class:`Family`), ``decoder_layers`` (the layer modules), ``n_layers``, ``n_heads``, ``n_kv_heads``,
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
        self.spec: Family = fam  # the family's module paths and quirks (ltt.models.families)
        self.family: str = fam.name
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.name = name or getattr(config, "name_or_path", None) or type(hf_model).__name__
        self.decoder_layers = get_module(hf_model, fam.layers)  # the model's list of layer modules
        if self.decoder_layers is None:
            raise ValueError(
                f"{type(hf_model).__name__} (model_type={config.model_type!r}) has no layer list at "
                f"{fam.layers!r}; ltt expects the causal-LM class (e.g. AutoModelForCausalLM)"
            )
        self.n_layers = len(self.decoder_layers)
        self.n_heads = _heads(config)
        self.n_kv_heads = fam.n_kv_heads(config)
        layer0 = self.decoder_layers[0]
        o_in, o_out = _in_out_shape(self.submodule(layer0, fam.o_proj))  # [H*d_h, d]
        self.d_head = o_in // self.n_heads
        self.d_model = o_out
        self.d_ffn = (moe.ffn_width(fam, layer0) if moe.experts_module(fam, layer0) is not None
                      else _in_out_shape(self.submodule(layer0, fam.down))[0])
        self.parallel = [bool(fam.parallel(config))] * self.n_layers
        head = hf_model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(hf_model).__name__} has no output embeddings (lm_head)")
        self._lm_head = head
        self.vocab_size = int(head.weight.shape[0])
        self._final_norm_module = get_module(hf_model, fam.final_norm)
        self._softcap = getattr(config, "final_logit_softcapping", None)
        self._logit_scale = float(fam.logit_scale(config))  # Cohere, Granite: logits times a constant
        self.max_tokens = self._context_limit(max_tokens)
        self._weights: dict[Any, tuple[tuple, Any]] = {}  # key -> (parameter versions, value)
        self.backend: Any = None  # the torch attribution backend (ltt.backends), None: the C core

    # -- structure ---------------------------------------------------------------------------

    def submodule(self, layer: Any, path: str) -> Any:
        """The module at ``path`` (a :attr:`spec` path such as ``spec.attn``) inside ``layer``
        (one of :attr:`decoder_layers`); a ValueError naming the path when it is missing."""
        mod = get_module(layer, path)
        if mod is None:
            raise ValueError(
                f"{type(layer).__name__} has no module {path!r}; the {self.family} adapter does not "
                "match this model's layout"
            )
        return mod

    # private spellings kept for older callers (tests)
    _family = property(lambda self: self.spec)
    _layers = property(lambda self: self.decoder_layers)

    def _sub(self, layer: Any, path: str) -> Any:
        return self.submodule(layer, path)

    def _context_limit(self, max_tokens: int | None) -> int | None:
        cfg = self.hf_model.config
        ctx = None
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                ctx = value
                break
        if max_tokens is not None:
            if not is_int(max_tokens):
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
        params = _own_params(modules)
        stamp = weights_stamp(params)
        hit = self._weights.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = make()
        if all(_cpu_float32(p) for p in params) and not any(
                _offloaded(m) for m in modules if m is not None):
            self._weights[key] = (stamp, value)
        else:
            self._weights.pop(key, None)
        return value

    def _layer_modules(self, layer: int) -> tuple[Any, Any, Any, Any]:
        fam = self.spec
        mod = self.decoder_layers[layer]
        experts = moe.experts_module(fam, mod)  # a MoE layer: the experts stand for the down projection
        return (self.submodule(mod, fam.o_proj), self.submodule(mod, fam.down) if experts is None else experts,
                get_module(mod, fam.attn_post_norm), get_module(mod, fam.ffn_post_norm))

    def layer_stamp(self, layer: int) -> tuple:
        """The versions of the parameters a layer's decomposition reads (see :meth:`_cached`)."""
        params = _own_params(self._layer_modules(layer))
        return weights_stamp(params)

    def module_weight(self, layer: int, key: str, module: Any) -> np.ndarray:
        """``w_o [H, d_h, d]`` or ``w_down [F, d]`` float32 of a module, read while the module's
        forward has its weights in place (accelerate offload pages them in for the forward).
        ``w_down`` is a view of the float32 weight; ``w_o`` is a C-order copy for float32 CPU
        weights (cached: the C core's products are fastest from it), else a view of the
        weight's float32 conversion (made on each use), which the core reads in place."""
        if key == "w_o":
            def make():
                w = _linear_in_out(module).reshape(self.n_heads, self.d_head, self.d_model)
                return np.ascontiguousarray(w) if _cpu_float32(module.weight) else w
        elif moe.experts_module(self.spec, self.decoder_layers[layer]) is module:
            def make():  # every expert's down rows (and the shared experts'), stacked
                return moe.down_weights(self.spec, self.decoder_layers[layer], _param_numpy)[0]
        else:
            def make():
                return _linear_in_out(module)
        with _on_device(module):
            return self._cached((layer, key), [module], make)

    def layer_weights(self, layer: int) -> dict[str, Any]:
        """The float32 weights of a layer: ``w_o [H, d_h, d]`` (see :meth:`module_weight`), ``b_o``,
        ``w_down [F, d]`` (a view of the weight where possible), ``b_down``, and the post-branch
        norms (:class:`NormParams` or None). Cached for float32 CPU weights until they change;
        converted on each call for other dtypes, and paged in for offloaded layers."""
        o, down, _, _ = self._layer_modules(layer)
        with _on_device(self.decoder_layers[layer]):
            out = {"w_o": self.module_weight(layer, "w_o", o), "w_down": self.module_weight(layer, "w_down", down)}
        out.update(self.branch_params(layer))
        return out

    @property
    def _final_norm(self) -> "NormParams | None":
        m = self._final_norm_module
        if m is None:
            return None
        fam = self.spec
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
        head, pre = self._lm_head, get_module(self.hf_model, self.spec.unembed_pre)
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
            bad = [i for i in prompt if not is_int(i)]
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
            ints = [is_int(p) for p in prompt]
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
              memory_limit: int | None = None, memory: str | None = None) -> Trace | list[Trace]:
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
        * ``memory``: how each layer is attributed (:mod:`ltt.plan`): ``"auto"`` (default, from
          the budgets of docs/config.md), ``"dense"``, ``"layer"``, ``"heads"`` or ``"stream"``.

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
        if memory_limit is not None and (not is_int(memory_limit) or memory_limit <= 0):
            raise ValueError(f"memory_limit must be a positive number of bytes or None, got {memory_limit!r}")
        from ltt.plan import check_memory_mode

        opts = dict(all_logits=bool(all_logits), verify=bool(verify), spill=spill, memory_limit=memory_limit,
                    memory=check_memory_mode(memory))
        batch = self._batch(prompt)
        if batch is not None:
            for i, p in enumerate(batch):
                self._encode(p, argname=f"prompt[{i}]", prepend_bos=prepend_bos)
            return [self._trace_one(p, prepend_bos=prepend_bos, **opts) for p in batch]
        return self._trace_one(prompt, prepend_bos=prepend_bos, **opts)

    #: ``model.trace_many(prompts, *, threshold=..., out=..., ...)``: many prompts, each kept as
    #: its component importance, a :class:`ltt.routes.RouteSet`; the function
    #: :func:`ltt.routes.trace_many` itself (its keywords and docstring), this model as ``model``.
    trace_many = _trace_many

    def _trace_one(self, prompt: Any, prepend_bos: bool | None = None, **opts: Any) -> Trace:
        from ltt.models.tracing import run_trace

        ids = self._encode(prompt, prepend_bos=prepend_bos)
        prompt = self._prompt_text(prompt, ids)
        bar = None
        try:
            if self.n_layers * len(ids) >= 2048:  # only where a trace may take a while: a bar on a
                # terminal, plain lines (after 2 s) on any other stderr, nothing with LTT_QUIET
                bar = progress.steps(self.n_layers, f"tracing {len(ids)} tokens", "layer", leave=False)
            return run_trace(self, ids, prompt, progress=bar, **opts)
        finally:
            if bar is not None:
                bar.close()

    def branch_params(self, layer: int) -> dict[str, Any]:
        """The small per-layer parameters of the decomposition: ``b_o``, ``b_down`` and the
        post-branch norms (see :meth:`layer_weights`)."""
        o, down, post_a, post_f = self._layer_modules(layer)
        fam = self.spec

        def norm(m: Any) -> "NormParams | None":
            return None if m is None else NormParams.of(m, fam.norm_offset, fam.norm_kind, fam.norm_eps)

        def make() -> dict[str, Any]:
            return {"b_o": _bias(o), "b_down": _bias(down), "attn_post_norm": norm(post_a),
                    "ffn_post_norm": norm(post_f)}

        with _on_device(self.decoder_layers[layer]):  # one cache entry for the four parts
            out = dict(self._cached((layer, "branch"), [o, down, post_a, post_f], make))
        out["branch_scale"] = float(fam.branch_scale(self.hf_model.config))
        return out

    def __repr__(self) -> str:
        kind = "parallel" if all(self.parallel) else "sequential"
        return (
            f"Model({self.name!r}, family={self.family}, layers={self.n_layers}, heads={self.n_heads}"
            f"/{self.n_kv_heads} kv, d={self.d_model}, d_head={self.d_head}, ffn={self.d_ffn}, "
            f"vocab={self.vocab_size}, {kind})"
        )
