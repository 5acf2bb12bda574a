"""VAE encode and decode in overlapping tiles (`imaginairy.utils.overlapping_tiles`), so large images need memory
for one tile, not the whole image.

Each tile goes through the autoencoder on its own; where tiles overlap, their outputs are blended with weights
that fall linearly towards the tile's inner edges, so no seam shows. Tiles see less context than the whole image
(their group norms compute statistics over the tile), so a tiled result is close to, not equal to, an untiled one.
"""

import torch

from imaginairy.modules.autoencoder import LATENT_SCALE, AutoencoderKL
from imaginairy.utils.overlapping_tiles import apply_in_tiles

# Latent tile side and overlap (x8 in pixels): 768 px tiles overlapping by 128 px.
TILE_LATENT_SIZE = 96
TILE_LATENT_OVERLAP = 16
# Latents with a side above this (1024 px) are decoded in tiles by default.
UNTILED_MAX_LATENT_SIDE = 128


def decode_in_tiles(
    autoencoder: AutoencoderKL, z: torch.Tensor, tile: int = TILE_LATENT_SIZE, overlap: int = TILE_LATENT_OVERLAP
) -> torch.Tensor:
    """AutoencoderKL.decode of latents z [B, 4, h, w] (unscaled), tile by tile: images [B, 3, 8h, 8w], float32."""
    return apply_in_tiles(autoencoder.decode, z, tile, overlap, scale=LATENT_SCALE)


def encode_in_tiles(
    autoencoder: AutoencoderKL,
    x: torch.Tensor,
    tile: int = TILE_LATENT_SIZE * LATENT_SCALE,
    overlap: int = TILE_LATENT_OVERLAP * LATENT_SCALE,
) -> torch.Tensor:
    """The posterior mean of AutoencoderKL.encode for images x [B, 3, H, W], tile by tile (sides in pixels): [B, 4,
    H/8, W/8], float32. Tile sides and overlaps must be multiples of 8."""
    return apply_in_tiles(lambda pixels: autoencoder.encode(pixels)[0], x, tile, overlap, scale=1 / LATENT_SCALE)
