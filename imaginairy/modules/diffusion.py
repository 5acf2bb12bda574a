"""The latent diffusion model: UNet + KL autoencoder + text encoder, named as in the CompVis checkpoints.

`model.diffusion_model.*` is the UNet, `first_stage_model.*` the autoencoder and `cond_stage_model.*` the text
encoder, so a public checkpoint's state dict loads into `LatentDiffusion` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imaginairy.modules.autoencoder import AutoencoderKL
from imaginairy.modules.text_encoders import CLIPTextEncoder, OpenCLIPTextEncoder
from imaginairy.modules.tiling import decode_in_tiles, encode_in_tiles
from imaginairy.modules.unet import UNetModel

TEXT_ENCODERS = {"FrozenCLIPEmbedder": CLIPTextEncoder, "FrozenOpenCLIPEmbedder": OpenCLIPTextEncoder}
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


@dataclass(frozen=True)
class DiffusionSettings:
    """The numbers of a model config that the pipeline and samplers need besides the networks."""

    linear_start: float
    linear_end: float
    num_timesteps: int
    scale_factor: float
    prediction_type: str  # "epsilon" or "v_prediction"
    default_size: int  # pixels
    is_inpainting: bool


class DiffusionWrapper(nn.Module):
    """Holds the UNet under the name the checkpoints use (`model.diffusion_model`)."""

    def __init__(self, diffusion_model: UNetModel):
        super().__init__()
        self.diffusion_model = diffusion_model


class LatentDiffusion(nn.Module):
    def __init__(self, unet: UNetModel, autoencoder: AutoencoderKL, text_encoder: nn.Module, settings: DiffusionSettings):
        super().__init__()
        self.model = DiffusionWrapper(unet)
        self.first_stage_model = autoencoder
        self.cond_stage_model = text_encoder
        self.settings = settings

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.cond_stage_model(texts)

    def encode_image(self, pixels: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latent: the posterior mean, so the same image always gives the same latent.
        `tiled` encodes in overlapping tiles (bounded memory for large images; see modules/tiling.py)."""
        if tiled:
            return encode_in_tiles(self.first_stage_model, pixels) * self.settings.scale_factor
        mean, _logvar = self.first_stage_model.encode(pixels)
        return mean * self.settings.scale_factor

    def decode_latent(self, latent: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Scaled latent -> pixels in about [-1, 1]; `tiled` decodes in overlapping tiles (float32 result)."""
        z = latent / self.settings.scale_factor
        if tiled:
            return decode_in_tiles(self.first_stage_model, z)
        return self.first_stage_model.decode(z)


def diffusion_settings(config: dict) -> DiffusionSettings:
    params = config["model"]["params"]
    return DiffusionSettings(
        linear_start=float(params.get("linear_start", 0.00085)),
        linear_end=float(params.get("linear_end", 0.012)),
        num_timesteps=int(params.get("timesteps", 1000)),
        scale_factor=float(params.get("scale_factor", 0.18215)),
        prediction_type=PREDICTION_TYPES[params.get("parameterization", "eps")],
        default_size=int(params.get("image_size", 64)) * 8,
        is_inpainting=int(params["unet_config"]["params"]["in_channels"]) == 9,
    )


def build_latent_diffusion(config: dict) -> LatentDiffusion:
    """Build the networks a CompVis-format config describes (parameters initialised by the modules' defaults)."""
    params = config["model"]["params"]
    unet = UNetModel(**params["unet_config"]["params"])
    autoencoder = AutoencoderKL(**params["first_stage_config"]["params"])
    cond = params["cond_stage_config"]
    encoder_class = TEXT_ENCODERS[cond["target"].rsplit(".", 1)[-1]]
    text_encoder = encoder_class(**cond.get("params", {}))
    return LatentDiffusion(unet, autoencoder, text_encoder, diffusion_settings(config))
