"""Converting images between PIL and torch, and fitting them to a size."""

import numpy as np
import torch
from PIL import Image


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An image as a float32 tensor of shape [1, 3, H, W] with values in [-1, 1] (on the CPU)."""
    pixels = np.array(img.convert("RGB"), dtype=np.float32)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    return tensor / 127.5 - 1.0


def tensor_to_pils(images: torch.Tensor) -> list[Image.Image]:
    """A batch of images [N, 3, H, W] with values in [-1, 1] (any device and float dtype) as RGB PIL images."""
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
    scaled = img.resize((scaled_width, scaled_height), resample=Image.Resampling.LANCZOS)
    left = (scaled_width - width) // 2
    top = (scaled_height - height) // 2
    return scaled.crop((left, top, left + width, top + height))
