"""One connection's outgoing messages in ``ltt serve``, bounded in bytes and coalesced by key.

A page that reads slowly (or not at all) must not make the server keep every broadcast for it.
Messages that supersede each other share a key and only the latest waits: a view's trait updates
merge trait by trait (the newest value of each), a job keeps its latest state, the page's error
line its latest text, a ``state`` message (new views) drops every update and diff of the views it
replaces, and prompt-list deltas merge into one. What still waits is bounded by ``max_bytes``; a
message that would go beyond it (with others already waiting) marks the connection
``overflowed`` and the app closes it with :data:`CLOSE_BEHIND`. One message larger than the
bound is still sent when nothing else waits (a big graph must reach the page).

Producers call :meth:`Outbox.put` from any thread; the event loop's pump awaits :meth:`get`.

>>> box = Outbox(1 << 20)
>>> box.put({"method": "job", "job": {"id": 1, "state": "queued"}})
>>> box.put({"method": "job", "job": {"id": 1, "state": "done"}})
>>> len(box), box.pending_bytes > 0
(1, True)
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["Outbox", "CLOSE_BEHIND", "encode"]

#: Close code for a page too far behind (RFC 6455 1013, "try again later"); the reason says why.
CLOSE_BEHIND = 1013


def encode(value: Any) -> str:
    """JSON text of ``value`` (no NaN); raises ValueError/TypeError for what JSON cannot hold."""
    return json.dumps(value, allow_nan=False)


class Outbox:
    """The messages waiting for one page, keyed; ``max_bytes`` bounds their encoded size."""

    def __init__(self, max_bytes: int, loop: asyncio.AbstractEventLoop | None = None):
        self.max_bytes = int(max_bytes)
        self._loop = loop
        self._lock = threading.Lock()
        self._items: OrderedDict[Any, list] = OrderedDict()  # key -> [kind, payload, nbytes(, view)]
        self._bytes = 0
        self._wake = asyncio.Event() if loop is not None else None
        self.overflowed = ""  # why the connection must close, once it is too far behind
        self.coalesced = 0  # messages merged into a waiting one (for the load benchmark)
        self.peak_bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    # -- producers (any thread) ------------------------------------------------------------------

    def put(self, msg: dict) -> None:
        """Queue ``msg`` (encoded now, in the caller's thread: a big graph never on the loop)."""
        method = msg.get("method")
        with self._lock:
            if self.overflowed:
                return
            if method == "update":
                self._merge_update(msg)
            elif method == "state":
                for key in [k for k in self._items if k[0] in ("update", "diff", "state")]:
                    self._drop(key)
                self._set(("state",), "text", _text(msg))
            elif method == "prompts" and "add" in msg:
                self._merge_prompts(msg)
            elif method == "job":
                job = msg.get("job") or {}
                self._set(("job", job.get("id")), "text", _text(msg), to_end=True)
            elif method in ("error", "diff", "prompts", "hello", "evicted"):
                self._set((method,), "text", _text(msg), to_end=method in ("error", "evicted"))
            else:
                self._set(("other", id(msg)), "text", _text(msg))
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            if self._bytes > self.max_bytes and len(self._items) > 1:
                self.overflowed = (f"this page fell {self._bytes / 2**20:.1f} MiB of messages behind "
                                   f"(the bound is {self.max_bytes / 2**20:.0f} MiB): reload it")
                self._items.clear()
                self._bytes = 0
        self._notify()

    def _drop(self, key: Any) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[2]

    def _set(self, key: Any, kind: str, payload: Any, to_end: bool = False) -> None:
        old = self._items.get(key)
        if old is not None:
            self.coalesced += 1
            self._bytes -= old[2]
            old[1], old[2] = payload, _size(kind, payload)
            self._bytes += old[2]
            if to_end:
                self._items.move_to_end(key)
            return
        item = [kind, payload, _size(kind, payload)]
        self._items[key] = item
        self._bytes += item[2]

    def _merge_update(self, msg: dict) -> None:
        """A view's traits, each encoded apart: a newer value replaces the waiting one in place
        (so it reaches the page no later than before)."""
        key = ("update", msg.get("view"))
        parts = {}
        for name, value in (msg.get("state") or {}).items():
            try:
                parts[name] = encode(value)
            except (TypeError, ValueError) as exc:
                self._set(("error",), "text", _text({"method": "error", "message":
                          f"the server could not encode {name}: {exc}"}), to_end=True)
        old = self._items.get(key)
        if old is not None:
            self.coalesced += 1
            self._bytes -= old[2]
            old[1].update(parts)
            old[2] = _size("update", old[1])
            self._bytes += old[2]
            return
        item = ["update", parts, _size("update", parts), msg.get("view")]
        self._items[key] = item
        self._bytes += item[2]

    def _merge_prompts(self, msg: dict) -> None:
        key = ("prompts-add",)
        old = self._items.get(key)
        if old is not None:  # deltas merge: the first start, every added prompt
            data = json.loads(old[1])
            data["add"] = data["add"] + list(msg["add"])
            self._set(key, "text", encode(data))
        else:
            self._set(key, "text", _text(msg))

    def _notify(self) -> None:
        if self._loop is None or self._wake is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: the page is gone
            pass

    # -- the pump (event loop) -------------------------------------------------------------------

    def pop(self) -> str | None:
        """The next message's text, or None when nothing waits."""
        with self._lock:
            if not self._items:
                return None
            key, item = self._items.popitem(last=False)
            self._bytes -= item[2]
        if item[0] == "update":
            view = item[3]
            body = ",".join(f"{json.dumps(k)}: {v}" for k, v in item[1].items())
            head = '{"method": "update", ' + (f'"view": {json.dumps(view)}, ' if view is not None else "")
            return head + '"state": {' + body + "}}"
        return item[1]

    async def get(self) -> str | None:
        """Wait for the next message; None once the connection overflowed."""
        assert self._wake is not None
        while True:
            if self.overflowed:
                return None
            text = self.pop()
            if text is not None:
                return text
            self._wake.clear()
            if self.overflowed or len(self):
                continue
            await self._wake.wait()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _text(msg: dict) -> str:
    try:
        return encode(msg)
    except (TypeError, ValueError) as exc:
        return encode({"method": "error", "message": f"the server could not encode its answer: {exc}"})


def _size(kind: str, payload: Any) -> int:
    if kind == "update":
        return sum(len(k) + len(v) + 6 for k, v in payload.items()) + 64
    return len(payload)
