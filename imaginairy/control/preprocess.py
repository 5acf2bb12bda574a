"""Hint images from control images: resized to the generation size the way diffusers' ControlNet pipelines resize
their control image (`VaeImageProcessor(do_convert_rgb=True, do_normalize=False)`: RGB, PIL Lanczos to exactly
width x height, aspect ratio not kept), then the mode's preprocessor. Canny runs on the resized image, as lllyasviel's
gradio_canny does (resize first, then `cv2.Canny`), so an edge map is not blurred by resizing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from imaginairy.control.modes import CONTROL_MODES
from imaginairy.errors import InvalidInputError

DEFAULT_CANNY_THRESHOLDS = (100, 200)  # lllyasviel's gradio_canny defaults


def resize_hint(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


def canny_hint(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """White Canny edges on black (OpenCV, hysteresis thresholds `low`, `high`), as three equal channels."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(edges).convert("RGB")


def make_hint(
    mode: str, image: Image.Image, width: int, height: int, *, preprocess: bool = True,
    canny_thresholds: tuple[int, int] = DEFAULT_CANNY_THRESHOLDS,
) -> Image.Image:
    """The hint for `mode` from `image`, width x height RGB. `preprocess=False`: the image already is the hint."""
    resized = resize_hint(image, width, height)
    preprocessor = CONTROL_MODES[mode].preprocessor if preprocess else "image"
    if preprocessor == "canny":
        return canny_hint(resized, *canny_thresholds)
    if preprocessor == "image":
        return resized
    raise InvalidInputError(f"Control mode {mode!r} has no preprocessor yet: {ready_hint_advice(mode)}")


def ready_hint_advice(mode: str) -> str:
    return (f"give a ready {mode} hint ({CONTROL_MODES[mode].hint}) as the control image with preprocess=False "
            "(CLI: --control-image-is-hint)")


def hint_tensor(hint: Image.Image) -> torch.Tensor:
    """[1, 3, h, w] float32 in [0, 1]: the ControlNet's input (no normalisation to [-1, 1], as in cldm)."""
    pixels = np.asarray(hint.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()
