"""Upscaling with a tiny random-weight RealESRGAN (RRDBNet, real checkpoint layout) loaded through spandrel."""

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from imaginairy.enhancers.upscale import load_upscaler, upscale_image, upscale_tiled
from imaginairy.errors import InvalidInputError, ModelLoadError, WeightsUnavailableError
from imaginairy.utils.overlapping_tiles import margin_edge_weights, tile_starts


@pytest.fixture(scope="module")
def tiny_realesrgan_path(tmp_path_factory):
    from tiny_enhancers import make_tiny_realesrgan

    return make_tiny_realesrgan(tmp_path_factory.mktemp("upscale") / "RealESRGAN_x4plus.pth")


@pytest.fixture(scope="module")
def upscaler(tiny_realesrgan_path):
    return load_upscaler(tiny_realesrgan_path, device="cpu")


def photo(width: int, height: int) -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.LANCZOS)


def test_tiny_realesrgan_loads_through_spandrel_as_4x_esrgan(upscaler):
    assert upscaler.architecture.id == "ESRGAN"
    assert upscaler.scale == 4
    assert upscaler.purpose == "SR"


def test_upscaled_image_is_4x_the_size(upscaler):
    upscaled = upscale_image(photo(40, 30), model=upscaler)
    assert upscaled.size == (160, 120)
    assert upscaled.mode == "RGB"


def test_odd_sized_image_with_several_tiles_is_4x_the_size(upscaler):
    upscaled = upscale_image(photo(37, 23), model=upscaler, tile_size=16, tile_overlap=4)
    assert upscaled.size == (148, 92)


def test_tiled_upscaling_agrees_with_untiled(upscaler):
    image = torch.from_numpy(np.asarray(photo(61, 53), dtype=np.float32) / 255).permute(2, 0, 1)
    untiled = upscale_tiled(upscaler, image, tile_size=512, tile_overlap=0)
    tiled = upscale_tiled(upscaler, image, tile_size=32, tile_overlap=16)
    assert untiled.std() > 0.05  # the tiny model's output is not flat, so the comparison means something
    # blending leaves out the outer quarter of each overlap, 4 input pixels here; the tiny model's trunk still
    # reaches a little further, so the results agree closely but not bit for bit
    torch.testing.assert_close(tiled, untiled, atol=2e-3, rtol=0)
    assert (tiled - untiled).abs().mean() < 1e-4


def test_tiled_upscaled_image_has_no_seams(upscaler):
    img = photo(45, 38)
    untiled = np.asarray(upscale_image(img, model=upscaler), dtype=int)
    tiled = np.asarray(upscale_image(img, model=upscaler, tile_size=24, tile_overlap=16), dtype=int)
    assert np.abs(tiled - untiled).max() <= 1


def test_tile_starts_cover_the_edge_with_the_overlap():
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(20, 32, 8) == [0]


@pytest.mark.parametrize(("length", "tile_size", "tile_overlap"), [(100, 32, 8), (64, 32, 0), (41, 32, 4)])
def test_blend_weights_of_neighbouring_tiles_sum_to_one(length, tile_size, tile_overlap):
    scale = 4
    starts = tile_starts(length, tile_size, tile_overlap)
    total = torch.zeros(length * scale)
    for index, start in enumerate(starts):
        weights = margin_edge_weights(starts, index, length, tile_size, tile_overlap, scale)
        total[start * scale : start * scale + len(weights)] += weights
    torch.testing.assert_close(total, torch.ones(length * scale))


def test_upscaler_loads_from_a_weights_location(tiny_realesrgan_path):
    upscaled = upscale_image(photo(20, 20), model=str(tiny_realesrgan_path), device="cpu")
    assert upscaled.size == (80, 80)


def test_transparency_is_kept(upscaler):
    img = photo(20, 16).convert("RGBA")
    img.putalpha(128)
    upscaled = upscale_image(img, model=upscaler)
    assert upscaled.mode == "RGBA"
    assert upscaled.getchannel("A").getextrema() == (128, 128)


@pytest.mark.parametrize(("tile_size", "tile_overlap"), [(32, 32), (32, -1), (0, 0)])
def test_bad_tiling_is_invalid_input(upscaler, tile_size, tile_overlap):
    with pytest.raises(InvalidInputError, match="overlap"):
        upscale_image(photo(20, 20), model=upscaler, tile_size=tile_size, tile_overlap=tile_overlap)


def test_file_that_is_not_a_checkpoint_is_a_model_load_error(tmp_path):
    not_a_model = tmp_path / "RealESRGAN_x4plus.pth"
    not_a_model.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="Cannot load"):
        load_upscaler(not_a_model, device="cpu")


def test_checkpoint_of_an_unknown_model_is_a_model_load_error(tmp_path):
    unknown = tmp_path / "unknown.pth"
    torch.save({"params_ema": {"layer.weight": torch.zeros(2, 2)}}, unknown)
    with pytest.raises(ModelLoadError, match="no known image model architecture"):
        load_upscaler(unknown, device="cpu")


def test_default_weights_offline_are_unavailable_with_a_clear_error():
    with pytest.raises(WeightsUnavailableError, match="RealESRGAN_x4plus.pth"):
        upscale_image(photo(20, 20), device="cpu")
