import pytest
import torch
from sd_reference import (
    REAL_CONFIG_NAMES,
    TINY_DDCONFIG,
    diffusers_vae_from_ours,
    max_relative_error,
    randomize_parameters,
    real_model_params,
)

from imaginairy.modules.autoencoder import AutoencoderKL
from imaginairy.modules.layers import TileableConv2d, set_tile_mode

# Same weights and math as diffusers; float32 sums accumulate in a different order: ~1e-7 relative, allow 1e-5.
PARITY_TOLERANCE = 1e-5
# bfloat16 keeps 8 bits of mantissa (~4e-3 per rounding) and errors compound through the network.
BFLOAT16_TOLERANCE = 5e-2


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    return randomize_parameters(AutoencoderKL(ddconfig=TINY_DDCONFIG, embed_dim=4, monitor="val/rec_loss"), seed)


def random_images(height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, height, width, generator=generator) * 2 - 1


def random_latents(height: int = 16, width: int = 16, seed: int = 2) -> torch.Tensor:
    return torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(seed))


def test_encode_matches_diffusers_on_same_weights():
    vae = tiny_vae()
    reference, _ = diffusers_vae_from_ours(vae, TINY_DDCONFIG)
    images = random_images()

    with torch.no_grad():
        mean, logvar = vae.encode(images)
        posterior = reference.encode(images).latent_dist

    assert mean.shape == logvar.shape == (2, 4, 16, 16)
    assert max_relative_error(mean, posterior.mean) < PARITY_TOLERANCE
    assert max_relative_error(logvar, posterior.logvar) < PARITY_TOLERANCE


def test_decode_matches_diffusers_on_same_weights():
    vae = tiny_vae()
    reference, _ = diffusers_vae_from_ours(vae, TINY_DDCONFIG)
    latents = random_latents()

    with torch.no_grad():
        images = vae.decode(latents)
        expected = reference.decode(latents).sample

    assert images.shape == (2, 3, 32, 32)
    assert max_relative_error(images, expected) < PARITY_TOLERANCE


def test_key_set_is_exactly_what_diffusers_converter_maps():
    vae = tiny_vae()
    reference, converted = diffusers_vae_from_ours(vae, TINY_DDCONFIG)
    assert len(converted) == len(vae.state_dict())
    assert set(converted) == set(reference.state_dict())


def test_strict_state_dict_round_trip():
    source = tiny_vae(seed=5)
    target = AutoencoderKL(ddconfig=TINY_DDCONFIG, embed_dim=4).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    latents = random_latents(8, 8)
    with torch.no_grad():
        assert torch.equal(target.decode(latents), source.decode(latents))


def test_logvar_is_clamped_like_compvis():
    vae = tiny_vae()
    with torch.no_grad():
        vae.quant_conv.bias[4:] = 1000.0
        _, logvar = vae.encode(random_images(16, 16))
    assert torch.all(logvar == 20.0)


@pytest.mark.parametrize("config_name", REAL_CONFIG_NAMES)
def test_real_configs_build_the_real_checkpoint_layout(config_name):
    with torch.device("meta"):
        vae = AutoencoderKL(**real_model_params(config_name).first_stage_config.params)
    state = vae.state_dict()

    # The SD 1.x / 2.x KL-f8 autoencoder: 83,653,863 parameters in 248 `first_stage_model.*` tensors.
    assert sum(parameter.numel() for parameter in vae.parameters()) == 83_653_863
    assert len(state) == 248
    assert state["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert state["encoder.down.0.block.0.norm1.weight"].shape == (128,)
    assert state["encoder.down.1.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    assert state["encoder.down.1.downsample.conv.weight"].shape == (256, 256, 3, 3)
    assert state["encoder.conv_out.weight"].shape == (8, 512, 3, 3)
    assert state["quant_conv.weight"].shape == (8, 8, 1, 1)
    assert state["post_quant_conv.weight"].shape == (4, 4, 1, 1)
    assert state["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    assert state["decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert state["decoder.up.3.block.2.conv2.weight"].shape == (512, 512, 3, 3)
    assert state["decoder.mid.attn_1.proj_out.bias"].shape == (512,)
    assert state["decoder.conv_out.weight"].shape == (3, 128, 3, 3)


def test_every_3x3_conv_is_tileable():
    vae = AutoencoderKL(ddconfig=TINY_DDCONFIG, embed_dim=4)
    for conv in vae.modules():
        if isinstance(conv, torch.nn.Conv2d):
            assert isinstance(conv, TileableConv2d) == (conv.kernel_size == (3, 3))


@pytest.mark.parametrize("tile_mode, dims", [("x", (3,)), ("y", (2,)), ("xy", (2, 3))])
def test_tiled_encode_and_decode_are_equivariant_to_circular_shifts(tile_mode, dims):
    vae = tiny_vae()
    set_tile_mode(vae, tile_mode)
    images = random_images()
    latents = random_latents(8, 8)
    # The encoder downsamples once by 2 (pad right/bottom, stride-2 conv): image shifts must be even, and the latent
    # moves by half as much. Decoding only upsamples, so any latent shift moves the image by twice as much.
    image_shift, latent_shift = (10,) * len(dims), (5,) * len(dims)

    with torch.no_grad():
        shifted_mean, _ = vae.encode(torch.roll(images, image_shift, dims))
        mean, _ = vae.encode(images)
        shifted_decoded = vae.decode(torch.roll(latents, latent_shift, dims))
        decoded = vae.decode(latents)

    assert max_relative_error(shifted_mean, torch.roll(mean, latent_shift, dims)) < PARITY_TOLERANCE
    assert max_relative_error(shifted_decoded, torch.roll(decoded, image_shift, dims)) < PARITY_TOLERANCE


def test_untiled_decode_is_not_equivariant_at_the_borders():
    vae = tiny_vae()
    latents = random_latents(8, 8)
    with torch.no_grad():
        shifted = vae.decode(torch.roll(latents, 3, 3))
        rolled = torch.roll(vae.decode(latents), 6, 3)
    assert (shifted - rolled)[..., [0, -1]].abs().max() > 1e-3


def test_bfloat16_round_trip_is_close_to_float32():
    vae = tiny_vae()
    images = random_images()
    with torch.no_grad():
        mean, _ = vae.encode(images)
        decoded = vae.decode(mean)
        vae.to(torch.bfloat16)
        half_mean, _ = vae.encode(images.bfloat16())
        half_decoded = vae.decode(half_mean)

    assert half_decoded.dtype == torch.bfloat16
    assert max_relative_error(half_mean, mean) < BFLOAT16_TOLERANCE
    assert max_relative_error(half_decoded, decoded) < BFLOAT16_TOLERANCE
