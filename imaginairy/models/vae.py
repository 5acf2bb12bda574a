"""VAE files that replace a checkpoint's autoencoder, in the layouts they are shared in.

- a whole checkpoint, or a VAE saved with its prefix: `first_stage_model.encoder.*`, ...;
- bare CompVis keys `encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*` (Stability's
  `vae-ft-mse-840000-ema-pruned`; training-only `loss.*` keys are dropped);
- the diffusers layout (`encoder.down_blocks.0.resnets.0.conv1`, `decoder.up_blocks.*` in the reverse order of
  CompVis' `decoder.up.*`, mid-block attention as linear `to_q` / `query` ...): renamed to CompVis, the inverse of
  diffusers' `convert_ldm_vae_checkpoint` (diffusers/loaders/single_file_utils.py).

A1111 uses `NAME.vae.safetensors` (or .vae.pt / .vae.ckpt) beside the checkpoint `NAME.safetensors` automatically;
`sidecar_vae` finds it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from imaginairy.errors import IncompatibleModelError
from imaginairy.models.weights import load_state_dict

VAE_PREFIX = "first_stage_model."
VAE_TOP_LEVEL = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
SIDECAR_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
DIFFUSERS_RESNET_PARTS = {"conv_shortcut": "nin_shortcut"}
DIFFUSERS_ATTENTION_PARTS = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}  # fmt: skip


def vae_layout(state_dict: dict) -> str:
    if any(k.startswith(VAE_PREFIX) for k in state_dict):
        return "VAE (CompVis, first_stage_model.*)" if not any(
            k.startswith("model.diffusion_model.") for k in state_dict) else "checkpoint with a VAE"  # fmt: skip
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in state_dict):
        return "VAE (diffusers)"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in state_dict):
        return "VAE (CompVis)"
    return "not a VAE"


def vae_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The VAE tensors of a file as our model's `first_stage_model.*` keys."""
    path = Path(path)
    state_dict = load_state_dict(path)
    if any(k.startswith(VAE_PREFIX) for k in state_dict):
        bare = {k[len(VAE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    else:
        bare = {k: v for k, v in state_dict.items() if k.startswith(VAE_TOP_LEVEL)}
        if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in bare):
            bare = compvis_vae_from_diffusers(bare)
    if not any(k.startswith("decoder.") for k in bare):
        raise IncompatibleModelError(
            f"{path.name} is not a VAE: it has no decoder weights (encoder.*/decoder.* or first_stage_model.*)"
        )
    return {VAE_PREFIX + k: v for k, v in bare.items()}


def compvis_vae_from_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers AutoencoderKL state dict to the CompVis names (mid attention linear -> 1x1 conv)."""
    up_levels = 1 + max(int(m[1]) for k in state_dict if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k)))
    converted = {}
    for key, tensor in state_dict.items():
        name = key.replace("conv_norm_out", "norm_out")
        name = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", name)
        name = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
        name = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                      lambda m: f"decoder.up.{up_levels - 1 - int(m[1])}.block.{m[2]}.", name)  # fmt: skip
        name = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                      lambda m: f"decoder.up.{up_levels - 1 - int(m[1])}.upsample.", name)  # fmt: skip
        name = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", name)
        attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", name)
        if attention:
            part = DIFFUSERS_ATTENTION_PARTS[attention[2]]
            name = f"{attention[1]}.mid.attn_1.{part}.{attention[3]}"
            if part != "norm" and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        name = re.sub(r"\.conv_shortcut\.", ".nin_shortcut.", name)
        converted[name] = tensor
    return converted


def sidecar_vae(checkpoint: str | os.PathLike) -> Path | None:
    """`NAME.vae.safetensors` / `.vae.pt` / `.vae.ckpt` beside the checkpoint `NAME.*`, if there is one."""
    checkpoint = Path(checkpoint)
    for suffix in SIDECAR_SUFFIXES:
        candidate = checkpoint.with_name(checkpoint.stem + suffix)
        if candidate.is_file():
            return candidate
    return None
