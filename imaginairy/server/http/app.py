"""The FastAPI application and the uvicorn server running it on a thread beside the gRPC server."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

from imaginairy.errors import InvalidInputError
from imaginairy.server.http.service import HttpService
from imaginairy.server.redact import public_text

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
START_TIMEOUT_SECONDS = 30.0
# connections beyond those the queue can hold waiting (each a blocked A1111 call or an event stream) get 503
SPARE_CONNECTIONS = 32


def create_app(service: HttpService):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    from imaginairy.server.http import a1111, gallery, native
    from imaginairy.server.http.guard import Guard

    app = FastAPI(title="imaginairy", description="AUTOMATIC1111-compatible `/sdapi/v1` routes and imaginairy's "
                  "own job API, on local models.", docs_url="/docs", redoc_url=None)
    app.include_router(a1111.router(service))
    app.include_router(native.router(service))
    app.include_router(gallery.router(service))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'body'}: "
                             f"{problem_text(problem)}" for problem in error.errors())
        return JSONResponse({"detail": public_text(problems, service.engines)}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception):
        logger.exception("HTTP %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"Internal error: {type(error).__name__}: "
                                       f"{public_text(str(error), service.engines)}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    settings = service.settings
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    app.add_middleware(Guard, access_token=settings.access_token, api_auth=settings.api_auth,
                       max_body_bytes=settings.max_body_bytes)
    return app


def problem_text(problem: dict) -> str:
    if problem.get("type") == "extra_forbidden":
        return "this field is not supported by this server; leave it out"
    if problem.get("type") == "json_invalid":
        return "the body is not valid JSON"
    return problem.get("msg", "invalid")


@dataclasses.dataclass
class HttpServer:
    server: object  # uvicorn.Server
    thread: threading.Thread
    port: int
    service: HttpService

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_http_server(service: HttpService, host: str, port: int, *, max_connections: int) -> HttpServer:
    """Serve the app with uvicorn on a thread of its own; returns once the port is bound."""
    import uvicorn

    config = uvicorn.Config(create_app(service), host=host, port=port, log_level="warning", access_log=False,
                            limit_concurrency=max_connections, timeout_keep_alive=5, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="imaginairy-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise InvalidInputError(f"Cannot listen on {host}:{port} for HTTP (is the port in use? choose another "
                                    "with --http-port).")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    logger.info("serving HTTP on %s:%d (A1111 API at /sdapi/v1, jobs at /v1/jobs, docs at /docs, page at /)", host,
                bound)
    return HttpServer(server, thread, bound, service)
