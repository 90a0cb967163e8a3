"""Circuits: rankings of a prompt's parts, faithfulness curves over edge budgets, and the
smallest circuit that reaches a stated normalised faithfulness.

* :mod:`ltt.circuits.rankings`: ltt's routes, EAP, EAP-IG, random (and their combination), at
  ltt's granularity: attention edges per layer, source and target token (heads summed), FFN
  blocks per layer and token; component scores (MIB's heads-and-MLPs level);
* :mod:`ltt.circuits.gradients`: EAP and EAP-IG from their published definitions;
* :mod:`ltt.circuits.curves`: :func:`curve`, CPR and CMD (MIB);
* :mod:`ltt.circuits.search`: :func:`circuit` (what ``trace.circuit`` calls).

Nothing here imports torch until it runs a model.

>>> import ltt.circuits                                          # doctest: +SKIP
>>> ltt.circuits.curve(trace, "routes", counterfactual=cf, tokens=[" Mary", " John"]).cpr   # doctest: +SKIP
"""

from ltt.circuits.curves import MIB_FRACTIONS, Curve, curve
from ltt.circuits.rankings import RANKINGS, component_scores, score_parts

__all__ = ["curve", "Curve", "MIB_FRACTIONS", "RANKINGS", "score_parts", "component_scores", "circuit"]


def circuit(trace, **kw):
    """The smallest circuit along a ranking reaching a normalised faithfulness
    (:func:`ltt.circuits.search.circuit`)."""
    from ltt.circuits.search import circuit as _circuit

    return _circuit(trace, **kw)
