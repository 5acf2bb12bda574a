"""Images in and out: loading an input image (`LazyLoadingImage`, honouring EXIF orientation and bit depth),
converting between PIL and torch, and fitting images to a size.

`imaginairy.schema` imports this module when the CLI starts, so PIL, numpy and torch are imported inside the
functions that use them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from imaginairy.errors import ImageLoadError, InvalidInputError

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from PIL import Image


class LazyLoadingImage:
    """An input image given as a file path, a URL or a PIL image, loaded on first use.

    Loading honours the EXIF orientation and converts to RGB; the alpha channel of an image with transparency
    stays available as `.alpha` / `.as_rgba()`. A file path is checked to exist when the object is made, so a
    bad path fails before any model loads.
    """

    def __init__(self, *, filepath: str | Path | None = None, url: str | None = None, img: Image.Image | None = None):
        given = [name for name, value in (("filepath", filepath), ("url", url), ("img", img)) if value is not None]
        if len(given) != 1:
            raise InvalidInputError(
                f"LazyLoadingImage needs exactly one of filepath, url or img; got {', '.join(given) or 'none'}."
            )
        self.filepath = os.fspath(filepath) if filepath is not None else None
        self.url = url
        self._rgb: Image.Image | None = None
        self._alpha: Image.Image | None = None
        if self.filepath is not None:
            _check_image_path(self.filepath)
        if url is not None and not (isinstance(url, str) and url.lower().startswith(("http://", "https://"))):
            raise InvalidInputError(f"Image URL must start with http:// or https://, got {url!r}.")
        if img is not None:
            self._set_image(_check_pil_image(img))

    @property
    def source(self) -> str:
        """Where the image comes from: its path, its URL, or "<PIL image>"."""
        return self.filepath or self.url or "<PIL image>"

    def as_pil(self) -> Image.Image:
        """The image as an RGB PIL image (loads it on first call)."""
        self._load()
        return self._rgb

    @property
    def alpha(self) -> Image.Image | None:
        """The alpha channel ("L" mode) if the image has transparency, else None."""
        self._load()
        return self._alpha

    def as_rgba(self) -> Image.Image:
        """The image as RGBA: its own alpha channel, or fully opaque if it has none."""
        rgba = self.as_pil().convert("RGBA")
        if self._alpha is not None:
            rgba.putalpha(self._alpha)
        return rgba

    @property
    def size(self) -> tuple[int, int]:
        return self.as_pil().size

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    def __repr__(self) -> str:
        return f"LazyLoadingImage({self.source!r})"

    def _load(self) -> None:
        if self._rgb is not None:
            return
        if self.filepath is not None:
            self._set_image(_open_image_file(self.filepath))
        else:
            self._set_image(_open_image_url(self.url))

    def _set_image(self, img: Image.Image) -> None:
        from PIL import ImageOps

        try:
            img = eight_bit(ImageOps.exif_transpose(img))
            self._alpha = alpha_channel(img)
            self._rgb = img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageLoadError(f"Cannot read image {self.source}: {_reason(e)}.") from e


def eight_bit(img: Image.Image) -> Image.Image:
    """`img` with 16-bit or 32-bit integer and float grey levels scaled to 8 bits (PIL's own conversion clips them,
    turning a 16-bit image nearly white); other images as they are. Integer images use the 16-bit range, float images
    [0, 1], or [0, max] when they go beyond 1."""
    if img.mode.startswith("I"):
        import numpy as np

        levels = np.asarray(img, dtype=np.float64) / 257
    elif img.mode == "F":
        import numpy as np

        levels = np.asarray(img, dtype=np.float64)
        levels = levels * 255 / max(1.0, float(np.nanmax(levels, initial=0.0)))
    else:
        return img
    from PIL import Image

    return Image.fromarray(np.nan_to_num(levels).round().clip(0, 255).astype(np.uint8), mode="L")


def _check_image_path(filepath: str) -> None:
    if not os.path.exists(filepath):
        raise ImageLoadError(f"Image file not found: {filepath}")
    if os.path.isdir(filepath):
        raise ImageLoadError(f"Image path is a directory, not an image file: {filepath}")
    if not os.path.isfile(filepath):  # a FIFO or a device would block or never end
        raise ImageLoadError(f"Image path is not a regular file (a pipe or a device?): {filepath}")


def _check_pil_image(img: Any) -> Image.Image:
    from PIL import Image

    if not isinstance(img, Image.Image):
        raise ImageLoadError(f"img must be a PIL image, got {type(img).__name__}.")
    return img


def _decode_image(opener, source: str) -> Image.Image:
    from PIL import Image

    try:
        img = opener()
        img.load()
    except FileNotFoundError as e:
        raise ImageLoadError(f"Image file not found: {source}") from e
    except IsADirectoryError as e:
        raise ImageLoadError(f"Image path is a directory, not an image file: {source}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageLoadError(f"Not an image file (unknown or unsupported format): {source}") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"Cannot read image {source}: {_reason(e)}.") from e
    return img


def _open_image_file(filepath: str) -> Image.Image:
    from PIL import Image

    return _decode_image(lambda: Image.open(filepath), filepath)


def _open_image_url(url: str) -> Image.Image:
    import io

    from PIL import Image

    from imaginairy.utils.downloads import fetch_url_bytes

    data = fetch_url_bytes(url)
    return _decode_image(lambda: Image.open(io.BytesIO(data)), url)


def _reason(error: BaseException) -> str:
    return (getattr(error, "strerror", None) or str(error) or type(error).__name__).rstrip(".")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An image as a float32 tensor of shape [1, 3, H, W] with values in [-1, 1] (on the CPU)."""
    import numpy as np
    import torch

    pixels = np.array(img.convert("RGB"), dtype=np.float32)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    return tensor / 127.5 - 1.0


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """A batch of images [N, 3, H, W] with values in [-1, 1] (any device and float dtype) as RGB PIL images."""
    import torch
    from PIL import Image

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected an image tensor of shape [N, 3, H, W], got {tuple(images.shape)}.")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in pixels]


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One image tensor, [1, 3, H, W] or [3, H, W] with values in [-1, 1], as an RGB PIL image."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.shape[0] != 1:
        raise ValueError(f"Expected one image, got a batch of {image.shape[0]}; use tensor_to_pils.")
    return tensor_to_pils(image)[0]


def alpha_channel(img: Image.Image) -> Image.Image | None:
    """The image's alpha channel ("L" mode) if it carries transparency (an alpha band or a transparent palette
    colour), else None."""
    return img.convert("RGBA").getchannel("A") if img.has_transparency_data else None


def has_transparent_pixels(alpha: Image.Image | None) -> bool:
    return alpha is not None and alpha.getextrema()[0] < 255


def resize_and_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale `img` to cover width x height keeping its aspect ratio, then crop the centre to exactly that size."""
    scale = max(width / img.width, height / img.height)
    scaled_width = max(width, round(img.width * scale))
    scaled_height = max(height, round(img.height * scale))
    from PIL import Image

    scaled = img.resize((scaled_width, scaled_height), resample=Image.Resampling.LANCZOS)
    left = (scaled_width - width) // 2
    top = (scaled_height - height) // 2
    return scaled.crop((left, top, left + width, top + height))
