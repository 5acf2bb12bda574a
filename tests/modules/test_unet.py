import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm
from sd_reference import (
    CONFIG_DIR,
    REAL_CONFIG_NAMES,
    TINY_UNET_SD1,
    TINY_UNET_SD1_INPAINTING,
    TINY_UNET_SD2,
    TINY_UNET_SDXL,
    TINY_UNET_SDXL_REFINER,
    diffusers_unet_from_ours,
    max_relative_error,
    randomize_parameters,
    real_model_params,
)

from imaginairy.errors import ModelLoadError
from imaginairy.models.loading import load_model_config
from imaginairy.modules.diffusion import size_embedding
from imaginairy.modules.layers import TileableConv2d, set_tile_mode, timestep_embedding
from imaginairy.modules.unet import UNetModel

# Same weights and the same math as diffusers, but float32 sums are accumulated in a different order
# (fused kernels, 1x1 conv vs linear, attention blocking): expect ~1e-6 relative, allow 1e-5.
PARITY_TOLERANCE = 1e-5
# bfloat16 keeps 8 bits of mantissa (~4e-3 per rounding) and errors compound through ~20 layers.
BFLOAT16_TOLERANCE = 5e-2

LAYOUTS = {
    "sd1-conv-proj-num-heads": TINY_UNET_SD1,
    "sd2-linear-proj-head-channels": TINY_UNET_SD2,
    "sd1-inpainting-9-channels": TINY_UNET_SD1_INPAINTING,
}
TIMESTEPS = {"integer": [999.0, 10.0], "fractional": [0.5, 123.456]}


def tiny_unet(params: dict, seed: int = 0) -> UNetModel:
    return randomize_parameters(UNetModel(**params), seed)


def unet_inputs(params: dict, height: int = 16, width: int = 16, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, params["in_channels"], height, width, generator=generator)
    context = torch.randn(2, 7, params["context_dim"], generator=generator)
    return latents, context


@pytest.mark.parametrize("timesteps", TIMESTEPS.values(), ids=TIMESTEPS.keys())
@pytest.mark.parametrize("params", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_matches_diffusers_on_same_weights(params, timesteps):
    unet = tiny_unet(params)
    reference, _ = diffusers_unet_from_ours(unet, params)
    latents, context = unet_inputs(params)
    timesteps = torch.tensor(timesteps)

    with torch.no_grad():
        ours = unet(latents, timesteps, context)
        expected = reference(latents, timesteps, encoder_hidden_states=context).sample

    assert ours.shape == (2, params["out_channels"], 16, 16)
    assert expected.abs().max() > 0.1
    assert max_relative_error(ours, expected) < PARITY_TOLERANCE


@pytest.mark.parametrize("params", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_latents_shared_by_stacked_contexts_match_diffusers_on_the_repeated_latents(params):
    """Classifier-free guidance passes the latents once for [uncond; cond] (here 3 context groups of 2): the result
    must be diffusers' on the latents stacked once per group, though our layers before the first cross-attention
    ran on the unrepeated batch."""
    unet = tiny_unet(params)
    reference, _ = diffusers_unet_from_ours(unet, params)
    latents, _ = unet_inputs(params)
    context = torch.randn(6, 7, params["context_dim"], generator=torch.Generator().manual_seed(5))
    timesteps = torch.tensor([999.0, 10.0])

    with torch.no_grad():
        ours = unet(latents, timesteps, context)
        expected = reference(latents.repeat(3, 1, 1, 1), timesteps.repeat(3), encoder_hidden_states=context).sample

    assert ours.shape == (6, params["out_channels"], 16, 16)
    assert max_relative_error(ours, expected) < PARITY_TOLERANCE
    assert not torch.allclose(ours[:2], ours[2:4], atol=1e-3)


def test_context_batch_must_be_a_multiple_of_the_latent_batch():
    unet = tiny_unet(TINY_UNET_SD1)
    latents, context = unet_inputs(TINY_UNET_SD1)
    with pytest.raises(ValueError, match="not a multiple"):
        unet(latents, torch.tensor(250.0), context[:1].repeat(3, 1, 1))


@pytest.mark.parametrize("params", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_key_set_is_exactly_what_diffusers_converter_maps(params):
    unet = tiny_unet(params)
    reference, converted = diffusers_unet_from_ours(unet, params)

    # The converter maps our keys one to one onto diffusers' (which loaded strictly), none missing, none extra.
    assert len(converted) == len(unet.state_dict())
    assert all(value is not None for value in converted.values())
    assert set(converted) == set(reference.state_dict())


def test_strict_state_dict_round_trip():
    source = tiny_unet(TINY_UNET_SD2, seed=3)
    target = UNetModel(**TINY_UNET_SD2).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    latents, context = unet_inputs(TINY_UNET_SD2)
    timesteps = torch.tensor([500.0, 500.0])

    with torch.no_grad():
        assert torch.equal(target(latents, timesteps, context), source(latents, timesteps, context))


@pytest.mark.parametrize("config_name", REAL_CONFIG_NAMES)
def test_real_configs_build_the_real_checkpoint_layout(config_name):
    params = real_model_params(config_name).unet_config.params
    with torch.device("meta"):
        unet = UNetModel(**params)
    state = unet.state_dict()
    is_sd2 = "v2" in config_name
    in_channels = 9 if "inpainting" in config_name else 4

    # Published sizes: SD 1.x UNet 859,520,964 parameters, SD 2.x 865,910,724 (+ 5 input channels' 3x3 kernels
    # for inpainting); every real checkpoint has 686 `model.diffusion_model.*` tensors.
    expected_parameters = 865_910_724 if is_sd2 else 859_520_964
    expected_parameters += (in_channels - 4) * 320 * 9
    assert sum(parameter.numel() for parameter in unet.parameters()) == expected_parameters
    assert len(state) == 686
    assert state["input_blocks.0.0.weight"].shape == (320, in_channels, 3, 3)
    assert state["time_embed.0.weight"].shape == (1280, 320)
    assert state["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"].shape == (320, 320)
    assert state["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 1024 if is_sd2 else 768)
    assert state["input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"].shape == (2560, 320)
    assert state["input_blocks.1.1.proj_in.weight"].shape == ((320, 320) if is_sd2 else (320, 320, 1, 1))
    assert state["input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert state["input_blocks.4.0.skip_connection.weight"].shape == (640, 320, 1, 1)
    assert state["middle_block.1.transformer_blocks.0.attn2.to_out.0.bias"].shape == (1280,)
    assert state["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert state["output_blocks.11.0.skip_connection.weight"].shape == (320, 640, 1, 1)
    assert state["out.2.weight"].shape == (4, 320, 3, 3)
    assert "output_blocks.0.0.emb_layers.1.weight" in state


def test_unsupported_architecture_option_is_refused():
    with pytest.raises(ModelLoadError, match="use_scale_shift_norm"):
        UNetModel(**TINY_UNET_SD1, use_scale_shift_norm=True)


def test_scalar_timestep_is_broadcast_over_the_batch():
    unet = tiny_unet(TINY_UNET_SD1)
    latents, context = unet_inputs(TINY_UNET_SD1)
    with torch.no_grad():
        scalar = unet(latents, torch.tensor(250.0), context)
        batched = unet(latents, torch.tensor([250.0, 250.0]), context)
    assert torch.equal(scalar, batched)


def test_timestep_embedding_is_float32_cos_then_sin():
    embedding = timestep_embedding(torch.tensor([0.0, 2.5], dtype=torch.bfloat16), 8)
    assert embedding.dtype == torch.float32
    assert torch.equal(embedding[0], torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    assert embedding[1, 0] == pytest.approx(torch.cos(torch.tensor(2.5)).item())


def test_every_3x3_conv_is_tileable():
    unet = UNetModel(**TINY_UNET_SD1)
    for conv in unet.modules():
        if isinstance(conv, torch.nn.Conv2d):
            assert isinstance(conv, TileableConv2d) == (conv.kernel_size == (3, 3))


@pytest.mark.parametrize("tile_mode, dims", [("x", (3,)), ("y", (2,)), ("xy", (2, 3))])
def test_tiled_unet_is_equivariant_to_circular_shifts(tile_mode, dims):
    unet = tiny_unet(TINY_UNET_SD2)
    set_tile_mode(unet, tile_mode)
    latents, context = unet_inputs(TINY_UNET_SD2, height=16, width=16)
    timesteps = torch.tensor([400.0, 400.0])
    # One stride-2 downsampling level: shifts must be a multiple of 2 to commute with it. Group norm, attention
    # (no positional encoding) and nearest upsampling commute with such shifts; circular padding makes the convs do so.
    shift = (6,) * len(dims)

    with torch.no_grad():
        shifted_output = unet(torch.roll(latents, shift, dims), timesteps, context)
        output = unet(latents, timesteps, context)

    assert max_relative_error(shifted_output, torch.roll(output, shift, dims)) < PARITY_TOLERANCE


def test_tile_mode_only_changes_the_padding():
    unet = tiny_unet(TINY_UNET_SD1)
    latents, context = unet_inputs(TINY_UNET_SD1)
    timesteps = torch.tensor([400.0, 400.0])

    with torch.no_grad():
        plain = unet(latents, timesteps, context)
        set_tile_mode(unet, "x")
        tiled = unet(latents, timesteps, context)
        set_tile_mode(unet, "")
        plain_again = unet(latents, timesteps, context)

    assert torch.equal(plain, plain_again)
    border_difference = (tiled - plain)[..., [0, -1]].abs().max()
    assert border_difference > 100 * (plain_again - plain).abs().max() + 1e-3


def test_set_tile_mode_rejects_unknown_modes():
    with pytest.raises(ValueError, match="tile_mode"):
        set_tile_mode(UNetModel(**TINY_UNET_SD1), "z")


def test_bfloat16_forward_is_close_to_float32():
    unet = tiny_unet(TINY_UNET_SD2)
    latents, context = unet_inputs(TINY_UNET_SD2)
    timesteps = torch.tensor([0.5, 999.0])

    with torch.no_grad():
        full = unet(latents, timesteps, context)
        unet.to(torch.bfloat16)
        half = unet(latents.bfloat16(), timesteps, context.bfloat16())

    assert half.dtype == torch.bfloat16
    assert max_relative_error(half, full) < BFLOAT16_TOLERANCE


SDXL_LAYOUTS = {"sdxl-base": (TINY_UNET_SDXL, 6), "sdxl-refiner": (TINY_UNET_SDXL_REFINER, 5)}


def sdxl_inputs(params: dict, numbers: int, batch: int = 2, seed: int = 2):
    """Pooled text [batch, P] and micro-conditioning numbers [batch, numbers] (sizes, crops, aesthetic score)."""
    generator = torch.Generator().manual_seed(seed)
    pooled = torch.randn(batch, params["adm_in_channels"] - 256 * numbers, generator=generator)
    sizes = torch.randint(0, 1100, (batch, numbers), generator=generator).float()
    return pooled, sizes


@pytest.mark.parametrize("timesteps", TIMESTEPS.values(), ids=TIMESTEPS.keys())
@pytest.mark.parametrize("params, numbers", SDXL_LAYOUTS.values(), ids=SDXL_LAYOUTS.keys())
def test_sdxl_unet_matches_diffusers_text_time_embedding(params, numbers, timesteps):
    """diffusers computes the added embedding from (text_embeds, time_ids) itself; ours takes y = [pooled | sizes
    embedded], so this also checks size_embedding and the order of y."""
    unet = tiny_unet(params)
    reference, _ = diffusers_unet_from_ours(unet, params)
    latents, context = unet_inputs(params)
    pooled, sizes = sdxl_inputs(params, numbers)
    timesteps = torch.tensor(timesteps)

    with torch.no_grad():
        ours = unet(latents, timesteps, context, y=torch.cat([pooled, size_embedding(sizes)], dim=1))
        expected = reference(latents, timesteps, encoder_hidden_states=context,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes}).sample
        without_sizes = unet(latents, timesteps, context, y=torch.cat([pooled, size_embedding(sizes * 0)], dim=1))

    assert expected.abs().max() > 0.1
    assert max_relative_error(ours, expected) < PARITY_TOLERANCE
    assert max_relative_error(without_sizes, expected) > 1e-3  # the sizes reach the output


def test_sdxl_cfg_batch_with_different_pooled_rows_matches_diffusers_on_repeated_latents():
    unet = tiny_unet(TINY_UNET_SDXL)
    reference, _ = diffusers_unet_from_ours(unet, TINY_UNET_SDXL)
    latents, _ = unet_inputs(TINY_UNET_SDXL)
    context = torch.randn(4, 7, TINY_UNET_SDXL["context_dim"], generator=torch.Generator().manual_seed(5))
    pooled, sizes = sdxl_inputs(TINY_UNET_SDXL, 6, batch=4)
    timesteps = torch.tensor([999.0, 10.0])

    with torch.no_grad():
        ours = unet(latents, timesteps, context, y=torch.cat([pooled, size_embedding(sizes)], dim=1))
        expected = reference(latents.repeat(2, 1, 1, 1), timesteps.repeat(2), encoder_hidden_states=context,
                             added_cond_kwargs={"text_embeds": pooled, "time_ids": sizes}).sample

    assert ours.shape == (4, 4, 16, 16)
    assert max_relative_error(ours, expected) < PARITY_TOLERANCE


def test_sdxl_unet_requires_y_and_sd_unet_refuses_it():
    latents, context = unet_inputs(TINY_UNET_SDXL)
    with pytest.raises(ValueError, match="needs the added embedding"):
        tiny_unet(TINY_UNET_SDXL)(latents, torch.tensor(1.0), context)
    latents, context = unet_inputs(TINY_UNET_SD2)
    with pytest.raises(ValueError, match="takes no"):
        tiny_unet(TINY_UNET_SD2)(latents, torch.tensor(1.0), context, y=torch.zeros(2, 8))


@pytest.mark.parametrize("params", [TINY_UNET_SDXL, TINY_UNET_SDXL_REFINER], ids=["base", "refiner"])
def test_sdxl_key_set_is_exactly_what_diffusers_converter_maps(params):
    unet = tiny_unet(params)
    reference, converted = diffusers_unet_from_ours(unet, params)
    assert len(converted) == len(unet.state_dict())
    assert set(converted) == set(reference.state_dict())


@pytest.mark.parametrize("config_name, first_attention_channels, adm", [("sdxl-base", 640, 2816),
                                                                        ("sdxl-refiner", 768, 2560)])
def test_sdxl_real_configs_build_the_official_layout(config_name, first_attention_channels, adm):
    """Our UNet from the real SDXL configs has the parameter count and key count of diffusers' UNet configured by
    diffusers from the same yaml (it knows SDXL at its real widths): SDXL base 2,567,463,684 parameters."""
    config = load_model_config(CONFIG_DIR / f"{config_name}.yaml")
    params = config["model"]["params"]["unet_config"]["params"]
    with torch.device("meta"):
        unet = UNetModel(**params)
        reference = UNet2DConditionModel(**create_unet_diffusers_config_from_ldm(config, {}))
    state = unet.state_dict()
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in reference.parameters())
    assert len(state) == len(reference.state_dict())
    if config_name == "sdxl-base":
        assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    assert state["label_emb.0.0.weight"].shape == (params["model_channels"] * 4, adm)
    assert "input_blocks.1.1.norm.weight" not in state  # no attention at the top level
    assert state["input_blocks.4.1.proj_in.weight"].shape == (first_attention_channels,) * 2
