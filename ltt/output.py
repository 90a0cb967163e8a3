"""Output files: a path checked before any work, a file written whole or not at all.

:func:`check_output_path` answers "can a file be written there" before a long computation
starts (the report, the CLI's ``--out`` and ``--json``), with an error naming the argument;
:func:`write_whole` writes through a temporary file renamed over the target only once complete.
Depends on nothing else of ltt.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["check_output_path", "write_whole"]


def check_output_path(path: Any, argname: str = "path") -> str:
    """``path`` as a string once it is known that a file can be written there, checked before any
    work: a ValueError naming ``argname`` and the path otherwise (a folder, a missing folder, no
    permission, a file system that refuses new files such as ``/proc``). A file that exists is
    opened for appending and left as it was; one that did not is created and removed again.

    >>> check_output_path("/proc/x.html", "--out")           # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: --out '/proc/x.html': cannot write a file there (No such file or directory)
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"{argname} must be a file path (str or os.PathLike), got {type(path).__name__}: {path!r}"[:300])
    text = os.fspath(path)
    if not text:
        raise ValueError(f"{argname} is empty: give a file path")
    if os.path.isdir(text):
        raise ValueError(f"{argname} {text!r} is a directory: cannot write there (give a file path)")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        why = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ValueError(f"{argname} {text!r}: cannot write there ({folder!r} {why})")
    existed = os.path.exists(text)
    try:
        with open(text, "ab"):
            pass
    except OSError as exc:
        raise ValueError(f"{argname} {text!r}: cannot write a file there ({exc.strerror or exc})") from None
    if not existed:
        try:
            os.remove(text)
        except OSError:
            pass
    return text


def write_whole(path: str, text: str) -> None:
    """``text`` into ``path`` through a temporary file beside it, renamed over it only once
    complete: a failure or an interrupt leaves whatever was there before."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
