import http.server
import io
import socket
import threading
import time

import pytest
from PIL import Image


@pytest.fixture
def png_body() -> bytes:
    """The bytes of a 16x12 green PNG file."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class Routes(dict):
    """URL path -> (status, content type, body); a path under /slow/ waits `slow_seconds` before answering."""

    slow_seconds = 2.0
    extra_headers: dict[str, dict[str, str]] = {}  # path -> more response headers
    declared_lengths: dict[str, int] = {}  # path -> a Content-Length that differs from the body's


def _handler_for(routes: Routes):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.startswith("/slow/"):
                time.sleep(routes.slow_seconds)
            status, content_type, body = routes.get(self.path, (404, "text/plain", b"not found"))
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


@pytest.fixture
def route_server():
    """A local HTTP server on a free port of 127.0.0.1: yields (base_url, routes)."""
    routes = Routes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(routes))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def refused_url():
    """A URL on a port of 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/image.png"
