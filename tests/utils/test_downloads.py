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
