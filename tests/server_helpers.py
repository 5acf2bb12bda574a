"""Client-side helpers of the server tests: requests, and reading the images and settings that come back."""

from __future__ import annotations

import io
import json

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
    return [artifact for answer in answers for artifact in answer.artifacts if artifact.type == generation.ARTIFACT_IMAGE]


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
