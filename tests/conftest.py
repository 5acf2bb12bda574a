"""Session fixtures: tiny random-weight models built once per test process, and a guard that keeps tests offline."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub, which reads it once
os.environ.setdefault("IMAGINAIRY_DEVICE", "cpu")  # the suite's numbers are CPU numbers, whatever the machine has
if os.environ.get("PYTEST_XDIST_WORKER"):  # one thread per worker: parallel workers already fill the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))  # shared test helpers such as diffusers_reference


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if not isinstance(host, str) or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """Tests never leave the machine: hub access is offline and any non-loopback connection fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("IMAGINAIRY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "imaginairy-cache"))
    real_connect = socket.socket.connect

    def loopback_only_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise OSError(f"test tried to reach {address}: tests must stay offline")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only_connect)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Paths of the tiny models written by scripts/make_tiny_models.py (name -> .safetensors path)."""
    from make_tiny_models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_embeddings(tmp_path_factory) -> dict[str, Path]:
    """Textual-inversion embeddings for the tiny models' text encoders (trigger name -> file), from
    scripts/make_tiny_models.py: tinycat.pt (A1111, 2 vectors), tinystyle.safetensors (A1111, 3), tinyneg.bin
    (diffusers, 1)."""
    from make_tiny_models import make_tiny_embeddings

    return make_tiny_embeddings(tmp_path_factory.mktemp("tiny-embeddings"))


@pytest.fixture(scope="session")
def tiny_loras(tmp_path_factory) -> dict[str, Path]:
    """Paths of the tiny LoRA files written by scripts/make_tiny_models.py (name -> .safetensors path)."""
    from make_tiny_models import make_tiny_loras

    return make_tiny_loras(tmp_path_factory.mktemp("tiny-loras"))


@pytest.fixture(scope="session")
def tiny_variants(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """tiny-sd15 in other checkpoint layouts, and a tiny VAE (scripts/make_tiny_models.py make_tiny_variants)."""
    from make_tiny_models import make_tiny_variants

    return make_tiny_variants(tmp_path_factory.mktemp("tiny-variants"), tiny_models["tiny-sd15"])


class Routes(dict):
    """URL path -> (status, content type, body); a path under /slow/ waits `slow_seconds` before answering."""

    slow_seconds = 2.0
    extra_headers: dict[str, dict[str, str]] = {}  # path -> more response headers
    declared_lengths: dict[str, int] = {}  # path -> a Content-Length that differs from the body's


def _handler_for(routes: Routes, root: Path | None):
    import http.server
    import mimetypes
    import time

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/slow/"):
                time.sleep(routes.slow_seconds)
            answer = routes.get(self.path)
            file = root / self.path.lstrip("/") if root is not None else None
            if answer is None and file is not None and file.is_file():
                answer = (200, mimetypes.guess_type(file.name)[0] or "application/octet-stream", file.read_bytes())
            status, content_type, body = answer or (404, "text/plain", b"not found")
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(routes.declared_lengths.get(self.path, len(body))))
                for name, value in routes.extra_headers.get(self.path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, format, *args):
            pass

    return Handler


@contextlib.contextmanager
def local_http_server(routes: Routes, root: Path | None = None):
    """The one local HTTP server of the tests, on a free port of 127.0.0.1: answers `routes`, else the files under
    `root`; yields its base URL."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(routes, root))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def http_server(tmp_path):
    """A static file server serving `tmp_path/www`; yields (base_url, directory)."""
    root = tmp_path / "www"
    root.mkdir()
    with local_http_server(Routes(), root) as base_url:
        yield base_url, root


@pytest.fixture
def route_server():
    """A server answering what the test puts in its routes; yields (base_url, routes)."""
    routes = Routes()
    with local_http_server(routes) as base_url:
        yield base_url, routes


@pytest.fixture(scope="session")
def engines_file(tiny_models, tmp_path_factory):
    """An engines.yaml for the servers (`aimg server`, the gRPC tests): the tiny models, and one missing."""
    from server_helpers import SIZE

    path = tmp_path_factory.mktemp("server") / "engines.yaml"
    tiny = tiny_models["tiny-sd15"]
    path.write_text(
        f"tiny:\n  model: {tiny}\n  name: Tiny SD 1.5\n  defaults: {{steps: 1, width: {SIZE}, height: {SIZE}}}\n"
        f"tiny-inpainting:\n  model: {tiny_models['tiny-sd15-inpainting']}\n  defaults: {{steps: 1}}\n"
        f"broken:\n  model: {tiny.parent / 'missing.safetensors'}\n"
    )
    return path
