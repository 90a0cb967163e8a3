"""Read what flows through a trace: logit lens of states, promoted tokens of updates, head and neuron views.

The package face: every public name is re-exported here from its module, along the steps of a
click: ``results`` (the answer objects), ``output`` (the output head: frozen final norm, the
model's unembedding, decoding), ``lens`` (top tokens of states), ``effects`` (updates and their
promoted tokens), ``heads`` and ``neurons``; ``trace_indices`` checks the layers, tokens, heads,
node names and edges given into a trace.

Every answer here is one click of the explorer and stays small and fast: a vocabulary projection
is one matrix product, top-k uses ``argpartition``, and the final norm's frozen scales are
computed once per trace. The ``*_many`` functions answer many clicks at once (the HTML report
embeds every panel of a graph): their vectors are stacked into a few ``[N, d] x [d, V]``
products of :data:`ltt.models.unembedding.ROWS` rows each, and each answer equals the single
function's bit for bit (the single functions are the batched ones over one item).

Conventions (DESIGN.md, "Interpretation conventions"):

* **Top tokens of a residual state** (``X0_t``, ``A{l}_t``, ``I{l}_t``): the model's own output
  head applied to the state, ``unembed(final_norm(state))`` (``normalize=False``: no norm), with
  each token's rank change against the predecessor state (``A{l}`` follows ``I{l-1}`` or
  ``X0``; ``I{l}`` follows ``A{l}``, or ``I{l-1}`` in a parallel layer).
* **Promoted and suppressed tokens of an update** (attention block, one head, FFN block, one
  neuron ``a_{t,i} * w_i`` so the activation's sign counts): the update's direct effect on the
  final logits with the final norm's scale frozen from the last layer's state at that token
  (centering included for LayerNorm). Under that linearisation the effects of the embedding and
  of every update, plus the norm's and the unembedding's biases, add up to the model's logits
  exactly (before any final logit softcapping, as in Gemma 2). ``raw=True`` gives the plain
  projection through the unembedding instead.

>>> import ltt                                            # doctest: +SKIP
>>> trace = ltt.load("smollm2-135m").trace("The capital of France is")   # doctest: +SKIP
>>> top_tokens(trace, "I29_5", k=3)                       # doctest: +SKIP
>>> promoted(trace, 20, 5, block="attn", head=3)           # doctest: +SKIP
"""

from __future__ import annotations

from ltt.interpret.effects import direct_effect, head_output, promoted, promoted_many, update_vector
from ltt.interpret.heads import (
    _head_map,  # noqa: F401 - tests/test_scale.py calls it with its own TraceScores
    edge_head_shares,
    edge_heads,
    head_map,
    head_shares,
    head_view,
    head_view_many,
)
from ltt.interpret.lens import predictions, state, top_tokens, top_tokens_many
from ltt.interpret.neurons import neuron_shares, top_neurons, top_neurons_many
from ltt.interpret.output import OutputHead, output_head
from ltt.interpret.results import (
    EdgeHeads,
    HeadShare,
    HeadView,
    NeuronScore,
    Promoted,
    TokenEffect,
    TokenScore,
    TopNeurons,
    TopTokens,
)

__all__ = [
    "TokenScore",
    "TokenEffect",
    "TopTokens",
    "Promoted",
    "HeadShare",
    "EdgeHeads",
    "HeadView",
    "NeuronScore",
    "TopNeurons",
    "OutputHead",
    "output_head",
    "state",
    "top_tokens",
    "top_tokens_many",
    "predictions",
    "update_vector",
    "direct_effect",
    "promoted",
    "promoted_many",
    "head_output",
    "head_shares",
    "edge_head_shares",
    "edge_heads",
    "head_view",
    "head_view_many",
    "head_map",
    "neuron_shares",
    "top_neurons",
    "top_neurons_many",
]
