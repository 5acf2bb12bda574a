"""The latent diffusion model: UNet + KL autoencoder + text encoder, named as in the CompVis checkpoints.

`model.diffusion_model.*` is the UNet, `first_stage_model.*` the autoencoder and `cond_stage_model.*` the text
encoder (SDXL: `conditioner.embedders.*`), so a public checkpoint's state dict loads into `LatentDiffusion` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imaginairy.modules.autoencoder import AutoencoderKL
from imaginairy.modules.layers import timestep_embedding
from imaginairy.modules.text_encoders import CLIPTextEncoder, OpenCLIPTextEncoder, SDXLTextEncoders
from imaginairy.modules.tiling import decode_in_tiles, encode_in_tiles
from imaginairy.modules.unet import UNetModel

TEXT_ENCODERS = {
    "FrozenCLIPEmbedder": CLIPTextEncoder,
    "FrozenOpenCLIPEmbedder": OpenCLIPTextEncoder,
    "GeneralConditioner": SDXLTextEncoders,
}
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}
# Features per micro-conditioning number (size, crop coordinate, aesthetic score): `outdim` of the
# ConcatTimestepEmbedderND embedders in Stability's sd_xl_base.yaml / sd_xl_refiner.yaml.
SIZE_EMBEDDING_DIM = 256


def size_embedding(numbers: torch.Tensor) -> torch.Tensor:
    """SDXL micro-conditioning numbers [B, n] -> [B, n * 256]: each number embedded like a timestep ([cos | sin])."""
    return timestep_embedding(numbers.flatten(), SIZE_EMBEDDING_DIM).reshape(numbers.shape[0], -1)


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
    # SDXL: the conditioner's number inputs in order (`input_key`s: original_size_as_tuple, crop_coords_top_left,
    # target_size_as_tuple or aesthetic_score); empty for SD 1/2.
    micro_conditioning: tuple[str, ...] = ()
    # Where the k-samplers' steps fall: "linspace" (k-diffusion's get_sigmas: evenly from the last timestep to 0) or
    # "trailing" (diffusers' spacing for few-step distilled models: 1000 - k * 1000/steps - 1, so 1 step = t 999).
    timestep_spacing: str = "linspace"


class DiffusionWrapper(nn.Module):
    """Holds the UNet under the name the checkpoints use (`model.diffusion_model`)."""

    def __init__(self, diffusion_model: UNetModel):
        super().__init__()
        self.diffusion_model = diffusion_model


class LatentDiffusion(nn.Module):
    def __init__(
        self, unet: UNetModel, autoencoder: AutoencoderKL, text_encoder: nn.Module, settings: DiffusionSettings
    ):
        super().__init__()
        self.model = DiffusionWrapper(unet)
        self.first_stage_model = autoencoder
        if isinstance(text_encoder, SDXLTextEncoders):
            self.conditioner = text_encoder
        else:
            self.cond_stage_model = text_encoder
        self.settings = settings

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def is_sdxl(self) -> bool:
        return isinstance(self.text_encoder, SDXLTextEncoders)

    @property
    def text_encoder(self) -> nn.Module:
        """`cond_stage_model` (SD 1/2) or `conditioner` (SDXL)."""
        return self.conditioner if hasattr(self, "conditioner") else self.cond_stage_model

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """The cross-attention context of `texts` [len(texts), tokens, context_dim]."""
        return self.encode_text_pooled(texts)[0]

    def encode_text_pooled(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context, pooled text embedding [len(texts), P] for SDXL, None for SD 1/2)."""
        if self.is_sdxl:
            return self.conditioner(texts)
        return self.cond_stage_model(texts), None

    def added_embedding(self, pooled: torch.Tensor, numbers: dict[str, tuple[float, ...]]) -> torch.Tensor:
        """SDXL's UNet input `y` [B, adm_in_channels]: pooled text [B, P], then each micro-conditioning number of
        `numbers` (by the config's input keys, e.g. original_size_as_tuple: (height, width)) embedded, in the
        config's order (as Stability's GeneralConditioner concatenates its vector outputs)."""
        values = [value for key in self.settings.micro_conditioning for value in numbers[key]]
        table = torch.tensor(values, dtype=torch.float32, device=pooled.device).expand(pooled.shape[0], -1)
        y = torch.cat([pooled.float(), size_embedding(table)], dim=1)
        if y.shape[1] != self.unet.adm_in_channels:
            raise ValueError(
                f"SDXL added embedding has {y.shape[1]} features, the UNet takes {self.unet.adm_in_channels}"
            )
        return y

    def encode_image(self, pixels: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latent: the posterior mean, so the same image always gives the same latent.
        `tiled` encodes in overlapping tiles (bounded memory for large images; see modules/tiling.py)."""
        pixels = pixels.to(next(self.first_stage_model.parameters()).dtype)  # float32 once an SDXL VAE is upcast
        if tiled:
            return encode_in_tiles(self.first_stage_model, pixels) * self.settings.scale_factor
        mean, _logvar = self.first_stage_model.encode(pixels)
        return mean * self.settings.scale_factor

    def decode_latent(self, latent: torch.Tensor, tiled: bool = False) -> torch.Tensor:
        """Scaled latent -> pixels in about [-1, 1]; `tiled` decodes in overlapping tiles (float32 result).

        SDXL's VAE overflows float16 (its decoder's activations pass 65504 and the image comes out black or NaN;
        diffusers marks it `force_upcast`): a float16 SDXL model, or float16 autocast, decodes in float32, the VAE
        upcast once (it then stays float32: ~330 MB instead of ~165 MB). bfloat16 has float32's range and is kept.
        """
        z = latent / self.settings.scale_factor
        if self.is_sdxl and half_precision_overflows(z):
            self.first_stage_model.float()
            with torch.autocast(z.device.type, enabled=False):
                return self._decode(z.float(), tiled)
        return self._decode(z, tiled)

    def _decode(self, z: torch.Tensor, tiled: bool) -> torch.Tensor:
        if tiled:
            return decode_in_tiles(self.first_stage_model, z)
        return self.first_stage_model.decode(z)


def half_precision_overflows(z: torch.Tensor) -> bool:
    """Whether the VAE would run on `z` in float16: its dtype, or float16 autocast on its device."""
    autocast_half = (
        torch.is_autocast_enabled(z.device.type) and torch.get_autocast_dtype(z.device.type) == torch.float16
    )
    return z.dtype == torch.float16 or autocast_half


def from_generative_models_layout(config: dict) -> dict:
    """A Stability generative-models config (SDXL's `sd_xl_base.yaml`: `network_config`, `conditioner_config`) in
    the CompVis layout the rest of the code reads (`unet_config`, `cond_stage_config`); CompVis configs unchanged."""
    params = config.get("model", {}).get("params", {})
    if "network_config" in params:
        params["unet_config"] = params.pop("network_config")
    if "conditioner_config" in params:
        params["cond_stage_config"] = params.pop("conditioner_config")
    return config


def diffusion_settings(config: dict) -> DiffusionSettings:
    params = config["model"]["params"]
    cond = params["cond_stage_config"]
    number_keys = ()
    if cond["target"].endswith(".GeneralConditioner"):
        number_keys = tuple(entry["input_key"] for entry in cond["params"]["emb_models"]
                            if entry["target"].endswith(".ConcatTimestepEmbedderND"))
    return DiffusionSettings(
        linear_start=float(params.get("linear_start", 0.00085)),
        linear_end=float(params.get("linear_end", 0.012)),
        num_timesteps=int(params.get("timesteps", 1000)),
        scale_factor=float(params.get("scale_factor", 0.18215)),
        prediction_type=PREDICTION_TYPES[params.get("parameterization", "eps")],
        default_size=int(params.get("image_size", 64)) * 8,
        is_inpainting=int(params["unet_config"]["params"]["in_channels"]) == 9,
        micro_conditioning=number_keys,
        timestep_spacing=str(params.get("timestep_spacing", "linspace")),
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
