"""VAE encode and decode in overlapping tiles, so large images need memory for one tile, not the whole image.

Each tile goes through the autoencoder on its own; where tiles overlap, their outputs are blended with weights
that fall linearly towards the tile's inner edges, so no seam shows. Tiles see less context than the whole image
(their group norms compute statistics over the tile), so a tiled result is close to, not equal to, an untiled one.
"""

import torch

from imaginairy.modules.autoencoder import AutoencoderKL

# Latent tile side and overlap (x8 in pixels): 768 px tiles overlapping by 128 px.
TILE_LATENT_SIZE = 96
TILE_LATENT_OVERLAP = 16
# Latents with a side above this (1024 px) are decoded in tiles by default.
UNTILED_MAX_LATENT_SIDE = 128


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering `size`, neighbours overlapping by at least `overlap`."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def blend_ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """Weights along one tile side: rising over the first `overlap` entries (if `rise`), falling over the last."""
    weights = torch.ones(length)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    overlap = min(overlap, length)
    if rise:
        weights[:overlap] = torch.minimum(weights[:overlap], ramp[:overlap])
    if fall:
        weights[-overlap:] = torch.minimum(weights[-overlap:], ramp[:overlap].flip(0))
    return weights


def apply_in_tiles(function, x: torch.Tensor, tile: int, overlap: int, scale: float) -> torch.Tensor:
    """`function` over overlapping tiles of x [B, C, H, W] (tile side and overlap in x's pixels), outputs blended.

    `function` maps a [B, C, h, w] tile to [B, C', h * scale, w * scale]; the result is float32.
    """
    height, width = x.shape[-2:]
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    out_overlap = int(overlap * scale)
    output = weight_sum = None
    for top in rows:
        for left in columns:
            tile_out = function(x[..., top : top + tile, left : left + tile]).float()
            out_h, out_w = tile_out.shape[-2:]
            if output is None:
                output_size = (int(height * scale), int(width * scale))
                output = tile_out.new_zeros((*tile_out.shape[:2], *output_size))
                weight_sum = tile_out.new_zeros(output_size)
            weights = torch.outer(
                blend_ramp(out_h, out_overlap, top > 0, top != rows[-1]),
                blend_ramp(out_w, out_overlap, left > 0, left != columns[-1]),
            ).to(tile_out.device)
            out_top, out_left = int(top * scale), int(left * scale)
            output[..., out_top : out_top + out_h, out_left : out_left + out_w] += tile_out * weights
            weight_sum[out_top : out_top + out_h, out_left : out_left + out_w] += weights
    return output / weight_sum


def decode_in_tiles(
    autoencoder: AutoencoderKL, z: torch.Tensor, tile: int = TILE_LATENT_SIZE, overlap: int = TILE_LATENT_OVERLAP
) -> torch.Tensor:
    """AutoencoderKL.decode of latents z [B, 4, h, w] (unscaled), tile by tile: images [B, 3, 8h, 8w], float32."""
    return apply_in_tiles(autoencoder.decode, z, tile, overlap, scale=8)


def encode_in_tiles(
    autoencoder: AutoencoderKL, x: torch.Tensor, tile: int = TILE_LATENT_SIZE * 8, overlap: int = TILE_LATENT_OVERLAP * 8
) -> torch.Tensor:
    """The posterior mean of AutoencoderKL.encode for images x [B, 3, H, W], tile by tile (sides in pixels): [B, 4,
    H/8, W/8], float32. Tile sides and overlaps must be multiples of 8."""
    return apply_in_tiles(lambda pixels: autoencoder.encode(pixels)[0], x, tile, overlap, scale=1 / 8)
