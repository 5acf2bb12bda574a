"""The checkpoint layouts in circulation, brought to the one our modules load (CompVis names), as AUTOMATIC1111's
loader accepts them:

- text encoder keys without the `text_model.` level (`cond_stage_model.transformer.embeddings.*`, what
  transformers' flattened CLIPTextModel saves);
- EMA-only files (UNet weights only under `model_ema.*`, CompVis' EMA names: the UNet key after `model.` with its dots
  removed) and EMA + non-EMA files (the non-EMA `model.diffusion_model.*` weights are used, as A1111 does);
- diffusers-format folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`) and single `.safetensors` files with
  diffusers names (`unet.*`, `vae.*`, `text_encoder.*`) for SD 1.x; the UNet renamed by the module mapping in
  models/lora.py, the VAE by models/vae.py;
- checkpoints without a VAE or a text encoder: the family's default model's weights fill them in, with a note.
fp16 / bf16 / fp32 files and `.ckpt` files with or without a `state_dict` wrapper are read by models/weights.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from imaginairy.errors import IncompatibleModelError, ModelLoadError
from imaginairy.models.weights import TRANSFORMERS_WEIGHTS_FILES, load_state_dict

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
EMA_PREFIX = "model_ema."
COMPONENT_PREFIXES = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.")
SD2_CONTEXT_DIM = 1024  # OpenCLIP ViT-H's width, the UNet's cross-attention context in SD 2.x
FLAT_CLIP_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
# key prefixes of the families imaginairy does not load, and their names
OTHER_ARCHITECTURE_KEYS = {
    "conditioner.embedders.": "SDXL",
    "model.diffusion_model.joint_blocks.": "SD 3",
    "double_blocks.": "Flux",
    "model.diffusion_model.double_blocks.": "Flux",
    "model.diffusion_model.label_emb.": "SDXL",
}
DIFFUSERS_FOLDERS = {"unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                     "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                     "text_encoder": TRANSFORMERS_WEIGHTS_FILES}  # fmt: skip
# the registered model whose VAE and text encoder complete a checkpoint lacking them, by text encoder class
DEFAULT_COMPONENT_MODELS = {"CLIPTextEncoder": "sd-1.5", "OpenCLIPTextEncoder": "sd-2.1"}


def compvis_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint at `path` (a file or a diffusers folder) with CompVis key names."""
    if path.is_dir():
        state_dict = diffusers_folder_state_dict(path)
    else:
        state_dict = load_state_dict(path)
        if any(k.startswith(("unet.", "vae.")) for k in state_dict):
            state_dict = _compvis_from_diffusers_parts(
                {part: {k[len(part) + 1 :]: v for k, v in state_dict.items() if k.startswith(part + ".")}
                 for part in DIFFUSERS_FOLDERS}, path.name)  # fmt: skip
    return with_text_model_level(state_dict)


def with_text_model_level(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`cond_stage_model.transformer.embeddings.*` (no `text_model.` level) -> `...transformer.text_model.*`."""
    flat = tuple(CLIP_PREFIX + part for part in FLAT_CLIP_PARTS)
    if not any(k.startswith(flat) for k in state_dict):
        return state_dict
    return {CLIP_PREFIX + "text_model." + k[len(CLIP_PREFIX) :] if k.startswith(flat) else k: v
            for k, v in state_dict.items()}  # fmt: skip


def diffusers_folder_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """A diffusers pipeline folder's UNet, VAE and text encoder with CompVis names."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{folder}/model_index.json is not readable JSON: {error}") from error
    if "text_encoder_2" in index or index.get("_class_name", "").startswith("StableDiffusionXL"):
        raise IncompatibleModelError(f"{folder} is an SDXL diffusers folder, which imaginairy does not load")
    parts = {}
    for part, file_names in DIFFUSERS_FOLDERS.items():
        weights = next((folder / part / name for name in file_names if (folder / part / name).is_file()), None)
        if weights is not None:
            parts[part] = load_state_dict(weights)
    if "unet" not in parts:
        raise ModelLoadError(f"{folder} has no unet/diffusion_pytorch_model.safetensors; it is not a diffusers model")
    return _compvis_from_diffusers_parts(parts, folder.name)


def _compvis_from_diffusers_parts(parts: dict[str, dict], name: str) -> dict[str, torch.Tensor]:
    from imaginairy.models.vae import compvis_vae_from_diffusers

    text_encoder = parts.get("text_encoder", {})
    if _context_dim(parts.get("unet", {})) == SD2_CONTEXT_DIM:
        raise IncompatibleModelError(
            f"{name}: diffusers-format SD 2.x (OpenCLIP) checkpoints are not converted; use the single-file"
            " .safetensors release of the model"
        )
    state_dict = {UNET_PREFIX + k: v for k, v in compvis_unet_from_diffusers(parts.get("unet", {})).items()}
    if parts.get("vae"):
        state_dict.update({VAE_PREFIX + k: v for k, v in compvis_vae_from_diffusers(parts["vae"]).items()})
    for key, tensor in text_encoder.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state_dict[CLIP_PREFIX + key] = tensor
    return state_dict


def _context_dim(unet: dict) -> int | None:
    return next((v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight")), None)


def compvis_unet_from_diffusers(unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> CompVis `openaimodel` keys (without `model.diffusion_model.`).

    The module mapping needs the UNet's block structure, which the key names tell: a tiny meta-device UNet is not
    built; instead the names are matched through `diffusers_unet_module_names` of a UNet built from the keys' shapes.
    """
    if not unet:
        return {}
    from imaginairy.models.lora import diffusers_unet_module_names

    skeleton = _unet_skeleton_from_diffusers(unet)
    module_names = {diffusers: compvis for compvis, diffusers in diffusers_unet_module_names(skeleton).items()}
    converted = {}
    for key, tensor in unet.items():
        module, _, param = key.rpartition(".")
        if module not in module_names:
            raise ModelLoadError(f"diffusers UNet weight {key} has no place in the SD 1.x/2.x UNet")
        converted[f"{module_names[module]}.{param}"] = tensor
    return converted


def _unet_skeleton_from_diffusers(unet: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A UNet (on the meta device, no memory) with the block structure of a diffusers UNet's state dict."""
    from imaginairy.modules.unet import UNetModel

    levels = 1 + max(int(k.split(".")[1]) for k in unet if k.startswith("down_blocks."))
    res_blocks = 1 + max(int(k.split(".")[3]) for k in unet if k.startswith("down_blocks.0.resnets."))
    widths = [unet[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
    attention_levels = [2**i for i in range(levels) if f"down_blocks.{i}.attentions.0.proj_in.weight" in unet]
    context = _context_dim(unet)
    linear = unet[next(k for k in unet if k.endswith("proj_in.weight"))].ndim == 2
    with torch.device("meta"):
        return UNetModel(
            in_channels=unet["conv_in.weight"].shape[1], out_channels=unet["conv_out.weight"].shape[0],
            model_channels=widths[0], attention_resolutions=attention_levels, num_res_blocks=res_blocks,
            channel_mult=[w // widths[0] for w in widths], num_heads=1, context_dim=context,
            use_linear_in_transformer=linear,
        )  # fmt: skip


def completed_components(state_dict: dict, model: torch.nn.Module, config_path, weights_name: str) -> dict:
    """The model's weights from the checkpoint: EMA-only UNet weights taken from `model_ema.*`, and a missing VAE or
    text encoder filled in from the family's default model (logged as a note)."""
    components = {k: v for k, v in state_dict.items() if k.startswith(COMPONENT_PREFIXES)}
    if not any(k.startswith(UNET_PREFIX) for k in components):
        for key in model.state_dict():
            if key.startswith(UNET_PREFIX) and ema_unet_key(key) in state_dict:
                components[key] = state_dict[ema_unet_key(key)]
        if any(k.startswith(UNET_PREFIX) for k in components):
            logger.info("%s holds only EMA UNet weights (model_ema.*); using them", weights_name)
    missing = [p for p in (VAE_PREFIX, "cond_stage_model.") if not any(k.startswith(p) for k in components)]
    if missing:
        components.update(_default_components(missing, model, weights_name))
    return components


def ema_unet_key(key: str) -> str:
    """CompVis' EMA name of a UNet weight: `model.diffusion_model.a.0.b` -> `model_ema.diffusion_modela0b`."""
    return EMA_PREFIX + key[len("model.") :].replace(".", "")


def _default_components(prefixes: list[str], model: torch.nn.Module, weights_name: str) -> dict:
    from imaginairy.models.registry import registered_models
    from imaginairy.models.weights import resolve_weights

    default_name = DEFAULT_COMPONENT_MODELS[type(model.cond_stage_model).__name__]
    spec = registered_models()[default_name]
    what = " and ".join("VAE" if prefix == VAE_PREFIX else "text encoder" for prefix in prefixes)
    logger.warning("note: %s has no %s weights; using those of %s (%s)", weights_name, what, default_name, spec.weights)
    default_weights = load_state_dict(resolve_weights(spec.weights))
    return {k: v for k, v in with_text_model_level(default_weights).items() if k.startswith(tuple(prefixes))}
