"""``ltt serve``: the live app in a browser, the widget's front end over a WebSocket.

The page is the same ES module as the Jupyter widget and the offline report, driven by a third
transport: each browser tab gets a headless :class:`ltt.widget.GraphWidget` on the server, its
messages carried as JSON over a WebSocket. Pick a model (only the configured ones), type or
pick a prompt, explore every panel live. Needs the ``serve`` extra (``pip install
'ltt[serve]'``: Starlette, uvicorn, websockets).

    ltt serve --model gpt2 --models-dir ~/models --prompts prompts.txt
    ltt serve --host 0.0.0.0 --port 8765          # prints a URL with a token

Modules: :mod:`ltt.serve.app` (routes, token, startup), :mod:`ltt.serve.session` (one page's
kernel), :mod:`ltt.serve.jobs` (the single worker thread and its queue),
:mod:`ltt.serve.models` (allowed models, LRU cache).

>>> import ltt.serve                                                # doctest: +SKIP
>>> ltt.serve.serve(models=["/path/to/model"], port=8765)           # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from ltt import config

__all__ = ["serve", "read_prompts", "add_parser", "run_command", "parse_size"]

EXTRA_HINT = "ltt serve needs the serve extra: pip install 'ltt[serve]' (starlette, uvicorn, websockets)"


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a ``--prompts`` file: plain text, one prompt a line (blank lines skipped),
    or JSON lines each holding a ``"prompt"`` string. Errors name the file and line.

    >>> read_prompts("prompts.txt")                                 # doctest: +SKIP
    ['The capital of France is', 'When Mary and John went to the store, John gave a drink to']
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--prompts {os.fspath(path)!r}: cannot read it ({exc})") from None
    rows = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    as_json = bool(rows) and all(line.lstrip().startswith("{") for _, line in rows)
    out: list[str] = []
    for n, line in rows:
        if not as_json:
            out.append(line)
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"--prompts {os.fspath(path)!r} line {n}: not JSON ({exc})") from None
        prompt = obj.get("prompt") if isinstance(obj, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"--prompts {os.fspath(path)!r} line {n}: needs a non-empty \"prompt\" string")
        out.append(prompt)
    return out


def serve(
    models: Sequence[str] = (),
    models_dirs: Sequence[str] = (),
    prompts: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    max_tokens: int = 512,
    max_connections: int = 8,
    max_models: int = 2,
    max_memory: int | None = None,
) -> int:
    """Run the live app until Ctrl-C (what ``ltt serve`` runs); returns 0 on a clean stop.

    >>> ltt.serve.serve(models=["gpt2"], prompts=["The capital of France is"])   # doctest: +SKIP
    """
    try:
        from ltt.serve.app import ServeConfig, run
    except ImportError as exc:
        raise ImportError(f"{EXTRA_HINT} ({exc})") from None
    return run(ServeConfig(models=list(models), models_dirs=list(models_dirs), prompts=list(prompts),
                           host=host, port=port, token=token, max_tokens=max_tokens,
                           max_connections=max_connections, max_models=max_models, max_memory=max_memory))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``ltt``'s subparsers (no server import here)."""
    p = sub.add_parser("serve", help="the live app in a browser: pick a model and a prompt, explore the graph")
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="a model the page may load: hub id or local directory (repeatable)")
    p.add_argument("--models-dir", action="append", default=[], metavar="DIR",
                   help="a folder whose subdirectories holding config.json are offered (repeatable)")
    p.add_argument("--prompts", metavar="FILE", help="prompts for the picker: one a line, or JSON lines with \"prompt\"")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs a token)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    p.add_argument("--token", default=None, help="the access token (default: generated when the bind is not loopback)")
    p.add_argument("--max-tokens", type=int, default=512, help="longest prompt in tokens (default 512)")
    p.add_argument("--max-connections", type=int, default=8, help="open pages at once (default 8)")
    p.add_argument("--max-models", type=int, default=2, help="models kept loaded, least recently used evicted (default 2)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="bytes the kept traces of all pages may hold together, e.g. 4G or 800M (default: half "
                        "the memory available at startup); least recently used traces are dropped")
    return p


def parse_size(text: str, what: str = "--max-memory") -> int:
    """A byte count from ``4G``, ``800M``, ``512K`` or a plain number of bytes.

    >>> parse_size("1.5G"), parse_size("800M"), parse_size("4096")
    (1610612736, 838860800, 4096)
    """
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    number = t[:-1] if factor > 1 else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{what} must be a size such as 4G, 800M or a number of bytes, got {text!r}") from None
    if not value > 0 or value * factor > 1 << 50:
        raise ValueError(f"{what} must be a positive size, got {text!r}")
    return int(value * factor)


def run_command(args: argparse.Namespace) -> int:
    """``ltt serve``'s body: check the options, then serve."""
    prompts = read_prompts(args.prompts) if args.prompts else []
    max_memory = parse_size(args.max_memory) if args.max_memory is not None else None
    if config.quiet():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return serve(models=args.model, models_dirs=args.models_dir, prompts=prompts, host=args.host,
                 port=args.port, token=args.token, max_tokens=args.max_tokens,
                 max_connections=args.max_connections, max_models=args.max_models, max_memory=max_memory)
