"""Images in HTTP bodies: base64 text (optionally a `data:image/...;base64,` URL) <-> PIL images, with limits."""

from __future__ import annotations

import base64
import binascii
import io
from typing import TYPE_CHECKING

from imaginairy.errors import InvalidInputError
from imaginairy.server.limits import MAX_INPUT_IMAGE_PIXELS

if TYPE_CHECKING:
    from PIL import Image



def decode_image(data: str, field: str) -> Image.Image:
    """The image in base64 `data`; InvalidInputError naming `field` when it is not a readable, bounded image."""

    if not isinstance(data, str) or not data:
        raise InvalidInputError(f"{field}: send the image as base64 text (PNG or JPEG).")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInputError(f"{field}: not valid base64 ({e}).") from e
    return open_image_bytes(raw, field)


def open_image_bytes(raw: bytes, field: str) -> Image.Image:
    from PIL import Image

    from imaginairy.utils.images import eight_bit

    # the header is read first, so a small file declaring a huge image (a decompression bomb) is refused before its
    # pixels are decoded
    try:
        img = Image.open(io.BytesIO(raw))
        width, height = img.size
        if width * height > MAX_INPUT_IMAGE_PIXELS:
            raise InvalidInputError(f"{field}: the image is {width}x{height}px, more than this server accepts "
                                    f"({MAX_INPUT_IMAGE_PIXELS} pixels).")
        img.load()
        return eight_bit(img)
    except InvalidInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"{field}: not a readable image ({e}); send a PNG or JPEG file.") from e


def png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
