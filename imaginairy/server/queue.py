"""One generation on the device at a time; the requests waiting for it served first come, first served.

A `Job` is one request's work. `GenerationQueue` runs jobs one by one on its own worker thread, in arrival order.
A full queue refuses a new job at once (`QueueFull`); a job withdrawn while waiting (its client went away) leaves the
queue and frees its place; a job withdrawn while running is cancelled through its `cancel_event`, which the sampler
checks every step. What a job produces reaches its caller as events on `job.events`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# Event kinds on Job.events
IMAGE = "image"  # value: an ImagineResult
DONE = "done"  # value: None; the last event of a job that finished
ERROR = "error"  # value: the exception that ended the job
WITHDRAWN = "withdrawn"  # value: None; the job was withdrawn before it started
CLOSED = "closed"  # value: None; the server shut down before the job started


class QueueFull(Exception):
    """The queue already holds its maximum number of waiting jobs."""


class QueueClosed(Exception):
    """The queue no longer takes jobs (the server is shutting down)."""


@dataclasses.dataclass(eq=False)
class Job:
    """One request's work (`prompts`, generated in order) and the channel its results come back on."""

    prompts: list[Any]
    label: str = ""
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    events: queue.Queue = dataclasses.field(default_factory=queue.Queue)
    # work other than generating `prompts` (upscaling, captioning) to run on the device worker; its return value is
    # posted as the job's one IMAGE event
    task: Callable[[], Any] | None = None

    def post(self, kind: str, value: Any = None) -> None:
        self.events.put((kind, value))

    def on_start(self) -> None:
        """Called by the worker when the job leaves the queue for the device."""

    def on_step(self, image_index: int, step: int, total: int | None, latents) -> None:
        """Called by the worker after every sampler step of the job's image `image_index` (from 0)."""


class GenerationQueue:
    """Runs `run_job(job)` for one job at a time on a worker thread, taking waiting jobs in arrival order."""

    def __init__(self, run_job: Callable[[Job], None], max_waiting: int):
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self.max_waiting = max_waiting
        self._run_job = run_job
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="imaginairy-generation", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def submit(self, job: Job) -> int:
        """Queue `job`; returns how many jobs are ahead of it. Raises QueueFull or QueueClosed."""
        with self._changed:
            if self._closed:
                raise QueueClosed("The server is shutting down.")
            ahead = len(self._waiting) + (self._running is not None)
            if ahead > self.max_waiting:
                raise QueueFull(f"The queue is full ({self.max_waiting} requests waiting); try again later.")
            self._waiting.append(job)
            self._changed.notify_all()
            return ahead

    def withdraw(self, job: Job) -> None:
        """Take `job` out of the queue if it waits, or cancel it if it runs; nothing if it already finished."""
        with self._changed:
            if job in self._waiting:
                self._waiting.remove(job)
                job.post(WITHDRAWN)
                logger.info("request %s left the queue", job.label)
                self._changed.notify_all()
                return
        job.cancel_event.set()

    def running(self) -> Job | None:
        """The job on the device now, if any."""
        with self._changed:
            return self._running

    def stats(self) -> dict[str, int]:
        with self._changed:
            return {"running": int(self._running is not None), "waiting": len(self._waiting)}

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, tell the waiting ones the server is closing, cancel the running one, stop the worker."""
        with self._changed:
            self._closed = True
            while self._waiting:
                self._waiting.popleft().post(CLOSED)
            if self._running is not None:
                self._running.cancel_event.set()
            self._changed.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)

    def _next_job(self) -> Job | None:
        with self._changed:
            self._running = None
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._waiting or self._closed)
            if self._closed:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                job.on_start()
                self._run_job(job)
            except Exception as e:  # a failing job must never stop the worker
                logger.exception("request %s failed", job.label)
                job.post(ERROR, e)
        with self._changed:
            self._running = None
            self._changed.notify_all()
