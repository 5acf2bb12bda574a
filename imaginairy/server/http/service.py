"""What the HTTP routes share: the engines, the generation queue, the jobs, the current model, the output folder."""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import HTTPException

from imaginairy.errors import GenerationCancelled, InvalidInputError, ModelLoadError, ModelNotFoundError
from imaginairy.server import queue as jobs
from imaginairy.server.defaults import DEFAULT_MAX_BODY_BYTES, DEFAULT_PREVIEW_EVERY
from imaginairy.server.http.jobs import JobRegistry, TrackedJob
from imaginairy.server.redact import public_metadata, public_text, quoted

if TYPE_CHECKING:
    from imaginairy.schema import ImaginePrompt, ImagineResult
    from imaginairy.server.engines import Engine

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class HttpSettings:
    """How the HTTP server answers; see `aimg server --help` for each."""

    access_token: str | None = None
    api_auth: str | None = None  # "user:password" for HTTP Basic, as A1111's --api-auth
    cors_origins: tuple[str, ...] = ()
    outdir: str | None = None  # the gallery's folder, where jobs' images are saved; None: no gallery, no saving
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    preview_every: int = DEFAULT_PREVIEW_EVERY
    embed_metadata: bool = True
    models_dir: str | None = None  # listed by /sdapi/v1/loras and /embeddings


class HttpService:
    def __init__(self, engines: dict[str, Engine], generation_queue: jobs.GenerationQueue, settings: HttpSettings):
        if not engines:
            raise InvalidInputError("The HTTP server needs at least one engine.")
        self.engines = engines
        self.queue = generation_queue
        self.settings = settings
        self.jobs = JobRegistry()
        self._model_lock = threading.Lock()
        self._current_engine = next(iter(engines))
        self.outdir = Path(settings.outdir).expanduser().resolve() if settings.outdir else None

    @property
    def current_engine(self) -> Engine:
        with self._model_lock:
            return self.engines[self._current_engine]

    def select_engine(self, engine_id: str) -> Engine:
        engine = self.engine(engine_id, "sd_model_checkpoint")
        with self._model_lock:
            self._current_engine = engine.id
        return engine

    def engine(self, engine_id: str | None, field: str) -> Engine:
        if engine_id is None:
            return self.current_engine
        # A1111 titles may carry a hash suffix ("name [abc123]"); the name before it is the engine id
        name = engine_id.split(" [", 1)[0]
        if name not in self.engines:
            raise HTTPException(422, f"{field}: unknown model {quoted(engine_id)}; this server has: "
                                     f"{', '.join(sorted(self.engines))}.")
        return self.engines[name]

    def submit(self, prompts: list[ImaginePrompt], engine: Engine, *, save: bool, label: str = "",
               finish=None) -> TrackedJob:
        """Queue the prompts as one job; 429 when the queue is full, 503 when the server is stopping.

        `finish(result) -> result` runs on each result first (e.g. pasting an inpainted crop back); with `save`
        (and an output folder) each result is then saved there."""
        saving = save and self.outdir is not None

        def on_result(_job, result):
            result = finish(result) if finish is not None else result
            if saving:
                self._save(result, engine)
            return result

        job = TrackedJob(prompts, label=label, preview_every=self.settings.preview_every, engine=engine,
                         on_result=on_result)
        return self._queue(job, engine)

    def run_task(self, task, label: str) -> TrackedJob:
        """Run `task()` (upscaling, captioning) on the device worker as a job of its own."""
        return self._queue(TrackedJob([], label=label, task=task, engine=self.current_engine), self.current_engine)

    def _queue(self, job: TrackedJob, engine: Engine) -> TrackedJob:
        try:
            ahead = self.queue.submit(job)
        except jobs.QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": "5"}) from e
        except jobs.QueueClosed as e:
            raise HTTPException(503, str(e)) from e
        self.jobs.add(job)
        logger.info("http job %s (%s): %d image(s) on engine %s, %d ahead in the queue", job.id, job.label,
                    len(job.prompts), engine.id, ahead)
        return job

    def png(self, result: ImagineResult, engine: Engine) -> bytes:
        from imaginairy.utils.metadata import write_image_with_metadata

        buffer = io.BytesIO()
        if self.settings.embed_metadata:
            write_image_with_metadata(result.img, buffer, "PNG", public_metadata(result.metadata, engine))
        else:
            result.img.save(buffer, format="PNG")
        return buffer.getvalue()

    def _save(self, result: ImagineResult, engine: Engine) -> None:
        from imaginairy.utils.outputs import prepare_outdir, save_result

        result.metadata = public_metadata(result.metadata, engine)
        save_result(result, prepare_outdir(self.outdir / "generated"), "png", image_type=result.final_kind)

    def error_response(self, error: Exception) -> HTTPException:
        """The HTTP status and a one-line, path-free message for an exception a job ended with."""
        text = public_text(str(error), self.engines)
        if isinstance(error, ModelNotFoundError):
            return HTTPException(503, f"The server cannot serve this model: {text}")
        if isinstance(error, InvalidInputError):
            return HTTPException(422, text)
        if isinstance(error, ModelLoadError):
            return HTTPException(503, f"The server cannot load the model: {text}")
        if isinstance(error, GenerationCancelled):
            return HTTPException(409, "The generation was cancelled.")
        return HTTPException(500, f"Generation failed: {type(error).__name__}: {text}")
