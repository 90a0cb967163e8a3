"""The ``ltt`` command: trace a prompt from the terminal, print the routes, write the graph.

    ltt demo                                   # the embedded SmolLM2-135M on a default prompt
    ltt trace --model gpt2 --prompt "..." --json graph.json
    ltt trace --model gpt2 --ids 464,3139,286 --bos   # token ids as given, BOS put first
    ltt models                                 # supported model types and how each is decomposed
    ltt models --markdown                      # the README's table of families
    ltt serve --model gpt2                     # the live app in a browser (the serve extra)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ltt.checks import DEFAULT_THRESHOLD
from ltt import config

DEMO_MODEL = "smollm2-135m"
DEMO_PROMPT = "When Mary and John went to the store, John gave a drink to"
DEMO_COUNTERFACTUAL = "When Mary and John went to the store, Mary gave a drink to"


def _fmt_token(tok: str) -> str:
    return repr(tok)[1:-1] if tok else "''"


def routes_report(trace, graph, k: int = 5) -> str:
    """Plain-text summary of a pruned graph: the prediction, the input tokens and layers that
    carry the most flow to it, and the heads on the strongest attention edges.

    >>> print(routes_report(trace, trace.graph()))           # doctest: +SKIP
    """
    import numpy as np

    from ltt.interpret import edge_head_shares
    from ltt.nodes import ATTENTION, Stage

    lines: list[str] = []
    logits = np.asarray(trace.logits, dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)[:k]
    tok = trace.model.tokenizer
    lines.append(f"model: {graph.model_name}   tokens: {len(trace.tokens)}   layers: {graph.n_layers}")
    lines.append(f"prompt: {trace.prompt!r}")
    lines.append("prediction: " + ", ".join(f"{tok.decode([int(i)])!r} {probs[i]:.3f}" for i in top))
    mode = "renormalized" if graph.renormalize else "raw"
    lines.append(
        f"graph: {len(graph.nodes)} nodes, {len(graph.edges)} edges "
        f"(threshold {graph.threshold}, {mode}, targets {graph.targets}; edges of every kind: attention, "
        "residual, FFN)"
    )
    lines.append("node names: X0_t = token t's embedding, A{l}_t = its state after layer l's attention, "
                 "M{l}_t = layer l's FFN block at t, I{l}_t = its state after layer l (t: token position from 0, "
                 "l: layer from 0); flow = the share of the prediction's state a node or edge carries")
    flow = graph.flow()
    token_flow = sorted(
        ((flow.get(n.name, 0.0), n.token) for n in graph.nodes if n.kind == "X"), reverse=True
    )
    lines.append("input tokens carrying the most flow to the prediction:")
    for f, t in token_flow[:k]:
        lines.append(f"  {f:6.3f}  [{t}] {_fmt_token(trace.tokens[t])}")
    # Flow through each layer's cross-token attention edges and FFN blocks.
    attn_flow: dict[int, float] = {}
    ffn_flow: dict[int, float] = {}
    edge_flow = []
    for e in graph.edges:
        f = e.weight * flow.get(e.target, 0.0)
        if e.kind == ATTENTION:
            attn_flow[e.layer] = attn_flow.get(e.layer, 0.0) + f
            edge_flow.append((f, e))
        elif e.stage is Stage.FFN_OUT:
            ffn_flow[e.layer] = ffn_flow.get(e.layer, 0.0) + f
    lines.append("layers whose attention moves the most flow: (attention: through the layer's attention "
                 "edges between tokens; ffn: through its FFN blocks)")
    for l, f in sorted(attn_flow.items(), key=lambda kv: -kv[1])[:k]:
        lines.append(f"  layer {l:3d}  attention {f:6.3f}   ffn {ffn_flow.get(l, 0.0):6.3f}")
    lines.append("strongest attention edges and their top heads: (source state -> target state, its flow, "
                 "the tokens, each head's share of the edge)")
    for f, e in sorted(edge_flow, key=lambda fe: -fe[0])[:k]:
        s, t = e.source_token, e.target_token
        shares = edge_head_shares(trace, e.layer, t, s, graph.norm)
        heads = np.argsort(-shares)[:3]
        head_txt = ", ".join(f"h{h} {shares[h]:.3f}" for h in heads)
        lines.append(
            f"  {e.source:>8} -> {e.target:<8} flow {f:6.3f}  "
            f"{_fmt_token(trace.tokens[s])!s:>12} -> {_fmt_token(trace.tokens[t])!s:<12} heads: {head_txt}"
        )
    return "\n".join(lines)


def describe_families() -> str:
    """Every supported ``model_type`` with its family and how a layer is decomposed (one line
    each; :func:`ltt.models.families.describe`).

    >>> "llama" in describe_families()
    True
    """
    from ltt.models.families import describe

    return describe()


def _load(args: argparse.Namespace, tokenizer=None):
    import ltt

    try:
        return ltt.load(args.model, tokenizer=tokenizer, trust_remote_code=args.trust_remote_code)
    except OSError as exc:  # transformers: not a directory, not on the hub, or no network
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(
            f"--model {args.model!r}: not a local directory or embedded model, and loading it from "
            f"the hub failed: {first}"
        ) from exc


def _run_trace(args: argparse.Namespace) -> int:
    tokenizer = None
    ids = getattr(args, "ids", None)
    if args.target is not None and ids is None and args.bos is None:
        # the default tokenisation only: with --ids or --bos/--no-bos the graph checks the target
        tokenizer = _tokenizer_first(args)
        if tokenizer is not None:
            _check_target(tokenizer, args.prompt, args.target)
    model = _load(args, tokenizer)
    if ids is not None:  # checked against the vocabulary under the option's own name, then traced as given
        trace = model.trace(model._encode(_parse_ids(ids), argname="--ids", prepend_bos=args.bos))
    else:
        trace = model.trace(args.prompt, prepend_bos=args.bos)
    from ltt.graph import GraphSettings, build

    targets = None if args.target is None else [args.target]
    settings = GraphSettings(args.threshold, not args.no_renormalize, targets)
    graph = build(trace, settings)
    print(routes_report(trace, graph, k=args.top))
    cf = getattr(args, "counterfactual", None)
    measured = None  # the graph's faithfulness as printed, which the report then carries
    if args.baselines or cf is not None or args.min_faithfulness is not None:
        measured = _print_faithfulness(trace, graph, args)
    if args.json:
        graph.to_json(args.json)
        print(f"graph JSON written to {args.json}")
    if args.out:
        carry = "all" if args.report_targets is None else args.report_targets
        trace.to_html(args.out, threshold=settings.threshold, renormalize=settings.renormalize, targets=targets,
                      carry=carry, faithfulness=measured)
        print(f"HTML report written to {args.out}")
    return 0


def _print_faithfulness(trace, graph, args: argparse.Namespace):
    """The default graph's faithfulness line and, with a counterfactual or a level, the circuit's;
    returns the default graph's Faithfulness when measured with zero ablation (else None)."""
    from ltt.circuits.curves import example
    from ltt.faithfulness import summary_line

    cf = getattr(args, "counterfactual", None)
    ex = example(trace, cf, None) if cf is not None else None
    kw = {} if ex is None else {"counterfactual": ex.cf_ids, "tokens": [ex.answer, ex.cf_answer]}
    measured = None
    if args.baselines:
        from ltt.progress import Steps

        with Steps(1, "measuring faithfulness") as steps:  # a line every few seconds on any stderr
            steps.note = f"the model rerun with the graph, without it and with {args.baselines} random graphs"
            measured = trace.faithfulness(graph, baselines=args.baselines, **kw)
            steps.step()
        print("faithfulness: " + summary_line(measured))
    if ex is not None:
        measured = None  # patched from a counterfactual: not the report's zero-ablation line
    if cf is None and args.min_faithfulness is None:
        return measured
    level = 0.8 if args.min_faithfulness is None else args.min_faithfulness
    tokens = kw.get("tokens") or [int(i) for i in __import__("numpy").argsort(-trace.logits)[:2]]
    c = trace.circuit(level, counterfactual=kw.get("counterfactual"), tokens=tokens, ranking=args.ranking,
                      baselines=max(args.baselines, 1))
    f, info = c.faithfulness, c.circuit
    n_attn, n_ffn = sum(f.attention_edges), sum(f.ffn_blocks)
    rand = f.summary()["normalized_random"]
    how = "patched from the counterfactual" if f.counterfactual is not None else (
        f"mean-ablated over {f.reference} built-in reference prompts")
    print(f"circuit at normalised faithfulness >= {level:g} ({info['ranking']} ranking, {how}): "
          f"{n_attn} attention edges and {n_ffn} FFN blocks of {info['of']} parts, normalised "
          f"faithfulness {f.normalized:.2f} (random graphs of the same size: {rand:.2f})")
    return measured


def _parse_ids(text: str) -> list[int]:
    """``--ids "1,2,3"`` (commas and/or spaces) as a list of ints."""
    parts = [p for p in text.replace(",", " ").split()]
    if not parts:
        raise ValueError(f"--ids {text!r}: give token ids separated by commas, e.g. --ids 1,2,3")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--ids {text!r}: not a list of integers (e.g. --ids 1,2,3)") from None


def _check_writable(path: str | None, option: str) -> None:
    if path is not None:
        from ltt.output import check_output_path

        check_output_path(path, option)


def _tokenizer_first(args: argparse.Namespace):
    """The model's tokenizer, loaded before the weights to check ``--target`` against the
    tokenised prompt (seconds instead of a model load); None when it cannot be loaded on its own
    (the model load then reports why)."""
    from ltt.models.embedded import is_embedded, locate

    try:
        from transformers import AutoTokenizer

        if is_embedded(args.model) and not os.path.isdir(args.model):
            folder, filename = locate(args.model)
            return AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        if not os.path.isdir(os.path.expanduser(args.model)):
            return None  # a hub id: its tokenizer comes with the model (no extra hub call)
        return AutoTokenizer.from_pretrained(os.path.expanduser(args.model),
                                             trust_remote_code=args.trust_remote_code)
    except Exception:
        return None


def _check_target(tokenizer, prompt: str, target: int) -> None:
    n = len(tokenizer(prompt)["input_ids"])
    if not -n <= target < n:
        raise ValueError(f"--target {target} is outside the {n} tokens of the prompt "
                         f"(give a position in [{-n}, {n}))")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltt",
        description="See how information flows through a Hugging Face causal LM for a prompt.",
    )
    from ltt import __version__

    parser.add_argument("--version", action="version", version=f"ltt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_graph_options(p: argparse.ArgumentParser, json_default: str | None, html_default: str | None) -> None:
        p.add_argument("--target", type=int, default=None,
                       help="token position whose prediction to explain (negative counts from the end; default: the last)")
        p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                       help=f"prune edges whose contribution is below this share, in [0, 1) (default {DEFAULT_THRESHOLD})")
        p.add_argument("--no-renormalize", action="store_true",
                       help="keep raw shares instead of dropping parts below the threshold and rescaling the rest")
        p.add_argument("--json", default=json_default, metavar="PATH", help="write the pruned graph as JSON here")
        p.add_argument("--out", default=html_default, metavar="PATH", help="write the standalone HTML report here")
        p.add_argument("--report-targets", type=int, default=None, metavar="N",
                       help="the HTML report carries the graphs of every token as a target; keep only the last N")
        p.add_argument("--top", type=int, default=5, help="how many tokens, layers and edges to print (default 5)")
        p.add_argument("--baselines", type=int, default=16, metavar="N",
                       help="random graphs in the faithfulness check, a rerun of the model with only the "
                            "graph's parts (default 16; 0 skips the check)")
        p.add_argument("--trust-remote-code", action="store_true",
                       help="allow the model repository's own code to run (off by default)")
        p.add_argument("--bos", dest="bos", action="store_const", const=True, default=None,
                       help="put the tokenizer's BOS token first (as the original LM Transparency Tool does)")
        p.add_argument("--no-bos", dest="bos", action="store_const", const=False,
                       help="trace without a BOS token (default: whatever the tokenizer does)")

    def add_circuit_options(p: argparse.ArgumentParser, cf_default: str | None) -> None:
        p.add_argument("--counterfactual", default=cf_default, metavar="TEXT",
                       help="a prompt of the same token length to patch removed parts from; the "
                            "faithfulness lines then give the normalised logit difference"
                            + (f" (default {cf_default!r})" if cf_default else ""))
        p.add_argument("--min-faithfulness", type=float, default=None, metavar="F",
                       help="print the smallest circuit reaching this normalised faithfulness (default "
                            "0.8 when a counterfactual is given; without one: mean ablation over a "
                            "built-in reference set)")
        p.add_argument("--ranking", default=None,
                       help="the circuit's ranking (refined with a counterfactual, routes without; "
                            "also eap, eap-ig, routes-paths, routes-contrast, random)")

    t = sub.add_parser("trace", help="trace a prompt through a model and print the routes to its prediction")
    t.add_argument("--model", required=True, help="hub id, local directory, or 'smollm2-135m' (the embedded model)")
    given = t.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", help="the text to run through the model")
    given.add_argument("--ids", metavar="IDS", help='token ids to run as given, e.g. "1,2,3"')
    add_graph_options(t, None, None)
    add_circuit_options(t, None)

    d = sub.add_parser("demo", help=f"trace {DEMO_PROMPT!r} on the embedded {DEMO_MODEL}")
    d.add_argument("--prompt", default=DEMO_PROMPT, help="the text to run (default: an indirect-object sentence)")
    add_graph_options(d, "ltt-demo.json", "ltt-demo.html")
    add_circuit_options(d, DEMO_COUNTERFACTUAL)

    m = sub.add_parser("models", help="list the supported model types and how each is decomposed")
    m.add_argument("--markdown", action="store_true",
                   help="print the README's table of families instead (generated from the same table)")
    from ltt.serve import add_parser as add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "models":
            if args.markdown:
                from ltt.models.families import markdown

                print(markdown())
            else:
                print(describe_families())
            return 0
        if args.command == "serve":
            from ltt.serve import run_command

            return run_command(args)
        if args.command == "demo":
            args.model = DEMO_MODEL
        if args.report_targets is not None and args.report_targets <= 0:
            raise ValueError(f"--report-targets must be a positive integer, got {args.report_targets}")
        if args.top <= 0:
            raise ValueError(f"--top must be a positive integer, got {args.top}")
        if args.min_faithfulness is not None and not 0 < args.min_faithfulness <= 1:
            raise ValueError(f"--min-faithfulness must be in (0, 1], got {args.min_faithfulness}")
        from ltt.circuits.rankings import RANKINGS

        if args.ranking is not None and args.ranking not in RANKINGS:
            raise ValueError(f"--ranking must be one of {', '.join(RANKINGS)}, got {args.ranking!r}")
        if not 0 <= args.baselines <= 4096:
            raise ValueError(f"--baselines must be an integer in [0, 4096], got {args.baselines}")
        # Cheap checks first: nothing should wait for a model to load to be refused.
        from ltt.checks import check_threshold

        try:
            check_threshold(args.threshold)
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
        if args.prompt == "":
            raise ValueError("--prompt is empty (''): give at least one character of text")
        if getattr(args, "ids", None) is not None:
            _parse_ids(args.ids)
        from ltt.models.loading import check_model_name

        check_model_name(args.model)
        _check_writable(args.json, "--json")
        _check_writable(args.out, "--out")
        if config.quiet():
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the loading bars; ltt's own bars read LTT_QUIET
        return _run_trace(args)
    except KeyboardInterrupt:
        print("ltt: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, non-zero exit: the CLI's contract
        print(f"ltt: error: {exc}".splitlines()[0], file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
