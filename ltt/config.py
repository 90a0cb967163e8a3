"""Every runtime environment variable ltt reads, in one place, read when asked (not at import).

Each function reads its variable now, so a notebook may set one after ``import ltt``. The list
(with defaults) is in docs/config.md. Explicit arguments (``memory=`` on ``model.trace``,
``attribution=`` on ``ltt.load``, ``shard=`` on ``trace_many``) come first; these variables
are the knobs below them.

>>> import os; os.environ["LTT_DENSE_BUDGET"] = "1024"
>>> dense_budget()
1024
>>> del os.environ["LTT_DENSE_BUDGET"]; dense_budget() == 64 * 2**20
True
"""

from __future__ import annotations

import os

_TRUE = ("1", "ON", "YES", "TRUE")

#: name -> (default, meaning), the documented list (docs/config.md repeats it).
VARIABLES = {
    "LTT_DENSE_BUDGET": ("67108864", "bytes: a trace whose dense per-head shares [L, H, T, T] fit keeps them"),
    "LTT_HEAD_CHUNK_BYTES": ("134217728", "bytes: a layer whose shares [H, T, T] exceed it is scored head by head"),
    "LTT_STREAM_BYTES": ("268435456", "bytes: a layer whose probabilities [H, T, T] exceed it streams its heads"),
    "LTT_QUIET": ("", "non-empty: no progress bars or notices"),
    "LTT_PROGRESS": ("", "non-empty and not 0: show transformers' GGUF conversion bar"),
    "LTT_CACHE_DIR": ("", "folder of converted models (else $XDG_CACHE_HOME/ltt, else ~/.cache/ltt)"),
    "XDG_CACHE_HOME": ("", "base of the cache folder when LTT_CACHE_DIR is not set"),
    "HF_HUB_OFFLINE": ("", "1/on/yes/true: only cached hub files are read (also TRANSFORMERS_OFFLINE)"),
    "RANK": ("", "torchrun/accelerate: this process's shard of trace_many"),
    "WORLD_SIZE": ("", "torchrun/accelerate: the number of shards"),
    "LOCAL_RANK": ("", "torchrun: the GPU of this process (shard='auto')"),
    "SLURM_ARRAY_TASK_ID": ("", "Slurm job array: this task's index (shard='auto')"),
    "SLURM_ARRAY_TASK_COUNT": ("", "Slurm job array: the number of tasks (shard='auto')"),
    "SLURM_ARRAY_TASK_MIN": ("", "Slurm job array: the first index (default 0)"),
}


def _get(name: str) -> str:
    return os.environ.get(name, VARIABLES[name][0])


def _bytes(name: str) -> int:
    raw = _get(name)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a whole number of bytes") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must be >= 0 bytes")
    return value


def dense_budget() -> int:
    """``LTT_DENSE_BUDGET``: bytes of dense per-head shares ``[L, H, T, T]`` a trace may keep."""
    return _bytes("LTT_DENSE_BUDGET")


def head_chunk_bytes() -> int:
    """``LTT_HEAD_CHUNK_BYTES``: above it a layer's per-head shares are scored head by head."""
    return _bytes("LTT_HEAD_CHUNK_BYTES")


def stream_bytes() -> int:
    """``LTT_STREAM_BYTES``: above it a layer's probabilities are never held for all heads."""
    return _bytes("LTT_STREAM_BYTES")


def quiet() -> bool:
    """``LTT_QUIET`` set to anything but the empty string."""
    return bool(os.environ.get("LTT_QUIET"))


def gguf_progress() -> bool:
    """``LTT_PROGRESS`` set and not ``0``."""
    return os.environ.get("LTT_PROGRESS", "") not in ("", "0")


def cache_dir() -> str:
    """``$LTT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ltt``, else ``~/.cache/ltt`` (not created)."""
    own = os.environ.get("LTT_CACHE_DIR")
    if own:
        return os.path.abspath(os.path.expanduser(own))
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ltt")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to 1/on/yes/true."""
    return any(os.environ.get(k, "").strip().upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _int_pair(a: str, b: str) -> tuple[int, int] | None:
    ra, rb = os.environ.get(a), os.environ.get(b)
    if ra is None or rb is None:
        return None
    try:
        return int(ra), int(rb)
    except ValueError:
        raise ValueError(f"{a}={ra!r} and {b}={rb!r} must be integers") from None


def torchrun_shard() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when both are set (unchecked), else None."""
    return _int_pair("RANK", "WORLD_SIZE")


def slurm_shard() -> tuple[int, int] | None:
    """``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT)`` when set, else None."""
    pair = _int_pair("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")
    if pair is None:
        return None
    raw = os.environ.get("SLURM_ARRAY_TASK_MIN", "0")
    try:
        low = int(raw)
    except ValueError:
        raise ValueError(f"SLURM_ARRAY_TASK_MIN={raw!r} must be an integer") from None
    return pair[0] - low, pair[1]


def local_rank() -> int | None:
    """``LOCAL_RANK`` (torchrun's GPU index on this node), else None."""
    raw = os.environ.get("LOCAL_RANK")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"LOCAL_RANK={raw!r} must be an integer") from None
