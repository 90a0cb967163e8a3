"""Load a Hugging Face causal LM and record traces of it: the package face (``ltt.load``, :class:`Model`).

``load`` accepts a hub id, a local directory (safetensors only), an embedded model name
(``"smollm2-135m"``) or a transformers model already in memory. :meth:`Model.trace` runs one
forward pass with hooks on every layer (the module paths come from :mod:`ltt.models.families`)
and returns a :class:`ltt.trace.Trace` of float32 NumPy buffers on the CPU.

The parts, in the order of the data flow:

* :mod:`ltt.models.loading` — ``load()``: embedded, local or hub, dtype and device;
* :mod:`ltt.models.families` — where each architecture family keeps the modules ltt hooks
  (:mod:`ltt.models.moe` for mixture-of-experts FFNs, :mod:`ltt.models.embedded` for the
  embedded model);
* :mod:`ltt.models.model` — :class:`Model`: shapes, prompts, cached weights, final norm and
  unembedding; its weights are read by :mod:`ltt.models.weights`, its norms are
  :mod:`ltt.models.norms`;
* :mod:`ltt.models.instrument` — the one instrumented run every way into the model uses (lock,
  modes, attention implementation, hooks, clean-up; only its own forward is instrumented);
* :mod:`ltt.models.tracing`, :mod:`ltt.models.record`, :mod:`ltt.models.attention` — one
  forward pass with hooks, each layer attributed as it runs (:mod:`ltt.models.tensors` reads
  the hooks' tensors into NumPy);
* :mod:`ltt.models.handlers` — what an intervened run (:mod:`ltt.interventions`) does at each
  attention and FFN output: removal, patching, gradient capture.

Modules inside the package import from these files, never from this face.

>>> import ltt                                                       # doctest: +SKIP
>>> model = ltt.load("smollm2-135m")                                 # doctest: +SKIP
>>> trace = model.trace("The capital of France is")                  # doctest: +SKIP
>>> trace.top_prediction()[0][0]                                     # doctest: +SKIP
' Paris'
"""

from __future__ import annotations

from ltt.models.embedded import EMBEDDED
from ltt.models.families import supported
from ltt.models.loading import load
from ltt.models.model import Model
from ltt.models.norms import FrozenNorm

__all__ = ["load", "Model", "FrozenNorm", "supported", "EMBEDDED"]
