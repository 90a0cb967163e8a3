"""The run loop of routes at scale: :func:`trace_many` traces, summarises and writes each prompt.

One graph explains one prediction. :func:`trace_many` streams many prompts through
``trace -> graph -> summary`` (:func:`ltt.routes.summary.summarize`) and keeps only each
prompt's small summary, in a :class:`ltt.routes.routeset.RouteSet` and, with ``out``, in a
locked file of the run (:mod:`ltt.routes.store`) that a later call resumes.

Prompts are traced one at a time: the hooks of :mod:`ltt.models` record batch row 0 and padding
would have to be threaded through every family's masks and positions; the attribution, not the
forward pass, dominates the time per prompt on small models anyway.

>>> routes = trace_many(model, ["The capital of France is", "2 + 2 ="], out="routes.jsonl")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from ltt.checks import DEFAULT_THRESHOLD, Targets, is_int
from ltt import progress as progress_bars
from ltt.graph import GraphSettings, build
from ltt.routes import files, store
from ltt.routes.fingerprint import PromptChain, model_fingerprint, prompts_fingerprint
from ltt.routes.routeset import RouteSet
from ltt.routes.summary import PromptRoutes, prompt_key, summarize


def trace_many(
    model: Any,
    prompts: Any,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    renormalize: bool = True,
    targets: Targets = None,
    norm: int = 1,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    shard: tuple[int, int] | str | None = None,
    on_error: str = "raise",
    progress: bool | None = None,
    faithfulness: bool | int = False,
    prepend_bos: bool | None = None,
    memory: str | None = None,
) -> RouteSet:
    """Trace every prompt, build its pruned graph and keep only its :class:`PromptRoutes`.

    * ``prompts``: a list of strings, a text file path (UTF-8, one prompt per line; blank lines
      are skipped, a prompt's index is its 0-based line number, a byte-order mark is dropped) or
      any iterable of strings (a generator, a ``datasets`` column), read lazily;
    * ``threshold``, ``renormalize``, ``targets``, ``norm``: the graph of each prompt
      (:func:`ltt.graph.build_graph`);
    * ``out``: a JSON-lines file (``.jsonl``) written one line per prompt as it goes, or a
      ``.parquet`` file (needs pyarrow; the run streams into ``<out>.partial.jsonl`` and writes
      the Parquet file when it stops). The file is locked while the run writes it (a second
      process given it is refused), and an existing file that is not an ltt routes file is
      refused untouched. Its header fingerprints the run (:mod:`ltt.routes.fingerprint`: the model's
      config, dtype and weights checksum, ltt's version, the settings, the prompt list). With
      ``resume`` (default) an existing file of the same run is continued: prompts already in it
      are not traced again, a truncated last line is dropped; a file of another run (another
      model, even of the same name, other settings, another prompt list) is refused, naming what
      differs. A list or file of prompts is compared whole; an iterable without a length is
      compared prompt by prompt as it is read (every prompt already in the file must come back
      at its index), and is read into a list first when the file's run was fingerprinted whole.
      ``resume=False`` replaces an existing ltt routes file;
    * ``shard=(i, n)``: trace only the prompts whose index is ``i`` modulo ``n``; by default
      taken from the ``RANK`` / ``WORLD_SIZE`` environment (``torchrun``, ``accelerate
      launch``). ``shard="auto"`` takes it from torchrun (``RANK`` / ``WORLD_SIZE``) or else from
      a Slurm job array (``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``), and checks that a
      CUDA model sits on this process's GPU (``LOCAL_RANK``; load it with
      ``device=ltt.routes.files.shard_device()``). A sharded run writes ``out`` as
      :func:`shard_path` (``routes.shard0of2.jsonl``); :func:`merge_shards` joins the files
      (docs/gpu.md has an sbatch example);
    * ``on_error``: ``"raise"`` (default: stop at a bad prompt, naming ``prompts[i]``; the file
      keeps everything done before it) or ``"skip"`` (record the error and go on);
    * ``progress``: a tqdm bar (default: when stderr is a terminal);
    * ``faithfulness``: also rerun each prompt's graph through :func:`ltt.faithfulness.faithfulness`
      (True: 16 random graphs, an int: that many) and keep its summary in the record; off by default;
    * ``prepend_bos``: as in :meth:`ltt.models.Model.trace` (a prompt may also be a list of
      token ids); when given, it is one of the run's settings.
    * ``memory``: each trace's memory mode (:mod:`ltt.plan`; it does not change the results).

    Returns the :class:`RouteSet` of this process's prompts, in input order.

    >>> routes = model.trace_many("prompts.txt", out="routes.jsonl")   # doctest: +SKIP
    """
    graph_settings = GraphSettings(threshold, renormalize, targets, norm)  # checked once, here
    threshold, renormalize, norm = graph_settings.threshold, graph_settings.renormalize, graph_settings.norm
    targets = graph_settings.targets if graph_settings.targets is None or isinstance(graph_settings.targets, str) \
        else list(graph_settings.targets)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    auto = isinstance(shard, str) and shard == "auto"
    shard = files.check_shard(shard)
    if auto:
        files.check_shard_device(model)
    from ltt.plan import check_memory_mode

    memory = check_memory_mode(memory)
    settings = {"threshold": threshold, "renormalize": bool(renormalize), "targets": targets,
                "norm": int(norm)}
    if faithfulness is not False:
        settings["faithfulness"] = _faithfulness_baselines(faithfulness)
    if prepend_bos is not None:
        if not isinstance(prepend_bos, (bool, np.bool_)):
            raise TypeError(f"prepend_bos must be None, True or False, got {prepend_bos!r}")
        settings["prepend_bos"] = bool(prepend_bos)
    routes = RouteSet(str(model.name), int(model.n_layers), int(model.n_heads), settings, model=model)
    source, count, prompts_fp = _prompt_source(prompts)
    final_path = write_path = None
    seed = None
    if out is not None:
        final_path = write_path = files.shard_path(out, shard)
        if os.path.isdir(final_path):
            raise IsADirectoryError(f"out={final_path!r} is a directory: give a file path")
        folder = os.path.dirname(os.path.abspath(final_path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"out={final_path!r}: the folder {folder!r} does not exist")
        if files.is_parquet(final_path):
            files.parquet_modules()  # fail before any work when pyarrow is missing
            store.check_ours(final_path)
            write_path = files.partial_path(final_path)
            if resume and os.path.isfile(final_path):
                seed = files.read_parquet(final_path)
        old = seed[0] if seed is not None else (files.peek_header(write_path) if os.path.isfile(write_path) else None)
        if resume and prompts_fp is None and old and ((old.get("fingerprint") or {}).get("prompts") or {}).get("sha256"):
            # the file's run was fingerprinted whole: read this iterable whole to compare it first
            items = list(source)
            source, count, prompts_fp = iter(items), len(items), prompts_fingerprint(items)
            if not items:
                raise ValueError("prompts is empty: the iterable gave no prompts")
    routes.fingerprint = {"model": model_fingerprint(model),
                          "prompts": prompts_fp or {"count": None, "sha256": None}}
    writer = None
    if out is not None:
        by_index = None
        if prompts_fp is not None:
            items = list(source)
            source, by_index = iter(items), dict(items)
        writer = store.Writer(write_path, routes.header(shard), resume, seed=seed, prompts=by_index)
    done = writer.done if writer is not None else {}
    if count is not None and shard is not None:
        i, n = shard
        count = len(range(i, count, n)) if not isinstance(prompts, (str, os.PathLike)) else None
    bar = None
    completed = False
    try:
        bar = progress_bars.bar(count, "tracing prompts", "prompt", show=progress)
        _run(model, routes, source, done, writer, shard, on_error, graph_settings, bar,
             settings.get("faithfulness"), prepend_bos, memory)
        completed = True
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            try:
                if files.is_parquet(final_path):
                    header, recs = writer.contents()
                    files.write_parquet(final_path, header, recs)
                    if completed:
                        os.remove(writer.path)
            finally:
                writer.close()
    return routes


def _run(model, routes, source, done, writer, shard, on_error, graph_settings, bar, faithfulness=None,
         prepend_bos=None, memory=None) -> None:
    """The loop of :func:`trace_many`: each prompt from the file when it is there (its chain
    checked), else traced, summarised and written."""
    chain = PromptChain()
    seen = 0
    last = -1
    for index, prompt in source:
        seen += 1
        last = index
        link = chain.update(index, prompt)
        if shard is not None and index % shard[1] != shard[0]:
            continue
        key = prompt_key(prompt) if isinstance(prompt, str) else ""
        old = done.get(index)
        if old is not None:
            if old.get("chain") != link:
                raise ValueError(
                    f"prompts[{index}] or a prompt before it differs from the run in {writer.path!r} "
                    f"(there prompts[{index}] is {old.get('prompt')!r:.80}, here {prompt!r:.80}): another "
                    "prompt list is not resumed; give another out path, or resume=False to replace it")
            if "error" in old:
                routes.errors.append(old)
            else:
                routes.records.append(PromptRoutes.from_record(old, routes.n_layers, routes.n_heads))
        else:
            try:
                trace = _trace_one(model, prompt, index, prepend_bos, memory)
                graph = build(trace, graph_settings)
                summary = summarize(trace, graph=graph, index=index)
                if faithfulness is not None:
                    summary.faithfulness = trace.faithfulness(graph, baselines=faithfulness).summary()
                del trace
            except (ValueError, TypeError) as exc:
                if on_error == "raise" or not isinstance(prompt, str):
                    if f"prompts[{index}]" in str(exc) or type(exc) not in (ValueError, TypeError):
                        raise
                    raise type(exc)(f"prompts[{index}]: {exc}") from exc
                err = {"index": index, "key": key, "prompt": prompt, "error": f"{type(exc).__name__}: {exc}"}
                routes.errors.append(err)
                if writer is not None:
                    writer.write(dict(err, chain=link))
            else:
                routes.records.append(summary)
                if writer is not None:
                    writer.write(dict(summary.to_record(), chain=link))
        if bar is not None:
            bar.update(1)
    if seen == 0:
        raise ValueError("prompts is empty: the iterable gave no prompts")
    beyond = [i for i in done if i > last]
    if beyond:
        raise ValueError(f"the prompts end at index {last} but the file {writer.path!r} holds prompts up to "
                         f"index {max(beyond)}: another prompt list is not resumed; give another out path, "
                         "or resume=False to replace it")


def _trace_one(model: Any, prompt: Any, index: int, prepend_bos: bool | None = None, memory: str | None = None):
    """The trace of one prompt; a bad prompt raises naming ``prompts[index]``."""
    model._encode(prompt, argname=f"prompts[{index}]", prepend_bos=prepend_bos)
    return model.trace(prompt, prepend_bos=prepend_bos, memory=memory)



def _faithfulness_baselines(value: Any) -> int:
    """The number of random graphs of ``trace_many(faithfulness=...)``: True -> 16, an int >= 0."""
    if value is True:
        return 16
    if not is_int(value) or not 0 <= value <= 4096:
        raise ValueError(f"faithfulness must be True, False or a number of random graphs in [0, 4096], got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# input prompts


def _prompt_source(prompts: Any) -> tuple[Iterator[tuple[int, Any]], int | None, dict[str, Any] | None]:
    """``(iterator of (index, prompt), count or None, fingerprint or None)`` from a list, a file
    path or an iterable. A list, tuple or file is fingerprinted whole (:mod:`ltt.routes.fingerprint`);
    any other iterable is read lazily and fingerprinted as it goes (fingerprint None)."""
    if isinstance(prompts, (str, os.PathLike)):
        items = _read_prompt_file(os.fspath(prompts))
        return iter(items), len(items), prompts_fingerprint(items)
    if isinstance(prompts, (bytes, bytearray)):
        raise TypeError("prompts must be a list of strings, a text file path or an iterable of strings, got bytes")
    if prompts is None:
        raise TypeError("prompts must be a list of strings, a text file path or an iterable of strings, got None")
    try:
        count = len(prompts)
    except TypeError:
        count = None
    if count == 0:
        raise ValueError(f"prompts is empty ({prompts!r}): give at least one prompt")
    try:
        it = iter(prompts)
    except TypeError as exc:
        raise TypeError(f"prompts must be a list of strings, a text file path or an iterable of strings, "
                        f"got {type(prompts).__name__}") from exc
    if isinstance(prompts, (list, tuple)):
        items = list(enumerate(prompts))
        return iter(items), count, prompts_fingerprint(items)
    return enumerate(it), count, None


def _read_prompt_file(path: str) -> list[tuple[int, str]]:
    """``(line number from 0, prompt)`` of every non-blank line of a UTF-8 text file (a leading
    byte-order mark is dropped; bytes that are not UTF-8 are an error naming their line)."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"prompts={path!r}: no such file (a string is read as a text file with one prompt "
            "per line; pass a list to give the prompts themselves)")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise type(exc)(exc.errno, f"prompts={path!r}: cannot read the file: {exc.strerror}") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # the UTF-8 byte-order mark some editors write: not part of the first prompt
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = (" (the file looks like UTF-16: save it as UTF-8)"
                if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "")
        raise ValueError(f"prompts={path!r}: line {line} is not valid UTF-8 (byte {column} of the line: "
                         f"{exc.reason}){hint}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    items = [(i, line.rstrip("\r")) for i, line in enumerate(lines) if line.rstrip("\r").strip()]
    if not items:
        raise ValueError(f"prompts={path!r}: the file holds no prompts (one prompt per line)")
    return items
