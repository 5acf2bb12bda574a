"""VAE encode/decode in overlapping tiles (imaginairy/modules/tiling.py, over imaginairy/utils/overlapping_tiles.py).

The blending itself is exact: any per-pixel function applied in tiles gives the untiled result, and a tile that
covers the whole image gives the untiled VAE output. The VAE is not per-pixel: its group norms and its mid-block
attention see the whole input, so each tile is normalised with its own statistics. The tiny random-weight VAE
exaggerates this (its outputs are dominated by those statistics): decoding a 32x48 latent (pixels of mean magnitude
~0.5) in 24-latent tiles overlapping by 16 we measure a mean absolute difference of ~0.28 from the untiled decode,
and encoding in 192 px tiles overlapping by 128 ~0.38 on latents of mean magnitude ~0.48. The tests bound that
(0.35 and 0.45) and check separately that the blend leaves no seam: the pixel-to-pixel jumps across tile borders
are no larger than elsewhere in the image.
"""

import pytest
import torch
import torch.nn.functional as F

from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import load_model
from imaginairy.modules.tiling import decode_in_tiles, encode_in_tiles
from imaginairy.schema import ImaginePrompt
from imaginairy.utils.overlapping_tiles import apply_in_tiles, blend_ramp, tile_starts

DECODE_MEAN_TOLERANCE = 0.35
ENCODE_MEAN_TOLERANCE = 0.45


@pytest.fixture(scope="module")
def tiny_vae(tiny_models):
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full")
    return load_model(prompt, "cpu", ModelCache(max_bytes=2**30)).first_stage_model


def smooth_latent(height: int, width: int) -> torch.Tensor:
    coarse = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)


def test_tile_starts_cover_the_side_with_the_overlap():
    assert tile_starts(10, 16, 4) == [0]
    assert tile_starts(40, 16, 4) == [0, 12, 24]
    starts = tile_starts(256, 96, 16)
    assert starts[0] == 0 and starts[-1] == 256 - 96
    assert all(b - a <= 96 - 16 for a, b in zip(starts, starts[1:]))


def test_blend_ramp_falls_towards_inner_edges_only():
    ramp = blend_ramp(8, 4, rise=False, fall=True)
    assert ramp[:4].tolist() == [1, 1, 1, 1]
    assert ramp[4:].tolist() == sorted(ramp[4:].tolist(), reverse=True) and ramp[-1] > 0


@pytest.mark.parametrize("size", [(40, 64), (17, 23), (16, 16)])
def test_blending_is_exact_for_a_per_pixel_function(size):
    x = torch.randn(2, 4, *size, generator=torch.Generator().manual_seed(1))

    def upscale(tile):
        return F.interpolate(tile, scale_factor=8, mode="nearest") * 2 + 1

    tiled = apply_in_tiles(upscale, x, tile=16, overlap=6, scale=8)
    torch.testing.assert_close(tiled, upscale(x), atol=1e-5, rtol=1e-5)


def test_tiled_decode_is_close_to_untiled(tiny_vae):
    latent = smooth_latent(32, 48)
    with torch.inference_mode():
        whole = tiny_vae.decode(latent)
        tiled = decode_in_tiles(tiny_vae, latent, tile=24, overlap=16)
        covering = decode_in_tiles(tiny_vae, latent, tile=48, overlap=16)
    assert tiled.shape == whole.shape == (1, 3, 256, 384)
    torch.testing.assert_close(covering, whole)
    assert (tiled - whole).abs().mean() < DECODE_MEAN_TOLERANCE


def test_tiled_decode_has_no_seams(tiny_vae):
    latent = smooth_latent(32, 48)
    with torch.inference_mode():
        tiled = decode_in_tiles(tiny_vae, latent, tile=24, overlap=16)
    column_jumps = (tiled[..., 1:] - tiled[..., :-1]).abs().mean(dim=(0, 1, 2))
    tile_edges = [8 * start - 1 for start in tile_starts(48, 24, 16)[1:]] + [8 * (start + 24) - 1 for start in
                                                                              tile_starts(48, 24, 16)[:-1]]
    assert column_jumps[tile_edges].max() < 2 * column_jumps.median()


def test_tiled_encode_is_close_to_untiled(tiny_vae):
    with torch.inference_mode():
        pixels = tiny_vae.decode(smooth_latent(32, 48)).clamp(-1, 1)
        whole = tiny_vae.encode(pixels)[0]
        tiled = encode_in_tiles(tiny_vae, pixels, tile=192, overlap=128)
    assert tiled.shape == whole.shape == (1, 4, 32, 48)
    assert (tiled - whole).abs().mean() < ENCODE_MEAN_TOLERANCE
