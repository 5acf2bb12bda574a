"""Upscaling images with RealESRGAN (or any spandrel super-resolution model), tile by tile.

The image is cut into overlapping square tiles; each tile is upscaled on its own and the results are blended
with weights that ramp down to zero across each overlap (ignoring the pixels nearest a tile's border), so memory for the model is bounded by the tile
size and the tile borders leave no seams.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from imaginairy.enhancers.spandrel_models import load_image_model
from imaginairy.errors import InvalidInputError, ModelLoadError
from imaginairy.models.weights import HelperWeights
from imaginairy.utils.images import alpha_channel, pil_to_tensor, tensor_to_pil

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
    scale = model.scale
    _, height, width = image.shape
    upscaled = torch.zeros(3, height * scale, width * scale)
    row_starts = tile_starts(height, tile_size, tile_overlap)
    column_starts = tile_starts(width, tile_size, tile_overlap)
    row_weights = [blend_weights(row_starts, i, height, tile_size, scale) for i in range(len(row_starts))]
    column_weights = [blend_weights(column_starts, i, width, tile_size, scale) for i in range(len(column_starts))]
    row_weight_sums = _summed_at_starts(row_weights, row_starts, height * scale, scale)
    column_weight_sums = _summed_at_starts(column_weights, column_starts, width * scale, scale)
    with torch.inference_mode():
        for top, rows_weight in zip(row_starts, row_weights):
            for left, columns_weight in zip(column_starts, column_weights):
                tile = image[:, top : top + tile_size, left : left + tile_size]
                upscaled_tile = model(tile[None].to(device=model.device, dtype=model.dtype))[0]
                weight = rows_weight[:, None] * columns_weight[None, :]
                out_top, out_left = top * scale, left * scale
                out_bottom, out_right = out_top + weight.shape[0], out_left + weight.shape[1]
                upscaled[:, out_top:out_bottom, out_left:out_right] += upscaled_tile.float().cpu() * weight
    # the tile grid is a product of rows and columns, so the summed weight at (y, x) is row_sum[y] * column_sum[x]
    upscaled /= row_weight_sums[None, :, None]
    upscaled /= column_weight_sums[None, None, :]
    return upscaled


def tile_starts(length: int, tile_size: int, tile_overlap: int) -> list[int]:
    """Where tiles of `tile_size` start along an edge of `length` so that neighbours overlap by at least
    `tile_overlap`; the last tile ends at the edge."""
    if length <= tile_size:
        return [0]
    stride = tile_size - tile_overlap
    starts = list(range(0, length - tile_size, stride))
    return starts + [length - tile_size]


def blend_weights(starts: list[int], index: int, length: int, tile_size: int, scale: int) -> torch.Tensor:
    """The 1D blending weights, in output pixels, of tile `index` along an edge.

    Across the overlap with each neighbour the weight is 0 for the outer quarter (pixels computed with too little
    context), ramps linearly to 1 across the middle half, and is 1 for the inner quarter; the neighbour's
    weights are the mirror image, so where two tiles overlap their weights sum to 1.
    """
    start = starts[index]
    end = min(start + tile_size, length)
    weights = torch.ones((end - start) * scale)
    overlap_before = (starts[index - 1] + tile_size - start) * scale if index > 0 else 0
    overlap_after = (end - starts[index + 1]) * scale if index < len(starts) - 1 else 0
    if overlap_before:
        weights[:overlap_before] = torch.minimum(weights[:overlap_before], _rising_weights(overlap_before))
    if overlap_after:
        weights[-overlap_after:] = torch.minimum(weights[-overlap_after:], _rising_weights(overlap_after).flip(0))
    return weights


def check_tiling(tile_size: int, tile_overlap: int) -> None:
    if not 0 <= tile_overlap < tile_size:
        raise InvalidInputError(
            f"Cannot tile with tile size {tile_size} and overlap {tile_overlap}:"
            " the overlap must be at least 0 and smaller than the tile size"
        )


def _summed_at_starts(weights: list[torch.Tensor], starts: list[int], length: int, scale: int) -> torch.Tensor:
    total = torch.zeros(length)
    for start, tile_weights in zip(starts, weights):
        total[start * scale : start * scale + len(tile_weights)] += tile_weights
    return total


def _rising_weights(overlap: int) -> torch.Tensor:
    """Weights across an overlap: 0 on the first quarter, a linear ramp on the middle half, 1 on the last quarter;
    they and their mirror image sum to 1."""
    margin = overlap // 4
    ramp_length = overlap - 2 * margin
    return ((torch.arange(overlap) + 0.5 - margin) / ramp_length).clamp(0, 1)
