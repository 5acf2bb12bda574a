"""Upscaling images with RealESRGAN (or any spandrel super-resolution model), tile by tile.

The image is cut into overlapping square tiles; each tile is upscaled on its own and the results are blended
with weights that ramp down to zero across each overlap (ignoring the pixels nearest a tile's border;
`imaginairy.utils.overlapping_tiles`), so memory for the model is bounded by the tile size and the tile borders
leave no seams.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from imaginairy.enhancers.spandrel_models import load_image_model
from imaginairy.errors import InvalidInputError, ModelLoadError
from imaginairy.models.weights import HelperWeights
from imaginairy.utils.images import alpha_channel, pil_to_tensor, tensor_to_pil
from imaginairy.utils.overlapping_tiles import apply_in_tiles, margin_edge_weights

REALESRGAN_X4PLUS_WEIGHTS = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
REALESRGAN = HelperWeights("RealESRGAN upscaler", REALESRGAN_X4PLUS_WEIGHTS, "IMAGINAIRY_REALESRGAN_MODEL")
DEFAULT_TILE_SIZE = 512
DEFAULT_TILE_OVERLAP = 32


def load_upscaler(
    location: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
):
    """The spandrel super-resolution model at `location` (cached; default: the file in IMAGINAIRY_REALESRGAN_MODEL,
    else RealESRGAN x4plus, downloaded once). Raises ModelLoadError if it is not an upscaler."""
    location = location or REALESRGAN.resolve()
    model = load_image_model(location, device=device, dtype=dtype)
    if model.purpose != "SR":
        raise ModelLoadError(
            f"Cannot upscale with {location}: it is a {model.architecture.name} {model.purpose} model,"
            " not a super-resolution model; pass RealESRGAN weights"
        )
    return model


def upscale_image(
    img: Image.Image,
    *,
    model=None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tile_size: int = DEFAULT_TILE_SIZE,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
) -> Image.Image:
    """`img` upscaled by the model's scale (4x for RealESRGAN x4plus), as RGB (RGBA if `img` has transparency).

    `model` is a weights location (default: RealESRGAN x4plus), loaded on `device` in `dtype`, or a model from
    `load_upscaler`, used where it is. Tiles are `tile_size` input pixels square and overlap by `tile_overlap`.
    """
    check_tiling(tile_size, tile_overlap)
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_upscaler(model, device=device, dtype=dtype)
    rgb = (pil_to_tensor(img)[0] + 1) / 2
    upscaled = upscale_tiled(model, rgb, tile_size=tile_size, tile_overlap=tile_overlap)
    upscaled_img = tensor_to_pil(upscaled * 2 - 1)
    alpha = alpha_channel(img)
    if alpha is not None:
        upscaled_img.putalpha(alpha.resize(upscaled_img.size, Image.Resampling.LANCZOS))
    return upscaled_img


def upscale_tiled(model, image: torch.Tensor, *, tile_size: int, tile_overlap: int) -> torch.Tensor:
    """(3, H, W) floats in [0, 1] -> (3, H*scale, W*scale) on the CPU, upscaled tile by tile and blended."""

    def upscale(tile: torch.Tensor) -> torch.Tensor:
        return model(tile.to(device=model.device, dtype=model.dtype)).float().cpu()

    with torch.inference_mode():
        return apply_in_tiles(upscale, image[None], tile_size, tile_overlap, model.scale, margin_edge_weights)[0]


def check_tiling(tile_size: int, tile_overlap: int) -> None:
    if not 0 <= tile_overlap < tile_size:
        raise InvalidInputError(
            f"Cannot tile with tile size {tile_size} and overlap {tile_overlap}:"
            " the overlap must be at least 0 and smaller than the tile size"
        )
