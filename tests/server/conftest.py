"""Servers on 127.0.0.1 (free ports) serving the tiny random-weight models."""

from __future__ import annotations

import grpc
import pytest
from server_helpers import CALL_TIMEOUT, text_request
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc

from imaginairy.server.app import ServerConfig, start_server


@pytest.fixture(scope="session")
def model_cache():
    """One cache for every test server, so the tiny model loads once."""
    from imaginairy.models.cache import ModelCache

    return ModelCache(max_bytes=2**31)


@pytest.fixture(scope="session")
def make_server(engines_file, model_cache):
    """`make_server(**ServerConfig fields)` -> a RunningServer; every server is stopped at the end."""
    servers = []

    def make(**overrides):
        settings = {"port": 0, "engines_config": str(engines_file), "keepalive_seconds": 0.3,
                    "model_cache": model_cache, **overrides}
        server = start_server(ServerConfig(**settings))
        while str(server.port).endswith("443"):  # stability_sdk takes any host ending in 443 for TLS
            replacement = start_server(ServerConfig(**settings))
            server.stop(grace=0)
            server = replacement
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(grace=0.5)


@pytest.fixture(scope="session")
def server(make_server):
    """The main test server: room for the load test's clients in its queue; the tiny model loaded once."""
    running = make_server(max_queue=16)
    with grpc.insecure_channel(running.address) as channel:
        list(generation_pb2_grpc.GenerationServiceStub(channel).Generate(text_request(), timeout=CALL_TIMEOUT))
    return running


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield generation_pb2_grpc.GenerationServiceStub(channel)


@pytest.fixture(scope="session")
def http_api(make_server, tmp_path_factory):
    """A server speaking both protocols on one queue: gRPC and HTTP (A1111 routes, jobs, gallery in `outdir`)."""
    outdir = tmp_path_factory.mktemp("server-outputs")
    running = make_server(max_queue=16, http_port=0, outdir=str(outdir), preview_every=1)
    running.outdir = outdir
    return running


@pytest.fixture
def webui(http_api):
    """The real A1111 client from PyPI, pointed at the HTTP server."""
    import webuiapi

    return webuiapi.WebUIApi(host="127.0.0.1", port=http_api.http_port, sampler="Euler", steps=1)
