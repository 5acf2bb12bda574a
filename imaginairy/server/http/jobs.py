"""HTTP jobs: a queue `Job` that keeps its own state (progress, preview, results) for polling and streaming.

The worker thread updates a `TrackedJob` (`post`, `on_step`); request handlers read `snapshot()` or wait for
`version` to change. `JobRegistry` keeps the jobs by id, forgetting the oldest finished ones beyond a bound.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import io
import threading
import time
import uuid

from imaginairy.errors import GenerationCancelled
from imaginairy.server import queue as jobs
from imaginairy.server.defaults import DEFAULT_PREVIEW_EVERY
from imaginairy.utils.preview import SD_LATENT_RGB_FACTORS, latent_preview

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)
KEPT_FINISHED_JOBS = 64


@dataclasses.dataclass(eq=False)
class TrackedJob(jobs.Job):
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    preview_every: int = DEFAULT_PREVIEW_EVERY
    state: str = QUEUED
    image_index: int = 0
    step: int = 0
    total: int | None = None
    results: list = dataclasses.field(default_factory=list)  # ImagineResults, in prompt order
    error: Exception | None = None
    preview_png: bytes | None = None
    preview_serial: int = 0  # counts the previews made
    version: int = 0  # grows with every change; watchers wait for it to move
    created: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    engine: object = None  # the Engine serving the job
    # on the worker thread, `on_result(job, result) -> result` for each result before it counts (e.g. saving it)
    on_result: object = None
    done_event: threading.Event = dataclasses.field(default_factory=threading.Event)

    def post(self, kind, value=None) -> None:
        if kind == jobs.IMAGE:
            if self.on_result is not None:
                value = self.on_result(self, value)
            self.results.append(value)
            self.image_index = len(self.results)
            self.step = 0
        elif kind == jobs.DONE:
            self._finish(DONE)
        elif kind == jobs.ERROR:
            self.error = value
            self._finish(CANCELLED if isinstance(value, GenerationCancelled) else FAILED)
        elif kind == jobs.WITHDRAWN:
            self.error = GenerationCancelled("The job was cancelled before it started.")
            self._finish(CANCELLED)
        else:
            self.error = GenerationCancelled("The server shut down before the job started.")
            self._finish(CANCELLED)
        self.version += 1

    def on_start(self) -> None:
        self.state, self.started = RUNNING, time.time()
        self.version += 1

    def on_step(self, image_index: int, step: int, total: int | None, latents) -> None:
        self.image_index, self.step, self.total = image_index, step, total
        previewable = latents.shape[-3] == len(SD_LATENT_RGB_FACTORS)  # 4-channel latents (fitted to SD 1.x/2.x)
        if self.preview_every and previewable and (step % self.preview_every == 0 or step == total):
            buffer = io.BytesIO()
            latent_preview(latents).save(buffer, format="PNG")
            self.preview_png = buffer.getvalue()
            self.preview_serial += 1
        self.version += 1

    def _finish(self, state: str) -> None:
        self.state, self.finished = state, time.time()
        self.done_event.set()

    @property
    def progress(self) -> float:
        """0..1 over all of the job's images."""
        if self.state == DONE:
            return 1.0
        count = max(1, len(self.prompts))
        within = self.step / self.total if self.total else 0.0
        return min(1.0, (self.image_index + within) / count)

    def eta_seconds(self) -> float | None:
        if self.started is None or self.progress <= 0:
            return None
        elapsed = (self.finished or time.time()) - self.started
        return elapsed * (1 - self.progress) / self.progress

    def preview_base64(self) -> str | None:
        return base64.b64encode(self.preview_png).decode() if self.preview_png else None


class JobRegistry:
    """The HTTP jobs by id; finished jobs beyond `KEPT_FINISHED_JOBS` are forgotten, oldest first."""

    def __init__(self, keep_finished: int = KEPT_FINISHED_JOBS):
        self.keep_finished = keep_finished
        self._jobs: collections.OrderedDict[str, TrackedJob] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: TrackedJob) -> None:
        with self._lock:
            self._jobs[job.id] = job
            finished = [key for key, known in self._jobs.items() if known.state in FINISHED_STATES]
            for key in finished[: max(0, len(finished) - self.keep_finished)]:
                del self._jobs[key]

    def get(self, job_id: str) -> TrackedJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def latest(self) -> TrackedJob | None:
        with self._lock:
            return next(reversed(self._jobs.values()), None)
