import pytest

from imaginairy.errors import ImageDownloadError
from imaginairy.utils.downloads import fetch_url_bytes


def test_fetch_returns_body(route_server, png_body):
    base_url, routes = route_server
    routes["/a.png"] = (200, "image/png", png_body)
    assert fetch_url_bytes(f"{base_url}/a.png") == png_body


def test_http_error_names_url_and_status(route_server):
    base_url, _ = route_server
    with pytest.raises(ImageDownloadError, match=r"Cannot download http://127\.0\.0\.1:\d+/missing\.png: HTTP 404"):
        fetch_url_bytes(f"{base_url}/missing.png")


def test_server_error_status(route_server):
    base_url, routes = route_server
    routes["/broken"] = (500, "text/plain", b"oops")
    with pytest.raises(ImageDownloadError, match="HTTP 500"):
        fetch_url_bytes(f"{base_url}/broken")


def test_connection_refused(refused_url):
    with pytest.raises(ImageDownloadError, match=f"Cannot download {refused_url}: .*refused"):
        fetch_url_bytes(refused_url, timeout=5)


def test_timeout(route_server):
    base_url, routes = route_server
    routes.slow_seconds = 2.0
    routes["/slow/a.png"] = (200, "image/png", b"late")
    with pytest.raises(ImageDownloadError, match=r"/slow/a\.png: .*0\.3 seconds"):
        fetch_url_bytes(f"{base_url}/slow/a.png", timeout=0.3)


def test_body_over_limit(route_server):
    base_url, routes = route_server
    routes["/big"] = (200, "application/octet-stream", b"x" * 1000)
    with pytest.raises(ImageDownloadError, match="larger than the 999 byte limit"):
        fetch_url_bytes(f"{base_url}/big", max_bytes=999)
    assert len(fetch_url_bytes(f"{base_url}/big", max_bytes=1000)) == 1000


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "example.com/a.png"])
def test_only_http_urls(url):
    with pytest.raises(ImageDownloadError, match="only http:// and https:// URLs"):
        fetch_url_bytes(url)


@pytest.fixture
def trickle_server():
    """A server on 127.0.0.1 that sends its headers, then one body byte every 0.2 s for ever (until the client goes)."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                try:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
                    while not stop.is_set():
                        connection.sendall(b"x")
                        time.sleep(0.2)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
    stop.set()
    thread.join()
    listener.close()


def test_a_server_sending_a_byte_at_a_time_fails_at_the_deadline(trickle_server):
    import time

    start = time.monotonic()
    with pytest.raises(ImageDownloadError, match=r"/slow\.png: it did not finish within 1\.5 seconds"):
        fetch_url_bytes(trickle_server, timeout=1.0, deadline_seconds=1.5)
    assert time.monotonic() - start < 4  # each read is well under the 1 s timeout: only the deadline can stop it


def test_redirect_loop_is_one_line(route_server):
    base_url, routes = route_server
    routes["/loop"] = (302, "text/plain", b"")
    routes.extra_headers = {"/loop": {"Location": "/loop"}}
    with pytest.raises(ImageDownloadError) as raised:
        fetch_url_bytes(f"{base_url}/loop")
    assert str(raised.value) == f"Cannot download {base_url}/loop: too many redirects (HTTP 302: a redirect loop?)."


def test_body_shorter_than_declared_is_an_error(route_server):
    base_url, routes = route_server
    routes["/short"] = (200, "image/png", b"abc")
    routes.declared_lengths = {"/short": 10}
    with pytest.raises(ImageDownloadError, match="closed after 3 of 10 bytes"):
        fetch_url_bytes(f"{base_url}/short")
