"""The panels the offline report embeds (:mod:`ltt.report`): which states beyond the shown
graphs travel, and every panel of those, computed with one batched call per kind of
vocabulary projection (the same answers as the widget's single clicks).

>>> P = embedded_panels(trace, nodes, edges, extra_states(trace, nodes, carried, [T - 1], 0.04, True, 1000), 10, 3, row_sums)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ltt import interpret
from ltt.nodes import ATTENTION, RESIDUAL, Edge, Node, Stage, parse_node
from ltt.widget import panels

__all__ = ["extra_states", "embedded_panels"]


def extra_states(trace: Any, nodes: dict[str, Node], carried: list[int], shown: list[int], threshold: float,
                  renormalize: bool, most: int) -> list[str]:
    """The states of the other carried targets' graphs that the shown graphs lack, nearest the
    last token first, at most ``most`` of them (their top tokens with the final norm travel)."""
    extra: dict[str, None] = {}
    for t in sorted(set(carried) - set(shown), reverse=True) if most > 0 else ():
        if len(extra) >= most:
            break
        for n in trace.graph(threshold=threshold, renormalize=bool(renormalize), targets=[t]).nodes:
            if n.kind != "M" and n.name not in nodes:
                extra.setdefault(n.name, None)
    return list(extra)[:most]


def embedded_panels(trace: Any, nodes: dict[str, Node], edges: dict[str, Edge], extra: list[str], k: int,
            heads_per_edge: int, row_sums: list[np.ndarray]) -> dict[str, Any]:
    """Every panel the report embeds (:mod:`ltt.report`), keyed by :func:`panels.panel_key`.

    Each kind of vocabulary projection is one batched call, the same answers as single clicks:
    one logit lens with the final norm over the shown and the extra states, one without it over
    the shown ones, one projection of the FFN nodes' neurons, and one of every block and head
    the panels show (the block before each state, each FFN node's block, each attention edge's
    block, the top heads of each edge), an update asked for twice projected once."""
    ffn_nodes = [name for name, n in nodes.items() if n.kind == "M"]
    states = [name for name, n in nodes.items() if n.kind != "M"]
    ffn_weight = {e.source: e.weight for e in edges.values() if e.stage is Stage.FFN_OUT}
    attention = {key: e for key, e in edges.items() if e.kind == ATTENTION}
    top_heads = {key: [h.head for h in interpret.edge_heads(trace, e.layer, e.target_token, e.source_token).heads]
                 [: max(1, heads_per_edge)] for key, e in attention.items()}
    heads: dict[tuple[int, int, int], None] = {}  # (layer, head, target) of the head views, in order
    for key, e in attention.items():
        for h in top_heads[key]:
            heads.setdefault((e.layer, h, e.target_token), None)
    # the one projection of updates: (spec, k) per panel part, in this order
    before = [panels.block_before(trace, n) for n in states + extra]
    specs = [(w, panels.BLOCK_K) for w in before if w is not None]
    specs += [((layer, t, "ffn"), k) for layer, t in (parse_node(n)[1:] for n in ffn_nodes)]
    where = sorted({(e.layer, e.target_token) for e in attention.values()})
    specs += [((layer, t, "attn"), k) for layer, t in where]
    specs += [((layer, t, "attn", h), k) for layer, h, t in heads]
    found = iter(interpret.promoted_many(trace, [s for s, _ in specs], k=[kk for _, kk in specs]))
    blocks = [None if w is None else panels.block_effects(w, next(found)) for w in before]
    ffn_blocks = [next(found) for _ in ffn_nodes]
    attn_blocks = {w: next(found) for w in where}
    head_found = [next(found) for _ in heads]

    P: dict[str, Any] = {}
    ffn = iter(panels.ffn_panels(trace, ffn_nodes, [ffn_weight.get(n) for n in ffn_nodes], k=k, blocks=ffn_blocks))
    lens = {1: iter(panels.state_panels(trace, states + extra, True, k, blocks=blocks)),
            0: iter(panels.state_panels(trace, states, False, k, blocks=blocks[: len(states)]))}
    for name, n in nodes.items():  # the panels keep the order in which they were filled one by one
        if n.kind == "M":
            P[panels.panel_key("ffn", node=name)] = next(ffn)
        else:
            for norm_flag in (1, 0):
                P[panels.panel_key("state", node=name, normalize=norm_flag)] = next(lens[norm_flag])
    for name in extra:
        P[panels.panel_key("state", node=name, normalize=1)] = next(lens[1])
    for key, e in edges.items():
        if e.kind == RESIDUAL:
            P[panels.panel_key("edge", edge=key)] = panels.residual_panel(key, e.weight)
        elif e.kind == ATTENTION:
            panel, _ = panels.attention_panel(trace, key, e.weight, k=k, with_head=False,
                                              block=attn_blocks[(e.layer, e.target_token)])
            P[panels.panel_key("edge", edge=key)] = panel
            for h in top_heads[key]:
                P.setdefault(panels.panel_key("head", layer=e.layer, head=h, target=e.target_token), None)
    for (layer, head, t), view in zip(heads, panels.head_effects(
            trace, list(heads), lambda l, h, t: row_sums[l][h, t], k, found=head_found)):
        P[panels.panel_key("head", layer=layer, head=head, target=t)] = view
    return P
