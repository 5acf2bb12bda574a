"""Architecture inference from the weights, when a model has no config of its own."""

from __future__ import annotations

import shutil

import pytest
import torch

from imaginairy.errors import ModelLoadError
from imaginairy.models.loading import UNET_IN_KEY, infer_config_path, load_diffusion_model
from imaginairy.models.registry import resolve_model


def weights_of(in_channels: int, text_encoder_prefix: str) -> dict:
    return {UNET_IN_KEY: torch.zeros(8, in_channels, 3, 3), f"{text_encoder_prefix}.some.weight": torch.zeros(1)}


@pytest.mark.parametrize(
    "in_channels, text_encoder, weights_name, config",
    [
        (4, "cond_stage_model.transformer", "model.safetensors", "sd-v1.yaml"),
        (9, "cond_stage_model.transformer", "model.safetensors", "sd-v1-inpainting.yaml"),
        (4, "cond_stage_model.model", "v2-1_512-ema-pruned.safetensors", "sd-v2.yaml"),
        (4, "cond_stage_model.model", "v2-1_768-ema-pruned.safetensors", "sd-v2-v.yaml"),
        (9, "cond_stage_model.model", "512-inpainting-ema.safetensors", "sd-v2-inpainting.yaml"),
    ],
)
def test_the_architecture_is_inferred_from_the_text_encoder_and_unet_inputs(
    in_channels, text_encoder, weights_name, config
):
    assert infer_config_path(weights_of(in_channels, text_encoder), weights_name).name == config


def test_weights_that_are_not_stable_diffusion_are_refused():
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        infer_config_path({"some.weight": torch.zeros(1)}, "x.safetensors")
    with pytest.raises(ModelLoadError, match="unrecognised text encoder"):
        infer_config_path({UNET_IN_KEY: torch.zeros(8, 4, 3, 3)}, "x.safetensors")


def test_a_model_without_a_config_beside_it_is_loaded_with_the_inferred_one(tiny_models, tmp_path):
    """The tiny inpainting model has no yaml beside it here, so its config is inferred: the real SD 1.x inpainting
    architecture, which the tiny weights do not fit, and the error names that inferred config."""
    weights = tmp_path / "lonely.safetensors"
    shutil.copy(tiny_models["tiny-sd15-inpainting"], weights)
    spec = resolve_model(str(weights))
    assert spec.config_path is None
    fits_not = r"lonely\.safetensors does not fit the architecture in sd-v1-inpainting\.yaml"
    with pytest.raises(ModelLoadError, match=fits_not):
        load_diffusion_model(spec)
