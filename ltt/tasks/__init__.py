"""Task sets of clean/counterfactual prompt pairs of equal token length, generated for a loaded
model's tokenizer, for circuits and faithfulness curves (:mod:`ltt.circuits`).

Each generator returns a :class:`TaskSet` of :class:`Pair` s (prompt, counterfactual, the
answer and the counterfactual answer, each one token) and ``skipped``, how many candidate pairs
it left out because they did not tokenize to equal lengths or an answer was not one token.

* :func:`ioi`: indirect object identification, ``"When Mary and John went to the store, John
  gave a drink to"`` -> `` Mary``; the counterfactual has other names (-> its own indirect
  object); names, places and objects vary;
* :func:`greater_than`: ``"The war lasted from the year 1732 to the year 17"`` -> the first token
  of ``33``; the counterfactual starts in another decade;
* :func:`induction`: random tokens repeated, ``x1..xn x1..x(n-1)`` -> ``xn``; the counterfactual
  has another first half ``y1..yn x1..x(n-1)`` (-> ``yn`` as its answer token);
* :func:`factual`: capital cities and languages written here, ``"The capital of France is"`` ->
  `` Paris``; the counterfactual names another country.

>>> ts = ltt.tasks.ioi(model, n=50)                                # doctest: +SKIP
>>> len(ts.pairs), ts.skipped                                    # doctest: +SKIP
"""

from __future__ import annotations

from ltt.tasks.generate import TASKS, Pair, TaskSet, factual, greater_than, induction, ioi, task

__all__ = ["Pair", "TaskSet", "ioi", "greater_than", "induction", "factual", "task", "TASKS"]
