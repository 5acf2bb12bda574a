"""Loading a ControlNet: weights file (or diffusers folder) + architecture -> `ControlNet` on a device.

The architecture comes, in order, from a CompVis-style yaml beside the weights with the same stem (its
`model.params.control_stage_config.params`, as in lllyasviel's `cldm_v15.yaml`), from a diffusers `config.json`
beside them (a diffusers `ControlNetModel` folder), or from the bundled `configs/controlnet-sd15.yaml`, the
architecture of every public SD 1.5 ControlNet.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from imaginairy.errors import ModelLoadError
from imaginairy.models.cache import in_shared_cache
from imaginairy.models.registry import CONFIGS_DIR
from imaginairy.models.weights import load_state_dict, resolve_weights
from imaginairy.modules.controlnet import ControlNet, block_channels, controlnet_state_dict

DEFAULT_CONFIG = CONFIGS_DIR / "controlnet-sd15.yaml"
DIFFUSERS_WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def controlnet_weights_file(location: str) -> Path:
    """The weights file of a location: a diffusers folder's weights file, or the file `resolve_weights` gives."""
    path = Path(location).expanduser()
    if path.is_dir():
        for name in DIFFUSERS_WEIGHTS_FILES:
            if (path / name).is_file():
                return path / name
        raise ModelLoadError(f"ControlNet folder {path} has no {' or '.join(DIFFUSERS_WEIGHTS_FILES)}")
    return resolve_weights(location)


def controlnet_config(weights_path: Path) -> dict:
    """The ControlNet's constructor arguments (CompVis `control_stage_config.params` names)."""
    from omegaconf import OmegaConf

    sidecar = weights_path.with_suffix(".yaml")
    diffusers_config = weights_path.parent / "config.json"
    if not sidecar.is_file() and diffusers_config.is_file():
        return config_from_diffusers(json.loads(diffusers_config.read_text()))
    path = sidecar if sidecar.is_file() else DEFAULT_CONFIG
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)["model"]["params"]["control_stage_config"][
            "params"
        ]
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a ControlNet config (model.params.control_stage_config.params): {e}"
        ) from e


def config_from_diffusers(config: dict) -> dict:
    """A diffusers `ControlNetModel` config.json as CompVis parameters. diffusers' `attention_head_dim` is the number
    of heads for SD 1.x (one number) and per level for SD 2.x (a list, channels / 64 each)."""
    widths = config["block_out_channels"]
    heads = config.get("attention_head_dim", 8)
    params = {
        "in_channels": config.get("in_channels", 4),
        "hint_channels": config.get("conditioning_channels", 3),
        "model_channels": widths[0],
        "channel_mult": [w // widths[0] for w in widths],
        "num_res_blocks": config.get("layers_per_block", 2),
        "attention_resolutions": [
            2**level for level, kind in enumerate(config["down_block_types"]) if kind.startswith("CrossAttn")
        ],
        "context_dim": config["cross_attention_dim"],
        "use_linear_in_transformer": config.get("use_linear_projection", False),
    }
    if isinstance(heads, int):
        params["num_heads"] = heads
    else:
        params["num_head_channels"] = widths[0] // heads[0]
    return params


@in_shared_cache
def load_controlnet(location: str, device: str, dtype: torch.dtype) -> ControlNet:
    """The ControlNet at `location` (a weights file, hub/URL location, or diffusers folder), strictly loaded."""
    from imaginairy.models.loading import _first_line_of_mismatch, weight_for_inference

    weights_path = controlnet_weights_file(location)
    config = dict(controlnet_config(weights_path))
    with torch.device("meta"):
        controlnet = ControlNet(**config)
    state_dict = controlnet_state_dict(load_state_dict(weights_path), int(config["num_res_blocks"]))
    state_dict = {name: weight_for_inference(tensor, dtype) for name, tensor in state_dict.items()}
    try:
        controlnet.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{weights_path.name} is not a ControlNet of the architecture its config describes "
            f"({_first_line_of_mismatch(e)}); put the matching CompVis yaml beside it"
        ) from e
    return controlnet.to(device=device, dtype=dtype).eval().requires_grad_(False)


def check_fits(controlnet: ControlNet, unet: torch.nn.Module, name: str) -> None:
    """Raises ModelLoadError when `controlnet` was not made for the UNet's architecture (its residuals would not fit
    the skip connections, or it reads another text encoder's context)."""
    ours = [block_channels(block) for block in controlnet.input_blocks]
    theirs = [block_channels(block) for block in unet.input_blocks]
    ours_context, theirs_context = context_dim(controlnet), context_dim(unet)
    if ours != theirs or ours_context != theirs_context:
        raise ModelLoadError(
            f"ControlNet {name} is for another architecture (skip channels {ours}, text context {ours_context};"
            f" the model has {theirs}, {theirs_context}): use a ControlNet made for this model's family"
        )


def context_dim(network: torch.nn.Module) -> int | None:
    for module_name, module in network.named_modules():
        if module_name.endswith("attn2.to_k"):
            return module.in_features
    return None
