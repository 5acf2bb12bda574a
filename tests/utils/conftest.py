import io
import socket

import pytest
from PIL import Image


@pytest.fixture
def png_body() -> bytes:
    """The bytes of a 16x12 green PNG file."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def refused_url():
    """A URL on a port of 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/image.png"
