"""The latent -> RGB preview: Keturn's published SD factors, applied per latent pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imaginairy.utils.preview import latent_preview, latent_to_rgb

# The table as published (https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204),
# typed in here again so that a changed or transposed table in the module fails.
PUBLISHED = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
]


def test_each_channel_contributes_its_published_colour():
    latents = torch.zeros(1, 4, 2, 3)
    for channel in range(4):
        latents[0, channel, 1, 2] = 1.0
        rgb = latent_to_rgb(latents)
        assert rgb.shape == (2, 3, 3)
        assert rgb[1, 2].tolist() == pytest.approx(PUBLISHED[channel])
        assert rgb[0, 0].tolist() == [0.0, 0.0, 0.0]
        latents[0, channel, 1, 2] = 0.0


def test_preview_image_maps_minus_one_to_one_onto_0_to_255():
    latents = torch.zeros(4, 8, 16)
    latents[0] = 2.0  # R = 0.596, G = 0.414, B = 0.416
    latents[3, :, :8] = 10.0  # left half: far below -1 in every colour, clipped to black
    img = latent_preview(latents)
    assert img.size == (16, 8) and img.mode == "RGB"
    pixels = np.asarray(img)
    assert pixels[0, 15].tolist() == [round((0.596 + 1) * 127.5), round((0.414 + 1) * 127.5),
                                      round((0.416 + 1) * 127.5)]
    assert pixels[0, 0].tolist() == [0, 0, 0]


def test_other_latent_channel_counts_are_refused():
    with pytest.raises(ValueError, match="4 latent channels"):
        latent_to_rgb(torch.zeros(16, 4, 4))
