"""The routes file on disk: a locked, append-only JSON-lines file of one run, read, repaired and replaced safely.

A routes file is one header line (``{"format": "ltt-routes", "version": 2, ...}``) and one line
per prompt. This module keeps such a file safe:

* **one writer at a time**: the writer holds an exclusive ``flock`` on the file for the whole run;
  a second process given the same file is refused at once with a message saying so (nothing is
  read, cut or written by it);
* **only ltt's files are touched**: a file that is not empty must start with a complete ltt routes
  header, or it is refused before any byte of it changes (also with ``resume=False``); a torn last
  line (a crash mid-write) is cut off only after the header and the run's fingerprint matched;
* **one run per file**: the header holds the run's fingerprint (:mod:`ltt.routes.fingerprint`);
  resuming another run is refused naming what differs.

>>> parse(b'{"format": "ltt-routes", "version": 2}', "r.jsonl")[0]["version"]
2
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from typing import Any

from ltt.routes.fingerprint import short_repr, differences

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: in-memory runs work, files cannot be locked
    fcntl = None

FORMAT = "ltt-routes"
VERSION = 2


# --------------------------------------------------------------------------------------------
# reading


def parse(data: bytes, path: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """``(header, records, good_end)`` of a routes file's bytes; ``good_end`` is where the last
    complete line ends. Refuses (ValueError) a file that is not empty and does not start with a
    complete ltt routes header, and a broken line before the last one."""
    if not data:
        return None, [], 0
    first_end = data.find(b"\n")
    first = data if first_end < 0 else data[:first_end]
    try:
        header = json.loads(first.decode("utf-8"))
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(
            f"{path!r} is not an ltt routes file (its first line is not an ltt-routes header): "
            "ltt leaves it as it is; give another out path")
    if first_end < 0:
        # A header without its newline: a crash while it was written. Records never follow it.
        return header, [], 0
    records: list[dict[str, Any]] = []
    pos = first_end + 1
    good_end = pos
    n = 1
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        n += 1
        if line.strip():
            try:
                obj = json.loads(line.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if end < 0 or end == len(data) - 1:
                    break  # the last line, cut short by a crash mid-write
                raise ValueError(f"{path!r} line {n} is not a routes record ({exc})") from exc
            if end < 0:
                break  # a whole record without its newline: kept only once the newline is there
            records.append(obj)
        if end < 0:
            break
        pos = end + 1
        good_end = pos
    return header, records, good_end


def read(path: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Header and records of a routes file, for reading only (a torn last line is ignored).

    A record written without its final newline is read too (it is complete JSON)."""
    with open(path, "rb") as fh:
        data = fh.read()
    header, records, good_end = parse(data, path)
    tail = data[good_end:].strip()
    if header is not None and good_end and tail:
        try:
            obj = json.loads(tail.decode("utf-8"))
            if isinstance(obj, dict):
                records.append(obj)
        except ValueError:
            pass
    return header, records


# --------------------------------------------------------------------------------------------
# locking and writing


def _lock(path: str, option: str) -> int:
    """An fd of ``path`` (created when missing, never truncated) holding its exclusive lock."""
    if fcntl is None:  # pragma: no cover
        raise OSError(errno.ENOTSUP, f"{option}={path!r}: locking the file needs fcntl (a POSIX system)")
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        except IsADirectoryError as exc:
            raise IsADirectoryError(exc.errno, f"{option}={path!r} is a directory: give a file path") from None
        except OSError as exc:
            raise type(exc)(exc.errno, f"{option}={path!r}: cannot write the file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BlockingIOError(
                errno.EWOULDBLOCK,
                f"{option}={path!r} is locked by another process writing to it (another trace_many run "
                "or save); wait for it to finish, or give this run its own file (another out path, or "
                "shard=(i, n) for one of several processes)") from None
        except OSError:
            os.close(fd)
            raise
        # The path may have been replaced (save, a finished Parquet run) between open and lock.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise OSError(errno.EAGAIN, f"{option}={path!r} kept being replaced while ltt tried to lock it")


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, pos = [], 0
    while pos < size:
        chunk = os.pread(fd, min(size - pos, 1 << 24), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Writer:
    """The locked output file of a run: validated, repaired and appended to (one line per write).

    ``header``: this run's header; ``resume``: continue a file of the same run (its records are in
    :attr:`done`, keyed by index) or, when False, replace an ltt routes file's content (under the
    lock). ``prompts``: this run's prompts by index, when known, to name the first one that differs
    from the file's. ``seed``: ``(header, records)`` standing for the file's content when it is empty (a
    Parquet run continued from its Parquet file). Raises before changing anything when the file is
    not ltt's, is locked, or (with ``resume``) belongs to another run.
    """

    def __init__(self, path: str, header: dict[str, Any], resume: bool, option: str = "out",
                 seed: tuple[dict[str, Any], list[dict[str, Any]]] | None = None,
                 prompts: dict[int, Any] | None = None):
        self.path = path
        self.header = header
        self.done: dict[int, dict[str, Any]] = {}
        self.old_header: dict[str, Any] | None = None
        self.fd = _lock(path, option)
        try:
            data = _read_fd(self.fd)
            old, records, good_end = parse(data, path)
            if old is not None and resume:
                check_resumable(path, old, header, option, _first_change(records, prompts))
                self.old_header = old
                if good_end < len(data) or not good_end:
                    # the header matched: a torn last line (or header newline) can go
                    os.ftruncate(self.fd, good_end)
                    if not good_end:
                        _write_all(self.fd, _line(old))
            elif old is not None:
                os.ftruncate(self.fd, 0)
                records = []
            elif seed is not None and resume:
                check_resumable(path, seed[0], header, option, _first_change(seed[1], prompts))
                self.old_header, records = seed[0], seed[1]
                _write_all(self.fd, b"".join(_line(o) for o in [seed[0]] + list(records)))
            if self.old_header is None:
                _write_all(self.fd, _line(header))
            for rec in records:
                self.done[int(rec["index"])] = rec  # a later record of an index replaces an earlier
        except BaseException:
            os.close(self.fd)
            raise

    def write(self, obj: dict[str, Any]) -> None:
        """Append one record as one ``write`` of one whole line."""
        _write_all(self.fd, _line(obj))

    def contents(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """What the file holds now (read under the lock)."""
        header, records, _ = parse(_read_fd(self.fd), self.path)
        return header, records

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # releases the lock
            self.fd = -1


def _first_change(records: list[dict[str, Any]], prompts: dict[int, Any] | None) -> str:
    """``prompts[i]`` of the first record whose prompt is not this run's, as a phrase, or ''."""
    if prompts is None:
        return ""
    for rec in sorted(records, key=lambda r: int(r.get("index", -1))):
        i = int(rec.get("index", -1))
        if prompts.get(i) != rec.get("prompt"):
            now = "no prompt" if i not in prompts else short_repr(prompts[i])
            return f"prompts[{i}] is {short_repr(rec.get('prompt'))} in the file, {now} now"
    return ""


def check_resumable(path: str, old: dict[str, Any], new: dict[str, Any], option: str = "out",
                    change: str = "") -> None:
    """Refuse to continue ``path`` (header ``old``) with the run of header ``new``, naming what
    differs (``change``: the first changed prompt, when known)."""
    version = old.get("version")
    if version != VERSION or not old.get("fingerprint"):
        raise ValueError(
            f"{option}={path!r} was written by ltt with routes format version {version!r}, without this "
            f"version's run fingerprint ({VERSION}), so ltt cannot tell whether it is the same run: give "
            "another out path, or resume=False to replace it")
    diffs = differences(old, new)
    if change and any(d.startswith("the prompt list") for d in diffs):
        diffs.append(change)
    if old.get("shard") != new.get("shard"):
        diffs.append(f"shard: {old.get('shard')!r} in the file, {new.get('shard')!r} now")
    if diffs:
        raise ValueError(
            f"{option}={path!r} holds another run, so it is not resumed: " + "; ".join(diffs)
            + ". Give another out path, or resume=False to replace it")


def replace(path: str, lines: list[dict[str, Any]] | None = None, write: Any = None, option: str = "path") -> None:
    """Write a whole file at ``path`` atomically (a temporary file in the same folder, then a
    rename), holding the lock of the file it replaces; an existing file that is not an ltt routes
    file is refused untouched. ``lines``: JSON objects, one per line; or ``write(tmp_path)``."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{option}={path!r}: the folder {folder!r} does not exist")
    fd = -1
    if os.path.lexists(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, f"{option}={path!r} is a directory: give a file path")
        check_ours(path, option)
        fd = _lock(path, option)
    try:
        tmp_fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        # mkstemp makes 0600: keep the replaced file's mode, or a new file's usual 0644
        os.fchmod(tmp_fd, os.fstat(fd).st_mode & 0o7777 if fd >= 0 else 0o644)
        try:
            if lines is not None:
                with os.fdopen(tmp_fd, "wb") as fh:
                    tmp_fd = -1
                    for obj in lines:
                        fh.write(_line(obj))
            else:
                os.close(tmp_fd)
                tmp_fd = -1
                write(tmp)
            os.replace(tmp, path)
        except BaseException:
            if tmp_fd >= 0:
                os.close(tmp_fd)
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    finally:
        if fd >= 0:
            os.close(fd)


def check_ours(path: str, option: str = "out") -> None:
    """Refuse an existing non-empty file that is not an ltt routes file (JSON lines or Parquet)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    if path.lower().endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq

            meta = pq.read_schema(path).metadata or {}
        except ImportError:
            raise
        except Exception:
            meta = {}
        if b"ltt-routes" not in meta:
            raise ValueError(f"{option}={path!r} is not an ltt routes Parquet file: ltt leaves it as it "
                             "is; give another path")
        return
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    try:
        parse(first if first.endswith(b"\n") else first + b"\n", path)
    except ValueError as exc:
        raise ValueError(f"{option}={path!r}: {exc}") from None
