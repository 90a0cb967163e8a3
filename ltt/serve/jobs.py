"""The model-work queue of ``ltt serve``: one worker thread runs every job, one at a time, in order.

Loading a model, tracing a prompt, re-pruning and filling a panel all run here, never on the
event loop. Each job belongs to an owner (a connection); whenever the queue changes, the owners
of the waiting jobs hear each job's place in line (``on_job(job)``), and a waiting job can be
cancelled by its owner. A running job runs to its end (a forward pass cannot be stopped midway
without leaving the model's hooks in doubt).

>>> worker = Worker()                                    # doctest: +SKIP
>>> job = worker.submit(owner, "tracing 'Hello'", fn)     # doctest: +SKIP
>>> worker.cancel(owner, job.id)                          # doctest: +SKIP
True
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

__all__ = ["Job", "Worker"]

_ids = itertools.count(1)


class Owner(Protocol):
    """What a job's owner provides: hear about its jobs (called from any thread)."""

    def on_job(self, job: "Job") -> None: ...


@dataclass
class Job:
    """One unit of model work: ``state`` goes queued -> running -> done | failed, or queued ->
    cancelled; ``position`` is its place in line while queued (1 = next), 0 once running."""

    owner: Any
    label: str
    fn: Callable[["Job"], Any]
    id: int = field(default_factory=lambda: next(_ids))
    state: str = "queued"
    position: int = 0
    started: float | None = None
    error: str = ""

    def progress(self, label: str) -> None:
        """Say what the running job is doing now (shown in the page)."""
        self.label = label
        _tell(self)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "state": self.state, "position": self.position,
                "elapsed": 0.0 if self.started is None else round(time.monotonic() - self.started, 3),
                "error": self.error}


class Worker:
    """A single daemon thread draining a FIFO of jobs."""

    def __init__(self, name: str = "ltt-serve-worker"):
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self.running: Job | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, owner: Owner, label: str, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn(job)`` to run after every job submitted before it."""
        job = Job(owner, label, fn)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the server is shutting down: no new work is accepted")
            self._queue.append(job)
            self._cond.notify()
        self._announce()
        return job

    def cancel(self, owner: Any, job_id: Any) -> bool:
        """Cancel a waiting job of ``owner``; False if it is not waiting (running, done, or not
        this owner's)."""
        with self._cond:
            found = next((j for j in self._queue if j.id == job_id and j.owner is owner), None)
            if found is not None:
                self._queue.remove(found)
                found.state = "cancelled"
        if found is None:
            return False
        _tell(found)
        self._announce()
        return True

    def merge(self, owner: Any, job: Job, fn: Callable[[], None]) -> bool:
        """Run ``fn()`` (which folds new work into ``job``) if ``job`` still waits and is
        ``owner``'s last waiting job; False otherwise (it started, or later work of the owner
        waits behind it, which must keep its order)."""
        with self._cond:
            mine = [j for j in self._queue if j.owner is owner]
            if job.state != "queued" or not mine or mine[-1] is not job:
                return False
            fn()
            return True

    def cancel_owner(self, owner: Any) -> None:
        """Drop every waiting job of ``owner`` (its connection closed)."""
        with self._cond:
            mine = [j for j in self._queue if j.owner is owner]
            for j in mine:
                self._queue.remove(j)
                j.state = "cancelled"
        if mine:
            self._announce()

    def waiting(self) -> list[Job]:
        """The jobs in line, next first."""
        with self._cond:
            return list(self._queue)

    def stop(self, timeout: float = 0.0) -> None:
        """Refuse new jobs, drop waiting ones, and wait up to ``timeout`` s for the running one."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()
        if timeout > 0:
            self._thread.join(timeout)

    def _announce(self) -> None:
        with self._cond:
            waiting = list(self._queue)
            for i, j in enumerate(waiting):
                j.position = i + 1
        for j in waiting:
            _tell(j)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                job = self._queue.popleft()
                job.state, job.position, job.started = "running", 0, time.monotonic()
                self.running = job
            self._announce()
            _tell(job)
            try:
                job.fn(job)
                job.state = "done"
            except BaseException as exc:  # a job never takes the worker down
                job.state = "failed"
                job.error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    self.running = None
            _tell(job)


def _tell(job: Job) -> None:
    try:
        job.owner.on_job(job)
    except Exception:  # an owner that cannot hear any more (closed) is not the queue's failure
        pass
