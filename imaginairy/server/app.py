"""Starting and stopping the gRPC server: `start_server()` returns a running server, `serve()` runs until a signal."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from concurrent import futures

import grpc
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc

from imaginairy.errors import InvalidInputError
from imaginairy.server.auth import BearerTokenInterceptor, check_credentials_config
from imaginairy.server.defaults import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PORT,
    DEFAULT_PREVIEW_EVERY,
    MAX_MESSAGE_BYTES,
    VRAM_MODES,
)
from imaginairy.server.engines import load_engines
from imaginairy.server.queue import GenerationQueue
from imaginairy.server.service import (
    DEFAULT_KEEPALIVE_SECONDS,
    DEFAULT_SEND_TIMEOUT_SECONDS,
    GenerationService,
    ServiceSettings,
    engines_service_handler,
    run_generation,
)
from imaginairy.settings import Settings

logger = logging.getLogger(__name__)

# Largest message either way: a request with an init image and a mask, or an answer with one PNG. The
# stability-sdk clients allow 10 MiB (StabilityInference) and 20 MiB (api.Context).
# Handler threads besides those that wait in the queue: for ListEngines, refusals and the call being taken in.
SPARE_HANDLER_THREADS = 4
SHUTDOWN_GRACE_SECONDS = 2.0


@dataclasses.dataclass
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (see RunningServer.port)
    engines_config: str | None = None  # None: the engines file shipped in imaginairy/configs/
    access_token: str | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    vram_mode: str = "high"
    device: str | None = None
    keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS
    send_timeout_seconds: float = DEFAULT_SEND_TIMEOUT_SECONDS
    embed_metadata: bool = True
    model_cache: object = None  # a ModelCache; None: the library's process-wide one
    grpc: bool = True  # False: HTTP only
    http_port: int | None = None  # None: no HTTP server; 0: any free port (see RunningServer.http_port)
    api_auth: str | None = None  # "user:password": HTTP Basic on every HTTP route
    cors_origins: tuple[str, ...] = ()
    outdir: str | None = None  # where HTTP jobs save their images; the web page's gallery
    models_dir: str | None = None  # the models folder (imaginairy.models.library); None: $IMAGINAIRY_MODELS_DIR
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    preview_every: int = DEFAULT_PREVIEW_EVERY


@dataclasses.dataclass
class RunningServer:
    server: grpc.Server | None
    port: int | None
    queue: GenerationQueue
    http: object = None  # an HttpServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Refuse new calls, cancel the waiting and the running generation, end in-flight calls, free the ports."""
        self.queue.close(timeout=grace)
        if self.http is not None:
            self.http.stop(timeout=grace + 3)
        if self.server is not None:
            self.server.stop(grace).wait()


def start_server(config: ServerConfig) -> RunningServer:
    """Load the engines file, bind the port(s) and start serving; raises InvalidInputError for a bad configuration."""
    check_config(config)
    engines = load_engines(config.engines_config)
    device = _torch_device(config.device)
    models_dir = config.models_dir or Settings.from_environment().models_dir
    generation_queue = GenerationQueue(
        lambda job: run_generation(job, device=device, model_cache=config.model_cache, memory_mode=config.vram_mode,
                                   models_dir=models_dir),
        config.max_queue,
    )
    http_service = None
    if config.http_port is not None:
        from imaginairy.server.http.service import HttpService, HttpSettings

        http_service = HttpService(engines, generation_queue, HttpSettings(
            access_token=config.access_token, api_auth=config.api_auth, cors_origins=tuple(config.cors_origins),
            outdir=config.outdir, max_body_bytes=config.max_body_bytes, preview_every=config.preview_every,
            embed_metadata=config.embed_metadata, models_dir=models_dir))
    server, port = (_grpc_server(config, engines, generation_queue) if config.grpc else (None, None))
    generation_queue.start()
    http = None
    if http_service is not None:
        from imaginairy.server.http.app import SPARE_CONNECTIONS, start_http_server

        try:
            http = start_http_server(http_service, config.host, config.http_port,
                                     max_connections=2 * config.max_queue + SPARE_CONNECTIONS)
        except InvalidInputError:
            generation_queue.close(timeout=1)
            raise
    if server is not None:
        server.start()
        logger.info("serving %d engine(s) over gRPC on %s:%d%s", len(engines), config.host, port,
                    " (access token required)" if config.access_token else "")
    return RunningServer(server, port, generation_queue, http)


def check_config(config: ServerConfig) -> None:
    if config.vram_mode not in VRAM_MODES:
        raise InvalidInputError(f"vram mode {config.vram_mode!r} is unknown; use one of {', '.join(VRAM_MODES)}.")
    if config.max_queue < 0:
        raise InvalidInputError(f"max queue must be 0 or more, got {config.max_queue}.")
    check_credentials_config(config.access_token, config.api_auth)
    if not config.grpc and config.http_port is None:
        raise InvalidInputError("Nothing to serve: give --http-port, or leave gRPC on.")
    if config.api_auth is not None and config.http_port is None:
        raise InvalidInputError("--api-auth protects the HTTP API; give --http-port too.")


def _grpc_server(config: ServerConfig, engines, generation_queue) -> tuple[grpc.Server, int]:
    handler_threads = config.max_queue + 1 + SPARE_HANDLER_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=handler_threads, thread_name_prefix="imaginairy-grpc"),
        interceptors=[BearerTokenInterceptor(config.access_token)] if config.access_token else [],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        # beyond this many calls at once gRPC itself answers RESOURCE_EXHAUSTED instead of letting them hang
        maximum_concurrent_rpcs=handler_threads,
    )
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(
        GenerationService(
            engines,
            generation_queue,
            ServiceSettings(config.keepalive_seconds, config.embed_metadata, config.send_timeout_seconds),
        ),
        server,
    )
    server.add_generic_rpc_handlers([engines_service_handler(engines)])
    return server, _bind(server, config.host, config.port)


def serve(config: ServerConfig) -> None:
    """Run the server until SIGINT or SIGTERM, then shut down cleanly (calls cancelled, port released)."""
    running = start_server(config)
    stopping = threading.Event()

    def request_stop(signum, frame):
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stopping.wait()
    finally:
        running.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("server stopped")


def _bind(server: grpc.Server, host: str, port: int) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise InvalidInputError(f"Cannot listen on {address}: {e} (is the port in use?)") from e
    if bound == 0:
        raise InvalidInputError(f"Cannot listen on {address} (is the port in use? choose another with --port).")
    return bound


def _torch_device(device: str | None):
    if device is None:
        return None
    import torch

    try:
        return torch.device(device)
    except RuntimeError as e:
        raise InvalidInputError(f"Unknown device {device!r}: {e}") from e

