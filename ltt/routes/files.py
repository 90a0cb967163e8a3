"""Routes files as a whole: Parquet, shards of a run (their paths and their merge) and :func:`load_routes`.

A run writes JSON lines (:mod:`ltt.routes.store`) or, for a ``.parquet`` path, streams into
``<out>.partial.jsonl`` and writes the Parquet file when it stops. A sharded run
(``shard=(i, n)``, or ``RANK``/``WORLD_SIZE``) writes one file per shard (:func:`shard_path`);
:func:`merge_shards` joins the shards of one run and refuses those of different runs.

>>> shard_path("routes.jsonl", (0, 2))
'routes.shard0of2.jsonl'
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterable, Sequence

from ltt import config
from ltt.checks import is_int
from ltt.routes import store
from ltt.routes.fingerprint import PromptChain, differences, settings_of
from ltt.routes.routeset import RouteSet
from ltt.routes.summary import PromptRoutes

# --------------------------------------------------------------------------------------------
# shards


def shard_from_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` from the environment (``torchrun``, ``accelerate launch``), or None
    when there is no world of more than one process.

    >>> shard_from_env()                                          # doctest: +SKIP
    (0, 2)
    """
    pair = config.torchrun_shard()
    if pair is None:
        return None
    i, n = pair
    if n <= 1:
        return None
    if not 0 <= i < n:
        raise ValueError(f"RANK={i} is outside [0, WORLD_SIZE={n})")
    return i, n


def auto_shard() -> tuple[int, int] | None:
    """``shard="auto"``: torchrun's ``(RANK, WORLD_SIZE)``, else a Slurm job array's
    ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT)``, else None (one
    process). Out-of-range values raise naming the variables.

    >>> auto_shard()                                              # doctest: +SKIP
    (3, 8)
    """
    found = shard_from_env()
    if found is not None:
        return found
    pair = config.slurm_shard()
    if pair is None or pair[1] <= 1:
        return None
    i, n = pair
    if not 0 <= i < n:
        raise ValueError(f"SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) = {i} is outside "
                         f"[0, SLURM_ARRAY_TASK_COUNT={n}): ltt expects an array of consecutive task ids")
    return i, n


def shard_device() -> str:
    """The device this shard's model should load on: ``cuda:LOCAL_RANK`` under torchrun, ``cuda``
    (the GPU Slurm gave the task) where CUDA is available, else ``cpu``.

    >>> model = ltt.load(name, device=shard_device())             # doctest: +SKIP
    """
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = config.local_rank()
    return "cuda" if local is None else f"cuda:{local}"


def check_shard_device(model: Any) -> None:
    """Under torchrun, a CUDA model must sit on this process's GPU (``LOCAL_RANK``): several
    shards on one GPU would compete for its memory."""
    local = config.local_rank()
    backend = getattr(model, "backend", None)
    devices = [] if backend is None else [d for d in backend.layer_devices if d.type == "cuda"]
    if local is None or not devices:
        return
    wrong = sorted({str(d) for d in devices if d.index not in (None, local)})
    if wrong:
        raise ValueError(f"shard='auto' with LOCAL_RANK={local}, but the model's layers are on {', '.join(wrong)}: "
                         f"load it with device=ltt.routes.files.shard_device() ('cuda:{local}')")


def check_shard(shard: Any) -> tuple[int, int] | None:
    if shard is None:
        return shard_from_env()
    if isinstance(shard, str):
        if shard != "auto":
            raise ValueError(f"shard must be (i, n), 'auto' or None, got {shard!r}")
        return auto_shard()
    try:
        i, n = shard
        ok = all(is_int(v) for v in (i, n))
    except (TypeError, ValueError):
        ok = False
    if not ok or not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with integers 0 <= i < n, got {shard!r}")
    return (int(i), int(n)) if n > 1 else None


def shard_path(path: str | os.PathLike, shard: tuple[int, int] | None) -> str:
    """The file a shard writes: ``routes.jsonl`` -> ``routes.shard0of2.jsonl``.

    >>> shard_path("out/routes.jsonl", (1, 4))
    'out/routes.shard1of4.jsonl'
    """
    path = os.fspath(path)
    if shard is None:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.shard{shard[0]}of{shard[1]}{ext}"

# --------------------------------------------------------------------------------------------
# the output file


def parquet_modules():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Parquet output needs pyarrow: pip install pyarrow "
                          "(or write JSON lines: out='routes.jsonl')") from exc
    return pa, pq


def write_parquet(path: str, header: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """One row per record; the header goes into the schema metadata. Written to a temporary file
    and renamed, under the lock of the file it replaces (:func:`ltt.routes.store.replace`)."""
    pa, pq = parquet_modules()
    rows = [dict(r, prediction=json.dumps(r.get("prediction")), heads=json.dumps(r.get("heads")),
                 error=r.get("error")) for r in records]
    columns = ["index", "key", "prompt", "tokens", "prediction", "heads", "ffn", "sources", "error", "chain"]
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows],
                                 schema=pa.schema([("index", pa.int64()), ("key", pa.string()),
                                                   ("prompt", pa.string()), ("tokens", pa.list_(pa.string())),
                                                   ("prediction", pa.string()), ("heads", pa.string()),
                                                   ("ffn", pa.list_(pa.float64())),
                                                   ("sources", pa.list_(pa.float64())), ("error", pa.string()),
                                                   ("chain", pa.string())],
                                                  metadata={b"ltt-routes": json.dumps(header).encode()}))
    store.replace(path, write=lambda tmp: pq.write_table(table, tmp, compression="snappy"), option="out")


def read_parquet(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _, pq = parquet_modules()
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if b"ltt-routes" not in meta:
        raise ValueError(f"{path!r} is not an ltt routes Parquet file")
    header = json.loads(meta[b"ltt-routes"])
    records = []
    for row in table.to_pylist():
        if row.get("chain") is None:
            row.pop("chain", None)
        if row.get("error") is not None:
            records.append({k: row[k] for k in ("index", "key", "prompt", "error", "chain") if k in row})
        else:
            row.pop("error", None)
            row["prediction"] = json.loads(row["prediction"])
            row["heads"] = json.loads(row["heads"])
            records.append(row)
    return header, records


def is_parquet(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq"))


def partial_path(path: str) -> str:
    # Parquet cannot be appended to: a Parquet run streams into this JSON-lines file and writes
    # the Parquet file when it stops (finished or not).
    return path + ".partial.jsonl"


def _set_from(header: dict[str, Any], records: Iterable[dict[str, Any]], where: str) -> RouteSet:
    """The set of a file's header and records (``where``: the file, or files, for messages). A
    file of head shares weighted otherwise than by flow (``"weighting": "edge"``, which ltt no
    longer computes) is refused."""
    settings = settings_of(header)
    if "weighting" in settings:
        raise ValueError(f"{where} holds routes with weighting={settings['weighting']!r}, which this ltt no longer "
                         "reads (head and FFN shares are weighted by flow only): trace the prompts again")
    L, H = int(header["n_layers"]), int(header["n_heads"])
    rs = RouteSet(str(header["model"]), L, H, settings, fingerprint=header.get("fingerprint"))
    latest: dict[int, dict[str, Any]] = {}
    for rec in records:
        latest[int(rec["index"])] = rec  # a re-run prompt replaces its old record
    for i in sorted(latest):
        rec = latest[i]
        if "error" in rec:
            rs.errors.append(rec)
        else:
            rs.records.append(PromptRoutes.from_record(rec, L, H))
    return rs


def _read_any(path: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    return read_parquet(path) if is_parquet(path) else store.read(path)


def load_routes(path: str | os.PathLike) -> RouteSet:
    """A :class:`RouteSet` from a file written by :func:`trace_many` or :meth:`RouteSet.save`
    (JSON lines, or Parquet with pyarrow). A truncated last line is ignored.

    >>> routes = load_routes("routes.jsonl")                      # doctest: +SKIP
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path={path!r}: no such routes file")
    header, records = _read_any(path)
    if header is None:
        raise ValueError(f"path={path!r} is empty: no routes header")
    return _set_from(header, records, f"path={path!r}")


def merge_shards(paths: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike | None = None,
                 allow_missing: bool = False) -> RouteSet:
    """Merge the files of a sharded run into one :class:`RouteSet` (sorted by prompt index).

    ``paths``: the ``out`` path the run was given (its ``.shard{i}of{n}`` files are found next
    to it), or an explicit list of shard files. Every shard must come from the same run: the same
    model (config, dtype, weights checksum, ltt version), settings and prompt list (compared when
    the run read a list or a file; a streamed iterable is fingerprinted per record only), or the
    merge is refused naming the files and what differs. A missing shard is an error unless
    ``allow_missing``. ``out``: also write the merged set there (JSON lines).

    >>> merged = merge_shards("routes.jsonl", out="routes.merged.jsonl")   # doctest: +SKIP
    """
    if isinstance(paths, (str, os.PathLike)):
        base = os.fspath(paths)
        root, ext = os.path.splitext(base)
        pattern = re.compile(re.escape(os.path.basename(root)) + r"\.shard(\d+)of(\d+)" + re.escape(ext) + "$")
        files = sorted(p for p in glob.glob(glob.escape(root) + ".shard*of*" + glob.escape(ext))
                       if pattern.search(os.path.basename(p)))
        if not files:
            raise FileNotFoundError(f"paths={base!r}: no shard files {root}.shard<i>of<n>{ext} found")
    else:
        files = [os.fspath(p) for p in paths]
        if not files:
            raise ValueError("paths is empty: give the run's out path or a list of shard files")
    headers: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    origin: dict[int, str] = {}
    for f in files:
        h, recs = _read_any(f)
        if h is None:
            raise ValueError(f"{f!r} is empty: no routes header")
        headers.append(h)
        records.extend(recs)
        origin.update((int(r["index"]), f) for r in recs)
    first = headers[0]
    for f, h in zip(files, headers):
        diffs = differences(first, h, where=(f"in {os.path.basename(files[0])}", f"in {os.path.basename(f)}"))
        if diffs:
            raise ValueError(f"{f!r} and {files[0]!r} are shards of different runs (" + "; ".join(diffs)
                             + "): merge only the shards of one run")
    shards = {tuple(h["shard"]) for h in headers if h.get("shard")}
    sizes = {n for _, n in shards}
    if len(sizes) > 1:
        raise ValueError(f"the files come from runs with different shard counts {sorted(sizes)}: {files}")
    if sizes and not allow_missing:
        n = sizes.pop()
        missing = sorted(set(range(n)) - {i for i, _ in shards})
        if missing:
            raise ValueError(f"shards {missing} of {n} are missing (found {files}); "
                             "pass allow_missing=True to merge what is there")
    if all(((h.get("fingerprint") or {}).get("prompts") or {}).get("sha256") is None for h in headers):
        _check_streamed_chain(records, origin)
    merged_header = dict(first, shard=None)
    rs = _set_from(merged_header, records, f"paths={files!r}")
    if out is not None:
        rs.save(out)
    return rs


def _check_streamed_chain(records: list[dict[str, Any]], origin: dict[int, str]) -> None:
    """Shards of a run read from an iterable (no whole-list hash): each record's chain hash must be
    the hash of the merged prompts 0..index, checked up to the first index no shard holds."""
    latest = {int(r["index"]): r for r in records}
    chain = PromptChain()
    for expect, i in enumerate(sorted(latest)):
        if i != expect:
            break  # a gap (an unfinished shard): nothing after it can be checked
        rec = latest[i]
        link = chain.update(i, rec.get("prompt"))
        if rec.get("chain") is not None and rec["chain"] != link:
            others = sorted({origin[j] for j in range(i) if origin.get(j) != origin[i]}) or [origin[i]]
            raise ValueError(
                f"{origin[i]!r} and {others[0]!r} are shards of different runs (the prompt list: prompts[{i}] "
                f"{rec.get('prompt')!r:.80} in {os.path.basename(origin[i])} was read after other prompts "
                "than those the other shards hold): merge only the shards of one run")


def peek_header(path: str) -> dict[str, Any] | None:
    """The header of an existing routes file, or None (the locked writer validates it for real)."""
    try:
        header, _ = _read_any(path) if is_parquet(path) else (store.parse(_first_line(path), path)[0], None)
        return header
    except (OSError, ValueError, ImportError):
        return None


def _first_line(path: str) -> bytes:
    with open(path, "rb") as fh:
        line = fh.readline(1 << 20)
    return line if line.endswith(b"\n") else line + b"\n"
