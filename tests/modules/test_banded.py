"""Band-by-band 3x3 convolutions of large float32 maps equal the whole-map computation."""

import pytest
import torch
import torch.nn.functional as F
from sd_reference import TINY_DDCONFIG, randomize_parameters

from imaginairy.modules import banded
from imaginairy.modules.autoencoder import AutoencoderKL
from imaginairy.modules.layers import TileableConv2d, group_norm, set_tile_mode


@pytest.fixture
def small_bands(monkeypatch):
    """Band any map of 64+ elements, 8 rows per band at most widths: several bands and a short last one."""
    monkeypatch.setattr(banded, "MIN_BANDED_ELEMENTS", 64)
    monkeypatch.setattr(banded, "BAND_ELEMENTS", 8 * 32 * 16)


def layers(in_channels=32, out_channels=16, seed=0):
    norm, conv = group_norm(in_channels), TileableConv2d(in_channels, out_channels, 3, padding=1)
    randomize_parameters(norm, seed)
    randomize_parameters(conv, seed + 1)
    return norm, conv


@pytest.mark.parametrize("height", [16, 21, 9])
def test_banded_norm_silu_conv_equals_the_whole_map(small_bands, height):
    norm, conv = layers()
    x = (3 * torch.randn(2, 32, height, 16) + 1).contiguous(memory_format=torch.channels_last)
    assert banded.uses_bands(conv, x)
    with torch.no_grad():
        expected = conv(F.silu(norm(x)))
        out = banded.norm_silu_conv(norm, conv, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height", [16, 11])
def test_banded_upsample_conv_equals_the_whole_map(small_bands, height):
    _, conv = layers(in_channels=32, out_channels=32)
    x = torch.randn(1, 32, height, 16)
    with torch.no_grad():
        expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        out = banded.upsample_conv(conv, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_small_maps_tile_modes_and_bfloat16_are_not_banded(small_bands, monkeypatch):
    _, conv = layers()
    x = torch.randn(1, 32, 16, 16)
    assert banded.uses_bands(conv, x)
    assert not banded.uses_bands(conv, x.bfloat16())
    set_tile_mode(conv, "y")
    assert not banded.uses_bands(conv, x)
    monkeypatch.setattr(banded, "MIN_BANDED_ELEMENTS", 1 << 25)
    set_tile_mode(conv, "")
    assert not banded.uses_bands(conv, x)


def test_vae_decode_and_encode_in_bands_equal_the_whole_map(monkeypatch):
    vae = randomize_parameters(AutoencoderKL(TINY_DDCONFIG, embed_dim=4), 3).eval()
    latent = torch.randn(1, 4, 12, 10, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = vae.decoder(vae.post_quant_conv(latent))
        image = expected.clamp(-1, 1)
        expected_moments = vae.quant_conv(vae.encoder(image))
        monkeypatch.setattr(banded, "MIN_BANDED_ELEMENTS", 64)
        monkeypatch.setattr(banded, "BAND_ELEMENTS", 512)
        calls = []
        conv_in_bands = banded.conv_in_bands

        def counted_conv_in_bands(*args, **kwargs):
            calls.append(args[0])
            return conv_in_bands(*args, **kwargs)

        monkeypatch.setattr(banded, "conv_in_bands", counted_conv_in_bands)
        out = vae.decoder(vae.post_quant_conv(latent))
        moments = vae.quant_conv(vae.encoder(image))
    assert len(calls) >= 10  # every ResnetBlock conv and the upsampling went band by band
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moments, expected_moments, atol=1e-5, rtol=1e-5)


def test_group_statistics_are_accurate_with_a_large_mean(small_bands):
    x = (torch.randn(2, 32, 19, 16, generator=torch.Generator().manual_seed(7)) * 0.5 + 40).contiguous(
        memory_format=torch.channels_last
    )
    mean, variance = banded.group_mean_and_variance(x, groups=8)
    expected_variance, expected_mean = torch.var_mean(x.double().unflatten(1, (8, -1)), dim=(2, 3, 4), unbiased=False)
    assert mean.shape == variance.shape == (2, 32)
    torch.testing.assert_close(mean.double(), expected_mean.repeat_interleave(4, dim=1), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(variance.double(), expected_variance.repeat_interleave(4, dim=1), atol=0, rtol=1e-4)
