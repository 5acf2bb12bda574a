"""Loading a latent diffusion model: weights file + architecture config -> LatentDiffusion on a device."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from imaginairy.errors import IncompatibleModelError, ModelLoadError, first_line
from imaginairy.models.registry import CONFIGS_DIR, ModelSpec
from imaginairy.models.weights import resolve_weights
from imaginairy.modules.diffusion import (
    TEXT_ENCODERS,
    LatentDiffusion,
    build_latent_diffusion,
    from_generative_models_layout,
)

logger = logging.getLogger(__name__)

UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SDXL_LABEL_EMB_KEY = "model.diffusion_model.label_emb.0.0.weight"


CONTEXT_DIM_CONFIGS = {768: "sd-v1", 1024: "sd-v2"}


def _unet_context_dim(state_dict: dict) -> int | None:
    unet_keys = (k for k in state_dict if k.startswith("model.diffusion_model."))
    key = next((k for k in unet_keys if k.endswith("attn2.to_k.weight")), None)
    return state_dict[key].shape[1] if key else None


def load_model_config(path: str | Path) -> dict:
    from omegaconf import OmegaConf

    try:
        config = from_generative_models_layout(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
        params = config["model"]["params"]
        target = params["cond_stage_config"]["target"].rsplit(".", 1)[-1]
        params["unet_config"]["params"], params["first_stage_config"]["params"]["ddconfig"]
    except Exception as e:
        raise ModelLoadError(f"model config {path} is not a CompVis-style model config: {e}") from e
    if target not in TEXT_ENCODERS:
        raise ModelLoadError(
            f"model config {path}: text encoder {target!r} is not supported ({', '.join(TEXT_ENCODERS)})"
        )
    return config


def resolve_checkpoint(location: str) -> Path:
    """The local path of a checkpoint: a diffusers-format folder (holding model_index.json) as it is, else the weights
    file (downloaded if needed)."""
    folder = Path(location).expanduser()
    if folder.is_dir() and (folder / "model_index.json").is_file():
        return folder
    return resolve_weights(location)


def checkpoint_architecture(state_dict: dict) -> str:
    """The model family of a checkpoint's state dict, from its key names (as `aimg models` shows it)."""
    from imaginairy.models.checkpoint_layouts import OTHER_ARCHITECTURE_KEYS

    for marker, name in OTHER_ARCHITECTURE_KEYS.items():
        if any(k.startswith(marker) for k in state_dict):
            return name
    inpainting = UNET_IN_KEY in state_dict and state_dict[UNET_IN_KEY].shape[1] == 9
    if any(k.startswith("cond_stage_model.model.") for k in state_dict):
        return "SD 2.x inpainting" if inpainting else "SD 2.x"
    if any(k.startswith("cond_stage_model.transformer.") for k in state_dict) or UNET_IN_KEY in state_dict:
        return "SD 1.x inpainting" if inpainting else "SD 1.x"
    if any(k.startswith(("unet.", "down_blocks.")) for k in state_dict):
        return "diffusers-named UNet"
    return "unknown"


def infer_config_path(state_dict: dict, weights_name: str) -> Path:
    """Pick the architecture family from the weights: text encoder kind and UNet input channels (9 = inpainting).

    Whether an SD 2 model predicts v or epsilon cannot be seen in its weights: files named like the 768px v model
    (containing "768") are taken as v prediction; for others give the config explicitly.
    """
    from imaginairy.models.checkpoint_layouts import ema_unet_key

    if UNET_IN_KEY not in state_dict and ema_unet_key(UNET_IN_KEY) in state_dict:  # an EMA-only file
        state_dict = {**state_dict, UNET_IN_KEY: state_dict[ema_unet_key(UNET_IN_KEY)]}
    architecture = checkpoint_architecture(state_dict)
    if UNET_IN_KEY not in state_dict:
        if architecture != "unknown":
            raise IncompatibleModelError(f"{weights_name} is a {architecture} model, which imaginairy does not load")
        raise ModelLoadError(f"{weights_name} is not a Stable Diffusion checkpoint (no {UNET_IN_KEY})")
    inpainting = state_dict[UNET_IN_KEY].shape[1] == 9
    sdxl = sdxl_architecture(state_dict, inpainting)
    if sdxl is not None:
        name = sdxl
    elif any(k.startswith("cond_stage_model.model.") for k in state_dict):
        if inpainting:
            name = "sd-v2-inpainting"
        else:
            name = "sd-v2-v" if "768" in weights_name else "sd-v2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in state_dict):
        name = "sd-v1-inpainting" if inpainting else "sd-v1"
    elif _unet_context_dim(state_dict) in CONTEXT_DIM_CONFIGS:  # no text encoder in the file: the UNet tells
        name = CONTEXT_DIM_CONFIGS[_unet_context_dim(state_dict)] + ("-inpainting" if inpainting else "")
    else:
        raise ModelLoadError(f"{weights_name}: unrecognised text encoder weights; pass --model-config with its yaml")
    logger.info("architecture of %s inferred as %s", weights_name, name)
    return CONFIGS_DIR / f"{name}.yaml"


def sdxl_architecture(state_dict: dict, inpainting: bool) -> str | None:
    """SDXL checkpoints carry the added-embedding MLP (`label_emb`) and a `conditioner`: base and inpainting have
    CLIP ViT-L as embedder 0 and OpenCLIP bigG as 1 (2816 added inputs), the refiner OpenCLIP bigG as 0 (2560).
    Key names as diffusers' single-file loader tells them apart (CHECKPOINT_KEY_NAMES xl_base / xl_refiner)."""
    if SDXL_LABEL_EMB_KEY not in state_dict:
        return None
    if any(k.startswith("conditioner.embedders.0.model.") for k in state_dict):
        return "sdxl-refiner"
    if any(k.startswith("conditioner.embedders.1.model.") for k in state_dict):
        return "sdxl-inpainting" if inpainting else "sdxl-base"
    raise ModelLoadError("checkpoint has an SDXL UNet but no SDXL text encoders (conditioner.embedders.*); "
                         "pass --model-config with its yaml")


def load_diffusion_model(
    spec: ModelSpec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, vae: str | None = None
) -> LatentDiffusion:
    """`vae`: a VAE file replacing the checkpoint's autoencoder (see models/vae.py); without one, a
    `NAME.vae.safetensors` beside the checkpoint is used, as A1111 does."""
    from imaginairy.models.checkpoint_layouts import completed_components, compvis_state_dict
    from imaginairy.models.vae import sidecar_vae, vae_state_dict

    weights_path = resolve_checkpoint(spec.weights)
    state_dict = compvis_state_dict(weights_path)
    config_path = spec.config_path or infer_config_path(state_dict, weights_path.name)
    config = load_model_config(config_path)
    model = build_from_config(config, config_path)
    vae = vae or sidecar_vae(weights_path)
    if vae is not None:
        logger.info("VAE from %s", vae)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("first_stage_model.")}
        state_dict.update(vae_state_dict(vae))
    if spec.settings:
        model.settings = dataclasses.replace(model.settings, **dict(spec.settings))
    component_weights = completed_components(state_dict, model, config_path, weights_path.name)
    del state_dict
    for name, tensor in component_weights.items():  # one tensor at a time: each drops its mapped file pages
        component_weights[name] = weight_for_inference(tensor, dtype)
    try:
        model.load_state_dict(component_weights, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{weights_path.name} does not fit the architecture in {Path(config_path).name} "
            f"({_first_line_of_mismatch(e)}); pass --model-config with the matching config"
        ) from e
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise ModelLoadError(f"{weights_path.name}: no values for {', '.join(left_on_meta[:3])}")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_from_config(config: dict, config_path: str | Path) -> LatentDiffusion:
    """The model `config` describes, its tensors on the meta device (no memory, no random init for weights about to be
    replaced). The one error boundary of model building: the modules raise ValueError (or KeyError, TypeError for a
    missing or mistyped parameter) on a configuration they cannot build, turned here into ModelLoadError naming the
    config file."""
    try:
        with torch.device("meta"):
            return build_latent_diffusion(config)
    except KeyError as e:
        raise ModelLoadError(f"model config {config_path} lacks the parameter {e}; compare it with a CompVis config"
                             f" such as {CONFIGS_DIR / 'sd-v1.yaml'}") from e
    except (ValueError, TypeError) as e:
        raise ModelLoadError(f"model config {config_path}: {first_line(e)}") from e


def weight_for_inference(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A checkpoint tensor in the model's dtype. Convolution kernels are laid out channels-last, the layout the
    pipeline runs convolutions in (see pipeline.unet_function), so they are not re-laid-out at every call (in fp32
    that re-layout cost ~1 s of a 9 s SD-1.5 step); other tensors already in the dtype stay the memory-mapped ones
    (no copy)."""
    if not tensor.is_floating_point():
        return tensor
    if tensor.ndim == 4 and tensor.shape[-2:] != (1, 1):
        return tensor.to(dtype=dtype, memory_format=torch.channels_last)
    return tensor.to(dtype)


def _first_line_of_mismatch(error: RuntimeError) -> str:
    details = str(error).split("\n", 1)[-1].strip()
    return details.split(". ")[0][:300]
