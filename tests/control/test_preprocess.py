"""Hints: canny exactly OpenCV's, resizing exactly diffusers' ControlNet image processor, the tensor in [0, 1]."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from imaginairy.control.preprocess import hint_tensor, make_hint
from imaginairy.errors import InvalidInputError


@pytest.fixture
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((96, 80))


@pytest.mark.parametrize("thresholds", [(100, 200), (30, 60)])
def test_canny_is_opencv_canny_on_the_resized_image(photo, thresholds):
    hint = make_hint("canny", photo, 64, 48, canny_thresholds=thresholds)
    resized = photo.resize((64, 48), Image.Resampling.LANCZOS)
    expected = cv2.Canny(np.asarray(resized), *thresholds)
    pixels = np.asarray(hint)
    assert hint.size == (64, 48) and pixels.shape == (48, 64, 3)
    assert (pixels == expected[:, :, None]).all()
    assert 0 < (expected > 0).mean() < 0.5  # edges found, not everything


def test_thresholds_change_the_edges(photo):
    assert not np.array_equal(np.asarray(make_hint("canny", photo, 64, 48, canny_thresholds=(10, 20))),
                              np.asarray(make_hint("canny", photo, 64, 48)))


@pytest.mark.parametrize("mode", ["tile", "ip2p"])
def test_image_modes_resize_like_diffusers_control_image_processor(photo, mode):
    processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    expected = processor.preprocess(photo.convert("L"), height=72, width=40)  # grey: also converted to RGB
    tensor = hint_tensor(make_hint(mode, photo.convert("L"), 40, 72))
    assert tensor.shape == (1, 3, 72, 40)
    torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=0)


def test_ready_hint_is_taken_as_it_is_in_any_mode(photo):
    hint = make_hint("canny", photo, 96, 80, preprocess=False)
    assert np.array_equal(np.asarray(hint), np.asarray(photo))


def test_mode_without_preprocessor_asks_for_a_ready_hint(photo):
    with pytest.raises(InvalidInputError, match="ready depth hint"):
        make_hint("depth", photo, 64, 64)
