"""Session fixtures: tiny random-weight models built once per test process, and a guard that keeps tests offline."""

from __future__ import annotations

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
def tiny_controlnets(tmp_path_factory) -> dict[str, Path]:
    """Tiny ControlNets for tiny-sd15 (scripts/make_tiny_models.py: name -> .pth path or diffusers folder)."""
    from make_tiny_models import make_tiny_controlnets

    return make_tiny_controlnets(tmp_path_factory.mktemp("tiny-controlnets"))


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 serving `tmp_path/www`; yields (base_url, directory)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
