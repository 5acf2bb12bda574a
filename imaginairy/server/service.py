"""The gRPC services: GenerationService (Generate, ChainGenerate) and EnginesService (ListEngines)."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import uuid
from collections.abc import Iterator

import grpc
from stability_sdk.interfaces.gooseai.engines import engines_pb2
from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc

from imaginairy.errors import (
    GenerationCancelled,
    ImaginAIryError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
)
from imaginairy.server import protocol
from imaginairy.server import queue as jobs
from imaginairy.server.engines import Engine, describe_model
from imaginairy.server.redact import public_metadata, public_text, quoted

logger = logging.getLogger(__name__)

DEFAULT_KEEPALIVE_SECONDS = 5.0
# A client that stops reading would keep its call, and one of the server's call slots, forever once an answer is
# larger than the connection's flow-control window: a send not taken within this time cancels the call.
DEFAULT_SEND_TIMEOUT_SECONDS = 60.0
ENGINES_SERVICE = engines_pb2.DESCRIPTOR.services_by_name["EnginesService"].full_name  # gooseai.EnginesService


@dataclasses.dataclass
class ServiceSettings:
    """How the services answer: keep-alive interval while a request waits or runs, metadata in the PNGs, how long
    one answer may wait for the client to take it."""

    keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS
    embed_metadata: bool = True
    send_timeout_seconds: float = DEFAULT_SEND_TIMEOUT_SECONDS


class RequestFailed(Exception):
    """Ends a call with a gRPC status code and a message for the client."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def run_generation(job: jobs.Job, *, device=None, model_cache=None, memory_mode: str = "high",
                   models_dir: str | None = None) -> None:
    """Generate the job's prompts in order, posting each result, then DONE (or the error that stopped it).

    `memory_mode` is the server's --vram-mode (high, mid, low), applied to every prompt (see ImaginePrompt);
    `models_dir` is where LoRA, embedding, VAE and checkpoint names resolve."""
    from imaginairy.api import imagine

    if job.cancel_event.is_set():
        job.post(jobs.ERROR, GenerationCancelled("The request was cancelled before it started."))
        return
    if job.task is not None:
        run_task(job)
        return
    prompts = [dataclasses.replace(prompt, memory_mode=memory_mode) for prompt in job.prompts]
    done = [0]

    def on_step(step, total, latents):
        job.on_step(done[0], step, total, latents)

    try:
        for result in imagine(prompts, device=device, cancel_event=job.cancel_event, model_cache=model_cache,
                              progress_callback=on_step, models_dir=models_dir):
            done[0] += 1
            job.post(jobs.IMAGE, result)
    except Exception as e:  # every failure goes back to the request that caused it, never to the next one
        if not isinstance(e, (GenerationCancelled, InvalidInputError)):
            logger.exception("request %s failed", job.label)
        job.post(jobs.ERROR, e)
        return
    job.post(jobs.DONE)


def run_task(job: jobs.Job) -> None:
    try:
        value = job.task()
    except Exception as e:
        if isinstance(e, ImaginAIryError):
            logger.warning("request %s failed: %s", job.label, e)
        else:
            logger.exception("request %s failed", job.label)
        job.post(jobs.ERROR, e)
        return
    job.post(jobs.IMAGE, value)
    job.post(jobs.DONE)


def status_of_error(error: Exception, engine: Engine, engines: dict[str, Engine] | None = None) -> RequestFailed:
    """The gRPC status and message (without server-side paths) for an exception raised while a request ran."""
    text = public_text(str(error), engines or {engine.id: engine})
    if isinstance(error, ModelNotFoundError):
        return RequestFailed(grpc.StatusCode.FAILED_PRECONDITION,
                             f"Engine {engine.id!r} cannot serve: {text} (fix the server's engines file).")
    if isinstance(error, InvalidInputError):
        return RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, text)
    if isinstance(error, ModelLoadError):
        return RequestFailed(grpc.StatusCode.FAILED_PRECONDITION,
                             f"Engine {engine.id!r} cannot load its model: {text}")
    if isinstance(error, GenerationCancelled):
        return RequestFailed(grpc.StatusCode.CANCELLED, "The generation was cancelled.")
    return RequestFailed(grpc.StatusCode.INTERNAL, f"Generation failed: {type(error).__name__}: {text}")


class GenerationService(generation_pb2_grpc.GenerationServiceServicer):
    """Answers image generation requests, one generation on the device at a time."""

    def __init__(self, engines: dict[str, Engine], generation_queue: jobs.GenerationQueue,
                 settings: ServiceSettings | None = None):
        self.engines = engines
        self.queue = generation_queue
        self.settings = settings or ServiceSettings()

    def Generate(self, request: generation.Request, context: grpc.ServicerContext) -> Iterator[generation.Answer]:
        received = protocol.now_ms()
        try:
            yield from self._sent_in_time(self._answers(request, request.request_id, received, context), context)
        except RequestFailed as failure:
            context.abort(failure.code, failure.message)

    def _sent_in_time(self, answers: Iterator, context: grpc.ServicerContext) -> Iterator:
        """The answers, each cancelling the call when the client has not taken it within the send timeout.

        gRPC asks for the next answer only once the previous one was sent, so the time from yielding an answer to
        being resumed is the time its send took."""
        for answer in answers:
            watchdog = threading.Timer(self.settings.send_timeout_seconds, self._stalled, (context,))
            watchdog.daemon = True
            watchdog.start()
            try:
                yield answer
            finally:
                watchdog.cancel()

    @staticmethod
    def _stalled(context: grpc.ServicerContext) -> None:
        logger.warning("a client did not read its answer in time; cancelling its call to free its slot")
        context.cancel()

    def ChainGenerate(self, request: generation.ChainRequest, context: grpc.ServicerContext):
        """Serves chains of one stage (the stage's request, answered like Generate)."""
        received = protocol.now_ms()
        if len(request.stage) != 1:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          f"Only single-stage chains are served; this chain has {len(request.stage)} stages.")
        stage_request = request.stage[0].request
        request_id = stage_request.request_id or request.request_id
        try:
            yield from self._sent_in_time(self._answers(stage_request, request_id, received, context), context)
        except RequestFailed as failure:
            context.abort(failure.code, failure.message)

    def _answers(self, request: generation.Request, request_id: str, received: int, context) -> Iterator:
        request_id = request_id or str(uuid.uuid4())
        engine = self._engine(request.engine_id)
        try:
            prompts = protocol.request_to_prompts(request, engine)
        except InvalidInputError as e:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, public_text(str(e), self.engines)) from e
        job = jobs.Job(prompts, label=quoted(request_id))
        try:
            ahead = self.queue.submit(job)
        except jobs.QueueFull as e:
            raise RequestFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from e
        except jobs.QueueClosed as e:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, str(e)) from e
        if not context.add_callback(lambda: self.queue.withdraw(job)):  # the call already ended: client gone
            self.queue.withdraw(job)
        logger.info("request %s: %d image(s) on engine %s, %d ahead in the queue", job.label, len(prompts),
                    quoted(engine.id), ahead)
        yield from self._job_answers(job, engine, request_id, received)

    def _job_answers(self, job: jobs.Job, engine: Engine, request_id: str, received: int) -> Iterator:
        index = 0
        while True:
            try:
                kind, value = job.events.get(timeout=self.settings.keepalive_seconds)
            except queue.Empty:
                yield protocol.keepalive_answer(request_id, received)
                continue
            if kind == jobs.IMAGE:
                value.metadata = public_metadata(value.metadata, engine)  # the engine id, not the weights path
                yield protocol.image_answer(request_id, engine.id, index, value,
                                            embed_metadata=self.settings.embed_metadata, received_ms=received)
                index += 1
            elif kind == jobs.DONE:
                return
            elif kind == jobs.ERROR:
                if isinstance(value, GenerationCancelled) and self.queue.closed:
                    raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "The server is shutting down; try again later.")
                raise status_of_error(value, engine, self.engines)
            elif kind == jobs.WITHDRAWN:
                raise RequestFailed(grpc.StatusCode.CANCELLED, "The request left the queue.")
            else:
                raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "The server is shutting down; try again later.")

    def _engine(self, engine_id: str) -> Engine:
        if engine_id not in self.engines:
            known = ", ".join(sorted(self.engines))
            raise RequestFailed(grpc.StatusCode.NOT_FOUND,
                                f"Unknown engine {quoted(engine_id)}; this server has: {known}.")
        return self.engines[engine_id]


def engines_service_handler(engines: dict[str, Engine]) -> grpc.GenericRpcHandler:
    """EnginesService, registered from the SDK's message classes.

    The SDK's `engines_pb2_grpc` module cannot be imported: it imports `engines_pb2` as a top-level module, and
    stability-sdk puts the generation folder on sys.path but not the engines one. The method table is one line.
    """
    service = EnginesService(engines)
    list_engines = grpc.unary_unary_rpc_method_handler(
        service.ListEngines,
        request_deserializer=engines_pb2.ListEnginesRequest.FromString,
        response_serializer=engines_pb2.Engines.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(ENGINES_SERVICE, {"ListEngines": list_engines})


class EnginesService:
    """Lists the engines of the engines file."""

    def __init__(self, engines: dict[str, Engine]):
        self.engines = engines

    def ListEngines(self, request: engines_pb2.ListEnginesRequest, context) -> engines_pb2.Engines:
        return engines_pb2.Engines(engine=[
            engines_pb2.EngineInfo(
                id=engine.id,
                owner="imaginairy",
                ready=True,
                type=engines_pb2.PICTURE,
                name=engine.name,
                description=describe_model(engine),
            )
            for engine in self.engines.values()
        ])
