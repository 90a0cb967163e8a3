"""Routes at scale: which heads and FFN blocks carry the predictions of a whole set of prompts.

One graph explains one prediction. :func:`trace_many` streams many prompts through
``trace -> graph -> summary`` and keeps only a small per-prompt summary (:class:`PromptRoutes`):
how much of the prediction flows through each attention head and each FFN block, and how much
comes from each input token. :class:`RouteSet` aggregates the summaries: how often each head or
FFN block is on the route and how much it carries when it is, which source-position pattern its
edges follow, and the prompts where it mattered most.

The package follows the data flow:

* :mod:`ltt.routes.summary`: one prompt's summary (:func:`summarize`, the measures);
* :mod:`ltt.routes.routeset`: the set and its aggregates and tables (:class:`RouteSet`);
* :mod:`ltt.routes.fingerprint`, :mod:`ltt.routes.store`, :mod:`ltt.routes.files`: the run's
  fingerprint, its locked JSON-lines file, Parquet, shards, :func:`merge_shards`, :func:`load_routes`;
* :mod:`ltt.routes.run`: the run loop (:func:`trace_many`).

>>> import ltt                                                        # doctest: +SKIP
>>> model = ltt.load("smollm2-135m")                                  # doctest: +SKIP
>>> routes = model.trace_many(["The capital of France is", "2 + 2 ="], out="routes.jsonl")  # doctest: +SKIP
>>> routes.head_frequency.shape, routes.top_prompts(12, 3, k=1)      # doctest: +SKIP
>>> merged = ltt.routes.merge_shards("routes.jsonl")                 # after a sharded run  # doctest: +SKIP
"""

from __future__ import annotations

from ltt.routes.files import load_routes, merge_shards, shard_from_env, shard_path
from ltt.routes.routeset import RouteSet
from ltt.routes.run import trace_many
from ltt.routes.store import FORMAT, VERSION  # noqa: F401  (the file format, as before the split)
from ltt.routes.summary import PATTERNS, PromptRoutes, prompt_key, summarize  # noqa: F401

__all__ = [
    "PATTERNS",
    "PromptRoutes",
    "RouteSet",
    "summarize",
    "trace_many",
    "load_routes",
    "merge_shards",
    "shard_path",
    "shard_from_env",
]
