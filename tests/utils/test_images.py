"""Loading images of every pixel format into the 8-bit RGB the pipeline works in."""

import numpy as np
import pytest
from PIL import Image


@pytest.mark.parametrize("bits", [16, 32])
def test_16_and_32_bit_grey_images_keep_their_levels(tmp_path, bits):
    from imaginairy.utils.images import LazyLoadingImage

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    img = Image.fromarray(ramp.astype(np.uint16)) if bits == 16 else Image.fromarray(ramp.astype(np.int32), mode="I")
    path = tmp_path / ("ramp.png" if bits == 16 else "ramp.tif")  # PNG has no 32-bit grey
    img.save(path)
    loaded = np.asarray(LazyLoadingImage(filepath=path).as_pil().convert("L"), dtype=float)
    expected = ramp / 257
    assert np.abs(loaded - expected).max() <= 1
    assert 120 < loaded.mean() < 135


def test_float_images_are_scaled_to_8_bits():
    from imaginairy.utils.images import eight_bit

    img = Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), mode="F")
    levels = np.asarray(eight_bit(img))
    assert levels.min() == 0 and levels.max() == 255
