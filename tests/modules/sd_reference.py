"""Tiny Stable Diffusion shapes, and diffusers reference models built with diffusers' own checkpoint converters
(diffusers is a test-only dependency: it checks our numerics and our checkpoint layout)."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_vae_diffusers_config_from_ldm,
)
from diffusers_reference import sdxl_aware_unet_config
from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "imaginairy" / "configs"

# CompVis-format unet_config.params at toy size, including keys our constructor must accept and ignore.
TINY_UNET_SD1 = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_heads": 2,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 32,
    "use_checkpoint": True,
    "legacy": False,
}
TINY_UNET_SD2 = {
    **{key: value for key, value in TINY_UNET_SD1.items() if key != "num_heads"},
    "attention_resolutions": [1, 2],
    "num_head_channels": 16,
    "use_linear_in_transformer": True,
    "context_dim": 48,
    "use_fp16": False,
}
TINY_UNET_SD1_INPAINTING = {**TINY_UNET_SD1, "in_channels": 9}
# SDXL-shaped (sd_xl_base.yaml network_config at toy size): no attention at the top level, a transformer depth per
# level, the added embedding of 32 pooled text features + 6 size numbers x 256.
TINY_UNET_SDXL = {
    **TINY_UNET_SD2,
    "channel_mult": [1, 2, 2],
    "attention_resolutions": [4, 2],
    "transformer_depth": [1, 1, 2],
    "context_dim": 80,
    "num_classes": "sequential",
    "adm_in_channels": 32 + 6 * 256,
}
# The refiner's shape: one depth for all levels, no attention at the top and bottom level, 5 numbers (aesthetic score).
TINY_UNET_SDXL_REFINER = {
    **TINY_UNET_SDXL,
    "channel_mult": [1, 2, 2, 2],
    "transformer_depth": 2,
    "context_dim": 48,
    "adm_in_channels": 48 + 5 * 256,
}

TINY_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 32,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}

REAL_CONFIG_NAMES = ["sd-v1", "sd-v1-inpainting", "sd-v2", "sd-v2-v", "sd-v2-inpainting"]


def randomize_parameters(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with small seeded noise, so zero-initialised output layers cannot hide bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module.eval()


def ldm_config(unet_params: dict, ddconfig: dict) -> dict:
    """A CompVis-format model config as diffusers' single-file converters read it."""
    return {
        "model": {
            "params": {
                "scale_factor": 0.18215,
                "unet_config": {"params": unet_params},
                "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": ddconfig}},
            }
        }
    }


def real_model_params(config_name: str):
    return OmegaConf.load(CONFIG_DIR / f"{config_name}.yaml").model.params

def diffusers_unet_from_ours(unet: torch.nn.Module, unet_params: dict):
    """diffusers' UNet2DConditionModel holding our UNet's weights, converted by diffusers' own converter;
    returns (model, converted state dict)."""
    return diffusers_model_from_ours(
        unet, "model.diffusion_model.", ldm_config(unet_params, TINY_DDCONFIG), UNet2DConditionModel,
        sdxl_aware_unet_config, convert_ldm_unet_checkpoint,
    )  # fmt: skip


def diffusers_vae_from_ours(vae: torch.nn.Module, ddconfig: dict):
    """diffusers' AutoencoderKL holding our autoencoder's weights, converted by diffusers' own converter;
    returns (model, converted state dict)."""
    return diffusers_model_from_ours(
        vae, "first_stage_model.", ldm_config(TINY_UNET_SD1, ddconfig), DiffusersAutoencoderKL,
        create_vae_diffusers_config_from_ldm, convert_ldm_vae_checkpoint,
    )  # fmt: skip


def diffusers_model_from_ours(module, prefix: str, original_config: dict, model_class, make_config, convert_weights):
    """Our `module`'s weights under their CompVis checkpoint `prefix`, converted into a strict-loaded diffusers
    `model_class` by diffusers' config and weight converters."""
    checkpoint = {prefix + key: value for key, value in module.state_dict().items()}
    config = make_config(original_config, checkpoint)
    converted = convert_weights(checkpoint, config)
    reference = model_class(**config)
    reference.load_state_dict(converted, strict=True)
    return reference.eval(), converted


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest magnitude of the expected tensor."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
