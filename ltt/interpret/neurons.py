"""FFN neurons: each neuron's share of an FFN output state, and the top neurons of an FFN node with their activations and promoted tokens.

>>> top_neurons(trace, 5, -1, k=5).neurons[0].neuron      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ltt import backends
from ltt.interpret.trace_indices import _ffn_block, _k, _layer, _names, _token
from ltt.interpret.effects import _effects_many, _neuron_vectors
from ltt.interpret.output import _top
from ltt.interpret.results import NeuronScore, TopNeurons


def _neuron_contrib(trace: Any, layer: int, token: int) -> dict[str, np.ndarray]:
    """The C core's neuron decomposition of the FFN output state at one token. In a parallel
    layer the FFN output is one part of the layer output; the other parts (input, attention,
    biases) are lumped into the residual."""
    lb = trace.layers[layer]
    whole = lb.resid_post[token : token + 1]
    if lb.parallel:
        resid = (np.asarray(whole, np.float64) - lb.ffn_out[token : token + 1]).astype(np.float32)
    else:
        resid = lb.resid_mid[token : token + 1]
    bias = lb.ffn_bias
    if bias is not None and np.ndim(bias) == 2:
        bias = bias[token : token + 1]
    return backends.of(trace).ffn_neuron_contrib(
        lb.act[token : token + 1], lb.w_down, resid, whole, bias=bias,
        **lb.ffn_norm.core_args(rows=slice(token, token + 1)),
    )


def neuron_shares(trace: Any, layer: Any, token: int | None = None) -> np.ndarray:
    """Each neuron's share ``[F]`` of the FFN output state ``I{layer}_token``; with the residual's
    and the bias's shares they sum to 1.

    The block may also be an FFN ``Edge`` or its node (``"M{l}_t"`` or a Node), given alone.

    >>> trace.neuron_shares(5, -1).argmax()                  # doctest: +SKIP
    """
    layer, token = _ffn_block(trace, layer, token)
    layer, token = _layer(trace, layer), _token(trace, token)
    return _neuron_contrib(trace, layer, token)["neurons"][0]


def top_neurons(trace: Any, layer: Any, token: int | None = None, k: int = 10, k_tokens: int = 5) -> TopNeurons:
    """The k neurons with the largest shares in the FFN node ``M{layer}_token``, each with its
    activation, share and the ``k_tokens`` tokens its output promotes and suppresses.

    The block may also be an FFN ``Edge`` or its node (``"M{l}_t"`` or a Node), given alone.

    >>> tn = top_neurons(trace, 5, -1, k=5)                  # doctest: +SKIP
    >>> tn.neurons[0].neuron, tn.neurons[0].share            # doctest: +SKIP
    """
    layer, token = _ffn_block(trace, layer, token)
    return top_neurons_many(trace, [(layer, token)], k=k, k_tokens=k_tokens)[0]


def top_neurons_many(trace: Any, nodes: Sequence[Any], k: int = 10, k_tokens: int = 5) -> list[TopNeurons]:
    """:func:`top_neurons` of many FFN nodes ``(layer, token)`` at once, in their order: every
    chosen neuron's output is unembedded together, ``_ROWS`` per matrix product. Each result
    equals the :func:`top_neurons` call.

    >>> tns = top_neurons_many(trace, [(5, -1), (6, -1)], k=5)   # doctest: +SKIP
    """
    k, k_tokens = _k(k), _k(k_tokens, "k_tokens")
    found = []  # (layer, token, decomposition, chosen neurons)
    vectors, tokens = [], []
    for item in _names(nodes, "nodes"):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"an FFN node must be (layer, token), got {item!r}")
        layer, token = _layer(trace, item[0]), _token(trace, item[1])
        out = _neuron_contrib(trace, layer, token)
        idx = _top(out["neurons"][0], k)
        found.append((layer, token, out, idx))
        vectors.extend(_neuron_vectors(trace.layers[layer], token, idx))
        tokens.extend([token] * len(idx))
    effects = iter(_effects_many(trace, vectors, tokens, k_tokens))
    results = []
    for layer, token, out, idx in found:
        lb, shares = trace.layers[layer], out["neurons"][0]
        neurons = []
        for i in idx.tolist():
            up, down = next(effects)
            neurons.append(NeuronScore(int(i), float(lb.act[token, i]), float(shares[i]), up, down))
        results.append(TopNeurons(
            layer=layer, position=token, position_token=str(trace.tokens[token]),
            resid_share=float(out["resid"][0]), bias_share=float(out["bias"][0]), neurons=neurons,
        ))
    return results
