"""Client-side helpers of the server tests: requests, and reading the images and settings that come back."""

from __future__ import annotations

import io
import json
import time

from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation

CALL_TIMEOUT = 90  # seconds: no test call can hang longer than this
TOKEN = "test-token-123"
SIZE = 64


def text_request(text: str = "a red apple", engine: str = "tiny", *, steps: int | None = 1, **image_fields):
    """A Generate request for one text prompt; `image_fields` go into ImageParameters."""
    if steps is not None:
        image_fields["steps"] = steps
    return generation.Request(
        engine_id=engine,
        prompt=[generation.Prompt(text=text)],
        image=generation.ImageParameters(**image_fields),
    )


def image_artifacts(answers) -> list[generation.Artifact]:
    return [
        artifact for answer in answers for artifact in answer.artifacts if artifact.type == generation.ARTIFACT_IMAGE
    ]


def decoded(artifact: generation.Artifact):
    from PIL import Image

    return Image.open(io.BytesIO(artifact.binary))


def settings_of(artifact: generation.Artifact) -> dict:
    """The imaginairy settings embedded in the PNG of an artifact."""
    return json.loads(decoded(artifact).info["imaginairy"])


def png_bytes(img) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


class StallingProxy:
    """A TCP proxy to `target` (host, port) on 127.0.0.1 that, once `stall()` is called, stops passing the server's
    bytes on: to the server it is a client that stopped reading (its flow-control window never reopens)."""

    def __init__(self, target: tuple[str, int]):
        import socket
        import threading

        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stall(self) -> None:
        self.stalled.set()

    def close(self) -> None:
        for sock in [self.listener, *self.sockets]:
            sock.close()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no large kernel buffer to fill first
            server.connect(self.target)
            self.sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source, destination, from_server: bool):
        while True:
            try:
                data = source.recv(65536)
                if not data or (from_server and self.stalled.is_set()):
                    return  # stop reading the server's bytes: its socket buffer and window fill up
                destination.sendall(data)
            except OSError:
                return


def wait_for(condition, timeout: float = 30.0) -> float:
    """Poll `condition` until true; returns the seconds it took (fails the test on timeout)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out waiting for the server"
        time.sleep(0.02)
    return time.monotonic() - start
