"""Small pieces shared by the UNet and the autoencoder: group norm, tileable 3x3 convolution, timestep embedding."""

import math

import torch
import torch.nn.functional as F
from torch import nn

TILE_MODES = ("", "x", "y", "xy")


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """The 32-group norm used throughout Stable Diffusion. It runs in the input dtype (bf16 and fp16 included)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=eps, affine=True)


def pad_for_tile_mode(x: torch.Tensor, padding: tuple[int, int, int, int], tile_mode: str) -> torch.Tensor:
    """Pad (left, right, top, bottom): circularly along the tiled axes, with zeros along the others."""
    left, right, top, bottom = padding
    if "x" in tile_mode:
        x = F.pad(x, (left, right, 0, 0), mode="circular")
    else:
        x = F.pad(x, (left, right, 0, 0))
    if "y" in tile_mode:
        return F.pad(x, (0, 0, top, bottom), mode="circular")
    return F.pad(x, (0, 0, top, bottom))


class TileableConv2d(nn.Conv2d):
    """A Conv2d whose padding can wrap around the image edges, so generated images tile seamlessly.

    `tile_mode` is "" (ordinary zero padding), "x" (wrap left/right), "y" (wrap top/bottom) or "xy".
    The parameters and state dict are exactly those of nn.Conv2d.
    """

    tile_mode: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.tile_mode:
            return super().forward(x)
        pad_h, pad_w = self.padding
        x = pad_for_tile_mode(x, (pad_w, pad_w, pad_h, pad_h), self.tile_mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def set_tile_mode(module: nn.Module, tile_mode: str) -> None:
    """Set `tile_mode` ("", "x", "y" or "xy") on every TileableConv2d inside `module`."""
    if tile_mode not in TILE_MODES:
        raise ValueError(f"tile_mode must be one of {TILE_MODES}, got {tile_mode!r}")
    for submodule in module.modules():
        if isinstance(submodule, TileableConv2d):
            submodule.tile_mode = tile_mode


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, shape [B] -> [B, dim], in float32."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period) / half)
    angles = timesteps.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding
