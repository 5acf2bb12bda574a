"""ControlNet (Zhang et al. 2023): a trainable copy of the UNet's encoder half that reads a hint image (edges, depth,
pose...) and returns one residual per UNet skip connection plus one for the middle block.

The parameter layout is that of lllyasviel's `cldm.cldm.ControlNet` (the public ControlNet 1.0/1.1 checkpoints, keys
under `control_model.`): `time_embed`, `input_hint_block` (the hint encoder: eight 3x3 convolutions with SiLU
between, three of them stride 2, so a hint at pixel size lands on the latent grid), `input_blocks` and
`middle_block` (the UNet's, built by our `UNetModel`), `zero_convs` (a 1x1 convolution per input block, zero at
the start of training) and `middle_block_out`. The hint embedding is added after the first input block (the
latent's 3x3 input convolution).

diffusers' `ControlNetModel` layout (`controlnet_cond_embedding`, `down_blocks`, `controlnet_down_blocks`,
`controlnet_mid_block`, ...) is converted to ours by `original_keys_from_diffusers`, the inverse of the mapping that
diffusers' own `convert_controlnet_checkpoint` applies (diffusers/loaders/single_file_utils.py).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from imaginairy.errors import ModelLoadError
from imaginairy.modules.layers import TileableConv2d, timestep_embedding
from imaginairy.modules.unet import Downsample, ResBlock, TimestepBlock, UNetModel

ORIGINAL_PREFIX = "control_model."
HINT_CHANNELS = (16, 32, 96, 256)  # the hint encoder's widths (cldm's input_hint_block)
DIFFUSERS_MARKER_KEY = "controlnet_cond_embedding.conv_in.weight"


def hint_encoder(hint_channels: int, model_channels: int) -> nn.Sequential:
    """cldm's `input_hint_block`: Sequential indices 0, 2, ..., 14 are the convolutions (SiLU at the odd ones); each
    width of HINT_CHANNELS has a 3x3 convolution keeping it and one to the next width at stride 2."""
    layers: list[nn.Module] = [TileableConv2d(hint_channels, HINT_CHANNELS[0], 3, padding=1), nn.SiLU()]
    for width, next_width in zip(HINT_CHANNELS, HINT_CHANNELS[1:]):
        layers += [TileableConv2d(width, width, 3, padding=1), nn.SiLU()]
        layers += [TileableConv2d(width, next_width, 3, padding=1, stride=2), nn.SiLU()]
    layers.append(TileableConv2d(HINT_CHANNELS[-1], model_channels, 3, padding=1))
    return nn.Sequential(*layers)


def block_channels(block: TimestepBlock) -> int:
    """The channels an input block puts out (its first layer sets them; a transformer after it keeps them)."""
    first = block[0]
    if isinstance(first, ResBlock):
        return first.out_layers[3].out_channels
    if isinstance(first, Downsample):
        return first.op.out_channels
    return first.out_channels


class ControlNet(nn.Module):
    """Takes cldm's `control_stage_config.params`: the UNet's parameters plus `hint_channels` (3 for every SD 1.5
    ControlNet). forward(x, timesteps, context, hint) -> the residuals, input blocks' first, the middle block's last.
    """

    def __init__(self, hint_channels: int = 3, **unet_config):
        super().__init__()
        unet_config.setdefault("out_channels", unet_config["in_channels"])  # unused: cldm's config has none
        unet = UNetModel(**unet_config)  # its encoder half is ours; the decoder half is dropped (built on meta to load)
        self.model_channels = unet.model_channels
        self.in_channels = unet.input_blocks[0][0].in_channels
        self.time_embed = unet.time_embed
        self.input_hint_block = hint_encoder(hint_channels, self.model_channels)
        self.input_blocks = unet.input_blocks
        self.zero_convs = nn.ModuleList(
            TimestepBlock([nn.Conv2d(block_channels(b), block_channels(b), 1)]) for b in self.input_blocks
        )
        channels = block_channels(self.input_blocks[-1])
        self.middle_block = unet.middle_block
        self.middle_block_out = TimestepBlock([nn.Conv2d(channels, channels, 1)])

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, hint: torch.Tensor
    ) -> list[torch.Tensor]:
        """x [B, 4, h, w] and context [k*B, tokens, dim] as the UNet takes them (model dtype); hint [1 or B, 3, 8h, 8w]
        in [0, 1]. Each residual has the batch of the UNet activation it is added to (B before the first
        cross-attention, k*B after; the UNet widens them)."""
        timesteps = timesteps.expand(x.shape[0]) if timesteps.ndim == 0 else timesteps
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))
        h = self.input_blocks[0](x, emb, context) + self.input_hint_block(hint)
        residuals = [self.zero_convs[0](h, emb, context)]
        for block, zero_conv in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = block(h, emb, context)
            residuals.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        residuals.append(self.middle_block_out(h, emb, context))
        return residuals


def controlnet_state_dict(state_dict: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """A ControlNet file's weights in our layout: cldm's keys with or without the `control_model.` prefix (the
    ControlNet 1.1 `.pth` files and the ones saved on their own), or diffusers' `ControlNetModel` keys."""
    if DIFFUSERS_MARKER_KEY in state_dict:
        return original_keys_from_diffusers(state_dict, num_res_blocks)
    if any(key.startswith(ORIGINAL_PREFIX) for key in state_dict):
        return {key[len(ORIGINAL_PREFIX):]: v for key, v in state_dict.items() if key.startswith(ORIGINAL_PREFIX)}
    return dict(state_dict)


# diffusers name -> cldm name, for the names that are not inside a down/mid block
DIFFUSERS_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_cond_embedding.conv_out": f"input_hint_block.{4 * (len(HINT_CHANNELS) - 1) + 2}",
    "controlnet_mid_block": "middle_block_out.0",
}
DIFFUSERS_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def original_key_from_diffusers(key: str, num_res_blocks: int) -> str:
    """One diffusers `ControlNetModel` parameter name in cldm's layout (transformer internals are named alike)."""
    module, _, param = key.rpartition(".")
    if module in DIFFUSERS_TOP_LEVEL:
        return f"{DIFFUSERS_TOP_LEVEL[module]}.{param}"
    if match := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", module):
        return f"input_hint_block.{2 * int(match[1]) + 2}.{param}"
    if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)", module):
        return f"zero_convs.{match[1]}.0.{param}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(\.(.+))?", module):
        level, kind, index, inner = int(match[1]), match[2], int(match[3]), match[5]
        block = 1 + level * (num_res_blocks + 1) + (num_res_blocks if kind == "downsamplers" else index)
        if kind == "downsamplers":
            return f"input_blocks.{block}.0.op.{param}"
        if kind == "resnets":
            return f"input_blocks.{block}.0.{DIFFUSERS_RESNET[inner]}.{param}"
        return f"input_blocks.{block}.1.{inner}.{param}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", module):
        kind, index, inner = match[1], int(match[2]), match[3]
        if kind == "resnets":
            return f"middle_block.{2 * index}.{DIFFUSERS_RESNET[inner]}.{param}"
        return f"middle_block.1.{inner}.{param}"
    raise ModelLoadError(f"{key!r} is not a parameter of an SD 1.x/2.x diffusers ControlNetModel")


def original_keys_from_diffusers(state_dict: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in state_dict.items():
        if key.startswith("add_embedding.") or key.startswith("class_embedding."):
            raise ModelLoadError("This is an SDXL (or class-conditioned) ControlNet: use an SD 1.x/2.x ControlNet")
        converted[original_key_from_diffusers(key, num_res_blocks)] = tensor
    return converted
